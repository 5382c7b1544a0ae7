"""Identity-labelled image sets for metric learning, built offline from real assets.

No identity-labelled face set ships offline, so:

- `glyph_identities`: an Omniglot-like set. Every character is an identity, every font
  file (family and style) one "writer": the letters of the Latin (with digits), Greek,
  Cyrillic, Armenian, Hebrew and Georgian alphabets, rendered by the 46 TrueType files of
  Debian's fonts-dejavu-core/-extra, fonts-freefont-ttf and fonts-liberation2
  (mobilecv.data.assets.FONT_FILES; `make data` installs them).
  - A font that lacks a character gives no sample: the character must be in the font's
    cmap, and its rendering must have ink and differ from the font's .notdef glyph.
  - Glyphs that look the same (Latin A, Greek Alpha, Cyrillic A; Latin o and Armenian oh)
    are dropped by a pixel near-duplicate check, not a hand list: two characters are
    near duplicates when the median over the fonts that have both of
    ||a - b||^2 / (||a||^2 + ||b||^2) of their clean renderings is under 0.05. Characters
    are visited in alphabet order (Latin first) and one is dropped when it nearly
    duplicates one kept before it, so A stays and Alpha and Cyrillic A go.
  - A character is kept with at least 15 writers; every kept one has 25 or more.
  - Each glyph is rendered at a fixed size (0.7 x side pixels), centred on its ink box,
    ink white on black, uint8 (scaled down only when the ink overflows the square), then
    mildly distorted: a smooth elastic displacement (at most 4% of the side, spline-interpolated
    from a 5 x 5 grid of random values) and a stroke
    width change (a 2x2 grey dilation or erosion, or none). Everything is deterministic:
    each sample's random numbers come from (seed, code point, font index).
- `lfw_identities`: scikit-image's `lfw_subset` (100 real 25x25 face crops) as 100
  exemplar identities, each sample an augmented view of its one crop. It exercises the
  face pipeline's mechanics (crop, embed, enrol, verify) on real faces; it is NOT a
  face-recognition accuracy claim: the views of one identity are copies of one photo.

Both split by identity (train, validation and test identities are disjoint: one-shot
means new classes), with a fixed seed, and record for each sample the file it came from.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from mobilecv.data.datasets import SPLIT_SEED, ArrayData, Split, _carve
from mobilecv.errors import InputError, RunFailed, parse_choice

GLYPH_SIDE = 32
MIN_WRITERS = 15
NEAR_DUPLICATE = 0.05
TEST_IDENTITIES = 0.25  # fractions of the identities, test carved first
VALIDATION_IDENTITIES = 0.15
FONT_SCALE = 0.7  # font size in pixels / side
ELASTIC_AMPLITUDE = 0.04  # largest displacement / side
ELASTIC_GRID = 5  # control points a side of the smooth displacement field
AUGMENT_CHUNK = 512
LFW_FACES = 100  # lfw_subset holds 100 faces, then 100 non-faces
LFW_VIEWS = 20

ALPHABETS: dict[str, tuple[range, ...]] = {
    "latin": (range(0x41, 0x5B), range(0x61, 0x7B), range(0x30, 0x3A)),
    "greek": (range(0x391, 0x3AA), range(0x3B1, 0x3CA)),
    "cyrillic": (range(0x410, 0x450),),
    "armenian": (range(0x531, 0x557), range(0x561, 0x588)),
    "hebrew": (range(0x5D0, 0x5EB),),
    "georgian": (range(0x10D0, 0x10FB),),
}


@dataclass(frozen=True)
class IdentityData(ArrayData):
    """ArrayData whose labels are identities: y int64 (N,) indexes `identities` (global
    ids, the same in every split), `source` (N,) names the file each sample came from."""

    identities: tuple[str, ...] = ()
    source: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))

    def select(self, identities) -> IdentityData:
        """The samples of the given identity ids."""
        keep = np.isin(self.y, np.asarray(identities))
        return IdentityData(
            x=self.x[keep],
            y=self.y[keep],
            classes=self.classes,
            name=self.name,
            provenance=self.provenance,
            identities=self.identities,
            source=self.source[keep],
        )


def _letters() -> list[int]:
    """The code points of the alphabets, letters and digits only, in ALPHABETS order."""
    return [
        point
        for ranges in ALPHABETS.values()
        for block in ranges
        for point in block
        if unicodedata.category(chr(point))[0] in "LN"
    ]


def identity_name(point: int) -> str:
    return f"U+{point:04X} {unicodedata.name(chr(point), '?')}"


# --------------------------------------------------------------------------- rendering


def _centred(canvas, side: int) -> np.ndarray | None:
    """The ink of a rendered canvas centred on a side x side square; None without ink."""
    from PIL import Image

    box = canvas.getbbox()
    if box is None:
        return None
    crop = canvas.crop(box)
    width, height = crop.size
    if max(height, width) > side - 2:  # overflowing glyphs only: keep the size cue
        scale = (side - 2) / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        crop = crop.resize(size, Image.Resampling.LANCZOS)
        width, height = crop.size
    out = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    out[top : top + height, left : left + width] = np.asarray(crop)
    return out


def _render(font, text: str, side: int) -> np.ndarray | None:
    """The glyph centred on a side x side square, or None when it has no ink."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (3 * side, 3 * side), 0)
    ImageDraw.Draw(canvas).text((side, side), text, font=font, fill=255)
    return _centred(canvas, side)


def _font_glyphs(path: Path, points: list[int], side: int) -> dict[int, np.ndarray]:
    """{code point: clean rendering} for the points this font really has."""
    from fontTools.ttLib import TTFont, TTLibError
    from PIL import ImageFont

    try:
        cmap = TTFont(path, lazy=True)["cmap"].getBestCmap()
        # The basic layout engine: raqm, where installed, could shape differently.
        font = ImageFont.truetype(
            str(path), round(FONT_SCALE * side), layout_engine=ImageFont.Layout.BASIC
        )
    except (OSError, TTLibError) as error:
        raise RunFailed(f"cannot read font {path}: {error}") from error
    notdef = _render(font, "\U0010ffff", side)  # a noncharacter: no font maps it
    glyphs = {}
    for point in points:
        if point not in cmap:
            continue
        image = _render(font, chr(point), side)
        if image is not None and (notdef is None or not np.array_equal(image, notdef)):
            glyphs[point] = image
    return glyphs


def _near_duplicates(clean: list[dict[int, np.ndarray]], points: list[int]) -> np.ndarray:
    """(P, P) median over fonts of ||a - b||^2 / (||a||^2 + ||b||^2), inf if no shared font;
    `clean` holds renderings at GLYPH_SIDE."""
    n = len(points)
    per_font = np.full((len(clean), n, n), np.inf, dtype=np.float32)
    for f, glyphs in enumerate(clean):
        have = np.asarray([p in glyphs for p in points])
        flat = np.zeros((n, GLYPH_SIDE**2), dtype=np.float32)
        for i, point in enumerate(points):
            if have[i]:
                flat[i] = glyphs[point].reshape(-1) / 255.0
        squares = (flat**2).sum(axis=1)
        total = squares[:, None] + squares[None, :]
        distance = (total - 2.0 * flat @ flat.T) / np.maximum(total, 1e-9)
        per_font[f] = np.where(have[:, None] & have[None, :], distance, np.inf)
    # The median of the finite values (np.nanmedian is slow): missing pairs sort last.
    shared = np.isfinite(per_font).sum(axis=0)
    ordered = np.sort(per_font, axis=0)
    low = np.take_along_axis(ordered, np.maximum(shared - 1, 0)[None] // 2, axis=0)[0]
    high = np.take_along_axis(ordered, (shared // 2)[None], axis=0)[0]
    return np.where(shared > 0, (low + high) / 2, np.inf)


def _kept_identities(clean: list[dict[int, np.ndarray]], points: list[int]) -> list[int]:
    """Points with enough writers, minus near duplicates of points kept before them."""
    writers = [sum(p in glyphs for glyphs in clean) for p in points]
    candidates = [p for p, count in zip(points, writers, strict=True) if count >= MIN_WRITERS]
    distance = _near_duplicates(clean, candidates)
    kept: list[int] = []
    for i in range(len(candidates)):
        if not any(distance[i, j] < NEAR_DUPLICATE for j in kept):
            kept.append(i)
    return [candidates[i] for i in kept]


# --------------------------------------------------------------------------- augmentation


def _augment(images: np.ndarray, keys: list[tuple[int, ...]]) -> np.ndarray:
    """Elastic and stroke-width changes of a (N, side, side) stack, sample i's random
    numbers drawn from keys[i] alone (so a sample does not depend on the others)."""
    from scipy.ndimage import zoom

    side = images.shape[1]
    # Smooth displacement fields: random values on a 5 x 5 grid, spline-interpolated
    # (the cubic spline is separable: one (side, 5) matrix per axis).
    units = np.eye(ELASTIC_GRID)
    upsample = np.stack([zoom(unit, side / ELASTIC_GRID, order=3) for unit in units], 1)
    out = np.empty_like(images)
    for start in range(0, len(images), AUGMENT_CHUNK):  # bounded memory, cache-friendly
        chunk = slice(start, start + AUGMENT_CHUNK)
        out[chunk] = _augment_chunk(images[chunk], keys[chunk], upsample)
    return out


def _augment_chunk(images: np.ndarray, keys: list[tuple[int, ...]], upsample) -> np.ndarray:
    from scipy.ndimage import grey_dilation, grey_erosion, map_coordinates

    count, side, _ = images.shape
    rngs = [np.random.default_rng(key) for key in keys]
    coarse = np.stack([rng.uniform(-1, 1, (2, ELASTIC_GRID, ELASTIC_GRID)) for rng in rngs])
    fields = upsample @ coarse @ upsample.T
    peak = np.abs(fields).max(axis=(1, 2, 3), keepdims=True)
    fields *= ELASTIC_AMPLITUDE * side / np.maximum(peak, 1e-12)
    grid = np.mgrid[0:count, 0:side, 0:side].astype(np.float64)
    grid[1:] += fields.transpose(1, 0, 2, 3)
    warped = map_coordinates(images.astype(np.float32), grid, order=1)
    warped = np.clip(np.round(warped), 0, 255).astype(np.uint8)
    change = np.asarray([rng.integers(3) for rng in rngs])  # 0 none, 1 thicker, 2 thinner
    thicker = grey_dilation(warped, size=(1, 2, 2))
    thinner = grey_erosion(warped, size=(1, 2, 2))
    # A hairline glyph would vanish: no erosion when it removes most of the ink.
    keeps_ink = thinner.sum(axis=(1, 2)) >= 0.4 * warped.sum(axis=(1, 2))
    out = np.where((change == 1)[:, None, None], thicker, warped)
    return np.where(((change == 2) & keeps_ink)[:, None, None], thinner, out)


# --------------------------------------------------------------------------- glyph set


def _split_identities(count: int, split: Split, seed: int) -> np.ndarray:
    rest, test = _carve(count, TEST_IDENTITIES, seed + 1)
    train, validation = _carve(len(rest), VALIDATION_IDENTITIES / (1 - TEST_IDENTITIES), seed)
    return {Split.TEST: test, Split.TRAIN: rest[train], Split.VALIDATION: rest[validation]}[split]


@cache
def _clean_glyphs(side: int) -> tuple[list[Path], list[int], list[dict[int, np.ndarray]]]:
    """(font paths, kept code points, per font {point: clean rendering at `side`})."""
    from mobilecv.data.assets import font_paths

    paths = font_paths()
    points = _letters()
    # Identities are chosen on renderings at the default side, so every side has the same.
    reference = [_font_glyphs(path, points, GLYPH_SIDE) for path in paths]
    identities = _kept_identities(reference, points)
    if side != GLYPH_SIDE:
        return paths, identities, [_font_glyphs(p, identities, side) for p in paths]
    return paths, identities, [{p: g[p] for p in identities if p in g} for g in reference]


@cache
def _glyph_set(side: int, seed: int) -> IdentityData:
    paths, identities, clean = _clean_glyphs(side)
    images, labels, sources, keys = [], [], [], []
    for label, point in enumerate(identities):
        for font_index, (path, glyphs) in enumerate(zip(paths, clean, strict=True)):
            if point in glyphs:
                images.append(glyphs[point])
                labels.append(label)
                sources.append(path.name)
                keys.append((seed, point, font_index))
    x = _augment(np.stack(images), keys)[..., None]
    x.flags.writeable = False
    return IdentityData(
        x=x,
        y=np.asarray(labels, dtype=np.int64),
        classes=len(identities),
        name="glyphs",
        provenance=(
            f"{len(identities)} characters of {', '.join(ALPHABETS)} rendered by "
            f"{len(paths)} Debian font files (one writer each), near duplicates dropped, "
            f"elastic and stroke-width augmentation, seed {seed}"
        ),
        identities=tuple(identity_name(p) for p in identities),
        source=np.asarray(sources),
    )


def _check_side(side: int) -> int:
    if not isinstance(side, int) or side < 16:
        raise InputError(f"side must be an integer of at least 16 pixels; got {side!r}")
    return side


def _pick_split(data: IdentityData, split: str | Split | None, seed: int) -> IdentityData:
    if split is None:
        return data
    split = parse_choice(Split, split, "split")
    return data.select(_split_identities(data.classes, split, seed))


def glyph_identities(
    split: str | Split | None = None, *, side: int = GLYPH_SIDE, seed: int = 0
) -> IdentityData:
    """The glyph identity set (see the module docstring): x uint8 (N, side, side, 1).

    `split=None` gives every identity; a split gives its identities only (25% test, 15%
    validation, the rest train, by a fixed seed). `seed` drives the augmentation.
    """
    return _pick_split(_glyph_set(_check_side(side), seed), split, SPLIT_SEED)


# --------------------------------------------------------------------------- LFW faces


def _face_view(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One augmented view: a flip, a small shift and rotation, a brightness change."""
    from scipy.ndimage import affine_transform

    side = face.shape[0]
    if rng.random() < 0.5:
        face = face[:, ::-1]
    angle = np.deg2rad(rng.uniform(-10, 10))
    shift = rng.uniform(-0.08, 0.08, size=2) * side
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = (np.asarray(face.shape) - 1) / 2.0
    offset = centre - rotation @ (centre + shift)
    view = affine_transform(face, rotation, offset=offset, order=1, mode="nearest")
    return np.clip(view * rng.uniform(0.8, 1.2), 0.0, 1.0)


@cache
def _lfw_set(views: int, seed: int) -> IdentityData:
    import skimage.data

    faces = np.asarray(skimage.data.lfw_subset(), dtype=np.float64)[:LFW_FACES]
    images, labels, sources = [], [], []
    for index, face in enumerate(faces):
        rng = np.random.default_rng([seed, index])
        for _ in range(views):
            images.append(np.round(_face_view(face, rng) * 255).astype(np.uint8))
            labels.append(index)
            sources.append(f"skimage lfw_subset face {index}")
    x = np.stack(images)[..., None]
    x.flags.writeable = False
    return IdentityData(
        x=x,
        y=np.asarray(labels, dtype=np.int64),
        classes=LFW_FACES,
        name="lfw_identities",
        provenance=(
            f"scikit-image lfw_subset: {LFW_FACES} real 25x25 face crops, each its own "
            f"identity, {views} augmented views each (flip, shift, rotation, brightness); "
            "pipeline mechanics only, not a face-recognition accuracy claim"
        ),
        identities=tuple(f"lfw_subset face {i}" for i in range(LFW_FACES)),
        source=np.asarray(sources),
    )


def lfw_identities(
    split: str | Split | None = None, *, views: int = LFW_VIEWS, seed: int = 0
) -> IdentityData:
    """scikit-image's 100 LFW face crops as 100 exemplar identities, x uint8 (N, 25, 25, 1).

    Each sample is an augmented view of its identity's single crop, so this tests the
    mechanics of a face pipeline on real faces; it says nothing about face-recognition
    accuracy. The subset names nobody: were two crops of one person, they would count as
    two identities. Splits are by identity, as in `glyph_identities`.
    """
    if not isinstance(views, int) or views < 2:
        raise InputError(f"views must be an integer of at least 2; got {views!r}")
    return _pick_split(_lfw_set(views, seed), split, SPLIT_SEED)
