"""Small MobileNet-style .tflite files for tests, calibration and the benchmark scripts.

They are built with tf_keras and converted with `mobilecv.converters.tflite.convert`, so
TensorFlow is imported lazily inside the functions (never at import time).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mobilecv._tf import get_keras, silenced_stderr


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


def random_calibration(model, samples: int = 16, seed: int = 0) -> np.ndarray:
    """Uniform [0, 1) rows shaped like the model's input: calibration data for int8
    conversion of the random-weight models here (whose accuracy nobody measures)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (samples, *model.input_shape[1:])).astype(np.float32)


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
        from mobilecv.converters.tflite import convert

        model = build()
        calibration = random_calibration(model, 8)
        result = convert(model, quantize, calibration, samples=8, verify=False, progress=False)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(result.tflite)
        os.replace(tmp, path)
    return path
