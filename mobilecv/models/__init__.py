"""Model families; importing this package registers every family."""

from mobilecv.models import (  # noqa: F401
    classic,
    efficientnet,
    inception,
    mobilenet,
    nin,
    resnet,
    stylizer,
    unet,
)
from mobilecv.models.weights import load_keras_applications_weights, load_weights

__all__ = ["load_keras_applications_weights", "load_weights"]
