"""A YOLO detector whose graph ends in its post-processing: decode, score threshold and
per-class NMS, with outputs of fixed shape, so a .tflite gives detections directly.

:func:`with_nms` wraps a ``yolo`` model (mobilecv.tasks.detection) for batch 1. Its
outputs are those of the numpy :func:`mobilecv.postprocess.detection`, by the same names:
``boxes`` (1, D, 4) corners, ``scores`` (1, D), ``classes`` (1, D) int32 (-1 where unused)
and ``count`` (1,) int32, D = ``max_detections``.

NMS op: TFLite's builtin NON_MAX_SUPPRESSION_V5, not the TFLite_Detection_PostProcess
custom op that LiteRT also resolves, because
- the converter emits the builtin straight from ``tf.raw_ops.NonMaxSuppressionV5`` (with
  ``pad_to_max_output_size`` its outputs have a fixed size): no custom op to annotate
  (``experimental_implements``), allow or register, and no Select TF (Flex) op;
- the custom op decodes SSD's encoding, centre = t / scale * anchor + anchor centre and
  size = anchor * exp(t / scale), over one anchor box per candidate; ours is (col + s) / S
  and anchor * (2 s)^2 with an objectness factor (mobilecv.postprocess.yolo_boxes), which
  it can only be fed through a LOG of values that reach 0.
LiteRT's builtin keeps the numpy reference's rules: kept when the score is > the
threshold, suppressed when the IoU is >= the IoU threshold (measured: TensorFlow's own
kernel, which runs the Keras model, keeps a box whose IoU equals the threshold), best
first. It breaks score ties in no set order; the numpy reference takes the lower index.
Per-class NMS is one NMS over boxes shifted by class id * 2 (boxes lie in [0, 1], so two
classes never overlap). The costs: NMS has float kernels only, so a full-integer model
computes its tail (decode and NMS over S*S*B candidates) in float after a DEQUANTIZE
(`convert` keeps exactly this layer float), and TFLite Micro has no NMS kernel at all
(it has DETECTION_POSTPROCESS): a microcontroller keeps the numpy post-processing.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from types import ModuleType

import numpy as np

from mobilecv import postprocess
from mobilecv._tf import get_keras, is_keras3_model, tf
from mobilecv.errors import InputError
from mobilecv.modelinfo import get_info, set_info

LAYER_NAME = "yolo_nms"  # converters.tflite keeps the ops of this layer float in int8
OUTPUTS = postprocess.DETECTIONS  # the numpy decoder's names and meaning
CLASS_OFFSET = 2.0  # per-class NMS: class c's boxes move to [2c, 2c + 1]
DEFAULTS = {"max_detections": 50, "score_threshold": 0.25, "iou_threshold": 0.5}


def yolo_nms(objectness, box, scores, *, anchors, max_detections: int,
             score_threshold: float, iou_threshold: float):  # fmt: skip
    """One image's YOLO outputs -> (boxes (D, 4), scores (D,), classes (D,), count ()):
    mobilecv.postprocess.detection in TensorFlow ops that TFLite has as builtins."""
    T = tf()
    corners, confidence, classes = _decode(objectness, box, scores, anchors)
    shifted = corners + CLASS_OFFSET * T.cast(classes, T.float32)[:, None]
    index, _, count = T.raw_ops.NonMaxSuppressionV5(
        boxes=shifted, scores=confidence, max_output_size=max_detections,
        iou_threshold=iou_threshold, score_threshold=score_threshold, soft_nms_sigma=0.0,
        pad_to_max_output_size=True,
    )  # fmt: skip
    used = T.range(max_detections) < count
    return (
        T.where(used[:, None], T.gather(corners, index), 0.0),
        T.where(used, T.gather(confidence, index), 0.0),
        T.where(used, T.gather(classes, index), -1),
        count,
    )


def _decode(objectness, box, scores, anchors):
    """postprocess.yolo_boxes of one image in TF ops: (K, 4) corners clipped to [0, 1],
    (K,) confidence, (K,) int32 classes, K = S_h * S_w * B in row, column, anchor order."""
    T = tf()
    s_h, s_w, b = (int(d) for d in objectness.shape[1:4])
    k = s_h * s_w * b
    rows, cols, which = (g.reshape(-1) for g in np.meshgrid(
        np.arange(s_h), np.arange(s_w), np.arange(b), indexing="ij"))  # fmt: skip
    anchors = np.asarray(anchors, np.float32)[which]
    box = T.reshape(box, (k, 4))
    scores = T.reshape(scores, (k, int(scores.shape[-1])))
    cx = (cols.astype(np.float32) + box[:, 0]) / s_w
    cy = (rows.astype(np.float32) + box[:, 1]) / s_h
    w = anchors[:, 0] * T.square(2.0 * box[:, 2])
    h = anchors[:, 1] * T.square(2.0 * box[:, 3])
    corners = T.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    confidence = T.reshape(objectness, (k,)) * T.reduce_max(scores, axis=-1)
    classes = T.argmax(scores, axis=-1, output_type=T.int32)
    return T.clip_by_value(corners, 0.0, 1.0), confidence, classes


@cache
def layer_class(K: ModuleType) -> type:
    """The Keras layer (for tf_keras or Keras 3) that runs :func:`yolo_nms` on a batch of 1."""

    class YoloNms(K.layers.Layer):
        def __init__(self, anchors, max_detections=50, score_threshold=0.25,
                     iou_threshold=0.5, **kwargs):  # fmt: skip
            super().__init__(**kwargs)
            self.anchors = [[float(v) for v in pair] for pair in anchors]
            self.max_detections = int(max_detections)
            self.score_threshold = float(score_threshold)
            self.iou_threshold = float(iou_threshold)

        def call(self, inputs):
            found = yolo_nms(*inputs, anchors=self.anchors, max_detections=self.max_detections,
                             score_threshold=self.score_threshold,
                             iou_threshold=self.iou_threshold)  # fmt: skip
            return [tf().expand_dims(t, 0) for t in found]

        def compute_output_shape(self, input_shape):
            d = self.max_detections
            return [(1, d, 4), (1, d), (1, d), (1,)]

        def get_config(self):
            return {**super().get_config(), **self.settings()}

        def settings(self) -> dict:
            keys = ("anchors", "max_detections", "score_threshold", "iou_threshold")
            return {key: getattr(self, key) for key in keys}

    return K.utils.register_keras_serializable(package="mobilecv")(YoloNms)


def nms_settings(max_detections: int, score_threshold: float, iou_threshold: float) -> dict:
    """The checked settings, as they are recorded in ModelInfo.task_options["nms"]."""
    if int(max_detections) != max_detections or int(max_detections) < 1:
        raise InputError(f"max_detections must be a whole number >= 1; got {max_detections}")
    if not 0.0 <= float(score_threshold) < 1.0:
        raise InputError(f"score_threshold must be in [0, 1); got {score_threshold}")
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise InputError(f"iou_threshold must be in (0, 1]; got {iou_threshold}")
    return {"max_detections": int(max_detections), "score_threshold": float(score_threshold),
            "iou_threshold": float(iou_threshold)}  # fmt: skip


def check_detector(model) -> dict:
    """The task options of a YOLO detector without in-graph NMS, else an InputError."""
    info = get_info(model)
    if info.task != "detection":
        raise InputError(
            f"NMS in the graph needs a detection model; this one's task is {info.task}"
        )
    if "nms" in info.task_options:
        raise InputError("this detector already ends in NMS")
    if "anchors" not in info.task_options:
        raise InputError("this detection model carries no anchors (ModelInfo.task_options)")
    names = set(getattr(model, "output_names", None) or ())
    if not {"objectness", "box", "scores"} <= names:
        raise InputError(f"expected YOLO outputs objectness, box, scores; got {sorted(names)}")
    return info.task_options


def with_nms(model, *, max_detections: int = 50, score_threshold: float = 0.25,
             iou_threshold: float = 0.5):  # fmt: skip
    """``model`` (a ``yolo`` detector) followed by its decode and per-class NMS: a new
    model of the same Keras, for batch 1, sharing its layers and weights, with outputs
    boxes, scores, classes and count (module docstring). Its ModelInfo carries the
    anchors and records the settings as ``task_options["nms"]``."""
    options = check_detector(model)
    settings = nms_settings(max_detections, score_threshold, iou_threshold)
    K = get_keras("keras3" if is_keras3_model(model) else "tf_keras")
    inputs = K.Input(tuple(model.inputs[0].shape[1:]), batch_size=1, name="image")
    raw = model(inputs)
    layer = layer_class(K)(options["anchors"], name=LAYER_NAME, **settings)
    found = layer([raw["objectness"], raw["box"], raw["scores"]])
    named = zip(OUTPUTS, found, strict=True)
    outputs = {name: K.layers.Identity(name=name)(t) for name, t in named}
    wrapped = K.Model(inputs, outputs, name=f"{model.name}_nms")
    info = get_info(model)
    task_options = {**info.task_options, "nms": settings}
    return set_info(wrapped, dataclasses.replace(info, task_options=task_options))


def has_nms(model_or_info) -> bool:
    """Whether a model (or its ModelInfo) decodes and suppresses in its graph."""
    info = model_or_info if hasattr(model_or_info, "task_options") else get_info(model_or_info)
    return "nms" in info.task_options
