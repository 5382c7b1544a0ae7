import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mobilecv  # noqa: E402


def run_cli(*args, cwd=None, timeout: float = 600):
    """`mobilecv ARGS` in a fresh process, as a user runs it; MOBILECV_DEBUG unset, so
    errors come out as a user sees them."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MOBILECV_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "mobilecv.cli", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
    )  # fmt: skip


# Tiny sizes for tests that are generic over the registry (docs/ARCHITECTURE.md, rule 13).
TINY = {"width": 0.25, "resolution": 32, "classes": 10}


def tiny_knobs(name: str) -> dict:
    """The smallest sensible knobs a registered model accepts."""
    entry = mobilecv.registry.get(name)
    knobs = dict(TINY)
    knobs["resolution"] = max(entry.min_resolution, TINY["resolution"])
    return {k: v for k, v in knobs.items() if k in entry.supports}


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)


def tiny_model(K=None):
    """A ~3.4k-parameter classifier for 16x16 grayscale digits (conv, depthwise, 1x1, dense)."""
    from mobilecv._tf import get_keras

    K = K or get_keras("tf_keras")
    i = K.Input((16, 16, 1))
    x = K.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(i)
    x = K.layers.MaxPooling2D()(x)
    x = K.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = K.layers.Conv2D(16, 1, activation="relu", name="pw")(x)
    x = K.layers.MaxPooling2D()(x)
    x = K.layers.Flatten()(x)
    x = K.layers.Dense(10, name="head")(x)
    return K.Model(i, x)
