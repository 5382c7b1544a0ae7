"""The Solvay photo check: a face detector trained only on synthetic scenes, tried once on a
real photograph.

The detector is the ``yolo`` model with one class, trained on scenes of scikit-image's
``lfw_subset`` faces (``ObjectSource.FACES``) pasted on real photos and textures
(:func:`face_scenes`). The photo is Debian visp-images-data's 1927 Solvay conference
group photograph (1280 x 926, grey) with its 30 face boxes
(:func:`mobilecv.data.assets.solvay_faces`). It checks transfer to a real image; it is
not a benchmark: nothing here is tuned on the photo, and its ground truth is read only to
score.

How the photo is cut, from the training scenes and the photo's size alone (no prior on
how large its faces are, none from the ground truth):

- **Scales, an image pyramid.** The detector saw faces whose side is ``scale[0]`` to
  ``scale[1]`` of its window (0.15 to 0.45 by default). The finest level is the photo at
  its own resolution (1.0: enlarging adds no detail); each next level shrinks by
  sqrt(scale[1] / scale[0]) (1.73), so consecutive levels overlap by half of the trained
  range in log size and every face from the smallest trained size upwards lands well
  inside that range at some level; the last level is the last whose shorter side still
  fills a window. By default: 1.0, 0.577, 0.333, 0.192, for faces of 19 to 300 photo
  pixels.
- **Windows.** Each level is cut into windows of the model's input size with stride
  ``window * (1 - scale[1]) - 2 * EDGE_MARGIN``, the last window flush with the edge: any
  face of the trained sizes lies whole, with a margin, inside at least one window.
- **Merging.** A detection touching a window side that is not the photo's edge is a
  face cut by the window, which another window holds whole: it is dropped. The rest are
  mapped back to photo pixels and merged across windows and levels by greedy NMS
  (:func:`mobilecv.postprocess.nms`, IoU ``NMS_IOU``).
- **Scoring.** Detections match ground-truth faces one to one at IoU >= 0.5, greedily by
  IoU (:func:`mobilecv.tasks.detection.match_detections`): recall = matched / 30,
  precision = matched / detections.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilecv.errors import InputError

# The documented face-scene defaults (mobilecv.data.scenes.SceneConfig fields).
FACE_SCENES = {
    "size": 128,
    # Grey, as the photo is and as lfw_subset is: colour backgrounds would make "the grey
    # blob" a face cue that a grey photo does not have.
    "channels": 1,
    "sources": ("faces",),
    "objects": (0, 6),  # a window of a group photo holds none to a handful of faces
    "empty_share": 0.1,
    "scale": (0.15, 0.45),
    "rotation": 15.0,  # heads tilt
    "min_visible": 0.8,  # a face mostly hidden behind another is not labelled well
    # lfw_subset's non-face crops, pasted unlabelled: without them "a pasted ellipse" would
    # be a face, and the photo has none.
    "distractors": (0, 3),
}
ANCHOR_SCENES = 1000  # training scenes whose boxes the face anchors are clustered from
EDGE_MARGIN = 2  # window pixels: a box this close to an inner window side is cut by it
NMS_IOU = 0.5
MAX_DETECTIONS_A_WINDOW = 50
PROVENANCE = (
    "real photo: the 1927 Solvay conference (Debian visp-images-data, 1280 x 926, grey), "
    "30 face boxes; the detector trained on synthetic compositions only"
)


def face_scenes(**overrides):
    """The face detector's training scenes: :data:`FACE_SCENES` with ``overrides``."""
    from mobilecv.data.scenes import SceneConfig

    return SceneConfig(**{**FACE_SCENES, **overrides})


def face_anchors(k: int = 3, config=None, count: int = ANCHOR_SCENES) -> list[list[float]]:
    """``k`` anchors (width, height fractions) by k-means (1 - IoU) on the boxes of the
    first ``count`` training scenes of ``config`` (default :func:`face_scenes`): pass them
    as ``mobilecv.build("yolo", anchors=...)``."""
    from mobilecv.anchors import kmeans_anchors
    from mobilecv.data.scenes import generate

    config = config or face_scenes()
    scenes = generate("train", count, config)
    wh = (scenes.boxes[:, 2:] - scenes.boxes[:, :2]) / config.size
    anchors, _ = kmeans_anchors(wh, k)
    return anchors.round(6).tolist()


# ----------------------------------------------------------------------------- tiling


def pyramid(photo_shape: tuple[int, int], window: int, face_scale: Sequence[float]) -> tuple:
    """The pyramid's scales (module docstring): 1.0 down by sqrt(max/min of
    ``face_scale``) while the photo's shorter side still fills a ``window``."""
    low, high = float(face_scale[0]), float(face_scale[1])
    if not 0 < low < high:
        raise InputError(f"face scale must be (min, max) with 0 < min < max; got {face_scale}")
    step = math.sqrt(high / low)
    shortest = min(photo_shape[:2])
    if shortest < window:
        return (1.0,)
    count = int(math.floor(math.log(shortest / window) / math.log(step) + 1e-9)) + 1
    return tuple(round(step**-k, 6) for k in range(count))


def default_stride(window: int, face_scale: Sequence[float]) -> int:
    """Window stride so that a face of the largest trained size lies whole inside some
    window with EDGE_MARGIN to spare."""
    return max(1, int(window * (1.0 - float(face_scale[1]))) - 2 * EDGE_MARGIN)


def offsets(length: int, window: int, stride: int) -> np.ndarray:
    """Window starts along one axis: 0, stride, ... and one flush with the far edge."""
    if length <= window:
        return np.zeros(1, np.int64)
    starts = list(range(0, length - window, stride))
    return np.asarray([*starts, length - window], np.int64)


@dataclass(frozen=True)
class Tiles:
    """Windows cut from a photo's pyramid: pixels, and where each came from.

    ``origin`` (N, 2) is each window's (x, y) in its level's pixels, ``factor`` (N, 2) the
    level's (width, height) over the photo's, ``inner`` (N, 4) whether each side (left,
    top, right, bottom) lies inside the level rather than on its edge.
    """

    images: np.ndarray  # (N, window, window) float32 pixels 0..255
    origin: np.ndarray
    factor: np.ndarray
    inner: np.ndarray
    level: np.ndarray  # (N,) index into scales
    window: int

    def to_photo(self, boxes: np.ndarray, index: np.ndarray) -> np.ndarray:
        """(K, 4) boxes as fractions of windows ``index`` (K,) -> photo pixels."""
        level_pixels = boxes * self.window + np.tile(self.origin[index], 2)
        return level_pixels / np.tile(self.factor[index], 2)

    def cut(self, boxes: np.ndarray, index: np.ndarray) -> np.ndarray:
        """(K,) True where a box (window fractions) touches an inner side of its window."""
        pixels = boxes * self.window
        near = np.stack(
            [
                pixels[:, 0] <= EDGE_MARGIN,
                pixels[:, 1] <= EDGE_MARGIN,
                pixels[:, 2] >= self.window - EDGE_MARGIN,
                pixels[:, 3] >= self.window - EDGE_MARGIN,
            ],
            axis=1,
        )
        return (near & self.inner[index]).any(axis=1)


def cut_tiles(photo: np.ndarray, window: int, stride: int, scales: Sequence[float]) -> Tiles:
    """The grey ``photo`` at each of ``scales`` (bilinear, antialiased), cut into
    overlapping ``window``-pixel squares; a level smaller than a window is padded with its
    edge pixels."""
    from PIL import Image

    grey = Image.fromarray(np.asarray(photo, np.uint8))
    parts: dict[str, list] = {k: [] for k in ("images", "origin", "factor", "inner", "level")}
    for level, scale in enumerate(scales):
        if scale <= 0:
            raise InputError(f"scales must be positive; got {scale}")
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        pixels = np.asarray(grey.resize(size, Image.Resampling.BILINEAR), np.float32)
        padded = np.pad(
            pixels,
            ((0, max(0, window - size[1])), (0, max(0, window - size[0]))),
            mode="edge",
        )
        for y in offsets(size[1], window, stride):
            for x in offsets(size[0], window, stride):
                parts["images"].append(padded[y : y + window, x : x + window])
                parts["origin"].append((x, y))
                parts["factor"].append((size[0] / grey.width, size[1] / grey.height))
                parts["inner"].append((x > 0, y > 0, x + window < size[0], y + window < size[1]))
                parts["level"].append(level)
    return Tiles(
        images=np.stack(parts["images"]),
        origin=np.asarray(parts["origin"], np.float32),
        factor=np.asarray(parts["factor"], np.float32),
        inner=np.asarray(parts["inner"], bool),
        level=np.asarray(parts["level"], np.int64),
        window=window,
    )


# ----------------------------------------------------------------------------- model


class _Detector:
    """A Keras detector or a .tflite one behind one interface: input size, channels,
    input range and its decoded detections (the task's numpy post-processing)."""

    def __init__(self, model, score_threshold: float):
        from mobilecv.commands.detect import Decoder

        if isinstance(model, str | os.PathLike):
            from mobilecv.evaluate import TfliteModel

            self.runner, self.name = TfliteModel(model), os.fspath(model)
            info, shape = self.runner.info, self.runner.input_shape
        else:
            from mobilecv.modelinfo import get_info

            self.runner, self.name = model, model.name
            info, shape = get_info(model), tuple(model.input_shape)
        if info.task != "detection" or not info.task_options.get("anchors"):
            raise InputError(f"{self.name} is not a mobilecv detector (task {info.task!r})")
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] not in (1, 3):
            raise InputError(f"{self.name}: input {shape}; expected square (N, S, S, 1 or 3)")
        self.window, self.channels = int(shape[1]), int(shape[3])
        self.input_range = tuple(info.input_range)
        options = {
            "score_threshold": score_threshold,
            "iou_threshold": NMS_IOU,
            "max_detections": MAX_DETECTIONS_A_WINDOW,
        }
        anchors = np.asarray(info.task_options["anchors"], np.float32)
        self.decoder = Decoder(anchors, options, in_graph="nms" in info.task_options)

    def detect(self, images: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Decoded detections of grey ``images`` (N, S, S) in pixels 0..255."""
        from mobilecv.modelinfo import map_range

        x = np.repeat(images[..., None], self.channels, axis=-1)
        x = map_range(x, self.input_range).astype(np.float32)
        if hasattr(self.runner, "predict_outputs"):  # LiteRT
            return self.decoder(self.runner.predict_outputs(x, self.decoder.names))
        from mobilecv.tasks.base import as_outputs

        raw = self.runner.predict(x, batch_size=batch_size, verbose=0)
        return self.decoder(as_outputs(raw, self.decoder.names))


# ----------------------------------------------------------------------------- check


def merge(found: dict, tiles: Tiles) -> tuple[np.ndarray, np.ndarray]:
    """Per-window detections -> (boxes (K, 4) in photo pixels, scores (K,)), best first:
    boxes cut by an inner window side dropped, the rest merged by NMS."""
    index = np.concatenate([np.full(int(c), i) for i, c in enumerate(found["count"])] or [[]])
    index = index.astype(np.int64)
    slot = np.concatenate([np.arange(int(c)) for c in found["count"]] or [[]]).astype(np.int64)
    boxes = np.asarray(found["boxes"])[index, slot].reshape(-1, 4)
    scores = np.asarray(found["scores"])[index, slot].reshape(-1)
    whole = ~tiles.cut(boxes, index)
    boxes, scores = tiles.to_photo(boxes[whole], index[whole]), scores[whole]
    from mobilecv.postprocess import nms

    kept = nms(boxes, scores, NMS_IOU)
    return boxes[kept].astype(np.float32), scores[kept].astype(np.float32)


def true_positives(boxes: np.ndarray, truth: np.ndarray, iou_threshold: float) -> int:
    """Detections matching ground-truth boxes one to one at IoU >= ``iou_threshold``."""
    from mobilecv.tasks.detection import match_detections

    def one_image(b):
        b = np.asarray(b, np.float32).reshape(-1, 4)
        return {"boxes": b[None], "classes": np.zeros((1, len(b)), np.int64), "count": [len(b)]}

    total = len(boxes) + len(truth)
    if not len(boxes) or not len(truth):
        return 0
    f1 = match_detections(one_image(truth), one_image(boxes), iou_threshold)["detection_f1"]
    return int(round(f1 * total / 2))  # f1 = 2 matched / (truths + detections)


def score_boxes(boxes, scores, truth, iou_threshold: float) -> dict:
    """Recall and precision of photo-pixel ``boxes`` against ``truth``."""
    matched = true_positives(boxes, truth, iou_threshold)
    return {
        "faces": len(truth),
        "detections": len(boxes),
        "true_positives": matched,
        "recall": matched / len(truth) if len(truth) else float("nan"),
        "precision": matched / len(boxes) if len(boxes) else 0.0,
        "boxes": np.asarray(boxes, np.float32).round(2).tolist(),
        "scores": np.asarray(scores, np.float32).round(4).tolist(),
        "truth": np.asarray(truth, np.float32).round(2).tolist(),
    }


def solvay_check(
    model_or_tflite,
    *,
    window: int | None = None,
    stride: int | None = None,
    scale: float | Sequence[float] | None = None,
    score_threshold: float = 0.25,
    iou_threshold: float = 0.5,
    face_scale: Sequence[float] | None = None,
) -> dict:
    """Detect faces in the Solvay photo with a Keras detector or a .tflite path, and
    score them against its 30 boxes at IoU >= ``iou_threshold``.

    ``window`` is the model's input size (the only size it takes); ``scale`` one scale or
    several (default: the pyramid of :func:`pyramid`); ``stride`` defaults to
    :func:`default_stride`; ``face_scale`` is the training scenes' face-size range
    (default FACE_SCENES["scale"]). Returns faces, detections, true_positives, recall,
    precision, boxes (x0, y0, x1, y1 photo pixels), scores, truth, settings, provenance.
    """
    from mobilecv.data.assets import solvay_faces

    if not 0.0 <= score_threshold <= 1.0 or not 0.0 < iou_threshold <= 1.0:
        raise InputError("score_threshold must be in [0, 1] and iou_threshold in (0, 1]")
    detector = _Detector(model_or_tflite, score_threshold)
    if window is not None and int(window) != detector.window:
        raise InputError(f"{detector.name} takes {detector.window}-pixel windows, not {window}")
    photo = solvay_faces()
    face_scale = tuple(face_scale or FACE_SCENES["scale"])
    size = detector.window
    stride = default_stride(size, face_scale) if stride is None else int(stride)
    if stride < 1:
        raise InputError(f"stride must be at least 1; got {stride}")
    scales = (
        pyramid(photo.image.shape, size, face_scale)
        if scale is None
        else tuple(float(s) for s in np.atleast_1d(scale))
    )
    tiles = cut_tiles(photo.image, size, stride, scales)
    boxes, scores = merge(detector.detect(tiles.images), tiles)
    result = score_boxes(boxes, scores, photo.boxes, iou_threshold)
    result["settings"] = {
        "model": detector.name,
        "window": size,
        "stride": stride,
        "scales": list(scales),
        "windows": len(tiles.images),
        "channels": detector.channels,
        "score_threshold": score_threshold,
        "iou_threshold": iou_threshold,
        "nms_iou": NMS_IOU,
        "face_scale": list(face_scale),
    }
    result["provenance"] = PROVENANCE
    return result


def draw_solvay(result: dict, path: str | os.PathLike, force: bool = True) -> Path:
    """The photo with ``result``'s detections (red, dashed, with scores) and the ground
    truth (green), as a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from mobilecv.data.assets import solvay_faces
    from mobilecv.fileio import atomic_path

    image = solvay_faces().image
    height, width = image.shape[:2]
    fig, ax = plt.subplots(figsize=(width / 100, height / 100 + 0.4))
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, extent=(0, width, height, 0))
    for x0, y0, x1, y1 in result["truth"]:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.5))
    for (x0, y0, x1, y1), score in zip(result["boxes"], result["scores"], strict=True):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", ls="--", lw=1.2))  # fmt: skip
        ax.text(x0, y0, f"{score:.2f}", color="red", fontsize=6, va="bottom")
    ax.set_axis_off()
    ax.set_title(
        f"recall {result['recall']:.2f}, precision {result['precision']:.2f} at IoU >= "
        f"{result['settings']['iou_threshold']} ({result['true_positives']} of "
        f"{result['faces']} faces, {result['detections']} detections); red: detected, "
        f"green: ground truth",
        fontsize=8,
    )
    fig.tight_layout()
    with atomic_path(path, force) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)
