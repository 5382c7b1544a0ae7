"""The embedding task (issue 15 §1, §4, §5): its numpy rules, P x K batches in the
trainer, the enrolment database and its bad files, and `train` / `convert` / `enroll` /
`verify` end to end in fresh processes at a tiny size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from mobilecv import postprocess
from mobilecv.errors import InputError
from mobilecv.metric_learning import database
from mobilecv.tasks import get_task
from mobilecv.tasks.embedding import embedding_agreement, embedding_scores


def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# ----------------------------------------------------------------------- numpy rules


def test_decode_renormalises_and_nearest_identity_says_unknown_beyond_tau():
    decoded = postprocess.decode("embedding", {"StatefulPartitionedCall:0": [[3.0, 4.0]]})
    np.testing.assert_allclose(decoded["embedding"], [[0.6, 0.8]], atol=1e-6)
    db = unit([[1, 0], [0, 1]])
    found = postprocess.nearest_identity(unit([[1, 0.1], [1, 1.2]]), db, threshold=0.5)
    assert found["nearest"].tolist() == [0, 1]
    assert found["identity"].tolist() == [0, -1]  # the second is 0.77 from identity 1
    np.testing.assert_allclose(found["distance"][1], np.linalg.norm(unit([[1, 1.2]]) - db[1]))
    one = postprocess.nearest_identity(np.array([0.0, 2.0]), db, threshold=0.01)  # a (D,) row
    assert one["identity"].tolist() == [1] and one["distance"][0] < 1e-6
    with pytest.raises(ValueError, match="database"):
        postprocess.nearest_identity(unit([[1, 0]]), unit([[1, 0, 0]]), 0.5)


def test_scores_separate_clustered_identities_from_random_ones():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(25), 4)
    centres = unit(rng.normal(size=(25, 16)))
    clustered = unit(centres[labels] + 0.05 * rng.normal(size=(100, 16)))
    good = embedding_scores(clustered, labels)
    assert good["auc"] > 0.999 and good["one_shot_5"] == 1.0 and good["one_shot_20"] == 1.0
    assert good["tar_at_far_0.001"] == 1.0  # 4,800 different-identity pairs
    assert good["identities"] == 25 and good["pairs"] == 100 * 99 / 2
    chance = embedding_scores(unit(rng.normal(size=(100, 16))), labels)
    assert 0.4 < chance["auc"] < 0.6 and chance["one_shot_20"] < 0.2
    few = embedding_scores(clustered[:40], labels[:40])  # 10 identities: no 20-way episodes
    assert np.isnan(few["one_shot_20"]) and few["one_shot_5"] == 1.0
    # 720 different-identity pairs cannot show a FAR of 1e-3, only of 1e-2
    assert np.isnan(few["tar_at_far_0.001"]) and few["tar_at_far_0.01"] == 1.0


def test_agreement_is_cosine_and_nearest_neighbour():
    rng = np.random.default_rng(1)
    a = unit(rng.normal(size=(32, 8)))
    same = embedding_agreement(a, a * 3.0)  # scale does not matter: both are re-normalised
    assert same == {"embedding_cosine": pytest.approx(1.0), "neighbour_agreement": 1.0}
    other = embedding_agreement(a, unit(rng.normal(size=(32, 8))))
    assert other["embedding_cosine"] < 0.5 and other["neighbour_agreement"] < 0.5


def test_batch_order_is_p_identities_by_k_images_and_other_tasks_keep_shuffling():
    task = get_task("embedding")
    labels = np.repeat(np.arange(12), 10)  # 120 images of 12 identities
    order = task.batch_order({"identity": labels}, 16, seed=0)
    assert len(order) % 16 == 0 and len(order) >= 96  # about one pass over the images
    for batch in order.reshape(-1, 16):
        ids, counts = np.unique(labels[batch], return_counts=True)
        assert len(ids) == 4 and (counts == 4).all()
    assert not np.array_equal(order, task.batch_order({"identity": labels}, 16, seed=1))
    with pytest.raises(InputError, match="multiple of K"):
        task.batch_order({"identity": labels}, 18, seed=0)
    for name in ("classification", "localisation", "segmentation"):
        assert get_task(name).batch_order(labels, 16, 0) is None


def test_to_dataset_follows_an_explicit_order():
    from mobilecv.data.datasets import ArrayData, to_dataset

    data = ArrayData(
        x=np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1).repeat(4, 1).repeat(4, 2),
        y={"identity": np.arange(6, dtype=np.int64) * 10},
        classes=6,
        name="t",
    )
    ds = to_dataset(data, batch_size=4, order=np.array([5, 5, 0, 3, 1, 2, 4, 4]))
    labels = np.concatenate([y["identity"].numpy() for _, y in ds])
    assert labels.tolist() == [50, 50, 0, 30, 10, 20, 40, 40]
    with pytest.raises(InputError, match="index"):
        to_dataset(data, order=np.array([6]))


def test_load_limit_keeps_whole_groups_of_k():
    task = get_task("embedding")
    data = task.load("lfw", "train", limit=40)
    ids, counts = np.unique(data.y["identity"], return_counts=True)
    assert len(data) == 40 and len(ids) == 10 and (counts == 4).all()
    assert data.x.shape[1:] == (25, 25, 1) and "not a face-recognition" in data.provenance
    with pytest.raises(InputError, match="identity sets"):
        task.load("scenes", "train")


# ----------------------------------------------------------------------- database


def _database(tmp_path: Path, dim: int = 8) -> tuple[Path, Path]:
    model = tmp_path / "model.tflite"
    model.write_bytes(b"any model bytes")
    rng = np.random.default_rng(2)
    centres = unit(rng.normal(size=(3, dim)))
    labels = np.repeat(np.arange(3), 3)
    images = unit(centres[labels] + 0.05 * rng.normal(size=(9, dim)))
    names = [f"person{k}" for k in labels]
    db = database.enrol(images, names, [f"{n}/{i}.png" for i, n in enumerate(names)], model)
    return database.save(db, tmp_path / "db.npz"), model


def test_database_round_trip(tmp_path):
    path, model = _database(tmp_path)
    db = database.load(path)
    assert db.names == ("person0", "person1", "person2") and db.dim == 8
    assert db.image_identity.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_allclose(np.linalg.norm(db.encodings, axis=1), 1.0, atol=1e-6)
    assert 0.0 < db.threshold < 2.0 and db.model_name == "model.tflite"
    database.check_compatible(db, path, model, 8)
    answers = db.recognise(db.image_encodings[[0, 4]])
    assert [a["identity"] for a in answers] == ["person0", "person1"]
    assert db.recognise(-db.encodings[:1])[0]["identity"] is None  # far from everyone
    with pytest.raises(InputError, match="exists"):
        database.save(db, path)


def _rewrite(path: Path, **changes) -> None:
    with np.load(path) as archive:
        fields = {k: archive[k] for k in archive.files}
    fields.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del fields[key]
    with open(path, "wb") as handle:
        np.savez(handle, **fields)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kind": np.asarray("something else")}, "not a mobilecv embedding database"),
        ({"version": np.asarray(2)}, "version 2; this mobilecv reads version 1"),
        ({"names": None}, r"corrupt embedding database \(no names\)"),
        ({"encodings": np.ones((3, 8), np.float32)}, "encodings are not unit vectors"),
        ({"image_identity": np.arange(9) + 1}, "identity outside the names"),
        ({"dim": np.asarray(4)}, "corrupt"),
        ({"threshold": np.asarray("high")}, "bad threshold"),
    ],
)
def test_a_bad_database_is_one_line_input_error(tmp_path, change, message):
    path, _ = _database(tmp_path)
    _rewrite(path, **change)
    with pytest.raises(InputError, match=message) as error:
        database.load(path)
    assert "\n" not in str(error.value)


def test_truncated_text_and_foreign_databases_are_refused(tmp_path):
    path, model = _database(tmp_path)
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.npz").write_text("names,encodings\n")
    for bad in ("cut.npz", "text.npz"):
        with pytest.raises(InputError):
            database.load(tmp_path / bad)
    db = database.load(path)
    with pytest.raises(InputError, match="holds 8-d encodings; .* gives 16-d"):
        database.check_compatible(db, path, model, 16)
    other = tmp_path / "other.tflite"
    other.write_bytes(b"another model")
    with pytest.raises(InputError, match="enrolled with another model"):
        database.check_compatible(db, path, other, 8)


# ----------------------------------------------------------------------- end to end


cli = run_cli


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """(int8 .tflite path, conversion result): a tiny encoder trained one epoch on glyphs
    in P x K batches, converted to int8 with the task's agreement check."""
    import mobilecv
    from mobilecv.converters.tflite import convert
    from mobilecv.train import train

    model = mobilecv.build("embedding", width=0.25, resolution=32, input_channels=1)
    model, report = train(model, "glyphs", 1, limit=64, batch_size=16, progress=False)
    assert report.task == "embedding" and "auc" in report.val_metrics
    result = convert(model, "int8", calibration="glyphs", samples=32, progress=False)
    path = tmp_path_factory.mktemp("encoder") / "int8.tflite"
    result.save(path)
    return path, result


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """lfw test faces as PNGs in person folders: 4 images of each of 4 people."""
    from PIL import Image

    from mobilecv.data.glyphs import lfw_identities

    folder = tmp_path_factory.mktemp("faces")
    data = lfw_identities("test")
    for identity in np.unique(data.y)[:4]:
        person = folder / f"person{identity}"
        person.mkdir()
        for k, row in enumerate(np.flatnonzero(data.y == identity)[:4]):
            Image.fromarray(data.x[row][..., 0]).save(person / f"{k}.png")
    return folder


def test_int8_conversion_reports_the_cosine_agreement_and_runs_l2_norm_in_int8(encoder):
    from mobilecv.inspection import read_tflite

    path, result = encoder
    agreement = result.verification.agreement
    assert {"embedding_cosine", "neighbour_agreement"} <= set(agreement), agreement
    assert -1.0 <= agreement["embedding_cosine"] <= 1.0
    report = read_tflite(path)
    assert "L2_NORMALIZATION" in report.op_counts and not report.float_ops, report


def test_bench_measures_the_int8_encoder_on_host_and_in_tflite_micro(encoder, tmp_path):
    """`mobilecv bench` in a fresh process: a host latency, and on an MCU profile the arena
    TFLite Micro really allocates (L2_NORMALIZATION included)."""
    path, _ = encoder
    done = cli("bench", path, "--device", "host", "--runs", "3", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["latency_ms"]["p50"] > 0
    done = cli("bench", path, "--device", "stm32h743", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    mcu = json.loads(done.stdout)
    assert mcu["arena_bytes"] > 0 and mcu["verdict"] in ("fits", "does not fit"), mcu


def test_ondevice_decodes_embeddings_with_numpy_alone(encoder, tmp_path):
    from test_task_pipeline import _device_folder

    from mobilecv.converters.tflite import quantize_input
    from mobilecv.evaluate import TfliteModel

    path, _ = encoder
    folder = _device_folder(tmp_path)
    tfl = TfliteModel(path)
    x = np.random.default_rng(0).random((1, 32, 32, 1), dtype=np.float32)
    np.save(tmp_path / "x.npy", quantize_input(x, tfl.input))
    done = subprocess.run(
        [sys.executable, str(folder / "ondevice.py"), str(path), "--postprocess", "--runs", "2",
         "--inputs", str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.json")],
        cwd=folder, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    predictions = json.loads((tmp_path / "r.json").read_text())["predictions"]
    assert predictions["task"] == "embedding"
    want = get_task("embedding").decode(tfl.predict_outputs(x, ("embedding",)))["embedding"]
    np.testing.assert_allclose(predictions["embedding"], want, atol=1e-6)
    assert abs(np.linalg.norm(predictions["embedding"]) - 1.0) < 1e-5


def test_enroll_then_verify_in_two_processes(encoder, faces, tmp_path):
    model, _ = encoder
    done = cli("enroll", model, "--images", f"{faces}/*/[012].png", "-o", "db.npz",
               "--json", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["identities"] == 4 and summary["images"] == 12 and summary["dim"] == 128
    queries = sorted(faces.glob("*/3.png"))
    done = cli("verify", model, "db.npz", *queries, "--threshold", "2.5", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout)["answers"]
    assert [a["image"] for a in answers] == [str(q) for q in queries]
    # tau above every distance of unit vectors: each answer is its nearest identity.
    assert all(a["identity"] == a["nearest"] and 0 <= a["distance"] <= 2 for a in answers)
    db = database.load(tmp_path / "db.npz")
    assert set(db.names) == {q.parent.name for q in queries}
    tiny = cli("verify", model, "db.npz", queries[0], "--threshold", "1e-9", cwd=tmp_path)
    assert tiny.returncode == 0 and ": unknown (nearest person" in tiny.stdout


def test_ondevice_recognises_against_the_database_with_numpy_alone(encoder, faces, tmp_path):
    """The device folder's ondevice.py (no TensorFlow, no mobilecv) gives the same answer
    as `mobilecv verify` for one image, and refuses another model's database."""
    from test_task_pipeline import _device_folder

    from mobilecv.commands.imagefiles import model_input, read_image
    from mobilecv.converters.tflite import quantize_input
    from mobilecv.evaluate import TfliteModel
    from mobilecv.modelinfo import read_info

    path, _ = encoder
    image = next(faces.glob("*/1.png"))
    assert (
        cli("enroll", path, "--images", f"{faces}/*/*.png", "-o", "db.npz", cwd=tmp_path).returncode
        == 0
    )
    want = json.loads(cli("verify", path, "db.npz", image, "--json", cwd=tmp_path).stdout)[
        "answers"
    ][0]
    tfl = TfliteModel(path)
    x = model_input(read_image(image), tfl.input_shape, read_info(path).input_range)  # as verify
    np.save(tmp_path / "x.npy", quantize_input(x, tfl.input))
    folder = _device_folder(tmp_path)
    command = [sys.executable, str(folder / "ondevice.py"), str(path), "--runs", "1",
               "--inputs", str(tmp_path / "x.npy"), "--database", str(tmp_path / "db.npz")]  # fmt: skip
    done = subprocess.run([*command, "-o", str(tmp_path / "r.json")], cwd=folder,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (got,) = json.loads((tmp_path / "r.json").read_text())["predictions"]["recognised"]
    assert (got["identity"], got["nearest"]) == (want["identity"], want["nearest"])
    assert got["distance"] == pytest.approx(want["distance"], abs=1e-4)
    other = tmp_path / "other.tflite"
    other.write_bytes(path.read_bytes() + b"\0")  # another file: another fingerprint
    command[2] = str(other)
    refused = subprocess.run([*command, "-o", str(tmp_path / "r2.json")], cwd=folder,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 1
    result = json.loads((tmp_path / "r2.json").read_text())
    assert not result["ok"] and "enrolled with another model" in result["error"]


def test_a_database_of_another_model_or_a_corrupt_one_exits_2(encoder, faces, tmp_path):
    model, _ = encoder
    path, _ = _database(tmp_path)  # 8-d, written for another file
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    image = next(faces.glob("*/0.png"))
    for db, message in ((path, "holds 8-d encodings"), (garbage, "garbage.npz")):
        done = cli("verify", model, db, image, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    exists = cli("enroll", model, "--images", str(image), "-o", path, cwd=tmp_path)
    assert exists.returncode == 2 and "--force" in exists.stderr


@pytest.mark.slow
def test_train_cli_then_enroll_and_verify_with_the_keras_file(faces, tmp_path):
    """`mobilecv train embedding --data glyphs` in a fresh process; its .keras file
    enrols and verifies (the .tflite path is the default run's)."""
    done = cli(
        "train", "embedding", "--data", "glyphs", "--epochs", "2", "--width", "0.25",
        "--limit", "64", "--batch-size", "16", "-o", "out", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["task"] == "embedding" and report["dataset"] == "glyphs"
    assert {"auc", "one_shot_5", "tar_at_far_0.001"} <= set(report["val_metrics"])
    assert len(report["history"]["loss"]) == 2
    model = tmp_path / "out" / "model.keras"
    done = cli("enroll", model, "--images", f"{faces}/*/*.png", "-o", "db.npz", cwd=tmp_path)
    assert done.returncode == 0 and "enrolled 16 images of 4 identities" in done.stdout
    done = cli("verify", model, "db.npz", next(faces.glob("*/0.png")), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["answers"][0]["nearest"].startswith("person")
