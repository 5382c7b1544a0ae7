"""Quiet, lazy access to TensorFlow and the two Keras implementations.

TensorFlow's C++ start-up lines (oneDNN, CUDA stubs, absl) go straight to file
descriptor 2 before Python logging exists, so they are silenced by pointing fd 2
at /dev/null for the duration of the import only.
"""

from __future__ import annotations

import contextlib
import os
import sys
from types import ModuleType

from mobilecv.errors import InputError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "0")

KERAS_CHOICES = ("tf_keras", "keras3")


@contextlib.contextmanager
def silenced_fd(fd: int = 2):
    """Point a file descriptor (not just sys.stderr/stdout) at /dev/null for the block.

    Set MOBILECV_VERBOSE_TF=1 to see what is silenced.
    """
    if os.environ.get("MOBILECV_VERBOSE_TF"):
        yield
        return
    stream = {1: sys.stdout, 2: sys.stderr}.get(fd)
    try:
        if stream is not None:
            stream.flush()
        saved = os.dup(fd)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        if stream is not None:
            stream.flush()
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def silenced_stderr():
    """Silence fd 2, where TensorFlow's C++ start-up and converter logs go."""
    return silenced_fd(2)


def tf() -> ModuleType:
    if "tensorflow" not in sys.modules:
        with silenced_stderr():
            import tensorflow  # noqa: F401
        import tensorflow as _tf

        _tf.get_logger().setLevel("ERROR")
    return sys.modules["tensorflow"]


def get_keras(keras: str | ModuleType | None = None) -> ModuleType:
    """Return the keras module to build with: tf_keras (default) or Keras 3."""
    if isinstance(keras, ModuleType):
        return keras
    name = keras or "tf_keras"
    if name not in KERAS_CHOICES:
        raise InputError(f"keras must be one of {', '.join(KERAS_CHOICES)}, got {name!r}")
    tf()
    with silenced_stderr():
        if name == "tf_keras":
            import tf_keras as module
        else:
            import keras as module
    return module


def keras_name(module: ModuleType) -> str:
    return "keras3" if module.__name__.split(".")[0] == "keras" else "tf_keras"


def is_keras3_model(model) -> bool:
    return type(model).__module__.split(".")[0] == "keras"
