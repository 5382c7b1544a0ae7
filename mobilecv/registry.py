"""The one model registry: ``@register_model``, :func:`build`, :func:`list_models`.

Every builder has the same keyword-only signature (docs/ARCHITECTURE.md, rule 7)::

    builder(*, width, depth, resolution, classes, include_top, input_channels, keras, **family)

plus the common knob ``input_range`` (unit | pixels | symmetric, see mobilecv.modelinfo):
the input range the model declares. A builder takes it as a parameter only when its graph
depends on it (EfficientNet's input scaling); ``build`` records it on every model.

``build`` validates the common knobs, fills family defaults, loads weights and attaches
the model's info (input range, source). A knob a family cannot honour raises InputError
naming it; an unknown name, UnknownName (an InputError that is also a KeyError).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from mobilecv import scaling
from mobilecv.errors import InputError, UnknownName, parse_choice
from mobilecv.modelinfo import InputRange, ModelInfo, set_info

COMMON_KNOBS = (
    "width",
    "depth",
    "resolution",
    "classes",
    "include_top",
    "input_channels",
    "input_range",
    "keras",
)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., Any]
    family: str
    default_resolution: int
    min_resolution: int
    defaults: dict = field(default_factory=dict)
    supports: frozenset = frozenset(COMMON_KNOBS)
    task: str = "classification"

    def options(self) -> set[str]:
        """Family-specific keyword options the builder accepts."""
        params = inspect.signature(self.builder).parameters
        return {p for p in params if p not in COMMON_KNOBS}


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    family: str,
    default_resolution: int,
    min_resolution: int = 32,
    defaults: dict | None = None,
    unsupported: tuple[str, ...] = (),
    task: str = "classification",
):
    """Decorator registering ``builder`` under ``name``; ``defaults`` pre-fill knobs
    (e.g. one EfficientNet row). ``unsupported`` lists common knobs the family rejects;
    ``task`` names the registered task (mobilecv.tasks) whose outputs the model gives."""

    def decorator(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(
            name=name,
            builder=builder,
            family=family,
            default_resolution=default_resolution,
            min_resolution=min_resolution,
            defaults=dict(defaults or {}),
            supports=frozenset(COMMON_KNOBS) - set(unsupported),
            task=task,
        )
        return builder

    return decorator


def _ensure_loaded() -> None:
    import mobilecv.models  # noqa: F401  (registers every family)
    import mobilecv.tasks.base

    mobilecv.tasks.base.list_tasks()  # task files register their models (localizer, ...)


def get(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else "; see `mobilecv list`"
        raise UnknownName(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching an fnmatch pattern, e.g. ``"mobilenet*"``."""
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def resolve(name: str, **knobs) -> dict:
    """The full keyword set ``build`` would pass to the builder (no model is built)."""
    entry = get(name)
    explicit = {k: v for k, v in knobs.items() if v is not None}
    options = entry.options()
    for knob in explicit:
        if knob in ("weights", "phi"):
            continue
        if knob not in COMMON_KNOBS and knob not in options:
            raise InputError(f"{name} does not accept {knob!r}")
        if knob in COMMON_KNOBS and knob not in entry.supports:
            raise InputError(f"{name} cannot honour {knob!r}")
    phi = explicit.pop("phi", None)
    explicit.pop("weights", None)
    if phi is not None:
        if "phi" not in options:
            raise InputError(f"{name} does not accept 'phi' (only the generic efficientnet does)")
        compound = scaling.compound_scale(phi)
        explicit = {
            "width": compound.width,
            "depth": compound.depth,
            "resolution": compound.resolution,
            **explicit,
        }
    resolved = {
        "width": 1.0,
        "depth": 1.0,
        "resolution": entry.default_resolution,
        "classes": 1000,
        "include_top": True,
        "input_channels": 3,
        "input_range": InputRange.UNIT,
        **entry.defaults,
        **explicit,
    }
    resolved["input_range"] = parse_choice(InputRange, resolved["input_range"], "input_range")
    resolved["width"] = scaling.check_multiplier("width", resolved["width"])
    resolved["depth"] = scaling.check_multiplier("depth", resolved["depth"])
    resolved["resolution"] = scaling.check_resolution(
        resolved["resolution"], entry.min_resolution, name
    )
    if int(resolved["classes"]) < 1:
        raise InputError(f"classes must be >= 1, got {resolved['classes']}")
    if int(resolved["input_channels"]) < 1:
        raise InputError(f"input_channels must be >= 1, got {resolved['input_channels']}")
    return resolved


def build(
    name: str,
    *,
    width: float | None = None,
    depth: float | None = None,
    resolution: int | None = None,
    classes: int | None = None,
    include_top: bool | None = None,
    input_channels: int | None = None,
    input_range: str | None = None,
    weights: str | None = None,
    keras: str | ModuleType | None = None,
    **options,
):
    """Build a registered model. Knobs left as None take the family's defaults.

    The model carries its ModelInfo (`mobilecv.modelinfo.get_info(model)`): the declared
    input range and, for provenance, the name and resolved knobs.
    """
    from mobilecv._tf import get_keras

    knobs = resolve(
        name,
        width=width,
        depth=depth,
        resolution=resolution,
        classes=classes,
        include_top=include_top,
        input_channels=input_channels,
        input_range=input_range,
        **options,
    )
    knobs.pop("phi", None)
    entry = get(name)
    builder_params = inspect.signature(entry.builder).parameters
    kwargs = {k: v for k, v in knobs.items() if k in builder_params}
    model = entry.builder(keras=get_keras(keras), **kwargs)
    if weights:
        from mobilecv.models.weights import load_weights

        load_weights(model, weights)
    source = {"model": name, **knobs, **({"weights": str(weights)} if weights else {})}
    from mobilecv.tasks import get_task

    info = ModelInfo(
        input_range=knobs["input_range"].bounds,
        task=entry.task,
        source=source,
        task_options=get_task(entry.task).options_of(kwargs),
    )
    return set_info(model, info)
