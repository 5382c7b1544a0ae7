"""A YOLO detector that ends in its decode and per-class NMS (mobilecv.tasks.detection_graph):
the same detections as the numpy post-processing (mobilecv.postprocess.detection), in Keras,
in a float .tflite and in an int8 one, whose graph holds builtin ops only with fixed shapes.

One tiny detector is trained for one epoch for the module (an untrained one scores every
box alike) and converted once per mode. Its 27 candidates an image score 0.05 to 0.5: at a
threshold of 0.1 an image keeps 8 to 21 of them, so counts vary and some hit the limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model

import mobilecv
from mobilecv import postprocess
from mobilecv.converters.tflite import convert, dequantize, quantize_input, tail_ops
from mobilecv.data.datasets import model_inputs
from mobilecv.errors import InputError
from mobilecv.modelinfo import get_info, read_info
from mobilecv.tasks import get_task
from mobilecv.tasks.detection_graph import LAYER_NAME, OUTPUTS, has_nms, with_nms
from mobilecv.tflite_graph import load

SETTINGS = {"max_detections": 20, "score_threshold": 0.1, "iou_threshold": 0.5}
D = SETTINGS["max_detections"]
SHAPES = {"boxes": (1, D, 4), "scores": (1, D), "classes": (1, D), "count": (1,)}
HEAD = ("objectness", "box", "scores")


@pytest.fixture(scope="module")
def trained():
    """(plain detector, its with_nms model, test inputs): one epoch on 96 scenes."""
    from mobilecv.train import train

    model = mobilecv.build("yolo", width=0.25, resolution=48, classes=10)
    model, _ = train(model, "scenes", 1, limit=96, batch_size=32, progress=False)
    test = get_task("detection").load("scenes", "test", limit=16)
    return model, with_nms(model, **SETTINGS), model_inputs(test.x, model)


@pytest.fixture(scope="module")
def cli_run(trained, tmp_path_factory):
    """(`mobilecv convert --nms` of the trained detector, its folder): started before the
    conversions of this process (`converted`), so that the two overlap."""
    from mobilecv.modelio import save_model

    folder = tmp_path_factory.mktemp("cli")
    save_model(trained[0], folder / "yolo.keras")
    nms = ["--nms", "--max-detections", "5", "--score-threshold", "0.05"]
    process = _cli("convert", "yolo.keras", "-o", "yolo.tflite", *nms, "--no-verify", "--json",
                   cwd=folder)  # fmt: skip
    yield process, folder
    if process.poll() is None:  # the CLI test did not run
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def converted(trained, cli_run):
    """The with_nms model as float and int8 .tflite (verified in LiteRT by convert). The
    CLI's conversion (``cli_run``) runs meanwhile in its own process."""
    model, _, _ = trained
    int8 = {"calibration": "scenes", "samples": 24}
    return {
        "none": convert(model, "none", nms=SETTINGS, verify_samples=8, progress=False),
        "int8": convert(model, "int8", **int8, verify_samples=8, nms=SETTINGS, progress=False),
    }


def _numpy(outputs, anchors) -> dict[str, np.ndarray]:
    """The reference: mobilecv.postprocess.detection of raw YOLO outputs."""
    raw = {name: np.asarray(outputs[name]) for name in HEAD}
    return postprocess.detection(*(raw[n] for n in HEAD), anchors=anchors, **SETTINGS)


def _assert_same(got, want, ordered: bool = True) -> None:
    """Same counts and classes, boxes and scores to ~1e-5. ``ordered=False``: in any order
    within an image (LiteRT's float kernels differ from TF's by ~1e-6, which can swap two
    near-equal scores; its NMS breaks ties of int8 scores in no set order)."""
    np.testing.assert_array_equal(np.asarray(got["count"]).reshape(-1), want["count"])
    for i, n in enumerate(want["count"]):
        g, w = ({k: np.asarray(d[k])[i, :n] for k in ("boxes", "scores", "classes")}
                for d in (got, want))  # fmt: skip
        if not ordered:
            g, w = (_sorted(d) for d in (g, w))
        np.testing.assert_array_equal(g["classes"], w["classes"])
        np.testing.assert_allclose(g["boxes"], w["boxes"], atol=1e-5)
        np.testing.assert_allclose(g["scores"], w["scores"], atol=1e-5)
    unused = np.arange(D)[None] >= want["count"][:, None]
    assert (np.asarray(got["classes"])[unused] == -1).all()
    assert (np.asarray(got["scores"])[unused] == 0).all()


def _sorted(d):
    """By class, then box corners: not by score, whose near-ties may swap."""
    order = np.lexsort((*d["boxes"].T[::-1], d["classes"]))
    return {k: v[order] for k, v in d.items()}


def _litert(data: bytes, x: np.ndarray, reference: bool = False):
    """(outputs by name, over the rows ``x``; the DEQUANTIZE outputs, which are the int8
    head's values that a float tail reads) of a .tflite. ``reference``: LiteRT's reference
    kernels (XNNPACK's int8 kernels round otherwise), every tensor kept readable."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType["BUILTIN_WITHOUT_DEFAULT_DELEGATES" if reference else "AUTO"]
    interp = Interpreter(model_content=data, experimental_op_resolver_type=resolver,
                         experimental_preserve_all_tensors=reference)  # fmt: skip
    interp.allocate_tensors()
    graph, (source,), details = load(data), interp.get_input_details(), interp.get_output_details()
    dequantized = [op.outputs[0] for op in graph.ops if op.opcode == "DEQUANTIZE"]
    rows, heads = [], []
    for row in x:
        interp.set_tensor(source["index"], quantize_input(row[None], source))
        interp.invoke()
        rows.append([dequantize(interp.get_tensor(o["index"]), o) for o in details])
        heads.append([interp.get_tensor(i) for i in dequantized] if reference else [])
    columns = zip(*rows, strict=True)
    outputs = {n: np.concatenate(v) for n, v in zip(graph.output_names, columns, strict=True)}
    return outputs, [np.concatenate(v) for v in zip(*heads, strict=True)]


def _head_from(tensors, model) -> dict[str, np.ndarray]:
    """The three dequantized head tensors, told apart by size, in the plain model's shapes."""
    shapes = {n: tuple(model.get_layer(n).output.shape[1:]) for n in HEAD}
    by_size = {int(np.prod(s)): n for n, s in shapes.items()}
    assert len(by_size) == 3 and len(tensors) == 3, (shapes, [t.shape for t in tensors])
    named = {by_size[t[0].size]: t for t in tensors}
    return {n: t.reshape(len(t), *shapes[n]) for n, t in named.items()}


# ------------------------------------------------------------------------ Keras


def test_the_keras_graph_gives_the_numpy_detections(trained):
    model, nms_model, x = trained
    anchors = np.asarray(get_info(model).task_options["anchors"])
    want = _numpy(model(x, training=False), anchors)
    assert want["count"].sum() >= len(x), want["count"]  # there is something to compare
    rows = [nms_model(x[i : i + 1], training=False) for i in range(len(x))]
    got = {k: np.concatenate([np.asarray(r[k]) for r in rows]) for k in OUTPUTS}
    assert {k: tuple(nms_model.get_layer(k).output.shape) for k in OUTPUTS} == SHAPES
    _assert_same(got, want)


def test_the_model_info_keeps_the_anchors_and_records_the_nms(trained):
    model, nms_model, _ = trained
    options = get_info(nms_model).task_options
    assert options["anchors"] == get_info(model).task_options["anchors"]
    assert options["nms"] == SETTINGS and has_nms(nms_model) and not has_nms(model)
    assert [w.name for w in nms_model.weights] == [w.name for w in model.weights]


def test_with_nms_refuses_what_is_not_a_plain_detector(trained):
    with pytest.raises(InputError, match="task is classification"):
        with_nms(tiny_model())
    with pytest.raises(InputError, match="already"):
        with_nms(trained[1])
    with pytest.raises(InputError, match="iou_threshold"):
        with_nms(trained[0], iou_threshold=0.0)


def test_keras3_detector_gets_the_same_layer():
    model = mobilecv.build("yolo", width=0.25, resolution=48, classes=3, keras="keras3")
    nms_model = with_nms(model, **SETTINGS)
    assert type(nms_model).__module__.startswith("keras") and nms_model.get_layer(LAYER_NAME)
    x = np.random.default_rng(0).random((1, 48, 48, 3), dtype=np.float32)
    want = _numpy(model(x), np.asarray(get_info(model).task_options["anchors"]))
    _assert_same({k: np.asarray(v) for k, v in nms_model(x).items()}, want)


# ----------------------------------------------------------------------- LiteRT


def test_the_float_tflite_gives_the_numpy_detections(trained, converted):
    model, _, x = trained
    result = converted["none"]
    # The check runs on random inputs, whose many near-threshold scores LiteRT's ~1e-6 float
    # differences can tip across 0.1 (CI once saw F1 0.9936: one detection in ~150).
    agreement = result.verification.agreement
    assert agreement["detection_f1"] >= 0.98 and agreement["matched_iou"] >= 0.99, agreement
    got, _ = _litert(result.tflite, x)
    want = _numpy(model(x, training=False), get_info(model).task_options["anchors"])
    _assert_same(got, want, ordered=False)


def test_int8_in_the_graph_equals_numpy_on_the_int8_plain_model(trained, converted):
    """From the same int8 tensors: the plain detector, converted to int8 the same way, gives
    head outputs whose numpy post-processing finds what the float tail in the graph finds.
    Both run on LiteRT's reference kernels."""
    model, _, x = trained
    plain = convert(model, "int8", calibration="scenes", samples=24, verify=False, progress=False)
    raw, _ = _litert(plain.tflite, x, reference=True)
    got, head = _litert(converted["int8"].tflite, x, reference=True)
    for name, values in _head_from(head, model).items():  # what the tail reads
        np.testing.assert_array_equal(values, raw[name].reshape(values.shape))
    want = _numpy(raw, get_info(model).task_options["anchors"])
    assert want["count"].sum() >= len(x), want["count"]
    _assert_same(got, want, ordered=False)
    assert 0.0 <= converted["int8"].verification.agreement["detection_f1"] <= 1.0


@pytest.mark.parametrize("mode", ["none", "int8"])
def test_the_tflite_has_builtin_ops_fixed_shapes_and_named_outputs(converted, mode):
    graph = load(converted[mode].tflite)
    ops = {op.opcode for op in graph.all_ops}
    assert graph.custom_ops == [] and all(op.builtin and op.known for op in graph.all_ops)
    assert "NON_MAX_SUPPRESSION_V5" in ops and not any(o.startswith("Flex") for o in ops)
    shapes = {n: graph.tensors[i] for n, i in zip(graph.output_names, graph.outputs, strict=True)}
    assert {n: t.shape for n, t in shapes.items()} == SHAPES
    for t in [*shapes.values(), *(graph.tensors[i] for i in graph.inputs)]:
        assert -1 not in t.shape_signature, (t.name, t.shape_signature)
    info = read_info(converted[mode].tflite)
    assert info.task == "detection" and info.task_options["nms"] == SETTINGS
    assert len(info.task_options["anchors"]) == 3


def test_int8_computes_only_the_decode_and_nms_in_float(converted):
    from mobilecv.inspection import read_tflite

    data = converted["int8"].tflite
    report, graph = read_tflite(data), load(data)
    tail = {f"{op.opcode}#{op.index}" for op in tail_ops(graph, LAYER_NAME)}
    assert report.quantization == "int8" and report.float_ops
    assert set(report.float_ops) <= tail, set(report.float_ops) - tail
    int8_kinds = ("CONV_2D", "DEPTHWISE_CONV_2D", "LOGISTIC", "SOFTMAX")
    body = [op for op in graph.ops if op.opcode in int8_kinds]
    assert body and all(graph.tensors[op.outputs[0]].dtype == "int8" for op in body)
    assert [op.opcode for op in graph.ops].count("DEQUANTIZE") == 3  # the head's outputs
    assert not any("float" in note and "still" in note for note in converted["int8"].notes)


# -------------------------------------------------------------------------- CLI


def _cli(*args, cwd: Path, block_tf: bool = False) -> subprocess.Popen:
    """`mobilecv ARGS` started in a fresh process, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k != "MOBILECV_DEBUG"}
    if block_tf:  # a `tensorflow` that fails on import: the refusal must come before it
        blocker = cwd / "no_tf" / "tensorflow"
        blocker.mkdir(parents=True, exist_ok=True)
        (blocker / "__init__.py").write_text('raise ImportError("TensorFlow was imported")\n')
        paths = [str(cwd / "no_tf"), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return subprocess.Popen([sys.executable, "-m", "mobilecv.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_cli_converts_a_detector_with_nms(cli_run):
    process, folder = cli_run
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout)
    assert summary["nms"] == {"max_detections": 5, "score_threshold": 0.05, "iou_threshold": 0.5}
    graph = load(folder / "yolo.tflite")
    shapes = [graph.tensors[i].shape for i in graph.outputs]
    assert dict(zip(graph.output_names, shapes, strict=True))["boxes"] == (1, 5, 4)
    assert read_info(folder / "yolo.tflite").task_options["nms"] == summary["nms"]


def test_cli_refuses_nms_for_a_classifier_before_loading_tensorflow(tmp_path):
    from mobilecv.modelio import save_model

    save_model(tiny_model(), tmp_path / "digits.keras")
    cases = [
        (("digits.keras", "--nms"), "digits.keras is a classification model"),
        (("mobilenet_v2", "--nms"), "mobilenet_v2 is a classification model"),
        (("digits.keras", "--max-detections", "5"), "--max-detections needs --nms"),
        (("yolo", "--nms", "--format", "c"), "TFLite Micro has no NON_MAX_SUPPRESSION_V5"),
        (("yolo", "--nms", "--iou-threshold", "0"), "iou_threshold must be in (0, 1]"),
    ]
    for args, message in cases:
        done = _cli("convert", *args, "-o", "out.tflite", cwd=tmp_path, block_tf=True)
        _, stderr = done.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (args, stderr)
        assert message in lines[0], lines
    assert not (tmp_path / "out.tflite").exists()
