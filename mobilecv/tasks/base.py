"""The task interface and its registry."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from mobilecv.errors import InputError

_TASKS: dict[str, Task] = {}
# The modules that register the built-in tasks, imported on first use.
_BUILTIN = (
    "classification", "localisation", "landmarks", "detection", "centroids", "segmentation",
    "stylization", "embedding",
)  # fmt: skip


class Task:
    """One kind of problem. Subclasses set the class attributes and implement the methods.

    Labels (``ArrayData.y``) are a (N,) integer array for classification and a dict of (N,
    ...) arrays for every other task. Model outputs are a dict of named arrays; a model's
    output layers carry those names, so a converted model's outputs are matched by name.
    """

    name: ClassVar[str]
    outputs: ClassVar[tuple[str, ...]]  # the model's output names, in order
    primary_metric: ClassVar[str]  # the figure sweeps, recipes and reports rank by
    higher_is_better: ClassVar[bool] = True
    agreement_metric: ClassVar[str]  # the converter's headline float-vs-converted figure
    test_time: ClassVar[frozenset[str]] = frozenset()  # "multi_crop", "ensemble"
    # How a horizontal mirror reorders labelled points (None: no points, or no reordering).
    mirror_permutation: ClassVar[tuple[int, ...] | None] = None
    # The data sets its labels come from (Task.load's ``source``); classification's are
    # mobilecv.data's, and it does not use this.
    sources: ClassVar[tuple[str, ...]] = ("scenes",)
    # The backbone feature maps the head reads (None: mobilecv.features' default strides).
    feature_strides: ClassVar[tuple[int, ...] | None] = None
    legend: ClassVar[str] = "red: prediction, green: label"  # how paint() draws

    # ------------------------------------------------------------------ model
    def options_of(self, knobs: Mapping[str, Any]) -> dict[str, Any]:
        """What this task needs, beyond the outputs, to read a model built with the builder
        keyword arguments ``knobs`` (a detector's anchors). Stored with the model as
        ``ModelInfo.task_options``; must be JSON."""
        return {}

    def bind(self, options: Mapping[str, Any], model=None) -> Task:
        """This task for one model: ``options`` are its ``ModelInfo.task_options``; the
        Keras ``model`` itself, when there is one, for what only its graph tells."""
        return self

    def head(self, K, features: Mapping[str, Any], *, classes: int, **options) -> dict:
        """Output tensors by name, attached to the backbone's feature maps."""
        raise NotImplementedError

    def compile(self, model, optimizer, **options) -> None:
        """Compile ``model`` with this task's loss; ``options`` are the loss's keywords
        (the loss options a user passes, see :meth:`loss_options`)."""
        raise NotImplementedError

    def loss_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` checked against the keywords of :meth:`compile` (a name it does not
        take is an InputError listing those it takes); their values :meth:`compile` checks."""
        import inspect

        allowed = [
            p.name
            for p in inspect.signature(self.compile).parameters.values()
            if p.kind is p.KEYWORD_ONLY
            or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)
        ]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
            raise InputError(f"the {self.name} loss has no option {unknown[0]!r}; {takes}")
        return dict(options)

    # ------------------------------------------------------------------- data
    def load(self, source: str, split: str, *, limit: int | None = None, scenes=None):
        """One split as ArrayData with this task's labels. ``scenes`` overrides the task's
        scene config when ``source`` is "scenes"."""
        raise NotImplementedError

    def keras_targets(self, y) -> tuple[Any, Any]:
        """Labels -> (Keras targets, sample weights or None) for ``fit``/``evaluate``."""
        raise NotImplementedError

    def batch_order(self, y, batch_size: int, seed: int) -> np.ndarray | None:
        """The sample indices of one training epoch, in batch order (``batch_size``
        consecutive indices a batch), for a loss that needs a batch's make-up (a metric
        loss: P identities x K images); None: the trainer shuffles, as for most tasks."""
        return None

    # ------------------------------------------------------------------ numpy
    def decode(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def score(self, outputs: Mapping[str, np.ndarray], y) -> dict[str, float]:
        """The task's metrics of raw model outputs against labels (numpy only)."""
        raise NotImplementedError

    def agreement(
        self, reference: Mapping[str, np.ndarray], converted: Mapping[str, np.ndarray]
    ) -> dict[str, float]:
        """How closely a converted model's outputs follow the float model's."""
        raise NotImplementedError

    def paint(self, ax, decoded: Mapping[str, np.ndarray], y, i: int, size: float) -> None:
        """Draw sample ``i``'s prediction (red) and label (green) on ``ax`` (pixels of a
        ``size``-pixel image). Tasks without a picture leave it empty."""

    def draw(self, data, outputs: Mapping[str, np.ndarray], path, title: str = "", count: int = 12):
        """A grid of the first ``count`` samples of ``data`` with predictions and labels,
        saved as a PNG (atomically); the title carries the data's provenance."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from mobilecv.fileio import atomic_path

        decoded = self.decode(outputs)
        n = min(count, len(data))
        cols = min(n, 6)
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
        for i, ax in enumerate(axes.ravel()):
            ax.axis("off")
            if i >= n:
                continue
            image = data.x[i]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
            self.paint(ax, decoded, data.y, i, float(image.shape[1]))
        heading = "; ".join(t for t in (title, data.provenance[:110]) if t)
        fig.suptitle(f"{heading}\n{self.legend}", fontsize=8)
        fig.tight_layout()
        with atomic_path(path, force=True) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        return path

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "outputs": list(self.outputs),
            "primary_metric": self.primary_metric,
            "higher_is_better": self.higher_is_better,
            "agreement_metric": self.agreement_metric,
            "test_time": sorted(self.test_time),
        }


def draw_box(ax, corners, size: float, colour: str, style: str = "-", width: float = 1.5):
    """One (x0, y0, x1, y1) box of image fractions on ``ax``, in pixels of a ``size`` image."""
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = np.asarray(corners) * size
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, ls=style, lw=width))


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    if cls.name in _TASKS:
        raise ValueError(f"task {cls.name!r} is already registered")
    _TASKS[cls.name] = cls()
    return cls


def _ensure_loaded() -> None:
    import importlib

    for module in _BUILTIN:
        importlib.import_module(f"mobilecv.tasks.{module}")


def task_for(info, model=None) -> Task:
    """The registered task of a model's ModelInfo, bound to the model's task options (and
    to the Keras ``model``, when there is one)."""
    return get_task(info.task).bind(info.task_options, model)


def get_task(name: str | Task) -> Task:
    if isinstance(name, Task):
        return name
    _ensure_loaded()
    if name not in _TASKS:
        close = difflib.get_close_matches(str(name), _TASKS, n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise InputError(f"unknown task {name!r}{hint}; tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def list_tasks() -> list[str]:
    _ensure_loaded()
    return sorted(_TASKS)


def as_outputs(model_outputs, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A model's outputs (dict, list or single array) as a dict in the task's names."""
    if isinstance(model_outputs, Mapping):
        missing = [n for n in names if n not in model_outputs]
        if missing:
            raise InputError(f"model outputs {sorted(model_outputs)} lack {missing}")
        return {n: np.asarray(model_outputs[n]) for n in names}
    values = model_outputs if isinstance(model_outputs, list | tuple) else [model_outputs]
    if len(values) != len(names):
        raise InputError(f"expected {len(names)} outputs ({', '.join(names)}), got {len(values)}")
    return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}


def deepest(features: Mapping[str, Any]):
    """The feature map with the largest stride."""
    return features[max(features, key=lambda name: int(name.removeprefix("stride")))]


def backbone_features(
    backbone: str,
    *,
    keras,
    width: float,
    depth: float,
    resolution: int,
    input_channels: int,
    strides: tuple[int, ...] | None = None,
):
    """Network ``backbone`` as feature maps (mobilecv.features) scaled by a task model's
    knobs; a knob the backbone family cannot honour (e.g. depth for AlexNet) is an
    InputError naming it."""
    from mobilecv import registry
    from mobilecv.features import backbone_from_trunk

    entry = registry.get(backbone)
    knobs = {"width": width, "resolution": resolution, "input_channels": input_channels}
    if depth != 1.0:
        knobs["depth"] = depth
    unsupported = [k for k in knobs if k not in entry.supports]
    if unsupported:
        raise InputError(f"backbone {backbone} cannot honour {', '.join(map(repr, unsupported))}")
    trunk = registry.build(backbone, include_top=False, keras=keras, **knobs)
    return backbone_from_trunk(trunk, strides, keras=keras)


def build_on_backbone(
    task: str,
    model: str,
    *,
    backbone: str,
    keras,
    width: float,
    depth: float,
    resolution: int,
    input_channels: int,
    classes: int = 0,
    **head_options,
):
    """Registered model ``model`` of ``task``: network ``backbone`` as feature maps, plus
    the task's head built with ``head_options``. A task model's builder passes its own
    keyword arguments here (``**locals()``), so its signature stays the list of options.

    Width, depth and resolution scale the backbone as they scale every model; a knob the
    backbone family cannot honour (e.g. depth for AlexNet) is an InputError naming it.
    """
    features = backbone_features(
        backbone, keras=keras, width=width, depth=depth, resolution=resolution,
        input_channels=input_channels, strides=get_task(task).feature_strides,
    )  # fmt: skip
    outputs = get_task(task).head(keras, features.output, classes=classes, **head_options)
    return keras.Model(features.input, outputs, name=f"{model}_{backbone}_{width:g}_{resolution}")


# ----------------------------------------------------------------------- scenes

# Scenes per split when a task trains on generated scenes ("--data scenes").
SCENE_COUNTS = {"train": 12_000, "validation": 1_500, "test": 3_000}


def single_object_scenes(split: str, limit: int | None, config):
    """Scenes with at most one object each (localisation, landmarks) and their per-scene
    arrays: (scene set, has_object (N,), first object's row index (N,), -1 when empty)."""
    from mobilecv.data.datasets import Split
    from mobilecv.data.scenes import generate

    split = Split(split)
    if config.objects[1] > 1:
        raise InputError(
            f"this task takes one object a scene; the scene config asks {config.objects}"
        )
    count = SCENE_COUNTS[split.value] if limit is None else int(limit)
    if count < 1:
        raise InputError(f"limit must be >= 1, got {limit}")
    scenes = generate(split, count, config)
    has = np.diff(scenes.offsets) > 0
    rows = np.where(has, scenes.offsets[:-1], -1)
    return scenes, has, rows


def scene_config(defaults, overrides: Mapping[str, Any] | None):
    """A task's default SceneConfig with a recipe's or caller's overrides (unknown keys
    are an InputError naming them); a whole SceneConfig given is used as it is."""
    import dataclasses

    if isinstance(overrides, type(defaults)):
        return overrides
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(defaults)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(
            f"unknown scene option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return dataclasses.replace(defaults, **overrides)
