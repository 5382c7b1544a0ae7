"""Landmark detection (course week 3): N (x, y) points, with optional visibility.

The head regresses the points as fractions of the image (sigmoid), from pooled-grid
features of the deepest backbone map; with ``visibility=True`` a second output predicts
whether each point is visible. The loss is the course's squared error on the visible
points (invisible points get zero weight through a per-coordinate mask folded into the
targets). The metric is the normalised mean error: the mean point distance divided by the
object's size (the square root of its box area), the figure face-alignment papers report.

Labels (``ArrayData.y``): ``points`` (N, K, 2) x, y fractions; ``visible`` (N, K) 0/1;
``box`` (N, 4) the object's corner box as fractions (its size normalises the error).
"""

from __future__ import annotations

import enum
from types import ModuleType

import numpy as np

from mobilecv import postprocess
from mobilecv.errors import parse_choice
from mobilecv.layers import adaptive_avg_pool, pooled_grid_features
from mobilecv.registry import register_model
from mobilecv.tasks.base import (
    Task,
    build_on_backbone,
    deepest,
    register_task,
    scene_config,
    single_object_scenes,
)

DEFAULT_POINTS = 5  # a quadrilateral's four corners and its centre
# The scenes' keypoints are top-left, top-right, bottom-right, bottom-left, centre: a
# mirror swaps left and right.
MIRROR_PERMUTATION = (1, 0, 3, 2, 4)


def default_scenes():
    """One marker-like tile a scene, seen in perspective: its corners are the landmarks."""
    from mobilecv.data.scenes import SceneConfig

    return SceneConfig(
        size=96, objects=(1, 1), paste="tile", scale=(0.45, 0.85), rotation=30, warp=0.2
    )


class PointHead(enum.StrEnum):
    GRID = "grid"  # a Dense regression from pooled-grid features of the deepest map
    HEATMAP = "heatmap"  # a score map per point, read by its expectation (soft-argmax)


HEATMAP_STRIDE = 8  # the finest feature map a heatmap head reads
# Score maps are area-resampled to this many cells a side (stride 8 at the default 96 px),
# so the fixed expectation weights, like every parameter count, do not depend on resolution.
HEATMAP_GRID = 12


def heatmap_points(K, features, points: int, channels: int = 64):
    """Integral regression (Sun et al., "Integral Human Pose Regression", 2018; DSNT).

    One score map per point at stride 8, fed top-down from the deeper maps (a small FPN,
    so each cell sees the whole object) and resampled to a fixed grid; a softmax over its
    cells weighs the cell centres, and the point is their weighted mean. The maps are
    translation-equivariant, so the head does not learn every position anew as a Dense
    regression does, and the expectation gives sub-cell positions. Standard layers only
    (TFLite and int8 convert them): the expectation is a fixed, untrained Dense.
    """
    x = None
    for name in _top_down_levels(features):
        lateral = K.layers.Conv2D(channels, 1, name=f"lmk_{name}_lateral")(features[name])
        if x is not None:
            x = _upsample_to(K, x, lateral, f"lmk_{name}")
            lateral = K.layers.Add(name=f"lmk_{name}_merge")([x, lateral])
        x = lateral
    x = K.layers.ReLU(name="lmk_merge_relu")(x)
    refine = K.layers.SeparableConv2D(
        channels, 3, padding="same", activation="relu", name="lmk_refine"
    )
    scores = K.layers.Conv2D(points, 1, name="lmk_heatmaps")(refine(x))
    scores = adaptive_avg_pool(K, scores, HEATMAP_GRID, 2, "lmk_heatmap_grid")
    height, width = int(scores.shape[1]), int(scores.shape[2])
    scores = K.layers.Reshape((height * width, points), name="lmk_cells")(scores)
    scores = K.layers.Permute((2, 1), name="lmk_per_point")(scores)
    weights = K.layers.Softmax(axis=-1, name="lmk_softmax")(scores)
    centres = K.initializers.Constant(_cell_centres(height, width))
    expect = K.layers.Dense(
        2, use_bias=False, trainable=False, kernel_initializer=centres, name="lmk_expectation"
    )
    return K.layers.Flatten(name="points")(expect(weights))


def _top_down_levels(features) -> list[str]:
    """Feature-map names from the deepest to stride 8 (or the finest map, if coarser)."""
    stride = {name: int(name.removeprefix("stride")) for name in features}
    levels = [name for name in features if stride[name] >= HEATMAP_STRIDE]
    return sorted(levels or [min(features, key=stride.get)], key=stride.get, reverse=True)


def _cell_centres(height: int, width: int) -> np.ndarray:
    """(H * W, 2) x, y of every cell centre as fractions of the image, row-major."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([(cols.ravel() + 0.5) / width, (rows.ravel() + 0.5) / height], -1)


def _upsample_to(K, x, like, prefix: str):
    """Nearest 2x upsampling of ``x`` cropped to ``like``'s size (stride-2 SAME convs give
    ceil(n / 2) cells, so twice the coarser map is the finer one or one cell more)."""
    x = K.layers.UpSampling2D(2, name=f"{prefix}_up")(x)
    extra_h = int(x.shape[1]) - int(like.shape[1])
    extra_w = int(x.shape[2]) - int(like.shape[2])
    if extra_h or extra_w:
        x = K.layers.Cropping2D(((0, extra_h), (0, extra_w)), name=f"{prefix}_crop")(x)
    return x


def masked_squared_error(K):
    """Squared error over the coordinates whose target is not NaN (NaN = not visible)."""
    from mobilecv._tf import tf

    def loss(y_true, y_pred):
        T = tf()
        visible = T.logical_not(T.math.is_nan(y_true))
        diff = T.where(visible, y_pred - T.where(visible, y_true, 0.0), 0.0)
        count = T.maximum(T.reduce_sum(T.cast(visible, T.float32), axis=-1), 1.0)
        return T.reduce_sum(T.square(diff), axis=-1) / count

    return loss


@register_task
class Landmarks(Task):
    name = "landmarks"
    outputs = postprocess.TASK_OUTPUTS["landmarks"]
    primary_metric = "nme"
    higher_is_better = False
    agreement_metric = "point_error"

    def head(self, K, features, *, classes: int, points: int = DEFAULT_POINTS, hidden: int = 128,
             dropout: float = 0.0, head: str = "grid"):  # fmt: skip
        if parse_choice(PointHead, head, "landmark head") is PointHead.HEATMAP:
            return {"points": heatmap_points(K, features, points, channels=hidden // 2)}
        x = pooled_grid_features(K, deepest(features), "lmk", hidden=hidden, dropout=dropout)
        return {"points": K.layers.Dense(2 * points, activation="sigmoid", name="points")(x)}

    def compile(self, model, optimizer, **_):
        from mobilecv._tf import get_keras, is_keras3_model

        K = get_keras("keras3" if is_keras3_model(model) else "tf_keras")
        model.compile(optimizer=optimizer, loss={"points": masked_squared_error(K)})

    mirror_permutation = MIRROR_PERMUTATION

    def load(self, source: str, split: str, *, limit: int | None = None, scenes=None):
        from mobilecv.data.datasets import ArrayData
        from mobilecv.errors import InputError

        if source != "scenes":
            raise InputError(f"landmarks train on generated scenes (--data scenes), not {source!r}")
        config = scene_config(default_scenes(), scenes)
        if config.objects[0] < 1 or config.empty_share > 0:
            raise InputError("landmark scenes need exactly one object each")
        generated, _, rows = single_object_scenes(split, limit, config)
        keypoints = generated.keypoints[rows]
        y = {
            "points": (keypoints[..., :2] / config.size).astype(np.float32),
            "visible": (keypoints[..., 2] >= 2).astype(np.float32),
            "box": (generated.boxes[rows] / config.size).astype(np.float32),
        }
        return ArrayData(
            x=generated.images, y=y, classes=0, name="scenes", provenance=generated.provenance
        )

    def keras_targets(self, y):
        """Points flattened to (2K,), NaN where a point is not visible (tf ops)."""
        from mobilecv._tf import tf

        T = tf()
        points = T.cast(y["points"], T.float32)
        visible = (
            T.cast(y["visible"], T.bool) if "visible" in y else T.ones_like(points[..., 0], T.bool)
        )
        points = T.where(visible[..., None], points, float("nan"))
        return {"points": T.reshape(points, T.concat([T.shape(points)[:-2], [-1]], 0))}, None

    def decode(self, outputs):
        return postprocess.landmarks(outputs["points"])

    def paint(self, ax, decoded, y, i: int, size: float) -> None:
        for points, colour, marker in (
            (y["points"][i], "lime", "x"),
            (decoded["points"][i], "red", "o"),
        ):
            xy = np.asarray(points) * size
            ax.scatter(xy[:, 0], xy[:, 1], c=colour, marker=marker, s=14)
            if len(xy) >= 4:  # the quadrilateral of the first four points
                ring = np.vstack([xy[:4], xy[:1]])
                ax.plot(ring[:, 0], ring[:, 1], c=colour, lw=0.8)

    def score(self, outputs, y) -> dict[str, float]:
        predicted = self.decode(outputs)["points"]
        size = np.sqrt(postprocess.box_area(np.asarray(y["box"])))
        nme = postprocess.normalised_point_error(predicted, y["points"], size, y.get("visible"))
        return {"nme": float(np.nanmean(nme)), "samples": int(np.sum(~np.isnan(nme)))}

    def agreement(self, reference, converted) -> dict[str, float]:
        a = self.decode(reference)["points"]
        b = self.decode(converted)["points"]
        return {"point_error": float(np.mean(np.linalg.norm(a - b, axis=-1)))}


@register_model(
    "landmarker",
    family="landmarker",
    default_resolution=96,
    task="landmarks",
    unsupported=("include_top", "classes"),
)
def landmarker(
    *,
    width: float,
    depth: float,
    resolution: int,
    input_channels: int,
    keras: ModuleType,
    backbone: str = "mobilenet_v2",
    points: int = DEFAULT_POINTS,
    hidden: int = 128,
    head: str = "grid",
):
    """Any registered backbone with a point-regression head (``points`` x, y pairs):
    ``head="grid"`` regresses them with a Dense layer, ``"heatmap"`` reads them off score
    maps (`heatmap_points`)."""
    return build_on_backbone("landmarks", "landmarker", **locals())
