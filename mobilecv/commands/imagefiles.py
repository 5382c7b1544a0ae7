"""Image files in and out of the commands that run a .tflite model on them (detect,
segment): the checks on the paths given, reading any image Pillow opens as grey or RGB
(16-bit and float grey scaled to 8 bits), and feeding it to the model: its channels, its
size and its declared input range. numpy and Pillow are imported inside the functions, so
`mobilecv --help` does not pay for them.
"""

from __future__ import annotations

from pathlib import Path

from mobilecv.errors import InputError, MissingFile, one_line

CHANNEL_MODES = {1: "L", 3: "RGB"}  # model input channels -> the Pillow mode fed to it


def image_paths(images) -> list[Path]:
    paths = [Path(image) for image in images]
    for path in paths:
        if not path.exists():
            raise MissingFile(f"{path}: no such file")
        if path.is_dir():
            raise InputError(f"{path}: is a folder, not an image")
    return paths


def read_names(names_file: str) -> list[str]:
    """Class names, one a line (trailing blank lines ignored)."""
    path = Path(names_file)
    if not path.exists():
        raise MissingFile(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a names file")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file of class names") from None
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise InputError(f"{path}: no class names (one a line)")
    if "" in lines:
        raise InputError(f"{path}: line {lines.index('') + 1} is empty; give one name a line")
    return lines


def load_model(model: str, command: str):
    from mobilecv.evaluate import TfliteModel

    runner = TfliteModel(model)
    shape = runner.input_shape
    if len(shape) != 4 or shape[3] not in CHANNEL_MODES:
        raise InputError(
            f"{model}: input shape {list(shape)}; {command} feeds images of 1 or 3 channels "
            "(N, H, W, C)"
        )
    return runner


def read_image(path: Path):
    """An image file as a Pillow image in mode L (grey) or RGB, alpha dropped; 16-bit and
    float images scaled to 8 bits. InputError when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
    except (UnidentifiedImageError, SyntaxError, ValueError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the file system's error (permission denied, ...), not the file's content
        raise InputError(f"{path}: not a readable image ({one_line(exc)})") from None
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("1", "LA", "La"):
        return image.convert("L")
    if image.mode.startswith(("I", "F")):
        return _grey_to_8bit(image)
    return image.convert("RGB")  # RGBA, P, CMYK, YCbCr, ...: colour, alpha dropped


def _grey_to_8bit(image):
    """A 16-bit, 32-bit or float grey image in mode L: 16-bit (max > 255) or 8-bit peak."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F" and values.max(initial=0) <= 1.0:
        peak = 1.0
    else:
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(np.round(values * 255.0 / peak), 0, 255).astype(np.uint8))


def model_input(image, input_shape, input_range):
    """(1, H, W, C) float32 in the model's input range: the image converted to the
    model's channels (grey by ITU-R 601 luminance, grey repeated, alpha dropped) and
    stretched to its size with Pillow's bilinear filter."""
    import numpy as np
    from PIL import Image

    from mobilecv.modelinfo import map_range

    _, height, width, channels = input_shape
    converted = image.convert(CHANNEL_MODES[channels])
    resized = converted.resize((width, height), Image.Resampling.BILINEAR)
    x = np.asarray(resized, dtype=np.float32).reshape(1, height, width, channels)
    return map_range(x, input_range).astype(np.float32)


def output_targets(paths: list[Path], out: Path, suffixes, shared, force: bool) -> list:
    """OUT/<stem><suffix> for each image and suffix (a tuple per image, or one path for a
    single suffix), after refusing two images of one stem and, without ``force``, any
    existing output, ``shared`` files (written once for all images) included, before any
    work."""
    from mobilecv.fileio import check_writable

    targets, seen = [], {}
    for path in paths:
        files = tuple(out / f"{path.stem}{suffix}" for suffix in suffixes)
        if files[0] in seen:
            raise InputError(f"{seen[files[0]]} and {path} would both write {files[0]}")
        seen[files[0]] = path
        targets.append(files if len(files) > 1 else files[0])
    for target in [*seen, *(f for t in targets if isinstance(t, tuple) for f in t[1:])]:
        check_writable(target, force)
    for target in shared:
        check_writable(out / target, force)
    return targets


def each_image(verb: str, paths, targets, run_one, progress: bool) -> list:
    """``run_one(path, target)`` for every image in order, under one progress bar: all
    images read and run before anything is written."""
    from mobilecv.progress import Progress

    done = []
    with Progress(verb, len(paths), "image", enabled=progress) as bar:
        for path, target in zip(paths, targets, strict=True):
            done.append(run_one(path, target))
            bar.update(1, note=path.name)
    return done
