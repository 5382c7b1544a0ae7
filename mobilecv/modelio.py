"""Reading and writing Keras model files with either Keras implementation."""

from __future__ import annotations

import os
import zipfile

from mobilecv._tf import get_keras, silenced_stderr
from mobilecv.errors import InputError
from mobilecv.fileio import atomic_path


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
    Keras 3 wrote. A file neither can read is an InputError naming it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    if not path.endswith((".keras", ".h5", ".hdf5")):
        raise InputError(f"{path}: expected a .keras or .h5 model file")
    order = (
        [keras]
        if keras
        else (["keras3", "tf_keras"] if _saved_by_keras3(path) else ["tf_keras", "keras3"])
    )
    errors = []
    for name in order:
        K = get_keras(name)
        try:
            with silenced_stderr():
                return K.models.load_model(path, compile=False)
        except Exception as exc:  # noqa: BLE001 - try the other Keras before giving up
            errors.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    raise InputError(f"cannot load {path} as a Keras model ({'; '.join(errors)})")


def save_model(model, path: str | os.PathLike, force: bool = False) -> None:
    """Save atomically; the file suffix picks the format (.keras or .h5)."""
    path = os.fspath(path)
    if not path.endswith((".keras", ".h5")):
        raise InputError(f"{path}: the output must end in .keras or .h5")
    with atomic_path(path, force) as tmp, silenced_stderr():
        model.save(str(tmp))
