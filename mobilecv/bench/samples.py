"""Small MobileNet-style .tflite files for tests, calibration and the benchmark scripts.

They are built with tf_keras and converted with the TFLite converter, so TensorFlow
is imported lazily inside the functions (never at import time).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mobilecv._tf import get_keras, silenced_stderr, tf


def tiny_mobilenet(
    resolution: int = 32,
    channels: int = 1,
    width: int = 8,
    blocks: int = 2,
    classes: int = 10,
    seed: int = 0,
):
    """conv-BN-ReLU6 stem, `blocks` depthwise-separable blocks, pooling and a dense head."""
    keras = get_keras("tf_keras")
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((resolution, resolution, channels))
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    filters = width
    for i in range(blocks):
        stride = 2 if i % 2 == 1 else 1
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU(6.0)(x)
        filters = filters * 2 if stride == 2 else filters
        x = layers.Conv2D(filters, 1, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU(6.0)(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(classes)(x)
    return keras.Model(inputs, outputs)


def convert(model, quantize: str = "none", samples: int = 16, seed: int = 0) -> bytes:
    """Convert a tf_keras model: quantize is "none" (float32) or "int8" (full integer)."""
    if quantize not in ("none", "int8"):
        raise ValueError(f"quantize must be 'none' or 'int8', got {quantize!r}")
    tflite = tf().lite
    shape = (1, *model.input_shape[1:])
    with silenced_stderr():
        converter = tflite.TFLiteConverter.from_keras_model(model)
        if quantize == "int8":
            rng = np.random.default_rng(seed)

            def representative():
                for _ in range(samples):
                    yield [rng.uniform(0, 1, shape).astype(np.float32)]

            converter.optimizations = [tflite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tflite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf().int8
            converter.inference_output_type = tf().int8
        return converter.convert()


def write_tiny(path: str | os.PathLike, quantize: str = "none", **kwargs) -> Path:
    path = Path(path)
    path.write_bytes(convert(tiny_mobilenet(**kwargs), quantize))
    return path


def mobilenet_v2(
    alpha: float = 1.0, resolution: int = 224, classes: int = 1000, softmax: bool = True
):
    """The keras.applications reference MobileNetV2 (random weights) as a tf_keras model."""
    keras = get_keras("tf_keras")
    with silenced_stderr():
        return keras.applications.MobileNetV2(
            input_shape=(resolution, resolution, 3),
            alpha=alpha,
            weights=None,
            classes=classes,
            classifier_activation="softmax" if softmax else None,
        )


def cached_model(
    name: str, build, quantize: str = "none", cache: str | os.PathLike | None = None
) -> Path:
    """Convert `build()` once and keep the .tflite under the cache dir (for benchmarks)."""
    from mobilecv.bench.calibrate import cache_dir

    folder = Path(cache) if cache else cache_dir() / "bench_models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_{'fp32' if quantize == 'none' else quantize}.tflite"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(convert(build(), quantize, samples=8))
        os.replace(tmp, path)
    return path
