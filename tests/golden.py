"""The one golden table: parameter counts and MACs of full-size builds.

Every figure comes from keras.applications (weights=None, include_top, 1000 classes)
or from the paper named in `source`. MACs follow mobilecv.profiling's convention
(Conv/Depthwise/Dense multiply-adds, batch 1) and must agree within MAC_TOLERANCE.
"""

from dataclasses import dataclass, field

MAC_TOLERANCE = 0.005


@dataclass(frozen=True)
class Golden:
    name: str
    knobs: dict = field(default_factory=dict)
    params: int | None = None
    macs: int | None = None
    params_rel: float = 0.0  # 0 means exact
    macs_rel: float = MAC_TOLERANCE
    source: str = "keras.applications"
    slow: bool = False

    @property
    def id(self) -> str:
        knobs = ",".join(f"{k}={v}" for k, v in self.knobs.items())
        return f"{self.name}[{knobs}]" if knobs else self.name


_B_PARAMS = [
    5_330_571,
    7_856_239,
    9_177_569,
    12_320_535,
    19_466_823,
    30_562_527,
    43_265_143,
    66_658_687,
]
_B_MACS = [
    385_814_752,
    686_802_832,
    993_561_872,
    1_827_141_392,
    4_393_771_024,
    10_266_384_752,
    19_067_593_536,
    37_745_884_192,
]
_LITE_PARAMS_M = [4.7, 5.4, 6.1, 8.2, 13.0]

GOLDEN = [
    Golden("mobilenet_v1", {}, 4_253_864, 568_740_352),
    Golden("mobilenet_v1", {"width": 0.75}, 2_601_976, 325_400_448),
    Golden("mobilenet_v1", {"width": 0.5}, 1_342_536, 149_497_088),
    Golden("mobilenet_v1", {"width": 0.25}, 475_544, 41_030_272),
    Golden("mobilenet_v1", {"resolution": 192}, 4_253_864, 418_121_728),
    Golden("mobilenet_v1", {"resolution": 160}, 4_253_864, 290_675_200),
    Golden("mobilenet_v1", {"resolution": 128}, 4_253_864, 186_400_768),
    Golden("mobilenet_v2", {}, 3_538_984, 300_774_272),
    Golden("mobilenet_v2", {"width": 0.35}, 1_691_208, 59_285_808),
    Golden("mobilenet_v2", {"width": 0.75}, 2_663_064, 209_069_792),
    Golden("mobilenet_v2", {"width": 1.4}, 6_156_712, 582_195_824),
    *[
        Golden(f"efficientnet_b{i}", {}, p, m, slow=i >= 3)
        for i, (p, m) in enumerate(zip(_B_PARAMS, _B_MACS, strict=True))
    ],
    # EfficientNet-Lite README: ~4.7/5.4/6.1/8.2/13.0 M (its figures count trainable
    # weights; Keras also counts BN moving statistics, hence the 2% band).
    *[
        Golden(
            f"efficientnet_lite{i}",
            {},
            int(p * 1e6),
            None,
            params_rel=0.02,
            source="EfficientNet-Lite README",
        )
        for i, p in enumerate(_LITE_PARAMS_M)
    ],
    # LeNet-5 (modern form), issue 3: 456 + 2,416 + 48,120 + 10,164 + 850; MACs by hand
    # (28*28*6*75 + 10*10*16*150 + 400*120 + 120*84 + 84*10).
    Golden("lenet5", {"input_channels": 3, "classes": 10}, 62_006, 651_720, source="LeCun 1998"),
    # AlexNet (Krizhevsky 2012): two-tower grouped and single-tower counts.
    Golden("alexnet", {}, 60_965_224, None, source="Krizhevsky 2012 (issue 3)"),
    Golden("alexnet", {"groups": False}, 62_378_344, None, source="Krizhevsky 2012 (issue 3)"),
    Golden("vgg16", {}, 138_357_544, 15_470_264_320, slow=True),
    Golden("vgg19", {}, 143_667_240, 19_632_062_464, slow=True),
    Golden("resnet50", {}, 25_636_712, 3_857_973_248, slow=True),
    Golden("resnet101", {}, 44_707_176, 7_570_194_432, slow=True),
    Golden("resnet152", {}, 60_419_944, 11_282_415_616, slow=True),
    # torchvision counts; Keras also counts BN moving statistics (+0.08%).
    Golden("resnet18", {}, 11_689_512, None, params_rel=0.002, source="torchvision"),
    Golden("resnet34", {}, 21_797_672, None, params_rel=0.002, source="torchvision"),
    # GoogLeNet, Szegedy 2015 Table 1: 6.8 M params (3%). Its ops column sums to 1.50 G but
    # lists conv1 (7x7/2, 64 filters, 224 px) as 34 M where 112*112*64*147 = 118 M, so a
    # faithful build has 1.58 G: 5.5% over, hence the 6% band (the issue asked for 5%).
    Golden(
        "googlenet",
        {},
        6_800_000,
        1_500_000_000,
        params_rel=0.03,
        macs_rel=0.06,
        source="Szegedy 2015 Table 1",
    ),
    # NIN CIFAR-10 configuration (Lin 2014): 192-160-96 / 192-192-192 / 192-192-10 mlpconv,
    # counted by hand (with biases).
    Golden("nin", {"classes": 10}, 966_986, None, source="Lin 2014 (hand count)"),
    # U-Net, Ronneberger 2015 Fig. 1 (572 px, valid, 1 channel in, 2 classes), counted by
    # hand from the layer list, k*k*cin*cout + cout a conv: contracting 640 + 36,928 +
    # 73,856 + 147,584 + 295,168 + 590,080 + 1,180,160 + 2,359,808 = 4,684,224; bottom
    # 4,719,616 + 9,438,208 = 14,157,824; expanding (2x2 up-conv, then two 3x3 convs on the
    # concatenation) 2,097,664 + 4,719,104 + 2,359,808 + 524,544 + 1,179,904 + 590,080 +
    # 131,200 + 295,040 + 147,584 + 32,832 + 73,792 + 36,928 = 12,188,480; 1x1 head 130.
    Golden(
        "unet",
        {"resolution": 572, "padding": "valid", "input_channels": 1, "classes": 2},
        31_030_658,
        None,
        source="Ronneberger 2015 Fig. 1 (hand count)",
    ),
]
