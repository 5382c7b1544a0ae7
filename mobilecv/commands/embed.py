"""`mobilecv enroll` and `mobilecv verify`: face (or glyph) recognition as a user runs it.

`enroll` embeds image files with an embedding model (.tflite through LiteRT, or .keras)
and writes the database of mobilecv.metric_learning.database: one encoding per image and
per identity (the mean, re-normalised), the identity being each image's folder name.
`verify` embeds images and answers with the course's rule: the nearest identity when its
distance is under tau, else "unknown". Images are read and fed as `detect` and `segment`
feed them (mobilecv.commands.imagefiles); every check runs before any work, and the
database is written atomically.
"""

from __future__ import annotations

import glob
from pathlib import Path

import click

from mobilecv.cliutil import echo_json, force_option, handle_errors, json_option
from mobilecv.commands.imagefiles import image_paths, model_input, read_image
from mobilecv.errors import InputError, MissingFile, one_line

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


class EmbeddingRunner:
    """An embedding model file, .tflite (LiteRT) or Keras, as (1, D) unit embeddings of
    one image each."""

    def __init__(self, model: str, command: str):
        from mobilecv.commands.imagefiles import load_model
        from mobilecv.modelinfo import read_info

        self.path = model
        if not Path(model).exists():
            raise MissingFile(f"{model}: no such file")
        if Path(model).suffix in KERAS_SUFFIXES:
            from mobilecv.modelinfo import get_info
            from mobilecv.modelio import load_model as load_keras

            self.keras = load_keras(model)
            self.info = get_info(self.keras)
            shape = self.keras.input_shape
            if isinstance(shape, list) or len(shape) != 4 or shape[3] not in (1, 3):
                raise InputError(
                    f"{model}: input {shape}; {command} feeds images (N, H, W, 1 or 3)"
                )
            self.input_shape = (1, *(int(d) for d in shape[1:]))
        else:
            if read_info(model) is None:  # InputError for a file that is not a .tflite
                raise InputError(f"{model}: no mobilecv metadata, so its task is unknown")
            self.keras = None
            self.tflite = load_model(model, command)
            self.info = self.tflite.info
            self.input_shape = self.tflite.input_shape
        if self.info.task != "embedding":
            raise InputError(f"{model} is a {self.info.task} model, not an embedding model")
        self.dim = int(self.embed_input(self._blank()).shape[1])

    def _blank(self):
        import numpy as np

        return np.zeros(self.input_shape, np.float32)

    def embed_input(self, x):
        """(1, D) unit embedding of one model input."""
        from mobilecv import postprocess
        from mobilecv.tasks.base import as_outputs

        try:
            if self.keras is not None:
                raw = as_outputs(self.keras(x, training=False), ("embedding",))
            else:
                raw = self.tflite.predict_outputs(x, ("embedding",))
        except (ValueError, KeyError, InputError) as exc:
            raise InputError(
                f"{self.path}: outputs unlike an encoder's ({one_line(exc)})"
            ) from None
        if raw["embedding"].ndim != 2:
            raise InputError(f"{self.path}: output {list(raw['embedding'].shape)} is not (N, D)")
        return postprocess.embedding(raw["embedding"])["embedding"]

    def embed(self, path: Path):
        x = model_input(read_image(path), self.input_shape, self.info.input_range)
        return self.embed_input(x)[0]


def expand_images(patterns) -> list[Path]:
    """Image files from glob patterns (quoted, so mobilecv expands them) and plain paths
    (expanded by the shell), in sorted order per pattern; a pattern matching nothing is an
    error naming it."""
    paths: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            found = sorted(glob.glob(pattern))
            if not found:
                raise MissingFile(f"no image matches {pattern!r}")
            paths += found
        else:
            paths.append(pattern)
    return image_paths(dict.fromkeys(paths))  # each file once


def _embed_all(runner: EmbeddingRunner, paths: list[Path], progress: bool):
    import numpy as np

    from mobilecv.progress import Progress

    rows = []
    with Progress("embedding", len(paths), "image", enabled=progress) as bar:
        for path in paths:
            rows.append(runner.embed(path))
            bar.update(1, note=path.name)
    return np.stack(rows)


@click.command("enroll")
@click.argument("model")
@click.argument("more_images", nargs=-1, metavar="[IMAGE...]")
@click.option(
    "--images",
    "patterns",
    multiple=True,
    required=True,
    metavar="PATTERN",
    help="Images to enrol, e.g. 'faces/*/*.png' (quoted: mobilecv expands it); each image's "
    "identity is its folder's name. Repeatable.",
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="OUT.npz")
@force_option("an existing database")
@json_option("a summary")
@handle_errors
def enroll_command(model, more_images, patterns, output, force, as_json) -> None:
    """Enrol identities: embed images with MODEL (.tflite or .keras, an embedding model)
    and write the database (.npz) that `mobilecv verify` reads.

    The database holds every image's encoding and one per identity (the mean of its
    images, re-normalised), the model's SHA-256 (verify refuses another model's database)
    and a default threshold: the distance that best separates the enrolled images' pairs
    of the same and of different identities (1.0 without pairs of both kinds).
    """
    from mobilecv.fileio import check_writable
    from mobilecv.metric_learning import database

    if Path(output).suffix != ".npz":
        raise InputError(f"{output}: the database is an .npz file")
    check_writable(output, force)
    paths = expand_images([*patterns, *more_images])
    runner = EmbeddingRunner(model, "enroll")
    encodings = _embed_all(runner, paths, progress=not as_json and len(paths) > 1)
    db = database.enrol(encodings, [p.absolute().parent.name for p in paths], paths, model)
    database.save(db, output, force)
    summary = {
        "database": str(output),
        "model": model,
        "dim": db.dim,
        "identities": len(db.names),
        "images": len(paths),
        "threshold": db.threshold,
        "names": list(db.names),
    }
    if as_json:
        echo_json(summary)
    else:
        click.echo(
            f"enrolled {len(paths)} images of {len(db.names)} identities ({db.dim}-d, "
            f"default threshold {db.threshold:.3f}) -> {output}"
        )


@click.command("verify")
@click.argument("model")
@click.argument("database_file", metavar="DATABASE")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@click.option(
    "--threshold",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="tau: an image is the nearest identity when its distance is under tau, else "
    "unknown (default: the database's).",
)
@json_option("the answers")
@handle_errors
def verify_command(model, database_file, images, threshold, as_json) -> None:
    """Recognise IMAGE files against a DATABASE enrolled with the same MODEL: the nearest
    identity and its distance, or "unknown" when no distance is under the threshold."""
    from mobilecv.metric_learning import database

    db = database.load(database_file)
    paths = image_paths(images)
    runner = EmbeddingRunner(model, "verify")
    database.check_compatible(db, database_file, model, runner.dim)
    encodings = _embed_all(runner, paths, progress=not as_json and len(paths) > 1)
    answers = [
        {"image": str(path), **answer}
        for path, answer in zip(paths, db.recognise(encodings, threshold), strict=True)
    ]
    if as_json:
        echo_json({"model": model, "database": database_file, "answers": answers})
        return
    for a in answers:
        if a["identity"] is None:
            click.echo(
                f"{a['image']}: unknown (nearest {a['nearest']} at distance "
                f"{a['distance']:.4f} >= {a['threshold']:.4f})"
            )
        else:
            click.echo(
                f"{a['image']}: {a['identity']} (distance {a['distance']:.4f} < "
                f"{a['threshold']:.4f})"
            )
