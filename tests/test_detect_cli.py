"""`mobilecv detect`: a .tflite detector on image files, drawn and written as COCO results.

One tiny detector (float and int8) and one tiny classifier are built once for the module;
the command runs in fresh processes as a user runs it. Its detections must be exactly the
library's (LiteRT, then mobilecv.postprocess.decode) on the same resized image.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilecv import postprocess
from mobilecv.commands.imagefiles import model_input, read_image
from mobilecv.modelinfo import ModelInfo, add_to_tflite, map_range, read_info

LOW = ["--score-threshold", "0.01"]  # an untrained detector's scores are near-uniform
NAMES = [f"thing{k}" for k in range(10)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """float and int8 YOLO detectors, one with its NMS in the graph, a classifier and a
    detector stripped of its anchors."""
    import mobilecv
    from mobilecv.converters.tflite import convert

    d = tmp_path_factory.mktemp("detect_models")
    yolo = mobilecv.build("yolo", width=0.25, resolution=48, classes=10, input_channels=3)
    kinds = ("float", "int8", "in_graph", "classifier", "no_anchors")
    paths = {name: d / f"{name}.tflite" for name in kinds}
    convert(yolo, "none", verify=False, progress=False).save(paths["float"])
    in_graph = convert(yolo, "none", nms={"score_threshold": 0.01}, verify=False, progress=False)
    in_graph.save(paths["in_graph"])
    int8 = convert(yolo, "int8", calibration="scenes", samples=32, verify=False, progress=False)
    int8.save(paths["int8"])
    classifier = mobilecv.build("mobilenet_v2", width=0.35, resolution=32, classes=3)
    convert(classifier, "none", verify=False, progress=False).save(paths["classifier"])
    bare = ModelInfo(input_range=read_info(paths["float"]).input_range, task="detection")
    paths["no_anchors"].write_bytes(add_to_tflite(paths["float"].read_bytes(), bare))
    (d / "names.txt").write_text("\n".join(NAMES) + "\n\n")
    (d / "three_names.txt").write_text("a\nb\nc\n")
    return {**paths, "names": d / "names.txt", "three_names": d / "three_names.txt"}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """A real RGB photo, a grey one, a generated scene, and an RGBA crop that is not square."""
    import skimage.data

    from mobilecv.tasks import get_task

    d = tmp_path_factory.mktemp("detect_images")
    astronaut = skimage.data.astronaut()
    alpha = np.full((300, 400, 1), 128, np.uint8)
    arrays = {
        "astronaut.png": astronaut,
        "camera.png": skimage.data.camera(),
        "scene.png": get_task("detection").load("scenes", "test", limit=2).x[0],
        "wide_rgba.png": np.concatenate([astronaut[100:400, 50:450], alpha], axis=-1),
    }
    for name, array in arrays.items():
        Image.fromarray(array).save(d / name)
    return [d / name for name in arrays]


def cli(*args, cwd=None, no_tf: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MOBILECV_DEBUG", None)
    if no_tf:  # a `tensorflow` that cannot be imported: detect needs LiteRT only
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(no_tf), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "mobilecv.cli", "detect", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module", params=["float", "int8", "in_graph"])
def run(request, models, images, tmp_path_factory):
    """(model kind, the --json summary, the output folder) of one run on every image."""
    out = tmp_path_factory.mktemp(f"detect_{request.param}") / "out"
    result = cli(models[request.param], *images, "-o", out, *LOW, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return request.param, json.loads(result.stdout), out


def reference(model: Path, image: Path) -> list[dict]:
    """The library's detections on the image as the command must feed it: converted to
    RGB, stretched with Pillow's bilinear filter, mapped to the model's input range."""
    from mobilecv.evaluate import TfliteModel

    runner, info = TfliteModel(model), read_info(model)
    _, height, width, _ = runner.input_shape
    with Image.open(image) as opened:
        rgb = opened.convert("RGB")
    pixels = np.asarray(rgb.resize((width, height), Image.Resampling.BILINEAR), np.float32)
    x = map_range(pixels[None], info.input_range).astype(np.float32)
    if "nms" in info.task_options:  # the graph's own detections, cut by the same threshold
        found = runner.predict_outputs(x, postprocess.DETECTIONS)
        decoded = postprocess.keep_detections(found, score_threshold=0.01, max_detections=50)
    else:
        outputs = runner.predict_outputs(x, postprocess.TASK_OUTPUTS["detection"])
        decoded = postprocess.decode(
            "detection", outputs, anchors=info.task_options["anchors"],
            score_threshold=0.01, iou_threshold=0.5, max_detections=50,
        )  # fmt: skip
    n, scale = int(decoded["count"][0]), np.array([*rgb.size, *rgb.size])
    boxes = decoded["boxes"][0, :n].astype(np.float64) * scale
    return [
        {"class": int(c), "score": float(s), "corners": b}
        for c, s, b in zip(decoded["classes"][0, :n], decoded["scores"][0, :n], boxes, strict=True)
    ]


# ------------------------------------------------------------------ a run, float and int8


def test_writes_a_drawn_png_per_image_and_the_coco_files(run, images):
    _, summary, out = run
    expected = {f"{p.stem}.png" for p in images} | {"detections.json", "images.json"}
    assert {p.name for p in out.iterdir()} == expected  # no temporary files left behind
    assert summary["written"] == [str(out / name) for name in (*[f"{p.stem}.png" for p in images], "detections.json", "images.json")]  # fmt: skip
    for image, entry in zip(images, summary["images"], strict=True):
        with Image.open(image) as original, Image.open(entry["written"]) as drawn:
            assert drawn.size == original.size == (entry["width"], entry["height"])
            assert drawn.mode == "RGB"
            assert entry["count"] > 0  # the low threshold keeps boxes
            assert np.asarray(drawn).tolist() != np.asarray(original.convert("RGB")).tolist()


def test_every_box_lies_inside_its_image(run):
    _, summary, out = run
    sizes = {i["id"]: (i["width"], i["height"]) for i in json.loads((out / "images.json").read_text())["images"]}  # fmt: skip
    results = json.loads((out / "detections.json").read_text())
    assert len(results) == sum(entry["count"] for entry in summary["images"])
    for det in results:
        x, y, w, h = det["bbox"]
        width, height = sizes[det["image_id"]]
        assert min(x, y) >= 0 and min(w, h) > 0
        assert x + w <= width + 1e-6 and y + h <= height + 1e-6
        assert 0.01 < det["score"] <= 1 and 0 <= det["category_id"] < 10


def test_detections_are_the_librarys_decode_of_the_resized_image(run, models, images):
    kind, summary, out = run
    results = json.loads((out / "detections.json").read_text())
    for image_id, image in enumerate(images, start=1):
        mine = [det for det in results if det["image_id"] == image_id]
        expected = reference(models[kind], image)
        assert len(mine) == len(expected) > 0, image.name
        for det, ref in zip(mine, expected, strict=True):
            assert det["file_name"] == image.name
            assert det["category_id"] == ref["class"]
            assert det["score"] == pytest.approx(ref["score"], abs=1e-6)
            x0, y0, x1, y1 = ref["corners"]
            assert det["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=2e-3)


def test_json_summary_matches_the_files(run, images):
    _, summary, out = run
    results = json.loads((out / "detections.json").read_text())
    coco_images = json.loads((out / "images.json").read_text())
    assert [e["file"] for e in summary["images"]] == [str(p) for p in images]
    assert [i["file_name"] for i in coco_images["images"]] == [p.name for p in images]
    assert [c["id"] for c in coco_images["categories"]] == list(range(10))
    flat = [
        {"image_id": e["image_id"], "file_name": Path(e["file"]).name, **det}
        for e in summary["images"]
        for det in e["detections"]
    ]
    assert [{k: v for k, v in d.items() if k != "name"} for d in flat] == results
    assert all(d["name"] == str(d["category_id"]) for d in flat)  # no --names: the ids


def test_pycocotools_scores_the_two_files(run):
    """images.json plus annotations is a ground truth that loadRes accepts; with the
    detections themselves as the annotations, every one matches: AP 1."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _, _, out = run
    results = json.loads((out / "detections.json").read_text())
    truth = json.loads((out / "images.json").read_text())
    truth["annotations"] = [
        {"id": i, "image_id": d["image_id"], "category_id": d["category_id"], "bbox": d["bbox"],
         "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0}
        for i, d in enumerate(results, start=1)
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = truth
        gt.createIndex()
        dt = gt.loadRes(str(out / "detections.json"))
        evaluation = COCOeval(gt, dt, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert len(dt.getAnnIds()) == len(results)
    assert evaluation.stats[0] == pytest.approx(1.0)


# ------------------------------------------------------------------ options


def test_text_lines_names_and_force(models, images, tmp_path):
    out = tmp_path / "out"
    first = cli(models["float"], images[0], "-o", out, *LOW, "--names", models["names"])
    assert first.returncode == 0, first.stderr[-3000:]
    line = first.stdout.strip()
    assert line.startswith(f"{images[0]} (512x512): ") and line.endswith(
        f"-> {out / 'astronaut.png'}"
    )
    assert "detections, top classes thing" in line and "best score" in line
    categories = json.loads((out / "images.json").read_text())["categories"]
    assert [c["name"] for c in categories] == NAMES
    again = cli(models["float"], images[0], "-o", out, "--force", "--max-detections", "1", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["images"][0]["count"] <= 1
    assert len(json.loads((out / "detections.json").read_text())) <= 1


def test_help():
    result = cli("--help")
    assert result.returncode == 0
    for piece in ("MODEL IMAGE...", "--score-threshold", "--names", "stretched", "COCO"):
        assert piece in result.stdout


# ------------------------------------------------------------------ errors


@pytest.fixture(scope="module")
def no_tf(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("no_tf")
    (d / "tensorflow").mkdir()
    (d / "tensorflow" / "__init__.py").write_text('raise ImportError("detect imported TF")\n')
    return d


ERRORS = [
    (["classifier", "astronaut"], "classifier.tflite is a classification model, not a detector"),
    (["no_anchors", "astronaut"], "a detector without anchors in its metadata"),
    (["gone.tflite", "astronaut"], "gone.tflite: no such file"),
    (["names", "astronaut"], "not a TFLite flatbuffer"),
    (["float", "gone.png"], "gone.png: no such file"),
    (["float", "names"], "names.txt: not a readable image"),
    (["float", "astronaut", "--score-threshold", "1.5"], "--score-threshold must be in [0, 1]"),
    (["float", "astronaut", "--iou-threshold", "-0.1"], "--iou-threshold must be in [0, 1]"),
    (["float", "astronaut", "--max-detections", "0"], "--max-detections must be at least 1"),
    (["float", "astronaut", "--names", "three_names"], "has 3 names; the model has 10 classes"),
    (["float", "astronaut", "camera"], "out/camera.png exists; pass --force"),
    (["float", "astronaut", "astronaut"], "would both write out/astronaut.png"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=[e[1][:40] for e in ERRORS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(models, images, no_tf, tmp_path, args, message):  # fmt: skip
    files = {**models, **{p.stem: p for p in images}}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "camera.png").write_bytes(b"mine")  # an existing output
    before = sorted(tmp_path.rglob("*"))
    args = [str(files.get(a, a)) for a in args]
    result = cli(*args, "-o", "out", cwd=tmp_path, no_tf=no_tf)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == 2, output[-3000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert sorted(tmp_path.rglob("*")) == before
    assert (tmp_path / "out" / "camera.png").read_bytes() == b"mine"


# ------------------------------------------------------------------ images into the model


def test_channels_are_converted_to_the_models(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.zeros((20, 30, 1), np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), rgb)  # alpha dropped
    grey_in = model_input(image, (1, 10, 15, 1), (0.0, 1.0))
    luminance = Image.fromarray(rgb).convert("L").resize((15, 10), Image.Resampling.BILINEAR)
    assert grey_in.shape == (1, 10, 15, 1) and grey_in.dtype == np.float32
    assert np.allclose(grey_in[0, ..., 0], np.asarray(luminance) / 255.0)
    grey = Image.fromarray(rgb[..., 0])
    rgb_in = model_input(grey, (1, 8, 8, 3), (-1.0, 1.0))
    assert rgb_in.shape == (1, 8, 8, 3) and rgb_in.min() >= -1 and rgb_in.max() <= 1
    assert np.array_equal(rgb_in[..., 0], rgb_in[..., 2])  # grey repeated


def test_a_16_bit_image_is_scaled_to_8_bits(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.mode == "L"
    assert np.array_equal(np.asarray(image), np.round(ramp / 65535 * 255).astype(np.uint8))
