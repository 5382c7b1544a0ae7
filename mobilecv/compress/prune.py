"""Magnitude pruning (Zhu & Gupta, 2017) with tfmot: polynomial schedule, 2:4, 1x1-only.

The target sparsity is spread over layers either uniformly (tfmot's way: every pruned
layer at the target) or by Erdos-Renyi-Kernel (Evci et al., "Rigging the Lottery",
2020): layer l keeps a density proportional to sum(shape) / prod(shape), so large 1x1
convs give up more weights than a stem conv of a few hundred, and the pruned weights
as a whole still reach exactly the target.

tfmot's PolynomialDecay defaults to frequency=100: a fine-tune shorter than ~100
steps never reaches its target (the mask only updates at step 0, at sparsity 0).
`derive_schedule` sizes begin/end/frequency from epochs x steps per epoch so the
final mask update lands exactly on the target, with a quarter of the run left for
the weights to recover.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field

import numpy as np

from mobilecv.compress._common import (
    check_supported,
    clone,
    copy_layer,
    kernels,
    overall_sparsity,
    require_tf_keras,
    sparsity_of,
    unwrap,
)
from mobilecv.errors import InputError, parse_choice

TECHNIQUE = "prune"

# Layer type -> weights pruned. An empty tuple means "allowed, left dense": tfmot does
# not prune depthwise kernels (they hold ~1-3% of a MobileNet's weights anyway).
SUPPORTED_LAYERS: dict[str, tuple[str, ...]] = {
    "Conv2D": ("kernel",),
    "DepthwiseConv2D": (),
    "Dense": ("kernel",),
}
# 2:4 groups run along the input-channel axis, which depthwise kernels do not have.
M_BY_N_LAYERS = ("Conv2D", "Dense")


class Allocation(enum.StrEnum):
    UNIFORM = "uniform"  # every pruned layer at the target sparsity
    ERK = "erk"  # Erdos-Renyi-Kernel: density ~ sum(shape) / prod(shape)


class PrunePolicy(enum.StrEnum):
    ALL = "all"  # every supported layer
    ONE_BY_ONE = "1x1"  # XNNPACK's sparse path accelerates only 1x1 convolutions


@dataclass(frozen=True)
class Schedule:
    begin_step: int
    end_step: int
    frequency: int


@dataclass
class PruneInfo:
    sparsity: float
    m_by_n: tuple[int, int] | None
    policy: str
    schedule: Schedule
    allocation: str = Allocation.UNIFORM.value
    layers: list[str] = field(default_factory=list)
    layer_targets: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def derive_schedule(epochs: int, steps_per_epoch: int, end_fraction: float = 0.75) -> Schedule:
    """begin=0; end at ~75% of the run, on a multiple of frequency; ~10 mask updates."""
    total = int(epochs) * int(steps_per_epoch)
    if total < 2:
        raise InputError(
            f"pruning needs at least 2 training steps, got epochs={epochs} x steps={steps_per_epoch}"
        )
    frequency = max(1, min(100, total // 10))
    end = (int(total * end_fraction) // frequency) * frequency
    end = min(max(end, frequency), total - 1)
    return Schedule(begin_step=0, end_step=end, frequency=frequency)


def erk_sparsities(shapes: dict[str, tuple[int, ...]], target: float) -> dict[str, float]:
    """Per-layer sparsity whose weighted mean over `shapes` is `target` (ERK allocation).

    Density of layer l is eps * sum(shape_l) / prod(shape_l); eps is solved so the
    zeros add up to target * total. A layer whose density would exceed 1 is kept
    dense and eps is solved again over the rest.
    """
    if not 0.0 < target < 1.0:
        raise InputError(f"prune sparsity must be in (0, 1), got {target}")
    size = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    raw = {name: sum(shape) / size[name] for name, shape in shapes.items()}
    total = sum(size.values())
    dense: set[str] = set()
    while True:
        free = [n for n in shapes if n not in dense]
        # Zeros needed = target * total; a free layer keeps eps * raw * size weights.
        eps = (
            (sum(size[n] for n in free) - target * total) / sum(raw[n] * size[n] for n in free)
            if free
            else 0.0
        )
        if eps <= 0.0:
            raise InputError(f"sparsity {target} cannot be reached with ERK over these layers")
        over = [n for n in free if eps * raw[n] > 1.0]
        if not over:
            break
        dense.update(over)
    return {n: 0.0 if n in dense else float(1.0 - eps * raw[n]) for n in shapes}


def _selected(layer, policy: PrunePolicy, m_by_n) -> str | None:
    """None if the layer is pruned, else the reason it is left dense."""
    kind = type(layer).__name__
    if not SUPPORTED_LAYERS.get(kind):
        return (
            "no prunable weights"
            if kind not in SUPPORTED_LAYERS
            else f"tfmot does not prune {kind}"
        )
    if policy is PrunePolicy.ONE_BY_ONE and not (
        kind == "Conv2D" and tuple(layer.kernel_size) == (1, 1)
    ):
        return "policy 1x1 prunes only 1x1 Conv2D"
    if m_by_n is not None:
        if kind not in M_BY_N_LAYERS:
            return f"{kind} has no input-channel axis for {m_by_n[0]}:{m_by_n[1]} groups"
        cin = int(layer.kernel.shape[-2])
        if cin % m_by_n[1]:
            return f"{cin} input channels are not a multiple of {m_by_n[1]}"
    return None


def prune(
    model,
    sparsity: float | None = None,
    *,
    epochs: int,
    steps_per_epoch: int,
    m_by_n: tuple[int, int] | None = None,
    policy: str | PrunePolicy = PrunePolicy.ALL,
    allocation: str | Allocation = Allocation.UNIFORM,
    frequency: int | None = None,
):
    """Wrap the selected layers for magnitude pruning. Returns (wrapped_model, PruneInfo).

    Train the wrapped model with `callbacks()`; then `strip()` it. `frequency`
    overrides the derived one (only to demonstrate the short-run trap).
    """
    import tensorflow_model_optimization as tfmot

    require_tf_keras(model, TECHNIQUE)
    policy = parse_choice(PrunePolicy, policy, "prune policy")
    allocation = parse_choice(Allocation, allocation, "prune allocation")
    if m_by_n is not None and allocation is not Allocation.UNIFORM:
        raise InputError("2:4 sparsity is the same in every layer; it takes no allocation")
    if m_by_n is None:
        if sparsity is None or not 0.0 < float(sparsity) < 1.0:
            raise InputError(f"prune sparsity must be in (0, 1), got {sparsity}")
    elif tuple(m_by_n) != (2, 4):
        raise InputError(f"only 2:4 structured sparsity is supported, got {m_by_n}")
    check_supported(model, TECHNIQUE, SUPPORTED_LAYERS)
    schedule = derive_schedule(epochs, steps_per_epoch)
    if frequency is not None:
        schedule = Schedule(schedule.begin_step, schedule.end_step, int(frequency))
    sched = tfmot.sparsity.keras
    target = m_by_n[0] / m_by_n[1] if m_by_n is not None else float(sparsity)
    info = PruneInfo(
        sparsity=target,
        m_by_n=tuple(m_by_n) if m_by_n else None,
        policy=policy.value,
        schedule=schedule,
        allocation=allocation.value,
    )
    chosen = {}
    for layer in model.layers:
        reason = _selected(unwrap(layer), policy, m_by_n)
        if reason is None:
            chosen[layer.name] = tuple(int(d) for d in unwrap(layer).kernel.shape)
        elif type(unwrap(layer)).__name__ in SUPPORTED_LAYERS:
            info.skipped[layer.name] = reason
    if allocation is Allocation.ERK:
        targets = erk_sparsities(chosen, target) if chosen else {}
    else:
        targets = dict.fromkeys(chosen, target)
    for name, layer_target in targets.items():
        if layer_target <= 0.0:
            info.skipped[name] = "ERK keeps it dense (too few weights to prune)"
    info.layer_targets = {n: round(t, 4) for n, t in targets.items() if t > 0.0}

    def schedule_for(layer_target: float):
        if m_by_n is not None:
            return sched.ConstantSparsity(
                layer_target,
                begin_step=schedule.begin_step,
                end_step=schedule.end_step,
                frequency=schedule.frequency,
            )
        return sched.PolynomialDecay(
            initial_sparsity=0.0,
            final_sparsity=layer_target,
            begin_step=schedule.begin_step,
            end_step=schedule.end_step,
            frequency=schedule.frequency,
        )

    def wrap(layer):
        fresh = copy_layer(layer)
        if layer.name not in info.layer_targets:
            return fresh
        info.layers.append(layer.name)
        kwargs = {"sparsity_m_by_n": tuple(m_by_n)} if m_by_n else {}
        return sched.prune_low_magnitude(
            fresh, pruning_schedule=schedule_for(info.layer_targets[layer.name]), **kwargs
        )

    wrapped = clone(model, wrap)
    if not info.layers:
        raise InputError(
            f"{TECHNIQUE}: no layer qualifies under policy {policy.value!r} ({len(info.skipped)} skipped)"
        )
    return wrapped, info


def callbacks() -> list:
    """The callback that advances tfmot's pruning step; pass it to fit()."""
    import tensorflow_model_optimization as tfmot

    return [tfmot.sparsity.keras.UpdatePruningStep()]


def strip(model):
    """Remove pruning wrappers, leaving plain layers whose kernels hold the zeros."""
    import tensorflow_model_optimization as tfmot

    from mobilecv.modelinfo import carry

    return carry(model, tfmot.sparsity.keras.strip_pruning(model))


def measured_sparsity(model, layers: list[str] | None = None) -> dict[str, float]:
    """Fraction of exact zeros per pruned kernel (works on wrapped or stripped models)."""
    return sparsity_of(kernels(model, SUPPORTED_LAYERS, set(layers) if layers else None))


def overall(model, layers: list[str] | None = None) -> float:
    return overall_sparsity(kernels(model, SUPPORTED_LAYERS, set(layers) if layers else None))


def m_by_n_violations(kernel: np.ndarray, m_by_n: tuple[int, int] = (2, 4)) -> int:
    """Number of n-groups along the input-channel axis with fewer than m zeros."""
    m, n = m_by_n
    groups = np.moveaxis(np.asarray(kernel), -2, -1)  # input channels last
    if groups.shape[-1] % n:
        raise InputError(f"input channels {groups.shape[-1]} are not a multiple of {n}")
    groups = groups.reshape(-1, n)
    return int(np.sum(np.sum(groups == 0, axis=1) < m))


def layer_names_of(model) -> list[str]:
    return [unwrap(layer).name for layer in model.layers]
