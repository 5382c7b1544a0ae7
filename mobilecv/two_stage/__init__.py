"""A region-proposal baseline: a small two-stage detector in the manner of Faster R-CNN
(Ren, He, Girshick & Sun, NeurIPS 2015), on the same backbones and scenes as ``yolo``.

- Stage 1 (a Keras model): image -> backbone feature map at ``stride`` -> the region
  proposal network, a 3x3 conv then per anchor an objectness (sigmoid) and box deltas
  (dx, dy, dw, dh) over k-means anchor shapes (mobilecv.anchors) at every cell. The
  feature map is an output too: stage 2 needs it.
- Between the stages, numpy (mobilecv.two_stage.boxes): decode the proposals, clip, NMS
  (mobilecv.postprocess.nms), keep the best ``proposals``; ROI align of the feature map
  to ``pool`` x ``pool`` (bilinear, tf.image.crop_and_resize's sampling, reproduced).
- Stage 2 (a second Keras model): one ROI's pooled features -> softmax over background +
  classes and class-agnostic box refinement deltas; per-class NMS.

Training is approximate joint training (mobilecv.two_stage.training); the converted form
is two .tflite files with the numpy between them (mobilecv.two_stage.tflite says why).
Public API: build_two_stage, train_two_stage, load_two_stage, convert_two_stage,
TwoStageTflite, evaluate_two_stage, macs. Importing this package does not import
TensorFlow.
"""

from mobilecv.two_stage.model import TwoStage, TwoStageConfig, build_two_stage, load_two_stage, macs
from mobilecv.two_stage.tflite import TwoStageTflite, convert_two_stage, evaluate_two_stage
from mobilecv.two_stage.training import train_two_stage

__all__ = [
    "TwoStage",
    "TwoStageConfig",
    "TwoStageTflite",
    "build_two_stage",
    "convert_two_stage",
    "evaluate_two_stage",
    "load_two_stage",
    "macs",
    "train_two_stage",
]
