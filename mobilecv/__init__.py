"""mobilecv: the convolutional-network canon as small, fast, measured TFLite models."""

from mobilecv import _tf  # noqa: F401  (sets TF log levels before anything imports TF)
from mobilecv.profiling import profile
from mobilecv.registry import build, list_models
from mobilecv.scaling import compound_scale

__version__ = "0.1.0"

__all__ = ["build", "compound_scale", "list_models", "profile", "__version__"]
