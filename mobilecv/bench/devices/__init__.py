"""Device profiles: strict YAML -> frozen Device, with a source for every figure.

The `host` profile's throughput figures come from a microbenchmark run on this
machine (see mobilecv.bench.calibrate), cached under ~/.cache/mobilecv.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mobilecv.errors import InputError, MissingFile

HERE = Path(__file__).parent


class Runtime(enum.StrEnum):
    LITERT = "litert"  # full LiteRT (TFLite) with XNNPACK on a CPU
    TFLM = "tflm"  # TensorFlow Lite Micro: builtins only, static arena
    EDGETPU = "edgetpu"  # full-integer only accelerator


class Kind(enum.StrEnum):
    CPU = "cpu"
    MCU = "mcu"
    ACCELERATOR = "accelerator"


# Figures that must each carry a source (datasheet, published benchmark or calibration).
FIGURES = (
    "cores",
    "clock_mhz",
    "macs_per_s",
    "memory_bandwidth_gbs",
    "ram_bytes",
    "flash_bytes",
    "runtime_flash_bytes",
    "runtime_ram_bytes",
    "per_op_overhead_us",
    "op_efficiency",
    "thread_scaling",
)
REQUIRED = ("name", "description", "kind", "runtime", "dtypes", "ops", "sources", *FIGURES)
OPTIONAL = ("calibrate", "notes")
DTYPES = ("float32", "float16", "int8", "int16", "int32", "uint8", "bool", "int64")


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: Kind
    runtime: Runtime
    cores: int
    clock_mhz: float
    macs_per_s: dict[str, float]  # sustained per core, keys fp32/fp16/int8
    memory_bandwidth_gbs: float
    ram_bytes: int
    flash_bytes: int
    runtime_flash_bytes: int
    runtime_ram_bytes: int
    per_op_overhead_us: float
    op_efficiency: dict[str, float]  # multiplier on macs_per_s per op type (default 1)
    thread_scaling: float  # speed-up per extra thread, 0..1
    dtypes: tuple[str, ...]  # activation dtypes the runtime runs
    ops: tuple[str, ...] | None  # builtin ops the runtime resolves; None = all builtins
    sources: dict[str, str] = field(hash=False, compare=False, default_factory=dict)
    calibrate: bool = False
    notes: str = ""

    @property
    def measurable(self) -> bool:
        """Only the machine we run on can be measured directly."""
        return self.name == "host"

    def rate(self, dtype: str) -> float:
        key = {"float32": "fp32", "float16": "fp16", "int8": "int8", "uint8": "int8",
               "int16": "int8"}.get(dtype, "fp32")  # fmt: skip
        return float(self.macs_per_s.get(key) or 0.0)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "kind": self.kind.value,
            "runtime": self.runtime.value,
            "cores": self.cores,
            "clock_mhz": self.clock_mhz,
            "macs_per_s": self.macs_per_s,
            "memory_bandwidth_gbs": self.memory_bandwidth_gbs,
            "ram_bytes": self.ram_bytes,
            "flash_bytes": self.flash_bytes,
            "runtime_flash_bytes": self.runtime_flash_bytes,
            "runtime_ram_bytes": self.runtime_ram_bytes,
            "per_op_overhead_us": self.per_op_overhead_us,
            "op_efficiency": self.op_efficiency,
            "thread_scaling": self.thread_scaling,
            "dtypes": list(self.dtypes),
            "ops": list(self.ops) if self.ops is not None else "all_builtins",
            "sources": self.sources,
        }


def _number(name: str, key: str, value, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"device {name}: {key} must be a number, got {value!r}")
    if positive and value <= 0:
        raise InputError(f"device {name}: {key} must be > 0, got {value}")
    return value


def parse_profile(data: dict, origin: str = "<profile>") -> Device:
    """Validate one profile dict strictly: unknown or missing keys and figures without
    a source are errors, so a profile cannot silently drift from its evidence."""
    if not isinstance(data, dict):
        raise InputError(f"{origin}: a device profile must be a mapping")
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise InputError(f"{origin}: unknown keys {unknown}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise InputError(f"{origin}: missing keys {missing}")
    name = str(data["name"])
    sources = data["sources"]
    if not isinstance(sources, dict):
        raise InputError(f"{origin}: sources must map each figure to its source")
    no_source = [k for k in FIGURES if not str(sources.get(k, "")).strip()]
    if no_source:
        raise InputError(f"{origin}: figures without a source: {no_source}")
    extra = sorted(set(sources) - set(FIGURES))
    if extra:
        raise InputError(f"{origin}: sources for unknown figures {extra}")
    try:
        kind = Kind(data["kind"])
        runtime = Runtime(data["runtime"])
    except ValueError as exc:
        raise InputError(f"{origin}: {exc}") from None
    macs = data["macs_per_s"]
    if not isinstance(macs, dict) or set(macs) - {"fp32", "fp16", "int8"}:
        raise InputError(f"{origin}: macs_per_s must have keys among fp32, fp16, int8")
    for k, v in macs.items():
        _number(name, f"macs_per_s.{k}", v, positive=False)
    eff = data["op_efficiency"] or {}
    if not isinstance(eff, dict):
        raise InputError(f"{origin}: op_efficiency must map op names to factors")
    for k, v in eff.items():
        _number(name, f"op_efficiency.{k}", v)
    dtypes = tuple(data["dtypes"])
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise InputError(f"{origin}: unknown dtypes {bad} (known: {', '.join(DTYPES)})")
    ops = data["ops"]
    if ops == "all_builtins":
        ops_t = None
    elif isinstance(ops, list) and all(isinstance(o, str) for o in ops):
        ops_t = tuple(ops)
    else:
        raise InputError(f"{origin}: ops must be 'all_builtins' or a list of op names")
    scaling = _number(name, "thread_scaling", data["thread_scaling"], positive=False)
    if not 0 <= scaling <= 1:
        raise InputError(f"{origin}: thread_scaling must be within 0..1")
    return Device(
        name=name,
        description=str(data["description"]),
        kind=kind,
        runtime=runtime,
        cores=int(_number(name, "cores", data["cores"])),
        clock_mhz=float(_number(name, "clock_mhz", data["clock_mhz"])),
        macs_per_s={k: float(v) for k, v in macs.items()},
        memory_bandwidth_gbs=float(
            _number(name, "memory_bandwidth_gbs", data["memory_bandwidth_gbs"])
        ),
        ram_bytes=int(_number(name, "ram_bytes", data["ram_bytes"])),
        flash_bytes=int(_number(name, "flash_bytes", data["flash_bytes"])),
        runtime_flash_bytes=int(
            _number(name, "runtime_flash_bytes", data["runtime_flash_bytes"], False)
        ),
        runtime_ram_bytes=int(_number(name, "runtime_ram_bytes", data["runtime_ram_bytes"], False)),
        per_op_overhead_us=float(
            _number(name, "per_op_overhead_us", data["per_op_overhead_us"], False)
        ),
        op_efficiency={k: float(v) for k, v in eff.items()},
        thread_scaling=float(scaling),
        dtypes=dtypes,
        ops=ops_t,
        sources={k: str(v) for k, v in sources.items()},
        calibrate=bool(data.get("calibrate", False)),
        notes=str(data.get("notes", "")),
    )


def load_file(path: str | Path) -> Device:
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a device profile .yaml")
    if not path.exists():
        raise MissingFile(f"{path}: no such device profile file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file, so not a YAML device profile") from None
    device = parse_profile(data, str(path))
    if device.name != path.stem:
        raise InputError(f"{path}: name {device.name!r} must match the file name")
    return device


@functools.cache
def _builtin() -> dict[str, Device]:
    return {p.stem: load_file(p) for p in sorted(HERE.glob("*.yaml"))}


def names() -> list[str]:
    return list(_builtin())


def get(name: str, calibrate: bool = True) -> Device:
    """A built-in profile by name, or a path to a profile YAML. `host` is filled in from
    the cached calibration (running the microbenchmark once if needed)."""
    if name.endswith((".yaml", ".yml")):
        return load_file(name)
    devices = _builtin()
    if name not in devices:
        raise InputError(f"unknown device {name!r}; known: {', '.join(devices)}")
    device = devices[name]
    if device.calibrate and calibrate:
        from mobilecv.bench.calibrate import calibrated

        device = calibrated(device)
    return device
