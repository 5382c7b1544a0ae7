"""The enrolment database of `mobilecv enroll` / `verify`: pre-computed encodings of known
identities (course week 4), in numpy only.

Format (an .npz written by `save`, read by `load`; no pickles), version 1:

- ``kind``: "mobilecv-embedding-database"; ``version``: 1 (a newer version is refused);
- ``dim``: D, the embedding dimension;
- ``model_fingerprint``: the SHA-256 of the model file that computed the encodings, and
  ``model_name`` its file name. Encodings are only comparable with the same model's:
  enrol and verify with the same file (a .tflite converted from a .keras is another file);
- ``threshold``: the default tau of `verify`: the distance that best separates the
  enrolled images' same-identity from their different-identity pairs
  (metric_learning.evaluate.best_threshold, clipped to [0, 2]; 0 when no distance separates
  them better than rejecting everyone), or DEFAULT_THRESHOLD without pairs of both kinds;
- ``names`` (M,): the identities; ``encodings`` (M, D) float32: each identity's mean
  image encoding, re-normalised to unit length;
- ``image_encodings`` (N, D) float32, ``image_identity`` (N,) int64 (a row of
  ``names``) and ``image_files`` (N,): every enrolled image.

A file that is not such a database, or that was written by another model or with
another dimension, is an InputError of one line.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilecv import postprocess
from mobilecv.errors import InputError

KIND = "mobilecv-embedding-database"
VERSION = 1
DEFAULT_THRESHOLD = 1.0  # the distance of unit vectors 60 degrees apart
UNIT_TOLERANCE = 1e-3
FIELDS = (
    "kind", "version", "dim", "model_fingerprint", "model_name", "threshold", "names",
    "encodings", "image_encodings", "image_identity", "image_files",
)  # fmt: skip


@dataclass(frozen=True)
class Database:
    model_fingerprint: str
    model_name: str
    threshold: float
    names: tuple[str, ...]
    encodings: np.ndarray  # (M, D) unit rows, one per identity
    image_encodings: np.ndarray  # (N, D) unit rows, one per enrolled image
    image_identity: np.ndarray  # (N,) index into names
    image_files: tuple[str, ...]

    @property
    def dim(self) -> int:
        return int(self.encodings.shape[1])

    def recognise(self, embeddings: np.ndarray, threshold: float | None = None) -> list[dict]:
        """Per embedding: the nearest identity's name and distance, and the identity when
        that distance is under ``threshold`` (the database's default when None), else
        None ("unknown")."""
        tau = self.threshold if threshold is None else float(threshold)
        found = postprocess.nearest_identity(embeddings, self.encodings, tau)
        return [
            {
                "identity": self.names[k] if k >= 0 else None,
                "nearest": self.names[n],
                "distance": float(d),
                "threshold": tau,
            }
            for k, n, d in zip(found["identity"], found["nearest"], found["distance"], strict=True)
        ]


def fingerprint(model_path: str | os.PathLike) -> str:
    """The SHA-256 of a model file's bytes."""
    digest = hashlib.sha256()
    with open(model_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def enrol(embeddings: np.ndarray, identities, files, model_path: str | os.PathLike) -> Database:
    """A database of image ``embeddings`` (N, D) labelled by identity name (N,)."""
    from mobilecv.metric_learning.evaluate import all_pairs, best_threshold, pair_distances

    images = postprocess.embedding(embeddings)["embedding"]
    names, index = np.unique(np.asarray(identities, dtype=str), return_inverse=True)
    if len(images) != len(index) or len(images) != len(files) or not len(images):
        raise InputError(f"{len(images)} encodings for {len(index)} identities and {len(files)} files")  # fmt: skip
    means = np.stack([images[index == k].mean(axis=0) for k in range(len(names))])
    i, j, same = all_pairs(index)
    threshold = DEFAULT_THRESHOLD
    if same.any() and not same.all():
        # Unit vectors lie 0 to 2 apart: a tau outside says "accept none" or "accept all".
        threshold = float(np.clip(best_threshold(pair_distances(images, i, j), same)[0], 0, 2))
    return Database(
        model_fingerprint=fingerprint(model_path),
        model_name=Path(model_path).name,
        threshold=float(threshold),
        names=tuple(str(n) for n in names),
        encodings=postprocess.embedding(means)["embedding"],
        image_encodings=images,
        image_identity=index.astype(np.int64),
        image_files=tuple(str(f) for f in files),
    )


def save(database: Database, path: str | os.PathLike, force: bool = False) -> Path:
    """Write the database as a version-1 .npz, atomically."""
    from mobilecv.fileio import atomic_path

    arrays = {
        "kind": np.asarray(KIND),
        "version": np.asarray(VERSION, dtype=np.int64),
        "dim": np.asarray(database.dim, dtype=np.int64),
        "model_fingerprint": np.asarray(database.model_fingerprint),
        "model_name": np.asarray(database.model_name),
        "threshold": np.asarray(database.threshold, dtype=np.float64),
        "names": np.asarray(database.names, dtype=str),
        "encodings": database.encodings.astype(np.float32),
        "image_encodings": database.image_encodings.astype(np.float32),
        "image_identity": database.image_identity.astype(np.int64),
        "image_files": np.asarray(database.image_files, dtype=str),
    }
    with atomic_path(path, force) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return Path(path)


def _read_fields(path: Path) -> dict[str, np.ndarray]:
    from mobilecv.fileio import load_numpy

    archive = load_numpy(path)
    if not hasattr(archive, "files"):
        raise InputError(f"{path}: a .npy array, not an embedding database (.npz)")
    with archive:
        if "kind" not in archive.files or _scalar(path, archive, "kind", str) != KIND:
            raise InputError(f"{path}: not a mobilecv embedding database")
        version = _scalar(path, archive, "version", int)
        if version != VERSION:
            raise InputError(
                f"{path}: embedding database version {version}; this mobilecv reads version "
                f"{VERSION}"
            )
        missing = [name for name in FIELDS if name not in archive.files]
        if missing:
            raise InputError(f"{path}: corrupt embedding database (no {', '.join(missing)})")
        try:
            return {name: archive[name] for name in FIELDS}
        except (ValueError, OSError, EOFError) as exc:  # a damaged member
            raise InputError(f"{path}: corrupt embedding database ({exc})") from None


def _scalar(path: Path, fields, name: str, kind: type):
    """One scalar field as ``kind``; a missing or malformed one means a corrupt file."""
    try:
        return kind(fields[name].item())
    except (KeyError, ValueError, TypeError, OSError, EOFError):
        raise InputError(f"{path}: corrupt embedding database (bad {name})") from None


def _check_shapes(path: Path, f: dict[str, np.ndarray]) -> None:
    dim, names = _scalar(path, f, "dim", int), f["names"]
    encodings, images, identity = f["encodings"], f["image_encodings"], f["image_identity"]
    problems = []
    if names.ndim != 1 or len(names) == 0 or encodings.shape != (len(names), dim):
        problems.append(f"{names.shape[0] if names.ndim else 0} names but encodings {encodings.shape}")  # fmt: skip
    if images.ndim != 2 or images.shape[1] != dim or identity.shape != (len(images),):
        problems.append(f"image encodings {images.shape} and identities {identity.shape}")
    elif len(identity) and not (identity.min() >= 0 and identity.max() < len(names)):
        problems.append("an image identity outside the names")
    if f["image_files"].shape != identity.shape:
        problems.append(f"{f['image_files'].shape} files for {identity.shape} images")
    for name in ("encodings", "image_encodings"):
        rows = f[name].astype(np.float64)
        if not np.all(np.isfinite(rows)) or not np.allclose(
            np.linalg.norm(rows, axis=-1), 1.0, atol=UNIT_TOLERANCE
        ):
            problems.append(f"{name} are not unit vectors")
    if not np.isfinite(_scalar(path, f, "threshold", float)):
        problems.append("the threshold is not a number")
    if problems:
        raise InputError(f"{path}: corrupt embedding database ({problems[0]})")


def load(path: str | os.PathLike) -> Database:
    """A database written by `save`; InputError (one line) for anything else."""
    path = Path(path)
    f = _read_fields(path)
    try:
        _check_shapes(path, f)
    except (ValueError, TypeError) as exc:  # e.g. text where numbers belong
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: corrupt embedding database ({exc})") from None
    return Database(
        model_fingerprint=str(f["model_fingerprint"]),
        model_name=str(f["model_name"]),
        threshold=float(f["threshold"]),
        names=tuple(str(n) for n in f["names"]),
        encodings=f["encodings"].astype(np.float32),
        image_encodings=f["image_encodings"].astype(np.float32),
        image_identity=f["image_identity"].astype(np.int64),
        image_files=tuple(str(n) for n in f["image_files"]),
    )


def check_compatible(database: Database, path, model_path, dim: int) -> None:
    """Refuse a database of another dimension or written with another model file."""
    if database.dim != dim:
        raise InputError(
            f"{path} holds {database.dim}-d encodings; {model_path} gives {dim}-d embeddings"
        )
    if database.model_fingerprint != fingerprint(model_path):
        raise InputError(
            f"{path} was enrolled with another model ({database.model_name}, sha256 "
            f"{database.model_fingerprint[:12]}); enrol again with {model_path}"
        )
