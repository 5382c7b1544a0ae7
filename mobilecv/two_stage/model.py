"""The two Keras models, the detector that holds them, saving, loading and MACs."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from mobilecv.errors import InputError, MissingFile
from mobilecv.two_stage import boxes as B

STAGE_FILES = ("stage1.keras", "stage2.keras")
CONFIG_KEY = "two_stage"  # where the config sits in stage 1's ModelInfo.task_options
STAGE1_OUTPUTS = ("objectness", "deltas", "features")
STAGE2_OUTPUTS = ("scores", "deltas")


@dataclass(frozen=True)
class TwoStageConfig:
    """What both halves and the numpy between them need; JSON, stored with stage 1."""

    backbone: str
    width: float
    resolution: int
    input_channels: int
    classes: int
    stride: int
    anchors: tuple[tuple[float, float], ...]  # (w, h) fractions of the image
    proposals: int  # ROIs per image handed to stage 2
    pool: int  # ROI align output is pool x pool
    feature_size: tuple[int, int] = (0, 0)  # stage 1's feature map (rows, cols)
    channels: int = 0  # its channels
    input_range: tuple[float, float] = (0.0, 1.0)
    rpn_hidden: int = 64
    head_hidden: int = 32  # MACs: stage 2 runs once per ROI, ``proposals`` times an image
    head_fc: int = 128

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> TwoStageConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["anchors"] = tuple(tuple(float(v) for v in a) for a in values["anchors"])
        for key in ("feature_size", "input_range"):
            values[key] = tuple(values[key])
        return cls(**values)

    @property
    def anchor_boxes(self) -> np.ndarray:
        return B.anchor_grid(*self.feature_size, np.asarray(self.anchors, np.float32))

    @property
    def roi_length(self) -> int:
        """Stage 2's input: one ROI's pooled features, flattened."""
        return self.pool * self.pool * self.channels


# ------------------------------------------------------------------------ models


def _stage1(K, config: TwoStageConfig):
    """Image -> RPN objectness (rows, cols, B), deltas (rows, cols, B, 4) and the
    backbone's feature map at ``stride``, all named outputs."""
    from mobilecv.features import backbone
    from mobilecv.tasks.detection import merged_features

    trunk = backbone(
        config.backbone,
        width=config.width,
        resolution=config.resolution,
        input_channels=config.input_channels,
        keras=K,
    )
    x = merged_features(K, trunk.output, config.stride, False)
    rows, cols = int(x.shape[1]), int(x.shape[2])
    a = len(config.anchors)
    h = K.layers.Conv2D(config.rpn_hidden, 3, padding="same", activation="relu", name="rpn_conv")(x)  # fmt: skip
    obj = K.layers.Conv2D(a, 1, activation="sigmoid", name="rpn_objectness")(h)
    deltas = K.layers.Conv2D(a * 4, 1, name="rpn_deltas", kernel_initializer="zeros")(h)
    outputs = {
        "objectness": K.layers.Reshape((rows, cols, a), name="objectness")(obj),
        "deltas": K.layers.Reshape((rows, cols, a, 4), name="deltas")(deltas),
        "features": K.layers.Activation("linear", name="features")(x),
    }
    name = f"two_stage1_{config.backbone}_{config.width:g}_{config.resolution}"
    return K.Model(trunk.input, outputs, name=name), (rows, cols), int(x.shape[-1])


def _stage2(K, config: TwoStageConfig):
    """One ROI's pooled features, flat (so the converter calibrates on them as rows, not
    as images) -> class scores (background first, softmax) and class-agnostic deltas."""
    p, c = config.pool, config.channels
    inputs = K.Input((config.roi_length,), name="roi_features")
    x = K.layers.Reshape((p, p, c), name="roi_grid")(inputs)
    x = K.layers.Conv2D(config.head_hidden, 1, activation="relu", name="head_reduce")(x)
    x = K.layers.Conv2D(config.head_hidden, 3, padding="same", activation="relu", name="head_conv")(x)  # fmt: skip
    x = K.layers.Flatten(name="head_flatten")(x)
    x = K.layers.Dense(config.head_fc, activation="relu", name="head_fc")(x)
    outputs = {
        "scores": K.layers.Dense(config.classes + 1, activation="softmax", name="scores")(x),
        "deltas": K.layers.Dense(4, name="deltas", kernel_initializer="zeros")(x),
    }
    return K.Model(inputs, outputs, name=f"two_stage2_{config.pool}x{config.pool}x{c}")


def _with_info(model, config: TwoStageConfig, stage: int):
    """The model with its mobilecv info: the input range and, on stage 1, the config (a
    .tflite of stage 1 then describes the whole detector)."""
    from mobilecv.modelinfo import ModelInfo, set_info

    input_range = config.input_range if stage == 1 else (0.0, 1.0)
    options = {CONFIG_KEY: config.to_dict()} if stage == 1 else {}
    source = {"model": "two_stage", "stage": stage, "backbone": config.backbone}
    return set_info(model, ModelInfo(input_range=input_range, source=source, task_options=options))


# ---------------------------------------------------------------------- detector


class TwoStage:
    """A Faster R-CNN style detector: ``stage1`` (backbone + RPN) and ``stage2`` (the ROI
    head), Keras models, with numpy proposals and ROI align between them."""

    def __init__(self, stage1, stage2, config: TwoStageConfig):
        self.stage1, self.stage2, self.config = stage1, stage2, config

    def run_stage1(self, x: np.ndarray) -> dict[str, np.ndarray]:
        out = self.stage1.predict(x, batch_size=64, verbose=0)
        return {k: np.asarray(out[k]) for k in STAGE1_OUTPUTS}

    def run_stage2(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        out = self.stage2.predict(rows, batch_size=512, verbose=0)
        return {k: np.asarray(out[k]) for k in STAGE2_OUTPUTS}

    def detect(self, images: np.ndarray, **options) -> dict[str, np.ndarray]:
        """Pixel images (N, H, W, C), 0..255 -> postprocess.DETECTIONS (boxes as fractions).
        ``options``: score_threshold, iou_threshold, max_detections."""
        return detect(self.run_stage1, self.run_stage2, self.config, images, **options)

    def save(self, directory: str | os.PathLike, force: bool = True) -> Path:
        """Both models into ``directory`` (stage1.keras, stage2.keras, atomically each)."""
        from mobilecv.modelio import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for model, name in zip((self.stage1, self.stage2), STAGE_FILES, strict=True):
            save_model(model, directory / name, force=force)
        return directory


def model_inputs(images: np.ndarray, config: TwoStageConfig) -> np.ndarray:
    """Pixel images as stage 1 takes them (resolution, channels, input range)."""
    from mobilecv.data.datasets import prepare_images

    x = prepare_images(images, config.resolution, config.input_channels, config.input_range)
    return np.asarray(x, np.float32)


def detect(
    stage1: Callable[[np.ndarray], dict],
    stage2: Callable[[np.ndarray], dict],
    config: TwoStageConfig,
    images: np.ndarray,
    **options,
) -> dict[str, np.ndarray]:
    """The whole pipeline over any runtime's two stages (Keras or LiteRT): stage 1,
    proposals, ROI align, stage 2, decode."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise InputError(f"images must be (N, H, W, C) pixels; got shape {images.shape}")
    first = stage1(model_inputs(images, config))
    rois, _ = B.proposals(
        first["objectness"], first["deltas"], config.anchor_boxes, config.proposals
    )
    pooled = B.roi_align(first["features"], rois, config.pool)
    second = stage2(pooled.reshape(len(pooled), -1))
    n, r = rois.shape[:2]
    scores = second["scores"].reshape(n, r, -1)
    return B.detections(rois, scores, second["deltas"].reshape(n, r, 4), **options)


# ------------------------------------------------------------------------ public


def build_two_stage(
    backbone: str = "mobilenet_v2",
    width: float = 0.5,
    resolution: int = 128,
    input_channels: int = 3,
    classes: int = 10,
    stride: int = 16,
    anchors: int | Sequence = 3,
    proposals: int = 16,
    pool: int = 7,
    keras: str | ModuleType | None = None,
) -> TwoStage:
    """A two-stage detector on registered network ``backbone``: its feature map at
    ``stride`` feeds the RPN (``anchors``: a count from the detection task's k-means
    table, or (w, h) pairs) and ROI align (``pool`` x ``pool``) of ``proposals`` ROIs an
    image feeds the head, which scores background + ``classes``."""
    from mobilecv._tf import get_keras
    from mobilecv.modelinfo import get_info
    from mobilecv.tasks.detection import anchors_array

    for name, value, low in (("proposals", proposals, 1), ("pool", pool, 1), ("classes", classes, 1)):  # fmt: skip
        if int(value) < low:
            raise InputError(f"{name} must be >= {low}; got {value}")
    K = get_keras(keras)
    config = TwoStageConfig(
        backbone=backbone, width=float(width), resolution=int(resolution),
        input_channels=int(input_channels), classes=int(classes), stride=int(stride),
        anchors=tuple(map(tuple, anchors_array(anchors).astype(np.float64).round(6).tolist())),
        proposals=int(proposals), pool=int(pool),
    )  # fmt: skip
    stage1, feature_size, channels = _stage1(K, config)
    config = dataclasses.replace(
        config,
        feature_size=feature_size,
        channels=channels,
        input_range=tuple(get_info(stage1).input_range),
    )
    stage2 = _stage2(K, config)
    return TwoStage(_with_info(stage1, config, 1), _with_info(stage2, config, 2), config)


def config_of(info) -> TwoStageConfig:
    """The detector's config from stage 1's ModelInfo (a .keras or .tflite file's)."""
    data = (info.task_options if info is not None else {}).get(CONFIG_KEY)
    if not data:
        raise InputError("not a two-stage detector's stage 1 (no two_stage config in its info)")
    return TwoStageConfig.from_dict(data)


def load_two_stage(directory: str | os.PathLike) -> TwoStage:
    """The detector :meth:`TwoStage.save` wrote into ``directory``."""
    from mobilecv.modelinfo import get_info
    from mobilecv.modelio import load_model

    directory = Path(directory)
    paths = [directory / name for name in STAGE_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingFile(f"not a saved two-stage detector: missing {', '.join(missing)}")
    stage1, stage2 = (load_model(p) for p in paths)
    return TwoStage(stage1, stage2, config_of(get_info(stage1)))


def macs(detector: TwoStage) -> dict[str, int]:
    """Multiply-accumulates at batch 1 (mobilecv.profiling): stage 1 per image, stage 2 per
    ROI, and the total of one image with its ``proposals`` ROIs. ROI align and NMS (numpy,
    a few thousand operations) are not counted."""
    from mobilecv.profiling import profile

    first, second = profile(detector.stage1).macs, profile(detector.stage2).macs
    total = first + detector.config.proposals * second
    return {"stage1": int(first), "stage2_per_roi": int(second), "total": int(total)}
