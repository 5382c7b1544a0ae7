"""Block grammar, the one rounding rule, and the one width/depth scaling function.

A regular architecture is a table of stage strings such as ``ir_r2_k3_s2_e6_c24_se0.25``
(timm's notation): block kind, then ``r`` repeats, ``k`` kernel, ``s`` stride of the first
repeat, ``e`` expansion, ``c`` output channels, ``se`` squeeze-excite ratio. Decoding gives
frozen :class:`StageSpec` rows; :func:`scale` applies width and depth to the whole table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from mobilecv.errors import InputError

BLOCK_KINDS = {
    "ds": "depthwise separable (MobileNetV1)",
    "ir": "inverted residual / MBConv (MobileNetV2, EfficientNet)",
    "vgg": "VGG stage: r 3x3 convs with ReLU, then a 2x2 max pool",
    "basic": "ResNet basic block: 3x3 -> 3x3 (+ shortcut)",
    "bottleneck": "ResNet bottleneck: 1x1 -> 3x3 -> 1x1 x e (+ shortcut)",
}

_TOKEN = re.compile(r"^(r|k|s|e|c|se)(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``repeats`` blocks of one kind; only the first uses ``stride``."""

    kind: str
    repeats: int
    kernel: int
    stride: int
    channels: int
    expand: int = 1
    se_ratio: float = 0.0

    def __post_init__(self):
        if self.kind not in BLOCK_KINDS:
            raise InputError(f"unknown block kind {self.kind!r}; known: {', '.join(BLOCK_KINDS)}")
        for field in ("repeats", "kernel", "stride", "channels", "expand"):
            if getattr(self, field) < 1:
                raise InputError(f"block {field} must be >= 1, got {getattr(self, field)}")


def decode(spec: str) -> StageSpec:
    """Decode one stage string, e.g. ``"ir_r2_k3_s2_e6_c24_se0.25"``."""
    kind, *tokens = spec.split("_")
    values: dict[str, float] = {}
    for token in tokens:
        match = _TOKEN.match(token)
        if not match:
            raise InputError(f"bad token {token!r} in block string {spec!r}")
        values[match.group(1)] = float(match.group(2))
    missing = {"r", "k", "s", "c"} - values.keys()
    if missing:
        raise InputError(f"block string {spec!r} lacks {', '.join(sorted(missing))}")
    return StageSpec(
        kind=kind,
        repeats=int(values["r"]),
        kernel=int(values["k"]),
        stride=int(values["s"]),
        channels=int(values["c"]),
        expand=int(values.get("e", 1)),
        se_ratio=values.get("se", 0.0),
    )


def decode_table(specs: Iterable[str]) -> tuple[StageSpec, ...]:
    return tuple(decode(s) for s in specs)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%.

    The rule of the TF reference implementations (MobileNetV2, EfficientNet); the only
    copy in mobilecv.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def scale_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def scale(
    stages: Sequence[StageSpec],
    width: float = 1.0,
    depth: float = 1.0,
    divisor: int = 8,
    fixed_depth_stages: Iterable[int] = (),
) -> tuple[StageSpec, ...]:
    """Apply width (channel rounding) and depth (``ceil(depth * repeats)``) to a table.

    ``fixed_depth_stages`` lists stage indices (negative allowed) whose repeats stay as
    they are: EfficientNet-Lite keeps its first and last stage unscaled.
    """
    fixed = {i % len(stages) for i in fixed_depth_stages}
    return tuple(
        replace(
            stage,
            channels=make_divisible(stage.channels * width, divisor),
            repeats=stage.repeats if i in fixed else scale_repeats(stage.repeats, depth),
        )
        for i, stage in enumerate(stages)
    )


def total_stride(stem_stride: int, stages: Sequence[StageSpec]) -> int:
    return stem_stride * math.prod(stage.stride for stage in stages)


def output_size(
    size: int,
    kernel: int,
    stride: int = 1,
    padding: str | int = "valid",
    *,
    transposed: bool = False,
    output_padding: int | None = None,
    dilation: int = 1,
) -> int:
    """Length of a convolution's (or pooling window's) output along one axis: the one copy.

    ``padding`` is "valid", "same" (TF/Keras) or a whole number p of zeros on each side;
    ``k`` below is the dilated kernel (kernel - 1) * dilation + 1.

    - convolution: valid floor((n - k) / s) + 1; same ceil(n / s); p: floor((n + 2p - k) / s) + 1;
    - transposed (the course's formula): (n - 1) s - 2p + k + output_padding. Keras names
      p by its padding string: "same" is p = k // 2 and "valid" p = 0 when output_padding is
      given; without it, "same" gives n s and "valid" n s + max(k - s, 0) (Keras'
      ``deconv_output_length``). An explicit p without output_padding takes 0.
    """
    if output_padding is not None and not transposed:
        raise InputError("output_padding applies to transposed convolutions only")
    k = (kernel - 1) * dilation + 1
    if transposed:
        out = _transposed_size(size, k, stride, padding, output_padding)
    elif padding == "same":
        out = -(-size // stride)
    else:
        out = (size + 2 * _explicit(padding) - k) // stride + 1
    if out < 1:
        raise InputError(
            f"a {kernel}-tap window with stride {stride} and padding {padding!r} leaves no "
            f"output from {size} pixels"
        )
    return out


def _explicit(padding: str | int) -> int:
    """Zeros on each side of a padding that is not "same" ("valid" is 0)."""
    if padding == "valid":
        return 0
    if isinstance(padding, str) or int(padding) != padding or padding < 0:
        raise InputError(f"padding must be 'valid', 'same' or a whole number >= 0, got {padding!r}")
    return int(padding)


def _transposed_size(size: int, k: int, stride: int, padding, output_padding) -> int:
    if output_padding is None:
        if padding == "same":
            return size * stride
        if padding == "valid":
            return size * stride + max(k - stride, 0)
        output_padding = 0
    pad = k // 2 if padding == "same" else _explicit(padding)
    return (size - 1) * stride - 2 * pad + k + output_padding


@dataclass(frozen=True)
class Field:
    """Receptive field of a layer's units along one input axis, in input pixels.

    ``size`` r: pixels one unit sees; ``jump`` j: input pixels between neighbouring units
    (the stride product); ``start``: the centre of the first unit's field, in input pixel
    indices (the first pixel's centre is 0; a negative start lies in the padding). Unit i
    sees the pixels centred on ``start + i * jump``, ``size`` wide.
    """

    size: float = 1
    jump: float = 1
    start: float = 0.0

    def span(self, index: int) -> tuple[float, float]:
        """Centres of the first and last input pixels unit ``index`` sees (inclusive; may
        reach into the padding, outside [0, n - 1]): the crop of a unit's patch."""
        centre = self.start + index * self.jump
        return centre - (self.size - 1) / 2, centre + (self.size - 1) / 2

    def then(self, local: Field) -> Field:
        """This field followed by a layer whose own field (on its input's grid) is ``local``."""
        return Field(
            size=self.size + (local.size - 1) * self.jump,
            jump=self.jump * local.jump,
            start=self.start + local.start * self.jump,
        )


def window_field(
    kernel: int,
    stride: int = 1,
    pad_before: int = 0,
    *,
    dilation: int = 1,
    transposed: bool = False,
) -> Field:
    """One window's own field (convolution, pooling, padding), on its input's unit grid.

    Chained by :meth:`Field.then` it is the standard recurrence: r_out = r_in + (k - 1) j_in;
    j_out = j_in s; start_out = start_in + ((k - 1)/2 - p) j_in, with k the dilated kernel
    and p the zeros before the first input (ZeroPadding is k = 1, s = 1, p its zeros; a crop
    is p < 0). A transposed convolution (and upsampling, k = s) divides the jump by s; an
    output unit takes at most ceil(k / s) input units, so r_out = r_in + (ceil(k / s) - 1)
    j_in (the largest field; units at other phases of s see fewer). The centres of the
    input units an output unit takes step in a staircase (s outputs per input); start is that
    staircase's straight line, the output grid mapped back through the convolution it
    transposes (p its zeros): start_in + (p - (k - 1)/2) / s j_in, off by at most
    (s - 1) / (2 s) j_in for any one unit.
    """
    k = (kernel - 1) * dilation + 1
    if transposed:
        return Field(
            size=-(-k // stride), jump=1 / stride, start=(pad_before - (k - 1) / 2) / stride
        )
    return Field(size=k, jump=stride, start=(k - 1) / 2 - pad_before)


def same_pad_before(size: int | None, kernel: int, stride: int, dilation: int = 1) -> int:
    """Zeros TF's "same" padding puts before the first input: half the total, rounded down.

    The total is max((ceil(n / s) - 1) s + k - n, 0); an unknown n is taken as a multiple of s.
    """
    k = (kernel - 1) * dilation + 1
    if size is None:
        return max(k - stride, 0) // 2
    return max((-(-size // stride) - 1) * stride + k - size, 0) // 2


def merge_fields(fields: Sequence[Field]) -> Field | None:
    """The field of a merge (Add, Concatenate, ...) of inputs on the same unit grid: the
    union of the inputs' fields (the largest one when their centres agree). None when the
    jumps differ: the inputs' units are not on one grid."""
    if len({f.jump for f in fields}) != 1:
        return None
    low = min(f.start - (f.size - 1) / 2 for f in fields)
    high = max(f.start + (f.size - 1) / 2 for f in fields)
    return Field(size=high - low + 1, jump=fields[0].jump, start=(low + high) / 2)
