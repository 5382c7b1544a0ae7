"""Semantic segmentation: a class for every pixel (course week 3, the U-Net).

- Output ``mask`` (N, H, W, C): per-pixel class probabilities, class 0 the background. The
  U-Nets (mobilecv.models.unet) give it at the input's size, or, with unpadded ("valid")
  convolutions, at the size of the input's centre.
- Labels: ``mask`` (N, H, W) uint8 class ids at the data's size. They move with the image
  under augmentation (mobilecv.data.augment). For training and scoring a label map is
  resized to the model's input by the nearest pixel, then centre-cropped to the output.
- Loss: per-pixel softmax cross-entropy, plus ``dice_weight`` times the soft Dice loss
  (1 - mean over classes of 2|P.T| / (|P| + |T|), per image), which counters a small
  foreground's imbalance against the background.
- Metrics: pixel accuracy, per-class IoU and their mean (mIoU, the primary figure; classes
  absent from both labels and predictions are left out), and for two classes the
  foreground IoU and Dice (F1) of class 1, as microscopy reports them.
- Decoding (numpy, :func:`mobilecv.postprocess.segmentation`, shared with the on-device
  script): the per-pixel argmax; :func:`mobilecv.postprocess.overlay` colours it.
- Data: ``scenes`` (per-class masks from the objects' own pixels: Fashion-MNIST's 10
  classes + background, the scene generator's disjoint splits) and ``nuclei`` (real
  microscopy, mobilecv.data.nuclei).
"""

from __future__ import annotations

import numpy as np

from mobilecv import postprocess
from mobilecv.errors import InputError
from mobilecv.tasks.base import SCENE_COUNTS, Task, register_task, scene_config


def default_scenes():
    """1 to 4 Fashion-MNIST items a scene at 96 px, each 25-55 % of the scene's side."""
    from mobilecv.data.scenes import SceneConfig

    return SceneConfig(size=96, objects=(1, 4), scale=(0.25, 0.55))


# -------------------------------------------------------------------------- loss


def segmentation_loss(dice_weight: float):
    """Per-pixel cross-entropy of probabilities against integer maps (N, H, W), plus
    ``dice_weight`` times each image's soft Dice loss over the classes."""
    from mobilecv._tf import tf

    def loss(y_true, y_pred):
        T = tf()
        p = T.clip_by_value(y_pred, 1e-7, 1.0)
        truth = T.one_hot(T.cast(y_true, T.int32), T.shape(y_pred)[-1])
        cross_entropy = -T.reduce_sum(truth * T.math.log(p), axis=-1)
        if not dice_weight:
            return cross_entropy
        overlap = T.reduce_sum(truth * y_pred, axis=(1, 2))
        total = T.reduce_sum(truth + y_pred, axis=(1, 2))
        dice = 1.0 - T.reduce_mean((2.0 * overlap + 1.0) / (total + 1.0), axis=-1)
        return cross_entropy + dice_weight * dice[:, None, None]

    return loss


# ----------------------------------------------------------------------- metrics


def confusion(predicted: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) pixel counts: row the label, column the prediction."""
    index = truth.astype(np.int64).ravel() * classes + predicted.astype(np.int64).ravel()
    return np.bincount(index, minlength=classes * classes).reshape(classes, classes)


def confusion_scores(matrix: np.ndarray) -> dict[str, float]:
    """Pixel accuracy, per-class IoU ("iou_K"), mIoU over the classes seen in labels or
    predictions, and for two classes the foreground (class 1) IoU and Dice."""
    matrix = np.asarray(matrix, np.float64)
    hits = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - hits
    seen = union > 0
    iou = np.divide(hits, union, out=np.zeros_like(hits), where=seen)
    scores = {
        "pixel_accuracy": float(hits.sum() / max(matrix.sum(), 1.0)),
        "miou": float(iou[seen].mean()) if seen.any() else 1.0,
        **{f"iou_{k}": float(iou[k]) for k in range(len(iou)) if seen[k]},
    }
    if len(matrix) == 2:
        scores["foreground_iou"] = float(iou[1]) if seen[1] else 1.0
        denominator = matrix[1].sum() + matrix[:, 1].sum()
        scores["dice"] = float(2 * hits[1] / denominator) if denominator else 1.0
    return scores


def labels_to_output(labels: np.ndarray, input_size: int, output_shape) -> np.ndarray:
    """Label maps (N, h, w) as a model sees them: resized to its ``input_size`` input by the
    nearest pixel, then centre-cropped to its (H, W) output."""
    rows = postprocess.nearest_indices(labels.shape[1], input_size)
    cols = postprocess.nearest_indices(labels.shape[2], input_size)
    top = (input_size - int(output_shape[0])) // 2
    left = (input_size - int(output_shape[1])) // 2
    rows = rows[top : top + int(output_shape[0])]
    cols = cols[left : left + int(output_shape[1])]
    return np.asarray(labels)[:, rows][:, :, cols]


# -------------------------------------------------------------------------- task


@register_task
class Segmentation(Task):
    name = "segmentation"
    outputs = postprocess.TASK_OUTPUTS["segmentation"]
    primary_metric = "miou"
    agreement_metric = "miou_agreement"
    feature_strides = (2, 4, 8, 16, 32)  # the U-Net decoder's skips
    dice_weight = 0.0
    sources = ("scenes", "nuclei")
    legend = "colours: predicted classes (postprocess.PALETTE), green outline: label"

    def __init__(self, input_size: int | None = None, output_size: tuple | None = None):
        self.input_size = input_size  # the model's input side (None: as its output)
        self.output_size = output_size  # (H, W) of its mask, once bound to a Keras model

    def options_of(self, knobs) -> dict:
        # An unpadded U-Net's mask is the centre of its input: where, needs the input size.
        if knobs.get("padding") == "valid":
            return {"input_size": int(knobs["resolution"])}
        return {}

    def bind(self, options, model=None):
        input_size = options.get("input_size")
        if model is None:
            return Segmentation(input_size) if input_size else self
        output = tuple(int(d) for d in model.outputs[0].shape[1:3])
        return Segmentation(int(model.inputs[0].shape[1]), output)

    def head(self, K, features, *, classes: int, decoder_width: float = 1.0) -> dict:
        from mobilecv.models.unet import skip_decoder

        return {"mask": skip_decoder(K, features, classes=classes, width=decoder_width)}

    def compile(self, model, optimizer, dice_weight: float | None = None):
        from mobilecv._tf import get_keras, is_keras3_model

        weight = self.dice_weight if dice_weight is None else float(dice_weight)
        if weight < 0:
            raise InputError(f"dice_weight must be >= 0; got {dice_weight}")
        K = get_keras("keras3" if is_keras3_model(model) else "tf_keras")
        model.compile(
            optimizer=optimizer,
            loss={"mask": segmentation_loss(weight)},
            metrics={"mask": [K.metrics.SparseCategoricalAccuracy(name="pixel_accuracy")]},
        )

    def load(self, source: str, split: str, *, limit: int | None = None, scenes=None):
        if source == "nuclei":
            from mobilecv.data import nuclei

            return nuclei.load(split, scene_config(nuclei.NucleiConfig(), scenes), limit)
        if source != "scenes":
            raise InputError(
                f"segmentation trains on {' or '.join(self.sources)} (--data), not {source!r}"
            )
        return _scene_masks(split, limit, scene_config(default_scenes(), scenes))

    def keras_targets(self, y):
        """The label map at the model's output (tf ops, inside tf.data): at its input
        size (where to_dataset has put it already), then centre-cropped."""
        from mobilecv._tf import tf
        from mobilecv.data.datasets import resize_nearest

        mask = tf().cast(y["mask"], tf().int32)
        if self.output_size is not None:
            mask = resize_nearest(mask, (self.input_size, self.input_size))
            top, left = ((self.input_size - o) // 2 for o in self.output_size)
            mask = mask[top : top + self.output_size[0], left : left + self.output_size[1]]
        return {"mask": mask}, None

    def decode(self, outputs):
        return postprocess.segmentation(outputs["mask"], self.input_size)

    def score(self, outputs, y) -> dict[str, float]:
        probabilities = np.asarray(outputs["mask"])
        classes = probabilities.shape[-1]
        size = self.input_size or probabilities.shape[1]
        truth = labels_to_output(np.asarray(y["mask"]), size, probabilities.shape[1:3])
        predicted = self.decode(outputs)["classes"]
        return confusion_scores(confusion(predicted, truth, classes))

    def agreement(self, reference, converted) -> dict[str, float]:
        a, b = self.decode(reference)["classes"], self.decode(converted)["classes"]
        scores = confusion_scores(confusion(b, a, np.asarray(reference["mask"]).shape[-1]))
        return {
            "miou_agreement": scores["miou"],
            "pixel_agreement": scores["pixel_accuracy"],
        }

    def paint(self, ax, decoded, y, i: int, size: float) -> None:
        """The prediction's colours over the image; the label's outlines in green."""
        shown = ax.images[0]
        coloured = postprocess.overlay(
            np.asarray(shown.get_array()), decoded["classes"][i], margin=float(decoded["margin"])
        )
        shown.set_data(coloured)
        truth = np.asarray(y["mask"][i])
        if truth.any():
            ax.contour(truth > 0, levels=[0.5], colors="lime", linewidths=0.6)


def _scene_masks(split: str, limit: int | None, config):
    from mobilecv.data.datasets import ArrayData, Split
    from mobilecv.data.scenes import generate

    split = Split(split)
    count = SCENE_COUNTS[split.value] if limit is None else int(limit)
    if count < 1:
        raise InputError(f"limit must be >= 1, got {limit}")
    scenes = generate(split, count, config)
    return ArrayData(
        x=scenes.images,
        y={"mask": scenes.semantic_masks()},
        classes=len(config.class_names) + 1,
        name="scenes",
        provenance=scenes.provenance,
    )
