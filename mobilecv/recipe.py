"""Recipes: a whole pipeline written down as strict YAML, read into frozen dataclasses.

Precedence is defaults < recipe file < ``--set key.path=value``. Unknown keys, wrong
types and unknown enum values are errors naming the file, the key path and what is
allowed. YAML is read with the safe loader, so tags that construct Python objects fail.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mobilecv.compress.prune import Allocation, PrunePolicy
from mobilecv.converters.tflite import Quantize as QuantMode
from mobilecv.distribute import Strategy
from mobilecv.errors import InputError, MissingFile
from mobilecv.modelinfo import InputRange
from mobilecv.train import Optimizer, Schedule


@dataclass(frozen=True)
class ModelSpec:
    name: str = "mobilenet_v2"
    width: float | None = None
    depth: float | None = None
    resolution: int | None = None
    classes: int | None = None
    input_channels: int | None = None
    input_range: InputRange | None = None  # unit | pixels | symmetric; None: the default (unit)
    options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "fashion_mnist"
    limit: int | None = None  # use only the first N training images (small CI runs)
    # Keep only these classes, relabelled 0..n-1 in this order (train, calibration, test).
    classes: tuple[int, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """The problem the recipe solves. `name` null: the model's registered task (a recipe
    that names one checks that the model gives it); `scenes` overrides the task's scene
    config (mobilecv.data.scenes.SceneConfig fields) when `data.dataset` is "scenes"."""

    name: str | None = None
    scenes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PretrainSpec:
    """A first stage training the same network on other classes, whose trunk the model
    then starts from (moved by layer name; the head is new). Off while epochs is 0."""

    epochs: int = 0
    dataset: str | None = None  # default: data.dataset
    classes: tuple[int, ...] = ()  # relabelled 0..n-1; empty: every class of the dataset
    limit: int | None = None
    batch_size: int = 128
    learning_rate: float = 3e-3
    augment: tuple[str, ...] = ()  # optimizer and schedule: those of train
    # A `compare` step: the same network trained from scratch on the same images, with
    # the same epochs and settings as `train`, against the transferred model.
    compare_scratch: bool = True


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 0  # 0 skips training (e.g. a recipe that only converts and benchmarks)
    batch_size: int = 64
    optimizer: Optimizer = Optimizer.ADAM
    learning_rate: float = 2e-3
    schedule: Schedule = Schedule.COSINE
    augment: tuple[str, ...] = ()
    freeze: str | None = None  # a layer count, or "all-but-head"
    cache_features: bool = False
    strategy: Strategy = Strategy.DEFAULT
    loss_options: dict[str, Any] = field(default_factory=dict)  # keywords of the task's loss


@dataclass(frozen=True)
class CompressSpec:
    prune: float | None = None
    prune_2by4: bool = False
    prune_policy: PrunePolicy = PrunePolicy.ALL
    prune_allocation: Allocation = Allocation.UNIFORM
    cluster: int | None = None
    qat: bool = False
    epochs: int = 1
    learning_rate: float = 1e-4


@dataclass(frozen=True)
class ConvertSpec:
    modes: tuple[QuantMode, ...] = (QuantMode.NONE, QuantMode.INT8)
    io: str = "int8"
    calibration_samples: int = 256
    c_array: bool = False


@dataclass(frozen=True)
class DeviceSpec:
    name: str = "host"
    max_latency_ms: float | None = None
    mode: QuantMode | None = None  # which converted model to benchmark; default: the last


@dataclass(frozen=True)
class EvaluateSpec:
    test_samples: int | None = None
    multi_crop: bool = False
    ensemble: int = 1


@dataclass(frozen=True)
class Recipe:
    name: str = "recipe"
    description: str = ""
    seed: int = 0
    model: ModelSpec = field(default_factory=ModelSpec)
    task: TaskSpec = field(default_factory=TaskSpec)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    compress: CompressSpec = field(default_factory=CompressSpec)
    convert: ConvertSpec = field(default_factory=ConvertSpec)
    devices: tuple[DeviceSpec, ...] = (DeviceSpec(),)
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------ strict decoding


class RecipeError(InputError):
    pass


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if origin in (tuple, list):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _decode(tp, value, where: str, source: str):
    def fail(detail: str):
        raise RecipeError(f"{source}: {where}: {detail}")

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode(arg, value, where, source)
            except RecipeError as exc:
                errors.append(exc)
        fail(f"expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail(f"expected a mapping, got {type(value).__name__}")
        return _decode_dataclass(tp, value, where, source)
    if origin in (tuple, list):
        if not isinstance(value, list):
            fail(f"expected {_type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_decode(item, v, f"{where}[{i}]", source) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            fail(f"expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            fail(f"{value!r} is not allowed; allowed: {', '.join(m.value for m in tp)}")
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            fail(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            fail(f"expected a string, got {value!r}")
        return str(value)
    fail(f"unsupported type {tp}")


def _decode_dataclass(cls, data: dict, where: str, source: str):
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in allowed:
            path = f"{where}.{key}" if where else key
            raise RecipeError(f"{source}: {path}: unknown key; allowed: {', '.join(allowed)}")
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        kwargs[key] = _decode(hints[key], value, path, source)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=3`` -> (["train", "epochs"], 3); the value is read as YAML."""
    if "=" not in text:
        raise InputError(f"--set {text!r}: expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise InputError(f"--set {text!r}: {str(exc).splitlines()[0]}") from None
    return [k for k in key.strip().split(".") if k], value


def _apply_override(data: dict, path: list[str], value, text: str) -> None:
    node = data
    for key in path[:-1]:
        node = _child(node, key, text)
        if not isinstance(node, (dict, list)):
            raise InputError(f"--set {text!r}: {key!r} is not a section")
    if isinstance(node, list):
        node[_list_index(node, path[-1], text)] = value
    else:
        node[path[-1]] = value


def _child(node: dict | list, key: str, text: str):
    """The item `key` of a section (created if missing) or of a list (which must have it)."""
    if isinstance(node, list):
        return node[_list_index(node, key, text)]
    return node.setdefault(key, {})


def _list_index(items: list, key: str, text: str) -> int:
    """`key` as an index of `items`: a whole number below its length."""
    if not key.isdigit():
        raise InputError(f"--set {text!r}: {key!r} is not an index of a list (0, 1, ...)")
    if int(key) >= len(items):
        raise InputError(
            f"--set {text!r}: index {key} is past the end of a list of {len(items)} items"
        )
    return int(key)


def _merge(base: dict, top: dict) -> dict:
    """Recursive dict merge; values of ``top`` (including lists) replace those of ``base``."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and out[key]:
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def builtin_recipes() -> list[str]:
    folder = resources.files("mobilecv.recipes")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def find(name_or_path: str | os.PathLike) -> Path:
    """A recipe by path, or by the name of a shipped recipe."""
    if not str(name_or_path).strip():
        raise InputError(f"give a recipe: a .yaml path or one of {', '.join(builtin_recipes())}")
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = resources.files("mobilecv.recipes").joinpath(f"{name_or_path}.yaml")
    if shipped.is_file():
        return Path(str(shipped))
    raise MissingFile(
        f"recipe {str(name_or_path)!r} not found; shipped recipes: {', '.join(builtin_recipes())}"
    )


def load(name_or_path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Recipe:
    path = find(name_or_path)
    source = str(path)
    if path.is_dir():
        raise RecipeError(f"{source}: is a folder, not a recipe .yaml file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).replace("\n", " ")
        raise RecipeError(f"{source}: not valid YAML (safe loader): {first}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{source}: not a text file (not UTF-8), so not a YAML recipe") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: the top level must be a mapping")
    data = _merge(Recipe().to_dict(), data)
    for text in overrides:
        keys, value = parse_override(text)
        if not keys:
            raise InputError(f"--set {text!r}: empty key")
        _apply_override(data, keys, value, text)
    recipe = _decode_dataclass(Recipe, data, "", source)
    _check_ranges(recipe, source)
    return recipe


def _check_ranges(recipe: Recipe, source: str) -> None:
    """Numbers out of range fail here, not in a step minutes later (or silently)."""
    t, c = recipe.train, recipe.compress
    # (key path, value, bound, whether the bound itself is excluded)
    checks = [
        ("seed", recipe.seed, 0, False),
        ("data.limit", recipe.data.limit, 1, False),
        ("pretrain.epochs", recipe.pretrain.epochs, 0, False),
        ("pretrain.limit", recipe.pretrain.limit, 1, False),
        ("pretrain.batch_size", recipe.pretrain.batch_size, 1, False),
        ("pretrain.learning_rate", recipe.pretrain.learning_rate, 0, True),
        ("train.epochs", t.epochs, 0, False),
        ("train.batch_size", t.batch_size, 1, False),
        ("train.learning_rate", t.learning_rate, 0, True),
        ("compress.prune", c.prune, 0, True),
        ("compress.cluster", c.cluster, 2, False),
        ("compress.epochs", c.epochs, 1, False),
        ("compress.learning_rate", c.learning_rate, 0, True),
        ("evaluate.test_samples", recipe.evaluate.test_samples, 1, False),
        ("evaluate.ensemble", recipe.evaluate.ensemble, 1, False),
    ]
    checks += [
        (f"devices[{i}].max_latency_ms", d.max_latency_ms, 0, True)
        for i, d in enumerate(recipe.devices)
    ]
    for where, value, bound, excluded in checks:
        if value is not None and (value <= bound if excluded else value < bound):
            need = f"> {bound}" if excluded else f">= {bound}"
            raise RecipeError(f"{source}: {where}: must be {need}, got {value}")
    if c.prune is not None and c.prune >= 1:
        raise RecipeError(f"{source}: compress.prune: must be < 1 (a sparsity), got {c.prune}")
    if not recipe.convert.modes:
        raise RecipeError(f"{source}: convert.modes: give at least one mode")


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
