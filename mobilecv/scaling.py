"""Width, depth and resolution knobs, and EfficientNet compound scaling.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
ICML 2019: depth d = alpha**phi, width w = beta**phi, resolution r = gamma**phi with
alpha * beta**2 * gamma**2 ~= 2, so each unit of phi roughly doubles FLOPs.
"""

from __future__ import annotations

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
