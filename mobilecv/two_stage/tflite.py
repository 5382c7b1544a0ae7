"""The detector as two .tflite models with numpy between them, and its evaluation.

Why two files: ROI align (tf.image.crop_and_resize) is no TFLite builtin. Converting a
tf.function of crop_and_resize with TFLITE_BUILTINS only fails with "'tf.CropAndResize' op
is neither a custom op nor a flex op ... TF Select ops: CropAndResize"; with SELECT_TF_OPS it
converts (FlexCropAndResize), but ai-edge-litert 2.3's Interpreter then refuses it ("Select
TensorFlow op(s) ... not supported by this interpreter. Make sure you apply/link the Flex
delegate"), and TFLite Micro has no Flex at all (checked with TF 2.21 on this project's
environment). So stage 1 (backbone + RPN, feature map as an output) and stage 2 (the head
on one ROI's pooled features) are converted apart, and proposals and ROI align run in
numpy (mobilecv.two_stage.boxes), as they would beside the interpreter on a device.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mobilecv.errors import InputError, MissingFile, parse_choice
from mobilecv.two_stage import boxes as B
from mobilecv.two_stage.model import (
    STAGE1_OUTPUTS,
    STAGE2_OUTPUTS,
    TwoStage,
    config_of,
    detect,
    model_inputs,
)

TFLITE_FILES = ("stage1.tflite", "stage2.tflite")
VERIFY_SAMPLES = 16


class Mode(enum.StrEnum):
    NONE = "none"  # float32
    INT8 = "int8"  # full integer, int8 inputs and outputs


def convert_two_stage(
    detector: TwoStage,
    out_dir: str | os.PathLike,
    mode: str | Mode = Mode.NONE,
    calibration_samples: int = 200,
) -> tuple[Path, Path]:
    """Both stages as .tflite files in ``out_dir`` (stage1.tflite, stage2.tflite),
    converted and verified in LiteRT by mobilecv.converters.tflite. In int8, stage 1
    calibrates on ``calibration_samples`` training scenes and stage 2 on the pooled
    features of those scenes' proposals (the float stage 1's), all its ROIs."""
    from mobilecv.converters.tflite import convert, save_tflite

    mode = parse_choice(Mode, mode, "mode")
    if int(calibration_samples) < 1:
        raise InputError(f"calibration_samples must be >= 1; got {calibration_samples}")
    images = _calibration_scenes(detector, int(calibration_samples) + VERIFY_SAMPLES)
    rows = _roi_rows(detector, images)
    paths = []
    # Float modes calibrate nothing: the rows then verify the conversion only.
    for model, data, name in zip((detector.stage1, detector.stage2), (images, rows), TFLITE_FILES, strict=True):  # fmt: skip
        samples = len(data) - VERIFY_SAMPLES
        result = convert(
            model, mode.value, calibration=data, samples=samples,
            verify_samples=VERIFY_SAMPLES, progress=False,
        )  # fmt: skip
        paths.append(save_tflite(result.tflite, Path(out_dir) / name, force=True)[0])
    return paths[0], paths[1]


def _calibration_scenes(detector: TwoStage, count: int) -> np.ndarray:
    """The first ``count`` default training scenes (pixels)."""
    from mobilecv.tasks.base import get_task

    return get_task("detection").load("scenes", "train", limit=count).x


def _roi_rows(detector: TwoStage, images: np.ndarray) -> np.ndarray:
    """Stage 2's inputs for ``images``: the pooled, flattened features of their proposals."""
    c = detector.config
    first = detector.run_stage1(model_inputs(images, c))
    rois, _ = B.proposals(first["objectness"], first["deltas"], c.anchor_boxes, c.proposals)
    return B.roi_align(first["features"], rois, c.pool).reshape(-1, c.roi_length)


class TwoStageTflite:
    """The converted pair in LiteRT: ``detect(images)`` as :meth:`TwoStage.detect`.
    ``source`` is the folder :func:`convert_two_stage` wrote or the two file paths; the
    config comes from stage 1's mobilecv metadata."""

    def __init__(self, source: str | os.PathLike | Sequence, threads: int = 1):
        from mobilecv.evaluate import TfliteModel

        if isinstance(source, str | os.PathLike):
            paths = [Path(source) / name for name in TFLITE_FILES]
        else:
            paths = [Path(p) for p in source]
        if len(paths) != 2:
            raise InputError(f"a two-stage detector is two .tflite files; got {len(paths)}")
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise MissingFile(f"missing {', '.join(missing)}")
        self.paths = paths
        self.stage1, self.stage2 = (TfliteModel(p, threads) for p in paths)
        self.config = config_of(self.stage1.info)

    def run_stage1(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.stage1.predict_outputs(x, STAGE1_OUTPUTS)

    def run_stage2(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return self.stage2.predict_outputs(rows, STAGE2_OUTPUTS)

    def detect(self, images: np.ndarray, **options) -> dict[str, np.ndarray]:
        return detect(self.run_stage1, self.run_stage2, self.config, images, **options)


def evaluate_two_stage(detector, data) -> dict[str, float]:
    """COCO mAP@[.5:.95], mAP@0.5 and per-class AP (tasks.detection.coco_map) of a
    :class:`TwoStage` or :class:`TwoStageTflite` on ``data`` (detection ArrayData, or a
    count of the default test scenes)."""
    from mobilecv.tasks.detection import MAP_MAX_DETECTIONS, MAP_SCORE_THRESHOLD, coco_map
    from mobilecv.two_stage.training import scenes

    data = scenes(data, "test")
    found = detector.detect(
        data.x, score_threshold=MAP_SCORE_THRESHOLD, max_detections=MAP_MAX_DETECTIONS
    )
    return coco_map(found, data.y, detector.config.classes)
