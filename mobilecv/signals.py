"""1D signals and 3D volumes for the 1D/3D convnets (issue 16 §5).

- :func:`eeg_windows`: a real 1D signal to train on offline. No installed package ships
  spoken digits, so the source is the 4-channel EEG recording that matplotlib ships as
  sample data (``mpl-data/sample_data/eeg.dat``, 800 samples per channel, the data of its
  ``mri_with_eeg`` example). The task: which of the 4 electrodes a window comes from.
  Training windows come from the first 70% of the recording, test windows from the rest,
  so no test sample was seen in training.
- :func:`strided_conv3d`: a 3D convnet TFLite can convert. TFLite has CONV_3D as a builtin
  but no 3D pooling (``tf.MaxPool3D`` and ``tf.AvgPool3D`` are "neither a custom op nor a
  flex op" to the converter), so this net downsamples with strided Conv3D and ends in a
  global mean (MEAN), where the classic builders at ``dims=3`` pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mobilecv.errors import InputError

EEG_CHANNELS, EEG_SAMPLES = 4, 800
TRAIN_PART = 0.7  # of the recording, in time


@dataclass(frozen=True)
class SignalSplits:
    """Windows (N, length, 1) in [0, 1] and electrode labels (N,), by split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


def eeg_recording() -> np.ndarray:
    """matplotlib's sample EEG: (800 samples, 4 channels), float64."""
    import matplotlib.cbook as cbook

    path = cbook.get_sample_data("eeg.dat", asfileobj=False)
    return np.fromfile(path, dtype=float).reshape(EEG_SAMPLES, EEG_CHANNELS)


def _windows(series: np.ndarray, length: int, stride: int) -> np.ndarray:
    starts = range(0, len(series) - length + 1, stride)
    return np.stack([series[s : s + length] for s in starts])


def _labelled(part: np.ndarray, length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    xs = [_windows(part[:, c], length, stride) for c in range(part.shape[1])]
    ys = [np.full(len(w), c, np.int64) for c, w in enumerate(xs)]
    return np.concatenate(xs), np.concatenate(ys)


def eeg_windows(length: int = 72, stride: int = 2) -> SignalSplits:
    """Electrode identification on the EEG: windows of ``length`` samples, scaled to [0, 1]
    by the training part's range (test values outside it are clipped)."""
    split = int(EEG_SAMPLES * TRAIN_PART)
    if not 8 <= length <= EEG_SAMPLES - split:
        raise InputError(f"window length must be in 8..{EEG_SAMPLES - split}, got {length}")
    if stride < 1:
        raise InputError(f"stride must be >= 1, got {stride}")
    recording = eeg_recording()
    train, test = recording[:split], recording[split:]
    low, high = float(train.min()), float(train.max())
    x_train, y_train = _labelled(train, length, stride)
    x_test, y_test = _labelled(test, length, stride)

    def unit(x):
        return np.clip((x - low) / (high - low), 0, 1).astype(np.float32)[..., None]

    source = "matplotlib sample data eeg.dat (4-channel EEG, 800 samples per channel)"
    return SignalSplits(unit(x_train), y_train, unit(x_test), y_test, source)


def strided_conv3d(
    size: int = 16, channels: int = 1, classes: int = 4, width: int = 8, keras: str = "tf_keras"
):
    """A 3D convnet of builtin TFLite ops only: two 3x3x3 stride-2 Conv3D + ReLU, a
    global mean and a softmax classifier."""
    from mobilecv._tf import get_keras

    K = get_keras(keras)
    inputs = K.layers.Input((size, size, size, channels), name="input")
    x = K.layers.Conv3D(width, 3, strides=2, padding="same", activation="relu", name="conv1")(
        inputs
    )
    x = K.layers.Conv3D(2 * width, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = K.layers.GlobalAveragePooling3D(name="mean")(x)
    outputs = K.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return K.Model(inputs, outputs, name=f"strided_conv3d_{size}")
