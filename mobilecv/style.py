"""Neural style transfer (Gatys, Ecker & Bethge 2015), as the deep learning course teaches it.

The costs are small pure functions of activations (numpy arrays or TF tensors, batch 1):

- content cost J_content = 1 / (4 nH nW nC) sum (a_C - a_G)^2 at one layer;
- the style (Gram) matrix G = A^T A of the activations unrolled to A (nH nW x nC);
- a layer's style cost 1 / (4 nC^2 (nH nW)^2) sum (G_S - G_G)^2;
- J_style = sum over style layers of lambda_l times the layer's cost;
- J(G) = alpha J_content + beta J_style.

The generated image G starts from the content image plus uniform noise; its pixels are
optimised by Adam or by L-BFGS (scipy's L-BFGS-B, the pixel bounds [0, 1] as box bounds).

Loss networks (``network``):

- ``random`` (the offline default): Ustyuzhaninov, Brendel, Gatys & Bethge (2016) show a
  single layer of random filters at several kernel sizes carries enough texture statistics
  to synthesise textures. Here: ReLU convolutions with He-normal random filters of 3, 5, 7
  and 11 taps (32 each, seeded), on the image and on its 2x average-pooled copy. It
  transfers colours and local stroke statistics; it knows no objects, so the content term
  keeps the photo's edges rather than its semantics.
- a registered backbone (``vgg19`` as in the paper): with ``weights`` (for example
  keras.applications' VGG19 "notop" file ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``)
  the paper's perceptual features: content block4_conv2, style block1_conv1 ..
  block5_conv1, with the keras.applications "caffe" preprocessing (BGR, ImageNet mean
  subtracted, 0-255). Without weights the layers hold random filters (a deep random net:
  weaker texture statistics than the multi-scale one). ``pooling="avg"`` swaps max pooling
  for average pooling, as the paper suggests.
- a model file trained by this project (``.keras``/``.h5``): its feature maps at each
  stride (mobilecv.features) as style layers and the stride-8 (else the first) map as
  content; features learnt on its own data (Fashion-MNIST, digits) carry little of a
  painting's texture.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from mobilecv.errors import InputError, parse_choice

RANDOM = "random"
RANDOM_KERNELS = (3, 5, 7, 11)
RANDOM_FILTERS = 32
# The paper's layers (Gatys et al. 2015, section 2), in keras.applications' VGG19 names.
VGG_CONTENT = "block4_conv2"
VGG_STYLE = tuple(f"block{b}_conv1" for b in range(1, 6))
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
# alpha / beta = 1e-3, the paper's ratio for its figure 3. The course's 10 / 40 suits its VGG
# cost scale; on the random network the content term then dominates (measured: 64 px, 60
# Adam steps, the Gram distances fell only 8-36%).
ALPHA, BETA = 1.0, 1e3


class Pooling(enum.StrEnum):
    MAX = "max"
    AVG = "avg"


class Optimizer(enum.StrEnum):
    ADAM = "adam"
    LBFGS = "lbfgs"


class Preprocess(enum.StrEnum):
    """How pixels in [0, 1] are fed to the loss network."""

    AUTO = "auto"  # caffe for a VGG with weights, else unit
    UNIT = "unit"  # [0, 1], what every mobilecv model takes
    CAFFE = "caffe"  # keras.applications VGG: BGR, 0-255, ImageNet mean subtracted


class Sample(enum.StrEnum):
    """Images that install with mobilecv (mobilecv.data.assets)."""

    STARRY_NIGHT = "starry_night"  # OpenCV's examples/data (Debian opencv-doc)
    ASTRONAUT = "astronaut"  # scikit-image
    CHELSEA = "chelsea"
    COFFEE = "coffee"
    CHINA = "china"  # scikit-learn
    FLOWER = "flower"


# --------------------------------------------------------------------------- costs


def _tf():
    from mobilecv._tf import tf

    return tf()


def _unrolled(a):
    """Activations (1, nH, nW, nC) or (nH, nW, nC) as A of shape (nH nW, nC)."""
    tf = _tf()
    a = tf.convert_to_tensor(a, tf.float32)
    return tf.reshape(a, (-1, a.shape[-1]))


def content_cost(a_c, a_g):
    """1 / (4 nH nW nC) sum (a_C - a_G)^2."""
    tf = _tf()
    a_c, a_g = _unrolled(a_c), _unrolled(a_g)
    count = tf.cast(tf.size(a_c), tf.float32)
    return tf.reduce_sum(tf.square(a_c - a_g)) / (4.0 * count)


def gram_matrix(a):
    """G = A^T A (nC x nC) of the activations unrolled to A (nH nW x nC)."""
    tf = _tf()
    a = _unrolled(a)
    return tf.matmul(a, a, transpose_a=True)


def layer_style_cost(a_s, a_g):
    """1 / (4 nC^2 (nH nW)^2) sum (G_S - G_G)^2."""
    tf = _tf()
    a_s = _unrolled(a_s)
    positions, channels = (tf.cast(d, tf.float32) for d in tf.unstack(tf.shape(a_s)))
    diff = gram_matrix(a_s) - gram_matrix(a_g)
    return tf.reduce_sum(tf.square(diff)) / (4.0 * channels**2 * positions**2)


def style_cost(style_acts: Sequence, generated_acts: Sequence, weights: Sequence[float]):
    """sum_l lambda_l J_style^l over the style layers."""
    if len(style_acts) != len(generated_acts):
        raise InputError(f"{len(style_acts)} style activations but {len(generated_acts)} generated")
    _check_weight_count(len(weights), len(style_acts))
    return sum(
        w * layer_style_cost(s, g)
        for s, g, w in zip(style_acts, generated_acts, weights, strict=True)
    )


def total_cost(j_content, j_style, alpha: float, beta: float):
    """J(G) = alpha J_content + beta J_style."""
    return alpha * j_content + beta * j_style


# --------------------------------------------------------------------------- loss networks


@dataclass
class LossNetwork:
    """A Keras model from a (1, H, W, 3) image in [0, 1] to one output per named layer."""

    model: object
    content_layer: str
    style_layers: tuple[str, ...]
    description: str

    def activations(self, image) -> dict:
        outputs = self.model(image, training=False)
        names = (self.content_layer, *self.style_layers)
        return dict(zip(names, outputs, strict=True))


def _layer_list(names: Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    return tuple(names) if names else tuple(default)


def random_multiscale_net(size: int, seed: int = 0):
    """The offline loss network: random ReLU filters of several sizes, at two scales."""
    from mobilecv._tf import get_keras

    K = get_keras()
    image = K.Input((size, size, 3), name="image")
    centred = K.layers.Rescaling(1.0, offset=-0.5, name="centre")(image)
    pooled = K.layers.AveragePooling2D(2, name="half")(centred)
    outputs = []
    for scale, x in (("full", centred), ("half", pooled)):
        for k in RANDOM_KERNELS:
            init = K.initializers.HeNormal(seed=seed * 100 + k + (50 if scale == "half" else 0))
            conv = K.layers.Conv2D(
                RANDOM_FILTERS,
                k,
                padding="same",
                activation="relu",
                kernel_initializer=init,
                name=f"random_{scale}_k{k}",
            )
            outputs.append(conv(x))
    return K.Model(image, outputs, name="random_multiscale")


def _random_layers() -> tuple[str, tuple[str, ...]]:
    style = tuple(f"random_{s}_k{k}" for s in ("full", "half") for k in RANDOM_KERNELS)
    return f"random_full_k{RANDOM_KERNELS[0]}", style


def _with_average_pooling(model):
    """The same network with every max pooling replaced by an average pooling."""
    from mobilecv._tf import get_keras

    K = get_keras()

    def swap(layer):
        kind = type(layer).__name__
        if kind.startswith("MaxPooling"):
            config = layer.get_config()
            return getattr(K.layers, kind.replace("Max", "Average")).from_config(config)
        return layer.__class__.from_config(layer.get_config())

    clone = K.models.clone_model(model, clone_function=swap)
    clone.set_weights(model.get_weights())
    return clone


def _trunk(network: str, size: int, weights: str | None, width: float):
    """The network without its classifier: a registered name, or a model file."""
    import mobilecv

    if Path(network).suffix in MODEL_SUFFIXES:
        from mobilecv.modelio import load_model

        if weights:
            raise InputError("--weights applies to a registered network, not to a model file")
        return load_model(network)
    if network not in mobilecv.list_models():
        raise InputError(
            f"network must be {RANDOM!r}, a registered model or a .keras/.h5 file; got {network!r}"
        )
    return mobilecv.build(network, include_top=False, resolution=size, width=width, weights=weights)


def _default_layers(network: str, trunk) -> tuple[str, tuple[str, ...]]:
    if network in ("vgg16", "vgg19"):
        return VGG_CONTENT, VGG_STYLE
    from mobilecv.features import trunk_features

    maps = trunk_features(trunk)
    if not maps:
        raise InputError(f"{network} has no feature maps to take style from")
    content = next((f.layer for f in maps if f.stride == 8), maps[0].layer)
    return content, tuple(f.layer for f in maps)


def _feature_model(trunk, content: str, style: tuple[str, ...]):
    from mobilecv._tf import get_keras, is_keras3_model

    K = get_keras("keras3" if is_keras3_model(trunk) else "tf_keras")
    known = [layer.name for layer in trunk.layers]
    unknown = [name for name in (content, *style) if name not in known]
    if unknown:
        convs = [layer.name for layer in trunk.layers if "Conv" in type(layer).__name__]
        raise InputError(
            f"no layer {', '.join(unknown)} in {trunk.name}; its convolutions: {', '.join(convs)}"
        )
    outputs = [trunk.get_layer(name).output for name in (content, *style)]
    return K.Model(trunk.inputs, outputs, name=f"{trunk.name}_style")


def _preprocessor(preprocess: Preprocess, network: str, weights: str | None) -> Callable:
    if preprocess == Preprocess.AUTO:
        vgg = network in ("vgg16", "vgg19")
        preprocess = Preprocess.CAFFE if vgg and weights else Preprocess.UNIT
    if preprocess == Preprocess.UNIT:
        return lambda x: x
    tf = _tf()
    mean = tf.constant(CAFFE_MEAN_BGR, tf.float32)
    return lambda x: x[..., ::-1] * 255.0 - mean


def loss_network(
    network: str = RANDOM,
    *,
    size: int,
    content_layer: str | None = None,
    style_layers: Sequence[str] | None = None,
    weights: str | None = None,
    pooling: str | Pooling = Pooling.MAX,
    preprocess: str | Preprocess = Preprocess.AUTO,
    seed: int = 0,
    width: float = 1.0,
) -> LossNetwork:
    """The loss network (see the module docstring) with its content and style layers;
    ``width`` scales a registered network (pretrained weights need 1)."""
    pooling = parse_choice(Pooling, pooling, "pooling")
    preprocess = parse_choice(Preprocess, preprocess, "preprocess")
    if network == RANDOM:
        if weights:
            raise InputError("--weights applies to a registered network, not to 'random'")
        trunk, (content, style) = random_multiscale_net(size, seed), _random_layers()
    else:
        trunk = _trunk(network, size, weights, width)
        content, style = _default_layers(network, trunk)
    if pooling == Pooling.AVG:
        trunk = _with_average_pooling(trunk)
    content = content_layer or content
    style = _layer_list(style_layers, style)
    features = _feature_model(trunk, content, style)
    feed = _preprocessor(preprocess, network, weights)
    model = _Fed(features, feed)
    if network == RANDOM:
        description = f"random multi-scale filters (seed {seed})"
    else:
        own = "its own weights" if Path(network).suffix in MODEL_SUFFIXES else "random weights"
        source = Path(weights).name if weights else own
        description = f"{network} ({source}), {pooling} pooling"
    return LossNetwork(model, content, style, description)


class _Fed:
    """A feature model behind a preprocessing function (a plain callable, not a layer)."""

    def __init__(self, features, feed: Callable):
        self.features, self.feed = features, feed

    def __call__(self, image, training: bool = False):
        outputs = self.features(self.feed(image), training=training)
        return outputs if isinstance(outputs, list | tuple) else [outputs]


# --------------------------------------------------------------------------- images


def load_image(spec: str) -> np.ndarray:
    """A sample name (Sample) or an image file, as RGB uint8."""
    if spec in {s.value for s in Sample}:
        from mobilecv.data import assets

        if spec == Sample.STARRY_NIGHT:
            return assets._read_image(assets.STARRY_NIGHT)[..., :3]
        image = assets.background(spec)
    elif Path(spec).is_file():
        from mobilecv.fileio import read_image_rgb

        image = read_image_rgb(spec)
    else:
        samples = ", ".join(s.value for s in Sample)
        raise InputError(f"{spec!r} is neither an image file nor a sample ({samples})")
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def square(image: np.ndarray, size: int) -> np.ndarray:
    """The centre square of ``image`` resized to size x size, float32 in [0, 1]."""
    from PIL import Image

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(np.ascontiguousarray(image[top : top + side, left : left + side]))
    resized = crop.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.float32) / 255.0


# --------------------------------------------------------------------------- optimisation


@dataclass
class StyleResult:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    losses: list[float]  # J(G) after each step
    gram_start: dict[str, float]  # unweighted layer style cost of G against S, before
    gram_end: dict[str, float]  # ... and after the optimisation
    content_distance: float  # J_content(C, G) at the end
    style_content_distance: float  # J_content(C, S): the style image's own
    network: str
    seconds: float
    settings: dict = field(default_factory=dict)

    def gram_drop(self) -> dict[str, float]:
        """Fraction of each style layer's Gram distance removed (1 = all of it)."""
        return {k: 1.0 - self.gram_end[k] / self.gram_start[k] for k in self.gram_start}

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("image")
        data["gram_drop"] = self.gram_drop()
        data["steps"] = len(self.losses)
        data["final_loss"] = self.losses[-1] if self.losses else None
        return data


@dataclass
class _Targets:
    """The fixed activations: the content image's at the content layer, the style
    image's Gram inputs at the style layers."""

    content: object
    style: list

    @classmethod
    def of(cls, net: LossNetwork, content, style) -> _Targets:
        a_c, a_s = net.activations(content), net.activations(style)
        return cls(a_c[net.content_layer], [a_s[name] for name in net.style_layers])


def _costs(net: LossNetwork, targets: _Targets, image, *, weights, alpha, beta):
    acts = net.activations(image)
    j_content = content_cost(targets.content, acts[net.content_layer])
    j_style = style_cost(targets.style, [acts[n] for n in net.style_layers], weights)
    return total_cost(j_content, j_style, alpha, beta)


def _distances(net: LossNetwork, targets: _Targets, image) -> tuple[dict[str, float], float]:
    acts = net.activations(image)
    grams = {
        name: float(layer_style_cost(s, acts[name]))
        for name, s in zip(net.style_layers, targets.style, strict=True)
    }
    return grams, float(content_cost(targets.content, acts[net.content_layer]))


def _adam(loss_of: Callable, start: np.ndarray, steps: int, learning_rate: float, tick):
    from mobilecv._tf import get_keras

    tf = _tf()
    image = tf.Variable(start[None])
    optimizer = get_keras().optimizers.Adam(learning_rate)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_of(image)
        optimizer.apply_gradients([(tape.gradient(loss, image), image)])
        image.assign(tf.clip_by_value(image, 0.0, 1.0))
        return loss

    for _ in range(steps):
        tick(float(step()))
    return image.numpy()[0]


def _lbfgs(loss_of: Callable, start: np.ndarray, steps: int, tick):
    from scipy.optimize import minimize

    tf = _tf()
    shape = (1, *start.shape)

    @tf.function
    def value_and_grad(flat):
        image = tf.reshape(flat, shape)
        with tf.GradientTape() as tape:
            tape.watch(image)
            loss = loss_of(image)
        return loss, tf.reshape(tape.gradient(loss, image), [-1])

    def fun(x):
        loss, grad = value_and_grad(tf.constant(x, tf.float32))
        return float(loss), grad.numpy().astype(np.float64)

    result = minimize(
        fun,
        start.ravel().astype(np.float64),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, 1.0)] * start.size,
        options={"maxiter": steps},
        callback=lambda intermediate_result: tick(float(intermediate_result.fun)),
    )
    return result.x.reshape(start.shape).astype(np.float32)


def stylize(
    content: np.ndarray,
    style: np.ndarray,
    net: LossNetwork,
    *,
    style_weights: Sequence[float] | None = None,
    alpha: float = ALPHA,
    beta: float = BETA,
    steps: int = 200,
    learning_rate: float = 0.02,
    optimizer: str | Optimizer = Optimizer.ADAM,
    noise: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> StyleResult:
    """Optimise G's pixels from the content image plus uniform noise in [-noise, noise].

    ``content`` and ``style`` are (H, W, 3) float images in [0, 1] of the same size;
    ``style_weights`` (lambda) default to equal weights summing to 1.
    """
    optimizer = parse_choice(Optimizer, optimizer, "optimizer")
    weights = _style_weights(style_weights, len(net.style_layers))
    _check_pair(content, style)
    targets = _Targets.of(net, content[None], style[None])
    start = _noisy(content, noise, seed)
    gram_start, _ = _distances(net, targets, start[None])
    began = time.perf_counter()
    loss_of = partial(_costs, net, targets, weights=weights, alpha=alpha, beta=beta)
    image, losses = _optimise(loss_of, start, optimizer, steps, learning_rate, progress)
    seconds = round(time.perf_counter() - began, 2)
    gram_end, content_distance = _distances(net, targets, image[None])
    _, style_content = _distances(net, targets, style[None])
    settings = dict(
        alpha=alpha,
        beta=beta,
        optimizer=str(optimizer),
        learning_rate=learning_rate,
        noise=noise,
        seed=seed,
        size=content.shape[0],
        content_layer=net.content_layer,
        style_layers=list(net.style_layers),
        style_weights=weights,
    )
    return StyleResult(
        image,
        losses,
        gram_start,
        gram_end,
        content_distance,
        style_content,
        network=net.description,
        seconds=seconds,
        settings=settings,
    )


def _noisy(content: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(content + rng.uniform(-noise, noise, content.shape), 0, 1).astype(np.float32)


def _optimise(loss_of: Callable, start, optimizer: Optimizer, steps, learning_rate, progress):
    """The optimised image and J(G) after each step, with a progress bar."""
    from mobilecv.progress import Progress

    losses: list[float] = []
    with Progress("stylizing", total=steps, unit="step", enabled=progress) as bar:

        def tick(loss: float) -> None:
            losses.append(loss)
            bar.update(note=f"J {loss:.4g}")

        if optimizer == Optimizer.ADAM:
            image = _adam(loss_of, start, steps, learning_rate, tick)
        else:
            image = _lbfgs(loss_of, start, steps, tick)
    return image, losses


def _check_weight_count(weights: int, layers: int) -> None:
    if weights != layers:
        raise InputError(f"{weights} style weights for {layers} style layers: give one per layer")


def _style_weights(weights: Sequence[float] | None, layers: int) -> list[float]:
    if weights is None:
        return [1.0 / layers] * layers
    _check_weight_count(len(weights), layers)
    if any(w < 0 for w in weights):
        raise InputError("style weights must be >= 0")
    return [float(w) for w in weights]


def _check_pair(content: np.ndarray, style: np.ndarray) -> None:
    if content.shape != style.shape or content.ndim != 3 or content.shape[-1] != 3:
        raise InputError(
            f"content and style must be RGB images of one size; got {content.shape}, {style.shape}"
        )


# --------------------------------------------------------------------------- outputs


def save_png(image: np.ndarray, path, force: bool = False) -> Path:
    """A float [0, 1] RGB image as PNG, written atomically."""
    from PIL import Image

    from mobilecv.fileio import atomic_path

    pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    with atomic_path(path, force=force) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return Path(path)


def save_loss_curve(losses: Sequence[float], path, title: str = "", force: bool = False) -> Path:
    """J(G) per step on a log scale, as PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mobilecv.fileio import atomic_path

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, len(losses) + 1), losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("J(G) = alpha J_content + beta J_style")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path, force=force) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)
