"""What convnets learn (Zeiler & Fergus 2014): top-9 patches, deconvnet projections and
feature-map grids of a trained model's units.

- **top-9 patches**: for a unit (a channel of a layer), the 9 images of the data set whose
  strongest activation of that unit is largest (one position per image, as in the paper's
  figure 2), each cropped to the receptive field of the unit at that position
  (:func:`mobilecv.profiling.receptive_fields`, :meth:`mobilecv.arch.Field.span`), the part
  outside the image filled with grey.
- **deconvnet**: the chosen activation alone (every other activation of the layer set to
  zero) projected back to pixels: through each layer in reverse, max-unpooling through the
  switches recorded in the forward pass, ReLU, and the transposed filters. Biases are
  dropped, as in the paper; a batch normalisation is its per-channel scale (inference
  mode). Supported layers: :data:`DECONV_LAYERS` in a chain (no branches); anything else is
  an InputError naming the layer.
- **feature maps**: every channel of a layer for one image, each scaled to its own maximum.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilecv.errors import InputError

TOP = 9  # the paper's nine
DEFAULT_UNITS = 8  # units shown per layer when none are named: the most active ones
DEFAULT_SAMPLES = 500
MAX_MAPS = 64  # feature maps shown per layer
MIN_CELL = 48  # pixels: smaller patches are scaled up (nearest) to at least this
PAD_GREY = 0.5  # where a receptive field leaves the image
# The layers the deconvnet inverts (Conv2D with a relu or linear activation).
DECONV_LAYERS = (
    "Conv2D",
    "ReLU",
    "Activation",
    "MaxPooling2D",
    "BatchNormalization",
    "Dropout",
    "ZeroPadding2D",
    "Rescaling",
)
_RELU_LIKE = ("relu", "linear")


# --------------------------------------------------------------------------- data


def load_images(data: str, samples: int, split: str = "test") -> np.ndarray:
    """``samples`` uint8 images (N, H, W, C) of a mobilecv data set: any name or path
    :func:`mobilecv.data.load_arrays` takes, or ``scenes`` (generated scenes)."""
    if samples < 1:
        raise InputError(f"samples must be >= 1, got {samples}")
    if data == "scenes":
        from mobilecv.data.scenes import generate

        return generate(split, samples).images
    from mobilecv.data.datasets import load_arrays

    return load_arrays(data, split, limit=samples).x


def model_images(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fed, shown): the images as the model takes them (its size, channels and input
    range), and the same in [0, 1] for the pictures."""
    from mobilecv.data.datasets import prepare_images
    from mobilecv.modelinfo import get_info

    shape = model.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4:
        raise InputError(f"visualize needs an image model (N, H, W, C input); got {shape}")
    size = None if None in shape[1:3] else (shape[1], shape[2])
    fed = prepare_images(images, size, shape[3], get_info(model).input_range)
    shown = prepare_images(images, size, shape[3])
    return np.asarray(fed, np.float32), np.asarray(shown, np.float32)


# --------------------------------------------------------------------------- activations


def find_layer(model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        maps = [layer.name for layer in model.layers if _is_feature_map(layer)]
        shown = ", ".join(maps[:12]) + (", ..." if len(maps) > 12 else "")
        raise InputError(
            f"no layer {name!r} in the model; layers with feature maps: {shown}"
        ) from None


def _is_feature_map(layer) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):
        return False


def activations(model, layer, fed: np.ndarray, batch: int = 64) -> np.ndarray:
    """The layer's output (N, H, W, C) for the fed images."""
    from mobilecv._tf import get_keras, is_keras3_model

    if not _is_feature_map(layer):
        raise InputError(f"layer {layer.name!r} has no feature maps (its output is not N, H, W, C)")
    K = get_keras("keras3" if is_keras3_model(model) else "tf_keras")
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = K.Model(inputs, layer.output)
    parts = [
        np.asarray(probe(fed[i : i + batch], training=False)) for i in range(0, len(fed), batch)
    ]
    return np.concatenate(parts)


def most_active_units(acts: np.ndarray, count: int = DEFAULT_UNITS) -> list[int]:
    """The ``count`` channels whose largest activation over the data is largest."""
    peak = acts.reshape(-1, acts.shape[-1]).max(axis=0)
    return sorted(int(u) for u in np.argsort(-peak, kind="stable")[:count])


def check_units(units: Sequence[int], channels: int, layer: str) -> list[int]:
    bad = [u for u in units if not 0 <= u < channels]
    if bad:
        raise InputError(f"layer {layer!r} has units 0..{channels - 1}; got {bad}")
    return list(units)


@dataclass(frozen=True)
class Hit:
    """A unit's strongest activation in one image, and where it is."""

    image: int
    y: int
    x: int
    value: float


def top_hits(acts: np.ndarray, unit: int, k: int = TOP) -> list[Hit]:
    """The ``k`` images whose strongest activation of ``unit`` is largest (one hit each)."""
    maps = acts[..., unit].reshape(len(acts), -1)
    where, best = maps.argmax(axis=1), maps.max(axis=1)
    order = np.argsort(-best, kind="stable")[:k]
    width = acts.shape[2]
    return [Hit(int(i), *divmod(int(where[i]), width), float(best[i])) for i in order]


# --------------------------------------------------------------------------- patches


def unit_fields(model, layer):
    """The (row, column) receptive fields of a layer's units; InputError where unknown."""
    from mobilecv.profiling import receptive_fields

    fields = receptive_fields(model).get(layer.name)
    if fields is None or len(fields) != 2:
        raise InputError(f"the receptive field of layer {layer.name!r} is unknown")
    return fields


def crop_patch(image: np.ndarray, fields, y: int, x: int, fill: float = PAD_GREY) -> np.ndarray:
    """The pixels unit (y, x) sees: its receptive field, ``fill`` where it leaves the image."""
    (top, bottom), (left, right) = fields[0].span(y), fields[1].span(x)
    top, left = math.floor(top), math.floor(left)
    bottom, right = math.ceil(bottom), math.ceil(right)
    height, width = image.shape[:2]
    out = np.full((bottom - top + 1, right - left + 1, image.shape[2]), fill, image.dtype)
    y0, y1 = max(top, 0), min(bottom, height - 1)
    x0, x1 = max(left, 0), min(right, width - 1)
    if y0 <= y1 and x0 <= x1:
        out[y0 - top : y1 - top + 1, x0 - left : x1 - left + 1] = image[y0 : y1 + 1, x0 : x1 + 1]
    return out


# --------------------------------------------------------------------------- deconvnet


def deconv_chain(model, layer) -> list:
    """The layers from the input to ``layer``; an InputError for a branch or a layer the
    deconvnet cannot invert."""
    from mobilecv.profiling import _as_list

    chain, previous = [], id(_as_list(model.inputs)[0])
    for current in model.layers:
        if type(current).__name__ == "InputLayer":
            continue
        inputs = _as_list(current.input)
        if len(inputs) != 1 or id(inputs[0]) != previous:
            raise InputError(
                f"the deconvnet needs a chain of layers; {current.name!r} does not take the "
                "previous layer's output (a branch or a merge): use --no-deconv"
            )
        _check_invertible(current)
        chain.append(current)
        previous = id(current.output)
        if current is layer:
            return chain
    raise InputError(f"layer {layer.name!r} is not on the model's chain")


def _activation_name(layer) -> str:
    activation = layer.get_config().get("activation", "linear")
    return activation if isinstance(activation, str) else str(activation)


def _check_invertible(layer) -> None:
    kind = type(layer).__name__
    config = layer.get_config()
    supported = kind in DECONV_LAYERS
    if kind in ("Conv2D", "Activation") and _activation_name(layer) not in _RELU_LIKE:
        supported = False
    if kind == "Conv2D" and (config.get("groups", 1) != 1 or _channels_first(config)):
        supported = False
    if not supported:
        raise InputError(
            f"the deconvnet cannot invert layer {layer.name!r} ({kind}"
            f"{', ' + _activation_name(layer) if 'activation' in config else ''}); it supports "
            f"{', '.join(DECONV_LAYERS)} with relu or linear activations: use --no-deconv"
        )


def _channels_first(config: dict) -> bool:
    return config.get("data_format") == "channels_first"


def deconvnet(model, layer, fed: np.ndarray, unit: int, hits: Sequence[Hit]) -> np.ndarray:
    """Each hit's activation of ``unit`` alone, projected back to pixels: (len(hits), H, W, C)."""
    from mobilecv._tf import tf

    T = tf()
    chain = deconv_chain(model, layer)
    x = T.constant(fed[[h.image for h in hits]])
    inputs = []
    for current in chain:
        inputs.append(x)
        x = current(x, training=False)
    mask = np.zeros(x.shape, np.float32)
    for row, hit in enumerate(hits):
        mask[row, hit.y, hit.x, unit] = 1.0
    signal = x * mask
    for current, x_in in zip(reversed(chain), reversed(inputs), strict=True):
        signal = _project(current, x_in, signal)
    return np.asarray(signal)


def _project(layer, x_in, signal):
    """One layer of the deconvnet: the signal at the layer's output -> at its input."""
    from mobilecv._tf import tf

    T, kind = tf(), type(layer).__name__
    if kind in ("ReLU", "Activation"):
        return T.nn.relu(signal) if kind == "ReLU" or _activation_name(layer) == "relu" else signal
    if kind == "Conv2D":
        if _activation_name(layer) == "relu":
            signal = T.nn.relu(signal)
        return _transposed(lambda x: _convolve(layer, x), x_in, signal)
    # max-unpooling through the switches, a batch norm's scale, padding, dropout, rescaling:
    # each is the transpose of the layer's linear part at this input.
    return _transposed(lambda x: layer(x, training=False), x_in, signal)


def _convolve(layer, x):
    """The layer's convolution without bias or activation."""
    from mobilecv._tf import tf

    return tf().nn.convolution(
        x,
        layer.kernel,
        strides=list(layer.strides),
        padding=layer.padding.upper(),
        dilations=list(layer.dilation_rate),
    )


def _transposed(linear, x_in, signal):
    """The transpose (vector-Jacobian product) of ``linear`` at ``x_in`` applied to signal:
    the transposed filters of a convolution, the recorded switches of a max pooling."""
    from mobilecv._tf import tf

    T = tf()
    x_in = T.convert_to_tensor(x_in)
    with T.GradientTape() as tape:
        tape.watch(x_in)
        y = linear(x_in)
    return tape.gradient(y, x_in, output_gradients=T.cast(signal, y.dtype))


# --------------------------------------------------------------------------- pictures


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return (
        image[..., :3] if image.shape[-1] >= 3 else np.repeat(image.mean(-1, keepdims=True), 3, -1)
    )


def _scaled_up(image: np.ndarray, least: int = MIN_CELL) -> np.ndarray:
    factor = max(1, math.ceil(least / max(image.shape[:2])))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def tile(cells: Sequence[np.ndarray], columns: int, gap: int = 2) -> np.ndarray:
    """RGB cells (float [0, 1], any sizes) on a white grid, ``columns`` a row."""
    cells = [_scaled_up(_rgb(c)) for c in cells]
    h, w = max(c.shape[0] for c in cells), max(c.shape[1] for c in cells)
    rows = math.ceil(len(cells) / columns)
    grid = np.ones((rows * (h + gap) + gap, columns * (w + gap) + gap, 3), np.float32)
    for i, cell in enumerate(cells):
        top, left = gap + (i // columns) * (h + gap), gap + (i % columns) * (w + gap)
        grid[top : top + cell.shape[0], left : left + cell.shape[1]] = cell
    return grid


def signed_picture(values: np.ndarray) -> np.ndarray:
    """A deconvnet projection as a picture: 0 grey, scaled by its largest magnitude."""
    peak = float(np.abs(values).max())
    return np.clip(0.5 + 0.5 * values / peak, 0, 1) if peak > 0 else np.full_like(values, 0.5)


def map_picture(values: np.ndarray) -> np.ndarray:
    """A feature map as a picture: its own minimum black, its maximum white."""
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def feature_map_grid(acts: np.ndarray) -> np.ndarray:
    """Up to :data:`MAX_MAPS` channels of one image's activations (H, W, C) as a grid."""
    channels = min(acts.shape[-1], MAX_MAPS)
    cells = [map_picture(acts[..., c : c + 1]) for c in range(channels)]
    return tile(cells, columns=math.ceil(math.sqrt(channels)))


# --------------------------------------------------------------------------- one layer


@dataclass
class LayerView:
    """What one layer's units respond to, and the pictures written for it."""

    layer: str
    field: list[dict]  # per axis: size, jump, start
    units: list[int]
    top_activations: dict[int, list[float]]
    top_images: dict[int, list[int]]  # data-set index of each of the unit's top patches
    pictures: dict[str, str] = field(default_factory=dict)  # kind -> file name

    def to_json(self) -> dict:
        return {
            "layer": self.layer,
            "receptive_field": self.field,
            "units": self.units,
            "top_activations": {str(u): v for u, v in self.top_activations.items()},
            "top_images": {str(u): v for u, v in self.top_images.items()},
            "pictures": self.pictures,
        }


def file_stem(layer: str) -> str:
    return re.sub(r"[^\w.-]+", "_", layer)


@dataclass
class Pictures:
    """The grids of one layer, before they are written."""

    top9: np.ndarray
    maps: np.ndarray
    deconv: np.ndarray | None = None


def view_layer(model, layer, fed, shown, *, units, image_index, deconv, tick) -> tuple:
    """(LayerView, Pictures) of one layer."""
    acts = activations(model, layer, fed)
    units = check_units(units, acts.shape[-1], layer.name) if units else most_active_units(acts)
    fields = unit_fields(model, layer)
    if deconv:
        deconv_chain(model, layer)  # refuse before the work
    patches, projections, hits_of = [], [], {}
    for unit in units:
        hits = hits_of[unit] = top_hits(acts, unit)
        patches += [crop_patch(shown[h.image], fields, h.y, h.x) for h in hits]
        if deconv:
            back = deconvnet(model, layer, fed, unit, hits)
            projections += [
                signed_picture(crop_patch(b, fields, h.y, h.x, fill=0.0))
                for b, h in zip(back, hits, strict=True)
            ]
        tick()
    view = LayerView(
        layer=layer.name,
        field=[{"size": f.size, "jump": f.jump, "start": f.start} for f in fields],
        units=units,
        top_activations={u: [round(h.value, 6) for h in hits_of[u]] for u in units},
        top_images={u: [h.image for h in hits_of[u]] for u in units},
    )
    columns = min(TOP, len(acts))
    pictures = Pictures(
        top9=tile(patches, columns),
        maps=feature_map_grid(acts[image_index]),
        deconv=tile(projections, columns) if deconv else None,
    )
    return view, pictures


# --------------------------------------------------------------------------- the run


@dataclass
class Visualization:
    model: str
    data: str
    samples: int
    image_index: int
    layers: list[LayerView]
    index: str

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "data": self.data,
            "samples": self.samples,
            "image_index": self.image_index,
            "index": self.index,
            "layers": [v.to_json() for v in self.layers],
        }


def visualize(
    model_path: str,
    data: str,
    layers: Sequence[str],
    out_dir: str | Path,
    *,
    units: Sequence[int] | None = None,
    samples: int = DEFAULT_SAMPLES,
    image_index: int = 0,
    deconv: bool = True,
    force: bool = False,
    progress: bool = True,
) -> Visualization:
    """Top-9 patches, deconvnet projections and feature maps of ``layers`` of a model file
    on ``samples`` images of ``data``; PNG grids and index.md written to ``out_dir``."""
    from mobilecv.modelio import load_model
    from mobilecv.progress import Progress

    if not layers:
        raise InputError("name at least one layer (--layers L1,L2)")
    out = Path(out_dir)
    _check_outputs(out, layers, deconv, force)
    model = load_model(model_path)
    chosen = [find_layer(model, name) for name in layers]
    fed, shown = model_images(model, load_images(data, samples))
    if not 0 <= image_index < len(fed):
        raise InputError(f"--image must be in 0..{len(fed) - 1}, got {image_index}")
    views = []
    total = len(chosen) * (len(units) if units else DEFAULT_UNITS)
    with Progress("visualizing", total=total, unit="unit", enabled=progress) as bar:
        for layer in chosen:
            view, pictures = view_layer(
                model, layer, fed, shown, units=units, image_index=image_index,
                deconv=deconv, tick=lambda: bar.update(1),
            )  # fmt: skip
            view.pictures = _write_pictures(out, view.layer, pictures, force)
            views.append(view)
    index = _write_index(out, model_path, data, len(fed), image_index, views, force)
    return Visualization(str(model_path), data, len(fed), image_index, views, str(index))


def _picture_names(layer: str, deconv: bool) -> dict[str, str]:
    kinds = ("top9", "deconv", "maps") if deconv else ("top9", "maps")
    return {kind: f"{file_stem(layer)}_{kind}.png" for kind in kinds}


def _check_outputs(out: Path, layers: Sequence[str], deconv: bool, force: bool) -> None:
    from mobilecv.fileio import check_writable

    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out}: exists and is not a folder")
    check_writable(out / "index.md", force)
    for layer in layers:
        for name in _picture_names(layer, deconv).values():
            check_writable(out / name, force)


def _write_pictures(out: Path, layer: str, pictures: Pictures, force: bool) -> dict[str, str]:
    from mobilecv.style import save_png

    out.mkdir(parents=True, exist_ok=True)
    names = _picture_names(layer, pictures.deconv is not None)
    for kind, name in names.items():
        save_png(getattr(pictures, kind), out / name, force=force)
    return names


def _write_index(out, model_path, data, samples, image_index, views, force) -> Path:
    from mobilecv.fileio import write_text

    lines = [
        f"# What {Path(model_path).name} learned",
        "",
        f"Data: {data}, {samples} images. Each row is one unit (channel): the {TOP} images "
        "whose strongest activation of it is largest, cropped to the unit's receptive field "
        "(grey: outside the image), strongest first; the deconvnet row projects each of "
        "those activations alone back to pixels (Zeiler & Fergus 2014; grey is zero).",
        "",
    ]
    for view in views:
        sizes = "x".join(f"{f['size']:g}" for f in view.field)
        lines += [
            f"## {view.layer}",
            "",
            f"Receptive field {sizes} pixels; units {', '.join(map(str, view.units))}.",
            "",
        ]
        lines += [f"![{kind}]({name})\n" for kind, name in view.pictures.items()]
        lines.append(f"(maps: every channel for image {image_index}.)\n")
    return write_text(out / "index.md", "\n".join(lines), force=force)
