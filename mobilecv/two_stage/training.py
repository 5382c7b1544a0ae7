"""Approximate joint training (Ren et al. 2015, section 3.2): one loss, RPN plus head,
one optimiser step a batch; the proposals are treated as constants (no gradient through
their coordinates), the pooled features carry the head's gradient into the backbone.

A step: stage 1 in inference mode gives the proposals (numpy NMS, as at test time); the
head's ROIs are sampled from them plus the ground-truth boxes and jittered copies (the
RPN is poor early on); then one tf.function computes both stages in training mode, ROI
align being tf.image.crop_and_resize on the boxes of :func:`boxes.crop_boxes` (the same
sampling as the numpy ROI align used at test time), and applies the gradients.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from mobilecv.errors import InputError
from mobilecv.two_stage import boxes as B
from mobilecv.two_stage.model import TwoStage, model_inputs

RPN_SAMPLE = 64  # anchors an image in the RPN loss (the paper's 256, scaled to ~200 anchors)
ROI_SAMPLE = 16  # ROIs an image in the head's loss (the paper's 128 of 2000)
RPN_BETA = 1.0 / 9.0  # smooth-L1 transition points (Detectron's)
HEAD_BETA = 1.0


def scenes(data, split: str):
    """ArrayData as given, or that many of the detection task's default scenes."""
    if isinstance(data, int | np.integer):
        from mobilecv.tasks.base import get_task

        return get_task("detection").load("scenes", split, limit=int(data))
    if not hasattr(data, "y") or not isinstance(data.y, dict) or "box" not in data.y:
        raise InputError("scenes must be a count or detection ArrayData (y['box'], y['class'])")
    return data


def mirror(images: np.ndarray, boxes: np.ndarray, flip: np.ndarray):
    """Images flipped left-right where ``flip``, with their corner boxes (padding rows,
    all zero, stay all zero)."""
    images, boxes = images.copy(), boxes.copy()
    images[flip] = images[flip][:, :, ::-1]
    b = boxes[flip]
    pad = ~b.any(-1)
    b[..., 0], b[..., 2] = 1.0 - b[..., 2], 1.0 - b[..., 0]
    b[pad] = 0.0
    boxes[flip] = b
    return images, boxes


def batch_targets(detector: TwoStage, first: dict, boxes, classes, rng):
    """Numpy targets of one batch from stage 1's inference outputs ``first`` on it: RPN
    labels and deltas, and the head's sampled ROIs as crop boxes with their classes and
    deltas."""
    config = detector.config
    anchors = config.anchor_boxes
    rois, _ = B.proposals(
        np.asarray(first["objectness"]), np.asarray(first["deltas"]), anchors, 2 * ROI_SAMPLE
    )
    parts = {k: [] for k in ("rpn_labels", "rpn_deltas", "rois", "roi_classes", "roi_deltas")}
    for i in range(len(boxes)):
        truth, labels = B.objects(boxes[i], classes[i])
        rpn = B.rpn_targets(anchors, truth, rng, RPN_SAMPLE)
        candidates = np.concatenate([rois[i], truth, B.jitter(truth, rng)])
        head = B.roi_targets(candidates, truth, labels, rng, ROI_SAMPLE)
        for key, value in zip(parts, (*rpn, *head), strict=True):
            parts[key].append(value)
    out = {k: np.stack(v) for k, v in parts.items()}
    out["rois"] = B.crop_boxes(out.pop("rois").reshape(-1, 4), config.feature_size, config.pool)
    return out


def _huber(diff, beta: float):
    from mobilecv._tf import tf

    a = tf().abs(diff)
    return tf().where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def _masked_mean(values, mask):
    from mobilecv._tf import tf

    T = tf()
    mask = T.cast(mask, T.float32)
    return T.reduce_sum(values * mask) / T.maximum(T.reduce_sum(mask), 1.0)


def losses(detector: TwoStage, x, t, training: bool = True) -> dict:
    """The four terms, each a mean over its sampled entries: RPN objectness (binary
    cross-entropy), RPN box (smooth L1 on positives), head class (cross-entropy) and head
    box (smooth L1 on foreground ROIs)."""
    from mobilecv._tf import tf
    from mobilecv.tasks.detection import class_loss, objectness_loss

    T, config = tf(), detector.config
    out = detector.stage1(x, training=training)
    n = T.shape(x)[0]
    objectness = T.reshape(out["objectness"], (n, -1))
    deltas = T.reshape(out["deltas"], (n, -1, 4))
    labels = t["rpn_labels"]
    bce = objectness_loss(1.0)(T.cast(T.maximum(labels, 0), T.float32), objectness)
    box = T.reduce_sum(_huber(deltas - t["rpn_deltas"], RPN_BETA), -1)
    pool = (config.pool, config.pool)
    index = T.repeat(T.range(n), ROI_SAMPLE)
    pooled = T.image.crop_and_resize(out["features"], t["rois"], index, pool)
    head = detector.stage2(T.reshape(pooled, (-1, config.roi_length)), training=training)
    roi_classes = T.reshape(t["roi_classes"], (-1,))
    head_box = T.reduce_sum(_huber(head["deltas"] - T.reshape(t["roi_deltas"], (-1, 4)), HEAD_BETA), -1)  # fmt: skip
    return {
        "rpn_objectness": _masked_mean(bce, labels >= 0),
        "rpn_box": _masked_mean(box, labels > 0),
        "head_class": T.reduce_mean(class_loss(roi_classes, head["scores"])),
        "head_box": _masked_mean(head_box, roi_classes > 0),
    }


def _step_function(detector: TwoStage, optimizer):
    from mobilecv._tf import tf

    T = tf()
    variables = detector.stage1.trainable_variables + detector.stage2.trainable_variables

    @T.function(reduce_retracing=True)
    def step(x, t):
        with T.GradientTape() as tape:
            terms = losses(detector, x, t)
            total = T.add_n(list(terms.values()))
        optimizer.apply_gradients(zip(tape.gradient(total, variables), variables, strict=True))
        return terms

    return step


def train_two_stage(
    detector: TwoStage,
    epochs: int,
    *,
    train_scenes,
    val_scenes,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
    verbose: bool = False,
) -> tuple[TwoStage, dict]:
    """Train both stages jointly for ``epochs`` on ``train_scenes`` (a count of the
    detection task's default scenes, or detection ArrayData), Adam with cosine decay,
    horizontal mirroring; then COCO mAP on ``val_scenes``. Returns (detector, report).
    ``verbose`` prints each epoch's losses and time on stderr."""
    from mobilecv._tf import get_keras, is_keras3_model
    from mobilecv.train import make_optimizer, set_seed, steps_per_epoch
    from mobilecv.two_stage.tflite import evaluate_two_stage

    if int(epochs) < 1 or int(batch_size) < 1:
        raise InputError(f"epochs and batch_size must be >= 1; got {epochs}, {batch_size}")
    set_seed(seed)
    rng = np.random.default_rng(seed)
    train, val = scenes(train_scenes, "train"), scenes(val_scenes, "validation")
    steps = steps_per_epoch(len(train), batch_size)
    K = get_keras("keras3" if is_keras3_model(detector.stage1) else "tf_keras")
    optimizer = make_optimizer(K, "adam", learning_rate, decay_steps=epochs * steps)
    step, forward = _step_function(detector, optimizer), _forward_function(detector)
    history: dict[str, list[float]] = {}
    start = time.perf_counter()
    for _ in range(int(epochs)):
        sums: dict[str, float] = {}
        for batch in np.array_split(rng.permutation(len(train)), steps):
            terms = _train_batch(detector, forward, step, train, batch, rng)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) / steps
        recalibrate(detector, train.x)
        for k, v in sums.items():
            history.setdefault(k, []).append(round(v, 5))
        if verbose:
            terms = " ".join(f"{k} {v:.4f}" for k, v in sums.items())
            print(f"epoch {len(history['head_box'])}/{epochs}: {terms} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    seconds = time.perf_counter() - start
    report = {
        "epochs": int(epochs), "train_scenes": len(train), "val_scenes": len(val),
        "batch_size": int(batch_size), "learning_rate": float(learning_rate), "seed": int(seed),
        "train_seconds": round(seconds, 1), "history": history,
        "validation": evaluate_two_stage(detector, val),
    }  # fmt: skip
    return detector, report


def recalibrate(detector: TwoStage, images: np.ndarray, batches: int = 20, batch_size: int = 64):
    """Stage 1's BatchNorm statistics re-estimated on ``batches`` batches of ``images``
    (mobilecv.train.recalibrate_batchnorm): MobileNet's momentum 0.999 leaves the moving
    statistics near their initial values after a few hundred steps, and inference-mode
    proposals (training's and test's) were then noise: mAP 0.00001 after 2 epochs."""
    from mobilecv._tf import tf
    from mobilecv.train import recalibrate_batchnorm

    T, config = tf(), detector.config
    images = images[: batches * batch_size]
    dataset = T.data.Dataset.from_tensor_slices(images).batch(batch_size)
    dataset = dataset.map(lambda x: (model_inputs_graph(x, config),))
    return recalibrate_batchnorm(detector.stage1, dataset, batches)


def model_inputs_graph(x, config):
    """:func:`model_inputs` as tf ops (inside tf.data)."""
    from mobilecv.data.datasets import prepare_images

    return prepare_images(x, config.resolution, config.input_channels, config.input_range)


def _forward_function(detector: TwoStage):
    """Stage 1 in inference mode, compiled: the proposals of a training step."""
    from mobilecv._tf import tf

    @tf().function(reduce_retracing=True)
    def forward(x):
        out = detector.stage1(x, training=False)
        return {"objectness": out["objectness"], "deltas": out["deltas"]}

    return forward


def _train_batch(detector: TwoStage, forward, step, data, batch: np.ndarray, rng) -> dict:
    flip = rng.random(len(batch)) < 0.5
    images, boxes = mirror(data.x[batch], data.y["box"][batch], flip)
    x = model_inputs(images, detector.config)
    first = {k: v.numpy() for k, v in forward(x).items()}
    targets = batch_targets(detector, first, boxes, data.y["class"][batch], rng)
    return step(x, targets)
