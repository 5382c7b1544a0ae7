"""The layers mobilecv adds to Keras, registered with both Keras implementations on import.

A model file names each layer's class; Keras can rebuild it in a fresh process only if
that class is registered there. So the classes are defined here once per Keras (tf_keras
and Keras 3 need their own subclasses) and registered under the package "mobilecv" when
this module is imported. `mobilecv.modelio.load_model` imports it before loading, and so
does every builder that uses one of these layers.
"""

from __future__ import annotations

from types import ModuleType

from mobilecv._tf import KERAS_CHOICES, get_keras, keras_name, tf


def _define(K: ModuleType) -> dict[str, type]:
    class LocalResponseNorm(K.layers.Layer):
        """Krizhevsky et al. LRN: x / (bias + alpha * sum_{|i-j|<=r} x_j^2) ** beta.

        Written with ops every TFLite kernel set has in int8 (MUL, a 1x1 CONV_2D with a
        constant 0/1 band as the channel-window sum, RSQRT, SQRT): the native
        LOCAL_RESPONSE_NORMALIZATION op has no int8 kernel and would stay float. The
        power -0.75 is rsqrt(d) * sqrt(rsqrt(d)), so beta is fixed at 0.75.
        """

        def __init__(self, depth_radius=2, bias=2.0, alpha=1e-4, **kwargs):
            super().__init__(**kwargs)
            self.depth_radius, self.bias, self.alpha = depth_radius, bias, alpha

        def call(self, x):
            t = tf()
            c = int(x.shape[-1])
            r = self.depth_radius
            band = [[1.0 if abs(i - j) <= r else 0.0 for j in range(c)] for i in range(c)]
            window = t.nn.conv2d(x * x, t.constant(band, shape=(1, 1, c, c)), 1, "VALID")
            inv = t.math.rsqrt(self.bias + self.alpha * window)
            return x * inv * t.sqrt(inv)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {
                **super().get_config(),
                "depth_radius": self.depth_radius,
                "bias": self.bias,
                "alpha": self.alpha,
            }

    class ChannelZeroPad(K.layers.Layer):
        """Appends ``extra`` all-zero channels (He et al.'s parameter-free option A
        shortcut)."""

        def __init__(self, extra=0, **kwargs):
            super().__init__(**kwargs)
            self.extra = extra

        def call(self, x):
            pads = [[0, 0]] * (len(x.shape) - 1) + [[0, self.extra]]
            return tf().pad(x, pads)

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], input_shape[-1] + self.extra)

        def get_config(self):
            return {**super().get_config(), "extra": self.extra}

    register = K.utils.register_keras_serializable(package="mobilecv")
    return {cls.__name__: register(cls) for cls in (LocalResponseNorm, ChannelZeroPad)}


# keras_name -> class name -> class; filled (and registered) on import.
CLASSES: dict[str, dict[str, type]] = {name: _define(get_keras(name)) for name in KERAS_CHOICES}


def layer_class(K: ModuleType, name: str) -> type:
    """The class ``name`` (LocalResponseNorm, ChannelZeroPad) for the keras module ``K``."""
    classes = CLASSES[keras_name(K)]
    if name not in classes:
        raise ValueError(f"unknown custom layer {name!r}; known: {', '.join(classes)}")
    return classes[name]


def custom_objects(K: ModuleType) -> dict[str, type]:
    """The classes by their registered names, for APIs that take ``custom_objects``."""
    return {f"mobilecv>{name}": cls for name, cls in CLASSES[keras_name(K)].items()}


# --------------------------------------------------------------------------- pair features
# The verification head's Keras formula (mobilecv.metric_learning.head holds the numpy one
# and the docstring): a Siamese model saved with it reloads in a fresh process only if
# this class is registered there, like the layers above.


def _define_pair_features(K: ModuleType) -> dict[str, type]:
    class PairFeatures(K.layers.Layer):
        """Features of a pair of embeddings (a, b): |a - b| ("abs") or
        (a - b)^2 / (|a| + |b| + epsilon) ("chi2"; DeepFace's chi-squared form for
        non-negative features, defined for signed ones)."""

        FORMS = ("abs", "chi2")

        def __init__(self, form="abs", epsilon=1e-6, **kwargs):
            super().__init__(**kwargs)
            if form not in self.FORMS:
                raise ValueError(f"pair form must be one of {', '.join(self.FORMS)}; got {form!r}")
            self.form, self.epsilon = form, float(epsilon)

        def call(self, inputs):
            t = tf()
            a, b = inputs
            if self.form == "abs":
                return t.abs(a - b)
            return t.square(a - b) / (t.abs(a) + t.abs(b) + self.epsilon)

        def compute_output_shape(self, input_shape):
            return input_shape[0]

        def get_config(self):
            return {**super().get_config(), "form": self.form, "epsilon": self.epsilon}

    register = K.utils.register_keras_serializable(package="mobilecv")
    return {"PairFeatures": register(PairFeatures)}


for _name in KERAS_CHOICES:
    CLASSES[_name].update(_define_pair_features(get_keras(_name)))
