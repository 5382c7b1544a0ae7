"""Fast style transfer (Johnson, Alahi & Fei-Fei 2016): a feed-forward network
(mobilecv.models.stylizer) trained for one style image against the perceptual loss of
mobilecv.style, then run in one pass per photo (on a phone: its .tflite).

Training minimises, over random crops C of the content photos (scikit-image's astronaut,
chelsea, coffee and scikit-learn's china, flower by default; a crop of random side, resized
to ``crop`` pixels and randomly mirrored),

    alpha J_content(C, f(C)) + beta J_style(S, f(C))

with the cost functions of mobilecv.style on one of its loss networks (the offline random
multi-scale net by default, a VGG19 with ``--weights``, or a model file). S is the style
image, centre-square at ``crop`` pixels, so its Gram matrices and those of the output have
one size. The style cost is taken per image and averaged over the batch (a batch's Gram
matrix would mix its images' statistics).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from mobilecv import style as st
from mobilecv.errors import InputError

CONTENT_SAMPLES = (
    st.Sample.ASTRONAUT,
    st.Sample.CHELSEA,
    st.Sample.COFFEE,
    st.Sample.CHINA,
    st.Sample.FLOWER,
)
# A crop's side is drawn from [MIN_CROP_FRACTION, 1] of the photo's shorter side.
MIN_CROP_FRACTION = 0.3
# Measured on the random loss network (128-px crops, width 0.25): with the still-image
# ratio alpha / beta = 1e-3 the network paints strokes over the content; 1e-2 keeps edges.
ALPHA, BETA = 1.0, 1e2


@dataclass
class TrainResult:
    losses: list[float]  # the batch's perceptual loss after each step
    seconds: float
    network: str  # the loss network's description
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        data = asdict(self)
        data["steps"] = len(self.losses)
        data["first_loss"] = self.losses[0] if self.losses else None
        data["final_loss"] = _tail_mean(self.losses)
        return data


def _tail_mean(losses: Sequence[float], fraction: float = 0.1) -> float | None:
    """The mean of the last tenth of the losses: one batch's loss is noisy."""
    if not losses:
        return None
    tail = losses[-max(1, int(len(losses) * fraction)) :]
    return float(np.mean(tail))


# --------------------------------------------------------------------------- data


def content_photos(names: Sequence[str] = CONTENT_SAMPLES) -> list[np.ndarray]:
    """The content photos as RGB uint8 arrays (samples or image files)."""
    if not names:
        raise InputError("give at least one content photo")
    return [st.load_image(str(name)) for name in names]


def random_crops(photos: Sequence[np.ndarray], count: int, size: int, rng) -> np.ndarray:
    """``count`` crops of random photos, random side and place, resized to ``size`` and
    mirrored at random: (count, size, size, 3) float32 in [0, 1]."""
    from PIL import Image

    crops = np.empty((count, size, size, 3), np.float32)
    for i in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[:2]
        side = int(rng.uniform(MIN_CROP_FRACTION, 1.0) * min(h, w))
        side = max(side, min(size, h, w))
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        patch = Image.fromarray(np.ascontiguousarray(photo[top : top + side, left : left + side]))
        pixels = np.asarray(patch.resize((size, size), Image.Resampling.BILINEAR), np.float32)
        crops[i] = (pixels[:, ::-1] if rng.random() < 0.5 else pixels) / 255.0
    return crops


# --------------------------------------------------------------------------- loss


class PerceptualLoss:
    """alpha J_content + beta J_style on one loss network, for one style image."""

    def __init__(self, net: st.LossNetwork, style_image: np.ndarray, *, weights=None,
                 alpha: float = ALPHA, beta: float = BETA):  # fmt: skip
        self.net, self.alpha, self.beta = net, float(alpha), float(beta)
        self.weights = st._style_weights(weights, len(net.style_layers))
        acts = net.activations(np.asarray(style_image, np.float32)[None])
        self.style_targets = [acts[name] for name in net.style_layers]

    def __call__(self, content, generated):
        """The batch mean of the perceptual loss of ``generated`` for ``content``."""
        tf = st._tf()
        a_c = self.net.activations(content)[self.net.content_layer]
        acts = self.net.activations(generated)
        j_content = st.content_cost(a_c, acts[self.net.content_layer])
        per_image = [
            st.style_cost(
                self.style_targets,
                [acts[n][i : i + 1] for n in self.net.style_layers],
                self.weights,
            )  # fmt: skip
            for i in range(int(generated.shape[0]))
        ]
        j_style = tf.add_n(per_image) / float(len(per_image))
        return st.total_cost(j_content, j_style, self.alpha, self.beta)


# --------------------------------------------------------------------------- training


def train_stylizer(
    model,
    style_image: np.ndarray,
    net: st.LossNetwork,
    photos: Sequence[np.ndarray],
    *,
    steps: int = 400,
    batch: int = 4,
    learning_rate: float = 2e-3,
    style_weights: Sequence[float] | None = None,
    alpha: float = ALPHA,
    beta: float = BETA,
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` (a stylizer built at the crop size) in place with Adam, on
    ``batch`` fresh random crops per step."""
    from mobilecv._tf import get_keras
    from mobilecv.progress import Progress

    _check_training(model, style_image, steps, batch)
    tf = st._tf()
    crop = int(model.inputs[0].shape[1])
    loss_of = PerceptualLoss(net, style_image, weights=style_weights, alpha=alpha, beta=beta)
    optimizer = get_keras().optimizers.Adam(learning_rate)

    @tf.function
    def step(content):
        with tf.GradientTape() as tape:
            loss = loss_of(content, _image(model(content, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    rng = np.random.default_rng(seed)
    losses: list[float] = []
    began = time.perf_counter()
    with Progress("training stylizer", total=steps, unit="step", enabled=progress) as bar:
        for _ in range(steps):
            losses.append(float(step(tf.constant(random_crops(photos, batch, crop, rng)))))
            bar.update(note=f"loss {losses[-1]:.4g}")
    if not np.isfinite(losses).all():
        from mobilecv.errors import RunFailed

        raise RunFailed(
            f"the stylizer's training diverged (loss {losses[-1]}): lower the learning rate"
        )
    settings = dict(steps=steps, batch=batch, crop=crop, learning_rate=learning_rate,
                    alpha=alpha, beta=beta, seed=seed, content_layer=net.content_layer,
                    style_layers=list(net.style_layers), style_weights=loss_of.weights)  # fmt: skip
    return TrainResult(losses, round(time.perf_counter() - began, 2), net.description, settings)


def _check_training(model, style_image: np.ndarray, steps: int, batch: int) -> None:
    if steps < 1 or batch < 1:
        raise InputError(f"steps and batch must be >= 1; got {steps}, {batch}")
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    if shape != tuple(style_image.shape):
        raise InputError(f"the style image is {style_image.shape}; the stylizer takes {shape}")


def _image(outputs):
    return outputs["image"] if isinstance(outputs, dict) else outputs


# --------------------------------------------------------------------------- use


def at_resolution(model, resolution: int):
    """The same trained stylizer with a ``resolution`` x ``resolution`` input (a conv net's
    weights do not depend on the input size): rebuilt from its recorded knobs."""
    import mobilecv
    from mobilecv.modelinfo import get_info

    source = dict(get_info(model).source)
    name = source.pop("model", None)
    if name is None:
        raise InputError("the model records no registered builder to rebuild it from")
    knobs = {k: v for k, v in source.items() if k not in ("classes", "include_top", "weights")}
    knobs["resolution"] = int(resolution)
    copy = mobilecv.build(name, **knobs)
    copy.set_weights(model.get_weights())
    return copy


def stylize_images(model, images: np.ndarray) -> np.ndarray:
    """The model's images for a batch of inputs in [0, 1] (inference mode)."""
    return np.asarray(_image(model(np.asarray(images, np.float32), training=False)))
