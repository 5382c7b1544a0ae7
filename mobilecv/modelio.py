"""Reading and writing Keras model files with either Keras implementation.

Files keep the model's mobilecv info (input range, task, source; mobilecv.modelinfo)
beside what Keras writes, and loading sets it on the model again.
"""

from __future__ import annotations

import os
import re
import zipfile

from mobilecv._tf import get_keras, silenced_stderr
from mobilecv.errors import InputError, MissingFile
from mobilecv.fileio import atomic_path
from mobilecv.modelinfo import get_info, read_keras_file, set_info, write_keras_file


def _saved_by_keras3(path: str) -> bool:
    """Keras 3 writes a zip with config.json; tf_keras 2.x .keras files say so in metadata."""
    try:
        with zipfile.ZipFile(path) as archive:
            meta = (
                archive.read("metadata.json").decode()
                if "metadata.json" in archive.namelist()
                else ""
            )
    except (zipfile.BadZipFile, KeyError):
        return False
    return '"keras_version": "3' in meta


def load_model(path: str | os.PathLike, keras: str | None = None):
    """Load any Keras model file (.keras or full-model .h5) without compiling it.

    tf_keras is tried first for .h5 and tf_keras-written .keras files; Keras 3 for files
    Keras 3 wrote. mobilecv's own layers are registered first. A file neither Keras can
    read is an InputError of one line: the file and the reason of the Keras that wrote it.
    The mobilecv info stored in the file, if any, is set on the model.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFile(f"model file not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not a .keras or .h5 model file")
    if not path.endswith((".keras", ".h5", ".hdf5")):
        raise InputError(f"{path}: expected a .keras or .h5 model file")
    import mobilecv.custom_layers  # noqa: F401  (registers LRN, ChannelZeroPad, ...)

    order = (
        [keras]
        if keras
        else (["keras3", "tf_keras"] if _saved_by_keras3(path) else ["tf_keras", "keras3"])
    )
    reasons = []
    for name in order:
        K = get_keras(name)
        try:
            with silenced_stderr():
                model = K.models.load_model(path, compile=False)
        except Exception as exc:  # noqa: BLE001 - try the other Keras before giving up
            reasons.append(f"{name}: {load_error_reason(exc)}")
            continue
        info = read_keras_file(path)
        return model if info is None else set_info(model, info)
    # The first Keras tried is the one that wrote the file; its reason is the useful one.
    raise InputError(f"cannot load {path} as a Keras model ({reasons[0]})")


_QUOTED_CLASS = re.compile(r"(?:Unknown layer|Could not locate class)[^'\"]*['\"]([^'\"]+)['\"]")
MAX_REASON = 160


def load_error_reason(exc: BaseException) -> str:
    """One short line from a Keras loading error, whose text often holds the whole config."""
    text = " ".join(str(exc).split())
    match = _QUOTED_CLASS.search(text)
    if match:
        return f"unknown layer class {match.group(1)!r} (not registered in this process)"
    if not text:
        return type(exc).__name__
    text = re.split(r"(?<=[.:]) (?=[A-Z{])", text, maxsplit=1)[0]  # the first sentence
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def check_model_suffix(path: str | os.PathLike) -> str:
    """`path` if it names a model file Keras can write (.keras or .h5), else an InputError."""
    path = os.fspath(path)
    if not path.endswith((".keras", ".h5")):
        raise InputError(f"{path}: the output must end in .keras or .h5")
    return path


def save_model(model, path: str | os.PathLike, force: bool = False) -> None:
    """Save atomically; the file suffix picks the format (.keras or .h5)."""
    path = check_model_suffix(path)
    with atomic_path(path, force) as tmp, silenced_stderr():
        model.save(str(tmp))
        write_keras_file(tmp, get_info(model))
