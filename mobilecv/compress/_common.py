"""Helpers shared by the compression techniques: support tables, cloning, measurement."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from mobilecv._tf import get_keras, is_keras3_model
from mobilecv.errors import InputError

# Layers with weights that no technique touches but that may sit in any model.
NEUTRAL_WEIGHTED = ("BatchNormalization", "LayerNormalization", "Normalization")


def require_tf_keras(model, technique: str) -> None:
    if is_keras3_model(model):
        raise InputError(
            f"{technique}: tensorflow-model-optimization works only on tf_keras models; "
            "build the model with keras='tf_keras' (the default) or load it with tf_keras"
        )


def unwrap(layer):
    """The user layer inside a tfmot wrapper (pruning, clustering, quantize), else the layer."""
    wrapper = get_keras("tf_keras").layers.Wrapper
    while isinstance(layer, wrapper):
        layer = layer.layer
    return layer


def check_supported(
    model, technique: str, table: Mapping[str, tuple[str, ...]], extra_ok: tuple[str, ...] = ()
) -> None:
    """Raise naming the first layer that has weights but no entry in the technique's table."""
    for layer in model.layers:
        kind = type(unwrap(layer)).__name__
        if (
            kind in table
            or kind in extra_ok
            or kind in NEUTRAL_WEIGHTED
            or not unwrap(layer).weights
        ):
            continue
        supported = ", ".join(sorted(table))
        raise InputError(
            f"{technique}: layer {layer.name!r} ({kind}) is not supported; {technique} supports {supported}"
        )


def clone(model, fn: Callable):
    """tf_keras clone_model keeping input layers as they are (and the model's info)."""
    from mobilecv.modelinfo import carry

    K = get_keras("tf_keras")

    def _fn(layer):
        if type(layer).__name__ == "InputLayer":
            return layer.__class__.from_config(layer.get_config())
        return fn(layer)

    return carry(model, K.models.clone_model(model, clone_function=_fn))


def copy_layer(layer):
    """A new layer with the same config and (copied, not shared) weights."""
    fresh = layer.__class__.from_config(layer.get_config())
    if layer.weights:
        fresh.build(layer.input_shape)
        fresh.set_weights(layer.get_weights())
    return fresh


def kernels(
    model, table: Mapping[str, tuple[str, ...]], names: set[str] | None = None
) -> dict[str, np.ndarray]:
    """Current values of the table's weights, per layer name (through any wrapper)."""
    out = {}
    for layer in model.layers:
        inner = unwrap(layer)
        attrs = table.get(type(inner).__name__, ())
        if not attrs or (names is not None and inner.name not in names):
            continue
        for attr in attrs:
            var = getattr(inner, attr, None)
            if not hasattr(var, "assign"):
                # QAT wrappers replace the attribute with a fake-quant tensor; read the variable.
                matches = [w for w in layer.weights if w.name.split("/")[-1].split(":")[0] == attr]
                var = matches[0] if matches else None
            if var is not None:
                out[inner.name] = np.asarray(var.numpy())
    return out


def sparsity_of(arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {name: float(np.mean(a == 0)) for name, a in arrays.items()}


def overall_sparsity(arrays: Mapping[str, np.ndarray]) -> float:
    total = sum(a.size for a in arrays.values())
    return float(sum(int(np.sum(a == 0)) for a in arrays.values()) / total) if total else 0.0


def unique_count(a: np.ndarray, rel_tol: float = 1e-6) -> int:
    """Distinct values, merging those within rel_tol of the kernel's largest magnitude.

    CQAT writes centroid + (w - stop_gradient(w)) back into the kernel, which is the
    centroid up to float round-off; exact np.unique would count that noise as values.
    """
    a = np.asarray(a, dtype=np.float64)
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    if scale == 0.0:
        return int(a.size > 0)
    return int(np.unique(np.round(a / (scale * rel_tol))).size)


def unique_per_channel(a: np.ndarray) -> int:
    """Largest number of distinct values in one output channel (last axis) of a kernel.

    tfmot's CQAT keeps Conv2D clusters per output channel: each channel keeps <= K
    values but trains its own centroids, so the whole kernel can hold up to K x C.
    """
    a = np.asarray(a)
    if a.ndim < 2:
        return unique_count(a)
    return max(unique_count(a[..., c]) for c in range(a.shape[-1]))


def unique_counts(arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
    return {name: unique_count(a) for name, a in arrays.items()}
