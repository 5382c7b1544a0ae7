"""Network-in-Network: ``nin``.

Lin, Chen & Yan, "Network In Network", ICLR 2014. The CIFAR-10 configuration: three
mlpconv blocks (a kxk conv followed by two 1x1 convs, `layers.bottleneck_1x1`), the last
1x1 conv giving one feature map per class, and global average pooling instead of fully
connected layers. Width scales every hidden conv; the class maps are never scaled.
"""

from __future__ import annotations

from types import ModuleType

from mobilecv.layers import bottleneck_1x1, spatial_input
from mobilecv.models.classic import _channels
from mobilecv.registry import register_model

# (kernel, conv filters, 1x1 filters, 1x1 filters, pooling after); 0 = ``classes``.
NIN_BLOCKS = (
    (5, 192, 160, 96, "max"),
    (5, 192, 192, 192, "average"),
    (3, 192, 192, 0, None),
)


@register_model("nin", family="nin", default_resolution=32, unsupported=("depth",))
def nin(
    *,
    width: float,
    resolution: int,
    classes: int,
    include_top: bool,
    input_channels: int,
    keras: ModuleType,
    dropout: float = 0.5,
):
    K = keras
    inputs = spatial_input(K, resolution, input_channels)
    x = inputs
    for b, (kernel, f0, f1, f2, pool) in enumerate(NIN_BLOCKS, start=1):
        last = f2 == 0
        if last and not include_top:
            break
        x = K.layers.Conv2D(
            _channels(f0, width), kernel, padding="same", activation="relu", name=f"mlpconv{b}_conv"
        )(x)
        x = bottleneck_1x1(K, x, _channels(f1, width), f"mlpconv{b}_1x1a")
        x = bottleneck_1x1(K, x, classes if last else _channels(f2, width), f"mlpconv{b}_1x1b")
        if pool:
            Pool = K.layers.MaxPooling2D if pool == "max" else K.layers.AveragePooling2D
            x = Pool(3, strides=2, padding="same", name=f"pool{b}")(x)
            x = K.layers.Dropout(dropout, name=f"drop{b}")(x)
    if include_top:
        x = K.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = K.layers.Activation("softmax", name="predictions")(x)
    return K.Model(inputs, x, name=f"nin_{width:g}_{resolution}")
