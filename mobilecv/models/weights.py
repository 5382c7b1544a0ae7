"""Loading weights written by keras.applications (or any Keras) into a mobilecv twin.

Sources: a model instance, a whole saved model (``.keras`` or full-model ``.h5``), or a
weights-only file (``save_weights`` ``.h5`` from tf_keras, ``.weights.h5`` from Keras 3).
Weights are matched by layer name first; layers whose names differ only by Keras's
auto-numbering (``normalization_3``) are then paired in order, by type and shapes.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict

import numpy as np

from mobilecv.errors import InputError, MissingFile


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _snake(name: str) -> str:
    # keras.src.utils.naming.to_snake_case: Conv2D -> conv2d, BatchNormalization -> batch_normalization
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def class_keys(layers) -> list[str]:
    """Keras 3 `.weights.h5` keys: snake-cased class name plus a per-class counter, in
    layer order (it does not store layer names)."""
    counts: dict[str, int] = {}
    keys = []
    for layer in layers:
        base = _snake(type(layer).__name__)
        n = counts.get(base, 0)
        counts[base] = n + 1
        keys.append(base if n == 0 else f"{base}_{n}")
    return keys


def _h5_weights(path: str) -> tuple[OrderedDict[str, list[np.ndarray]], bool]:
    """Per-layer weight lists from a weights file or a full-model .h5 file, and whether
    the keys are Keras 3 class keys rather than layer names."""
    import h5py

    out: OrderedDict[str, list[np.ndarray]] = OrderedDict()
    by_class = False
    with h5py.File(path, "r") as f:
        root = f.get("model_weights", f)
        if "layer_names" in root.attrs:  # tf_keras / legacy format
            for layer_name in root.attrs["layer_names"]:
                group = root[_decode(layer_name)]
                names = [_decode(n) for n in group.attrs.get("weight_names", [])]
                if names:
                    out[_decode(layer_name)] = [np.asarray(group[n]) for n in names]
        elif "layers" in root:  # Keras 3 .weights.h5
            by_class = True
            for layer_name, group in root["layers"].items():
                if "vars" in group and len(group["vars"]):
                    keys = sorted(group["vars"].keys(), key=int)
                    out[layer_name] = [np.asarray(group["vars"][k]) for k in keys]
        else:
            raise InputError(f"{path}: not a Keras weights file (no layer_names or layers group)")
    return out, by_class


def _model_weights(model) -> OrderedDict[str, list[np.ndarray]]:
    out: OrderedDict[str, list[np.ndarray]] = OrderedDict()
    for layer in _flat_layers(model):
        weights = layer.get_weights()
        if weights:
            out[layer.name] = weights
    return out


def _flat_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _flat_layers(layer)
        else:
            yield layer


def _read_source(source) -> tuple[OrderedDict[str, list[np.ndarray]], bool]:
    if not isinstance(source, (str, os.PathLike)):
        return _model_weights(source), False
    path = check_weights_file(source)
    if path.endswith(".keras"):
        from mobilecv.modelio import load_model

        return _model_weights(load_model(path)), False
    return _h5_weights(path)


def check_weights_file(source: str | os.PathLike) -> str:
    """The path of an existing .h5/.weights.h5/.keras file, or an InputError (cheap: the
    CLI calls it before building the model)."""
    path = os.fspath(source)
    if not os.path.exists(path):
        raise MissingFile(f"weights file not found: {path}")
    if os.path.isdir(path) or not path.endswith((".keras", ".h5", ".hdf5")):
        raise InputError(f"{path}: expected a .h5, .weights.h5 or .keras file")
    return path


def _shapes(weights: list[np.ndarray]) -> list[tuple]:
    return [tuple(w.shape) for w in weights]


def _assign(layer, weights: list[np.ndarray]) -> None:
    layer.set_weights(weights)
    # Keras 3 preprocessing layers (Normalization) cache derived tensors from their
    # variables; set_weights alone leaves the cache stale.
    if hasattr(layer, "finalize_state") and type(layer).__module__.startswith("keras."):
        layer.finalize_state()


def load_keras_applications_weights(model, source) -> int:
    """Copy weights from ``source`` into ``model``; return the number of layers set.

    Raises InputError when any weight-bearing layer of ``model`` is left without a match,
    so a silently half-loaded model cannot happen.
    """
    available, by_class = _read_source(source)
    layers = list(_flat_layers(model))
    keys = class_keys(layers) if by_class else [layer.name for layer in layers]
    targets = [(key, layer) for key, layer in zip(keys, layers, strict=True) if layer.weights]
    unmatched = []
    assigned = 0
    for key, layer in targets:
        src = available.get(key)
        if src is not None and _shapes(src) == _shapes(layer.get_weights()):
            _assign(layer, src)
            available.pop(key)
            assigned += 1
        else:
            unmatched.append(layer)
    # Pair the rest in order when shapes agree (auto-numbered names such as rescaling_2).
    leftovers = list(available.items())
    for layer in unmatched[:]:
        for i, (_, src) in enumerate(leftovers):
            if _shapes(src) == _shapes(layer.get_weights()):
                _assign(layer, src)
                leftovers.pop(i)
                unmatched.remove(layer)
                assigned += 1
                break
    if unmatched:
        names = ", ".join(layer.name for layer in unmatched[:5])
        raise InputError(
            f"{len(unmatched)} layer(s) found no weights of matching shape in the source "
            f"(first: {names}); is it the same architecture and width?"
        )
    return assigned


load_weights = load_keras_applications_weights
