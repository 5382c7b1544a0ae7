"""Model families; importing this package registers every family."""

from mobilecv.models import efficientnet, mobilenet  # noqa: F401
from mobilecv.models.weights import load_keras_applications_weights, load_weights

__all__ = ["load_keras_applications_weights", "load_weights"]
