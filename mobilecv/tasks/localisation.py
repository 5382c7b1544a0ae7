"""Classification with localisation, as the course teaches it (week 3).

The target is the vector (Pc, bx, by, bh, bw, c1..cn): Pc says whether an object is
present, (bx, by) is its box centre and (bh, bw) its height and width, as fractions of the
image, and c1..cn its class. The model predicts them as three named outputs, each with its
own quantisation in int8: ``presence`` (sigmoid Pc), ``box`` (sigmoid bx, by, bh, bw) and
``scores`` (softmax over the classes). The loss is the course's: when an object is present,
squared error on the box and log loss on the class and on Pc; when there is none, only the
Pc term counts (the box and class terms get sample weight 0).

Labels (``ArrayData.y``): ``present`` (N,) 0/1, ``box`` (N, 4) corners x0, y0, x1, y1 as
fractions of the image (zeros when absent), ``class`` (N,) int.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

import numpy as np

from mobilecv import postprocess
from mobilecv.layers import pooled_grid_features
from mobilecv.registry import register_model
from mobilecv.tasks.base import (
    Task,
    build_on_backbone,
    deepest,
    draw_box,
    register_task,
    scene_config,
    single_object_scenes,
)

IOU_THRESHOLD = 0.5


def default_scenes():
    """The course's setting: one object a scene, or none."""
    from mobilecv.data.scenes import SceneConfig

    return SceneConfig(size=96, objects=(1, 1), empty_share=0.25, scale=(0.3, 0.7))


@register_task
class Localisation(Task):
    name = "localisation"
    outputs = postprocess.TASK_OUTPUTS["localisation"]
    primary_metric = "iou50"  # share of present objects whose box has IoU >= 0.5
    agreement_metric = "box_iou"
    # The box term is a mean of four squared errors of fractions (~0.01): at weight 5 the
    # class log loss (~1.5) shaped the features and boxes lagged. Weight 20 lifted held-out
    # iou50 from 52% to 64% after 4 of 5 epochs (benchmarks/localisation.py settings).
    loss_weights = {"presence": 1.0, "box": 20.0, "scores": 1.0}

    def head(self, K, features, *, classes: int, hidden: int = 128, dropout: float = 0.2):
        x = pooled_grid_features(K, deepest(features), "loc", hidden=hidden, dropout=dropout)
        return {
            "presence": K.layers.Dense(1, activation="sigmoid", name="presence")(x),
            "box": K.layers.Dense(4, activation="sigmoid", name="box")(x),
            "scores": K.layers.Dense(classes, activation="softmax", name="scores")(x),
        }

    def compile(self, model, optimizer, loss_weights: Mapping[str, float] | None = None):
        from mobilecv._tf import get_keras, is_keras3_model

        K = get_keras("keras3" if is_keras3_model(model) else "tf_keras")
        model.compile(
            optimizer=optimizer,
            loss={
                "presence": K.losses.BinaryCrossentropy(),
                "box": K.losses.MeanSquaredError(),
                "scores": K.losses.SparseCategoricalCrossentropy(),
            },
            loss_weights=dict(loss_weights or self.loss_weights),
            weighted_metrics={
                "presence": [K.metrics.BinaryAccuracy(name="accuracy")],
                "scores": [K.metrics.SparseCategoricalAccuracy(name="accuracy")],
            },
        )

    def load(self, source: str, split: str, *, limit: int | None = None, scenes=None):
        from mobilecv.data.datasets import ArrayData
        from mobilecv.errors import InputError

        if source != "scenes":
            raise InputError(
                f"localisation trains on generated scenes (--data scenes), not {source!r}"
            )
        config = scene_config(default_scenes(), scenes)
        generated, has, rows = single_object_scenes(split, limit, config)
        first = np.maximum(rows, 0)
        y = {
            "present": has.astype(np.float32),
            "box": np.where(has[:, None], generated.boxes[first] / config.size, 0.0).astype(
                np.float32
            ),
            "class": np.where(has, generated.classes[first], 0).astype(np.int64),
        }
        return ArrayData(
            x=generated.images,
            y=y,
            classes=len(config.class_names),
            name="scenes",
            provenance=generated.provenance,
        )

    def keras_targets(self, y):
        """(targets, sample weights) in tf ops (they run inside tf.data): the box and class
        terms weigh 0 where no object is present."""
        from mobilecv._tf import tf

        T = tf()
        present = T.cast(y["present"], T.float32)
        box = T.cast(y["box"], T.float32)
        centre = T.stack(
            [
                (box[..., 0] + box[..., 2]) / 2,
                (box[..., 1] + box[..., 3]) / 2,
                box[..., 3] - box[..., 1],
                box[..., 2] - box[..., 0],
            ],
            axis=-1,
        )  # fmt: skip  (the course's bx, by, bh, bw)
        targets = {
            "presence": present[..., None],
            "box": centre,
            "scores": T.cast(y["class"], T.int64),
        }
        return targets, {"presence": T.ones_like(present), "box": present, "scores": present}

    def decode(self, outputs):
        return postprocess.localisation(outputs["presence"], outputs["box"], outputs["scores"])

    def paint(self, ax, decoded, y, i: int, size: float) -> None:
        if y["present"][i] > 0.5:
            draw_box(ax, y["box"][i], size, "lime", "-")
        if decoded["present"][i]:
            draw_box(ax, decoded["box"][i], size, "red", "--")
        label = f"Pc {decoded['presence'][i]:.2f}, class {decoded['class'][i]}"
        ax.set_title(label, fontsize=7)

    def score(self, outputs, y) -> dict[str, float]:
        pred = self.decode(outputs)
        present = np.asarray(y["present"]) > 0.5
        ious = postprocess.iou(pred["box"][present], np.asarray(y["box"])[present])
        classes = pred["class"][present] == np.asarray(y["class"])[present]
        return {
            "presence_accuracy": float(np.mean(pred["present"] == present)),
            "class_accuracy": float(np.mean(classes)) if present.any() else float("nan"),
            "mean_iou": float(np.mean(ious)) if present.any() else float("nan"),
            "iou50": float(np.mean(ious >= IOU_THRESHOLD)) if present.any() else float("nan"),
            "present_objects": int(present.sum()),
        }

    def agreement(self, reference, converted) -> dict[str, float]:
        a, b = self.decode(reference), self.decode(converted)
        return {
            "box_iou": float(np.mean(postprocess.iou(a["box"], b["box"]))),
            "presence_agreement": float(np.mean(a["present"] == b["present"])),
            "class_agreement": float(np.mean(a["class"] == b["class"])),
        }


@register_model(
    "localizer",
    family="localizer",
    default_resolution=96,
    task="localisation",
    unsupported=("include_top",),
)
def localizer(
    *,
    width: float,
    depth: float,
    resolution: int,
    classes: int,
    input_channels: int,
    keras: ModuleType,
    backbone: str = "mobilenet_v2",
    hidden: int = 128,
    dropout: float = 0.2,
):
    """Any registered backbone with the course's localisation head (Pc, box, classes)."""
    return build_on_backbone("localisation", "localizer", **locals())
