"""Inception v1 / GoogLeNet: ``googlenet``.

Szegedy et al., "Going Deeper with Convolutions", CVPR 2015, Table 1. Inception modules
(`layers.inception_module`) put 1x1 bottlenecks before the 3x3 and 5x5 branches and
project the pooled branch. The two auxiliary classifiers (after 4a and 4d) are optional:
``aux_heads=True`` returns a model with three outputs (main, aux1, aux2). The stem's local
response normalisation is omitted (later re-implementations, e.g. torchvision, drop it
too); pooling uses "same" padding so 224 px gives the paper's 112/56/28/14/7 grids.
"""

from __future__ import annotations

from types import ModuleType

from mobilecv.layers import adaptive_avg_pool, inception_module, spatial_input
from mobilecv.models.classic import _channels
from mobilecv.registry import register_model

# Table 1: name -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj); "pool" rows
# are 3x3/2 max pools.
GOOGLENET_TABLE = (
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    ("pool", None),
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    ("pool", None),
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
)
AUX_AFTER = ("4a", "4d")


def _aux_head(K, x, classes, width, name):
    # 5x5/3 average pool of the 14x14 map (4x4), 1x1 conv 128, FC 1024, dropout 0.7.
    x = adaptive_avg_pool(K, x, 4, 2, f"{name}_pool")
    x = K.layers.Conv2D(_channels(128, width), 1, activation="relu", name=f"{name}_conv")(x)
    x = K.layers.Flatten(name=f"{name}_flatten")(x)
    x = K.layers.Dense(_channels(1024, width), activation="relu", name=f"{name}_fc")(x)
    x = K.layers.Dropout(0.7, name=f"{name}_dropout")(x)
    return K.layers.Dense(classes, activation="softmax", name=f"{name}_predictions")(x)


@register_model("googlenet", family="inception", default_resolution=224, unsupported=("depth",))
def googlenet(
    *,
    width: float,
    resolution: int,
    classes: int,
    include_top: bool,
    input_channels: int,
    keras: ModuleType,
    aux_heads: bool = False,
    dropout: float = 0.4,
):
    K = keras
    c = lambda n: _channels(n, width)  # noqa: E731
    inputs = spatial_input(K, resolution, input_channels)
    x = K.layers.Conv2D(c(64), 7, strides=2, padding="same", activation="relu", name="conv1")(
        inputs
    )
    x = K.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    x = K.layers.Conv2D(c(64), 1, activation="relu", name="conv2_reduce")(x)
    x = K.layers.Conv2D(c(192), 3, padding="same", activation="relu", name="conv2")(x)
    x = K.layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    aux = []
    pools = 2
    for name, filters in GOOGLENET_TABLE:
        if filters is None:
            pools += 1
            x = K.layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{pools}")(x)
            continue
        x = inception_module(K, x, *(c(f) for f in filters), name=f"inception_{name}")
        if aux_heads and include_top and name in AUX_AFTER:
            aux.append(_aux_head(K, x, classes, width, f"aux{len(aux) + 1}"))
    if include_top:
        x = K.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = K.layers.Dropout(dropout, name="dropout")(x)
        x = K.layers.Dense(classes, activation="softmax", name="predictions")(x)
    outputs = [x, *aux] if aux else x
    return K.Model(inputs, outputs, name=f"googlenet_{width:g}_{resolution}")
