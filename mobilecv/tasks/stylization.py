"""Stylization: an image-to-image transform network (mobilecv.models.stylizer) whose output
is an RGB image in [0, 1] named "image".

It is trained for one style by mobilecv.fast_style (a perceptual loss, no labels), not by
`mobilecv train`. The converter compares a converted stylizer with the float one by the
PSNR of their images (:func:`psnr`, peak 1), the figure image codecs and the fast
style-transfer literature quote.
"""

from __future__ import annotations

import numpy as np

from mobilecv.errors import InputError
from mobilecv.tasks.base import Task, register_task

# Two identical images have infinite PSNR; reports cap it here (8-bit output steps of
# 1/255 already give ~59 dB).
PSNR_CAP_DB = 100.0


def psnr(reference: np.ndarray, other: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels: 10 log10(peak^2 / MSE)."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"PSNR compares images of one shape; got {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    if mse <= peak**2 * 10 ** (-PSNR_CAP_DB / 10):
        return PSNR_CAP_DB
    return float(10.0 * np.log10(peak**2 / mse))


@register_task
class Stylization(Task):
    name = "stylization"
    outputs = ("image",)
    primary_metric = "perceptual_loss"
    higher_is_better = False
    agreement_metric = "psnr_db"
    sources = ()

    def compile(self, model, optimizer, **options) -> None:
        raise InputError(
            "a stylizer trains against a perceptual loss: use `mobilecv train-stylizer` "
            "(mobilecv.fast_style.train_stylizer), not `mobilecv train`"
        )

    def load(self, source: str, split: str, *, limit: int | None = None, scenes=None):
        raise InputError(
            "a stylizer has no labelled data set; it trains on content photos "
            "(`mobilecv train-stylizer`)"
        )

    def decode(self, outputs) -> dict[str, np.ndarray]:
        return {"image": np.clip(np.asarray(outputs["image"], dtype=np.float32), 0.0, 1.0)}

    def agreement(self, reference, converted) -> dict[str, float]:
        """PSNR of the converted images against the float ones (all samples), and the
        worst single image's."""
        a, b = np.asarray(reference["image"]), np.asarray(converted["image"])
        per_image = [psnr(x, y) for x, y in zip(a, b, strict=True)]
        return {"psnr_db": psnr(a, b), "min_psnr_db": float(min(per_image))}
