"""Atomic output (write to a temporary file beside the target, then rename), and
reading the user's numpy and image files with one-line errors."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from mobilecv.errors import InputError, MissingFile, RunFailed, one_line


def check_writable(path: str | os.PathLike, force: bool = False) -> Path:
    """`path` if an output can be written there, checked before any long work: refuses
    an existing file without `force` and a folder (InputError), and a place the file
    system will not let us write (RunFailed). Creates nothing: a run that fails early
    leaves no empty folder behind."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name")
    if path.exists() and not force:
        raise InputError(f"{path} exists; pass --force to overwrite")
    folder = path.parent.absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: {folder} is a file, not a folder")
    try:  # os.access says yes to root on read-only places such as /sys: really try
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mobilecv-probe-"):
            pass
    except OSError as exc:
        raise RunFailed(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path with the target's suffix; rename it onto the target
    only if the block succeeds, so a failure never leaves a half-written file."""
    target = check_writable(path, force)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix="".join(target.suffixes), dir=target.parent
        )
    except OSError as exc:
        raise RunFailed(f"cannot write {target}: {exc.strerror or exc}") from exc
    os.close(fd)
    os.unlink(tmp)  # writers such as Keras want to create the file themselves
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as exc:
        if exc.filename not in (tmp, str(target)):
            raise  # not the write itself: let the caller's error name its own file
        raise RunFailed(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        if tmp_path.exists():
            if tmp_path.is_dir():
                import shutil

                shutil.rmtree(tmp_path, ignore_errors=True)
            else:
                tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes, force: bool = False) -> Path:
    with atomic_path(path, force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, force: bool = False) -> Path:
    return write_bytes(path, text.encode(), force)


def write_json(path: str | os.PathLike, obj, force: bool = False) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", force)


# Reading the user's files: a file that is not what its name says is bad input (one
# line naming it), not a crash deep inside numpy or PIL.
_NUMPY_MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK\x03\x04"}


def load_numpy(path: str | os.PathLike, **options):
    """np.load of a user's .npy/.npz file, never unpickling; InputError if it is not one."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"{path}: no such file")
    with open(path, "rb") as handle:
        head = handle.read(6)
    # The suffix says which of the two it must be; another name may hold either.
    expected = [_NUMPY_MAGIC[path.suffix]] if path.suffix in _NUMPY_MAGIC else _NUMPY_MAGIC.values()
    if not any(head.startswith(magic) for magic in expected):
        kind = path.suffix if path.suffix in _NUMPY_MAGIC else ".npy or .npz"
        raise InputError(f"{path}: not a {kind} file (write it with np.save or np.savez)")
    try:
        return np.load(path, allow_pickle=False, **options)
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: unreadable numpy file ({one_line(exc)})") from None


def read_image_rgb(path: str | os.PathLike):
    """A user's image file as an RGB uint8 array; InputError if PIL cannot read it."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, SyntaxError, ValueError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the file system's error (permission denied, ...), not the file's content
        raise InputError(f"{path}: not a readable image ({one_line(exc)})") from None
