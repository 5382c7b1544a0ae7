"""Width, depth and resolution knobs, and EfficientNet compound scaling.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
ICML 2019: depth d = alpha**phi, width w = beta**phi, resolution r = gamma**phi with
alpha * beta**2 * gamma**2 ~= 2, so each unit of phi roughly doubles FLOPs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mobilecv.errors import InputError

MAX_MULTIPLIER = 4.0


@dataclass(frozen=True)
class CompoundScale:
    depth: float
    width: float
    resolution: int


def compound_scale(
    phi: float,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    base_resolution: int = 224,
) -> CompoundScale:
    """Return the depth, width and resolution that compound coefficient ``phi`` gives."""
    if phi < 0 or phi > 12:
        raise InputError(f"phi must be between 0 and 12, got {phi}")
    return CompoundScale(
        depth=alpha**phi,
        width=beta**phi,
        resolution=int(round(base_resolution * gamma**phi)),
    )


@dataclass(frozen=True)
class MacsMatch:
    """One knob value and the MACs it gives, against the MACs asked for."""

    value: float
    macs: int
    target: int

    @property
    def off(self) -> float:
        """Relative miss: +0.03 is 3% over the target."""
        return self.macs / self.target - 1.0

    def within(self, tolerance: float = 0.05) -> bool:
        return abs(self.off) <= tolerance


def match_macs(
    macs_of: Callable[[float], int], target: int, low: float, high: float, step: float
) -> MacsMatch:
    """The value of one knob on the grid low, low + step, ..., high whose MACs are closest
    to ``target``.

    ``macs_of`` must never decrease as the knob grows; it is a step function for every
    real knob (channels rounded to a divisor, ceil'd repeats, whole pixels), so this
    bisects for the first grid value reaching the target and keeps it or the one below,
    whichever is closer: about log2((high - low) / step) + 2 calls, each a model build.
    A target out of reach gives the end of the range; ``within`` tells the caller.
    """
    if target <= 0 or step <= 0 or not high >= low:
        raise InputError(f"need target > 0, step > 0 and high >= low; got {target}, {step}, "
                         f"{low}..{high}")  # fmt: skip
    last = int(round((high - low) / step))
    seen: dict[int, int] = {}

    def value(k: int) -> float:
        return round(low + k * step, 10)  # a grid value, not an accumulated float

    def macs(k: int) -> int:
        if k not in seen:
            seen[k] = int(macs_of(value(k)))
        return seen[k]

    if macs(0) >= target:
        best = 0
    elif macs(last) < target:
        best = last
    else:
        below, above = 0, last  # macs(below) < target <= macs(above)
        while above - below > 1:
            middle = (below + above) // 2
            below, above = (middle, above) if macs(middle) < target else (below, middle)
        best = below if target - macs(below) < macs(above) - target else above
    return MacsMatch(value(best), macs(best), int(target))


def check_multiplier(knob: str, value: float) -> float:
    """Width and depth must be positive and not absurd."""
    if not value > 0:
        raise InputError(f"{knob} must be > 0, got {value}")
    if value > MAX_MULTIPLIER:
        raise InputError(f"{knob} {value} is absurd (the limit is {MAX_MULTIPLIER})")
    return float(value)


def check_resolution(resolution: int, min_resolution: int, model: str) -> int:
    if int(resolution) != resolution:
        raise InputError(f"resolution must be a whole number of pixels, got {resolution}")
    if resolution < min_resolution:
        raise InputError(
            f"resolution {resolution} is too small for {model}: it downsamples by "
            f"{min_resolution}, so the input must be at least {min_resolution} px"
        )
    if resolution > 4096:
        raise InputError(f"resolution {resolution} is absurd (the limit is 4096 px)")
    return int(resolution)
