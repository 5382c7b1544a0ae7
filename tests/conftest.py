import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mobilecv  # noqa: E402

# Tiny sizes for tests that are generic over the registry (DESIGN point 13).
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
