"""Quantisation-aware training (Jacob et al., 2018) with tfmot's 8-bit scheme.

Three schemes: plain 8-bit QAT, PQAT (keeps pruning zeros) and CQAT (keeps the
cluster centroids, optionally also the zeros). tfmot has no QuantizeConfig for the
layers an EfficientNet needs:

- `Rescaling` / `Normalization` at the input and `Multiply` in squeeze-excite are
  rejected outright; `OutputQuantizeConfig` quantises just their output, which is
  what the TFLite kernels (MUL, and the affine ops the input scaling folds into)
  need to run in int8.
- A Conv2D/Dense with a *fused* swish (SE's first 1x1 conv) is accepted but only
  fake-quantised after the activation, so the converter cannot give the conv an
  int8 output and leaves CONV_2D in float. `split_fused_activations` rewrites such
  layers into linear layer + `Activation`, which tfmot quantises on both sides.
  relu6 fused into a conv is split for the same reason (tfmot rejects it there).

And tfmot starts every activation range at [-6, 6]; `calibrate_ranges` starts them from
data before the fine-tune (a regressed box needs them: see its docstring).
"""

from __future__ import annotations

import copy
import enum
import os

import numpy as np

from mobilecv._tf import get_keras
from mobilecv.compress._common import clone, copy_layer, require_tf_keras, unwrap
from mobilecv.errors import InputError
from mobilecv.modelinfo import carry

TECHNIQUE = "qat"


class QuantScheme(enum.StrEnum):
    DEFAULT = "default"  # 8-bit QAT
    PRUNE_PRESERVE = "pqat"  # sparsity-preserving
    CLUSTER_PRESERVE = "cqat"  # cluster-preserving
    SPARSE_CLUSTER_PRESERVE = "pcqat"  # cluster- and sparsity-preserving


class Handling(enum.StrEnum):
    TFMOT = "tfmot"  # tfmot's default 8-bit registry quantises it
    OUTPUT = "output"  # our OutputQuantizeConfig: quantise the output only


# The table of layers QAT supports, and who quantises each.
SUPPORTED_LAYERS: dict[str, Handling] = {
    **{
        name: Handling.TFMOT
        for name in (
            "Conv2D",
            "DepthwiseConv2D",
            "SeparableConv2D",
            "Conv2DTranspose",
            "Dense",
            "BatchNormalization",  # folded into the preceding conv by tfmot's transforms
            "ReLU",
            "LeakyReLU",
            "Activation",
            "Softmax",
            "Add",
            "Concatenate",
            "AveragePooling2D",
            "MaxPooling2D",
            "GlobalAveragePooling2D",
            "GlobalMaxPooling2D",
            "Reshape",
            "Flatten",
            "Dropout",
            "ZeroPadding2D",
            "Cropping2D",
            "UpSampling2D",
            "Permute",
        )
    },
    "Rescaling": Handling.OUTPUT,
    "Normalization": Handling.OUTPUT,
    "Multiply": Handling.OUTPUT,
}

# Activations fused into Conv2D/DepthwiseConv2D/Dense that must become their own layer.
SPLIT_ACTIVATIONS = ("swish", "silu", "relu6")
SPLIT_LAYERS = ("Conv2D", "DepthwiseConv2D", "Dense")


def _output_quantize_config_class():
    """Built lazily: the base class lives in tfmot, which imports TensorFlow."""
    global _OUTPUT_CONFIG
    if _OUTPUT_CONFIG is not None:
        return _OUTPUT_CONFIG
    import tensorflow_model_optimization as tfmot

    K = get_keras("tf_keras")
    quantizers = tfmot.quantization.keras.quantizers

    @K.utils.register_keras_serializable(package="mobilecv")
    class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        """Quantise only a layer's output (8-bit, asymmetric, moving-average range).

        With output=False nothing is quantised: for a layer that is the identity, so
        the converter folds it away and the next layer reads the input's scale.
        """

        def __init__(self, output: bool = True):
            self.output = output

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            if not self.output:
                return []
            return [
                quantizers.MovingAverageQuantizer(
                    num_bits=8, per_axis=False, symmetric=False, narrow_range=False
                )
            ]

        def get_config(self):
            return {"output": self.output}

    _OUTPUT_CONFIG = OutputQuantizeConfig
    return OutputQuantizeConfig


_OUTPUT_CONFIG = None


def custom_objects() -> dict:
    """Objects needed to load a saved QAT model (use with quantize_scope)."""
    cls = _output_quantize_config_class()
    return {"OutputQuantizeConfig": cls, "mobilecv>OutputQuantizeConfig": cls}


def check_supported(model) -> None:
    for layer in model.layers:
        inner = unwrap(layer)
        kind = type(inner).__name__
        if kind == "InputLayer" or kind in SUPPORTED_LAYERS:
            continue
        supported = ", ".join(sorted(SUPPORTED_LAYERS))
        raise InputError(
            f"{TECHNIQUE}: layer {layer.name!r} ({kind}) is not supported; {TECHNIQUE} supports {supported}"
        )


def _activation_name(layer) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "") if activation is not None else ""


def _replace_refs(node, old: str, new: str):
    if isinstance(node, list):
        if len(node) >= 3 and node[0] == old and isinstance(node[1], int):
            return [new, *node[1:]]
        return [_replace_refs(item, old, new) for item in node]
    return node


def split_fused_activations(model):
    """Rewrite Conv/Dense layers with a fused swish/relu6 into linear layer + Activation.

    Returns the model unchanged when there is nothing to split. Weights are copied by
    layer name, so the result computes the same function.
    """
    targets = [
        layer.name
        for layer in model.layers
        if type(layer).__name__ in SPLIT_LAYERS and _activation_name(layer) in SPLIT_ACTIVATIONS
    ]
    if not targets:
        return model
    K = get_keras("tf_keras")
    config = copy.deepcopy(model.get_config())
    if "layers" not in config or "output_layers" not in config:
        raise InputError(
            f"{TECHNIQUE}: {model.name!r} has fused {', '.join(SPLIT_ACTIVATIONS)} activations "
            "that must be split; rebuild it as a functional model"
        )
    taken = {layer["name"] for layer in config["layers"]}
    rename = {}
    layers = []
    for entry in config["layers"]:
        layers.append(entry)
        name = entry["config"]["name"]
        if name in targets:
            if len(entry["inbound_nodes"]) != 1:
                raise InputError(
                    f"{TECHNIQUE}: layer {name!r} is shared; cannot split its fused activation"
                )
            activation = entry["config"]["activation"]
            entry["config"]["activation"] = "linear"
            new = f"{name}_activation"
            while new in taken:
                new += "_"
            taken.add(new)
            rename[name] = new
            layers.append(
                {
                    "class_name": "Activation",
                    "name": new,
                    "config": {
                        "name": new,
                        "trainable": entry["config"].get("trainable", True),
                        "dtype": "float32",
                        "activation": activation,
                    },
                    "inbound_nodes": [[[name, 0, 0, {}]]],
                }
            )
    # Consumers of a split layer now read from its new Activation layer.
    inserted = set(rename.values())
    for entry in layers:
        if entry["name"] not in inserted:
            entry["inbound_nodes"] = _rename_all(entry["inbound_nodes"], rename)
    config["layers"] = layers
    config["output_layers"] = _rename_all(config["output_layers"], rename)
    rebuilt = K.Model.from_config(config)
    for layer in model.layers:
        if layer.weights:
            rebuilt.get_layer(layer.name).set_weights(layer.get_weights())
    return carry(model, rebuilt)


def _rename_all(node, rename):
    for old, new in rename.items():
        node = _replace_refs(node, old, new)
    return node


def _is_identity(layer) -> bool:
    """True for an input scaling that computes x (an un-adapted Normalization, say).

    Its own output fake-quant would leave a DEQUANTIZE/QUANTIZE pair in the .tflite
    once the converter folds the identity away.
    """
    if len(layer.inbound_nodes) != 1 or isinstance(layer.input, list):
        return False
    shape = [1] + [d or 4 for d in layer.input.shape[1:]]
    probe = np.random.default_rng(0).uniform(-2, 2, shape).astype("float32")
    return bool(np.allclose(np.asarray(layer(probe)), probe, atol=1e-6))


def _scheme(scheme: QuantScheme):
    import tensorflow_model_optimization as tfmot

    combine = tfmot.experimental.combine
    if scheme is QuantScheme.DEFAULT:
        return tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()
    if scheme is QuantScheme.PRUNE_PRESERVE:
        return combine.Default8BitPrunePreserveQuantizeScheme()
    if scheme is QuantScheme.CLUSTER_PRESERVE:
        return combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False)
    return combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)


def quantize(model, scheme: str | QuantScheme = QuantScheme.DEFAULT):
    """Return a QAT model (fake-quant wrappers) ready for fine-tuning and int8 conversion.

    Pass a *stripped* pruned/clustered model with scheme pqat/cqat/pcqat.
    """
    import tensorflow_model_optimization as tfmot

    require_tf_keras(model, TECHNIQUE)
    try:
        scheme = QuantScheme(scheme)
    except ValueError:
        raise InputError(
            f"qat scheme must be one of {', '.join(s.value for s in QuantScheme)}, got {scheme!r}"
        ) from None
    check_supported(model)
    source = model
    model = split_fused_activations(model)
    api = tfmot.quantization.keras
    config_cls = _output_quantize_config_class()

    def annotate(layer):
        fresh = copy_layer(layer)
        if SUPPORTED_LAYERS.get(type(layer).__name__) is Handling.OUTPUT:
            return api.quantize_annotate_layer(fresh, config_cls(output=not _is_identity(layer)))
        return api.quantize_annotate_layer(fresh)

    annotated = clone(model, annotate)
    try:
        with api.quantize_scope(custom_objects()):
            quantized = api.quantize_apply(annotated, _scheme(scheme))
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"{TECHNIQUE}: {str(exc).splitlines()[0]}") from exc
    # tfmot names each wrapper "quant_<layer>", and tf_keras names the outputs (the
    # SavedModel's and so the .tflite's signature, matched by name downstream) after
    # their layers: keep the source's names ("presence", "box", "scores").
    quantized.output_names = list(source.output_names)
    # Remembered (untracked by Keras) so save() can write a rebuildable copy: a CQAT
    # model's config names the plain quantizers, so it cannot be reloaded from .h5 alone.
    object.__setattr__(quantized, "_mobilecv_qat_source", (source, scheme.value))
    return carry(source, quantized)


def calibrate_ranges(model, images, *, batch_size: int = 64, batches: int = 8) -> None:
    """Start each activation range of a QAT model at what ``images`` (pixels, as a
    dataset holds them; a random ``batches`` x ``batch_size`` of them) give, not [-6, 6].

    tfmot starts every activation range at [-6, 6] and moves it by an EMA with decay
    0.999, so a fine-tune of a few hundred steps ends with ranges still near [-6, 6]: a
    sigmoid output in [0, 1] keeps ~25 of its 256 levels. Classifiers shrug that off (the
    argmax survives); a regressed box does not (a localiser lost 14 points of iou50).
    Here forward passes in training mode run the EMA as a running mean (decay k/(k+1),
    so the first batch sets the range): layer by layer, each quantizer sees inputs already
    clipped at its upstream's new range. Everything else a pass changes (BatchNorm's
    moving statistics, the wrappers' step counters) is put back.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    from mobilecv.data.datasets import model_inputs

    pick = np.random.default_rng(0).permutation(len(images))[: batch_size * batches]
    x = model_inputs(np.asarray(images)[np.sort(pick)], model)
    original = quant_ops.MovingAvgQuantize
    kept = [(v, v.numpy()) for v in model.variables if not _is_range(v)]
    try:
        for k, start in enumerate(range(0, len(x), batch_size)):
            quant_ops.MovingAvgQuantize = _with_ema_decay(original, k / (k + 1))
            model(x[start : start + batch_size], training=True)
    finally:
        quant_ops.MovingAvgQuantize = original
        for variable, value in kept:
            variable.assign(value)


def _with_ema_decay(moving_avg_quantize, decay: float):
    def quantize_with_decay(*args, **kwargs):
        return moving_avg_quantize(*args, **{**kwargs, "ema_decay": decay})

    return quantize_with_decay


def _is_range(variable) -> bool:
    """A quantizer's range variable (tfmot names them ``<tensor>_min`` / ``<tensor>_max``)."""
    name = variable.name.split(":")[0]
    return name.endswith(("_min", "_max"))


SIDECAR = "qat.json"


def save(model, path: str | os.PathLike, force: bool = False) -> dict[str, str]:
    """Save a QAT model as PATH (.h5) plus what is needed to rebuild it exactly.

    Written beside PATH: qat_base.keras (the float model QAT started from),
    model.weights.h5 (the trained QAT weights) and qat.json (scheme, file names).
    `load(PATH)` uses them; tools that only read PATH still get a loadable model for
    the default and PQAT schemes.
    """
    from pathlib import Path

    from mobilecv.fileio import atomic_path, write_json
    from mobilecv.modelio import save_model

    source = getattr(model, "_mobilecv_qat_source", None)
    path = Path(path)
    if path.suffix != ".h5":
        raise InputError(
            f"{path}: a QAT model is saved as .h5 (tf_keras cannot reload tfmot layers from .keras)"
        )
    save_model(model, path, force=force)
    written = {"model": str(path)}
    if source is None:
        return written
    base, scheme = source
    base_path = path.with_name("qat_base.keras")
    weights_path = path.with_name(path.stem + ".weights.h5")
    save_model(base, base_path, force=force)
    with atomic_path(weights_path, force) as tmp:
        model.save_weights(str(tmp))
    write_json(
        path.with_name(SIDECAR),
        {
            "model": path.name,
            "scheme": scheme,
            "base": base_path.name,
            "weights": weights_path.name,
        },
        force=force,
    )
    written.update(
        qat_base=str(base_path),
        qat_weights=str(weights_path),
        qat_sidecar=str(path.with_name(SIDECAR)),
    )
    return written


def load(path: str | os.PathLike):
    """Load a saved QAT model: rebuilt from qat.json's base + weights when present
    (exact for every scheme), else straight from the .h5 with the quantize configs in scope."""
    import json
    from pathlib import Path

    import tensorflow_model_optimization as tfmot

    from mobilecv.modelio import load_model

    path = Path(path)
    sidecar = path.with_name(SIDECAR)
    if sidecar.exists():
        info = json.loads(sidecar.read_text())
        if info.get("model") == path.name:
            base = load_model(path.with_name(info["base"]), keras="tf_keras")
            model = quantize(base, info["scheme"])
            model.load_weights(str(path.with_name(info["weights"])))
            return model
    with tfmot.quantization.keras.quantize_scope(custom_objects()):
        return load_model(path, keras="tf_keras")
