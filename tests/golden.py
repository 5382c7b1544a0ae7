"""The one golden table: parameter counts and MACs of full-size builds.

Every figure comes from keras.applications (weights=None, include_top, 1000 classes)
or from the paper named in `source`. MACs follow mobilecv.profile's convention
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
]
