"""`mobilecv convert` and `mobilecv inspect`: thin wrappers over mobilecv.converters.tflite and
mobilecv.inspection."""

from __future__ import annotations

import click

from mobilecv.cliutil import echo_json, force_option, handle_errors, json_option

_MODES = ["none", "dynamic", "float16", "int8", "int16x8"]


@click.command("convert")
@click.argument("model")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output .tflite (or .cc with --format c).",
)
@click.option(
    "--quantize",
    type=click.Choice(_MODES),
    default="none",
    show_default=True,
    help="Post-training mode; int8 is full integer.",
)
@click.option(
    "--io",
    "io_type",
    type=click.Choice(["int8", "int16", "float"]),
    default=None,
    help="Model input/output type: int8 mode defaults to int8 I/O, int16x8 to float.",
)
@click.option(
    "--calibration",
    default=None,
    help="Dataset name (digits, fashion_mnist, ...), .npy/.npz file or image folder (class/*.jpg). Train split only.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Calibration samples.",
)
@click.option(
    "--verify-samples",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Held-out samples for the LiteRT-vs-Keras check.",
)
@click.option("--no-verify", is_flag=True, help="Skip running the converted model in LiteRT.")
@click.option(
    "--sparse/--dense",
    default=None,
    help="Force or forbid sparse weight encoding (default: when >= 50% of weights are zero).",
)
@click.option(
    "--per-tensor",
    is_flag=True,
    help="int8/int16x8: one weight scale per tensor instead of per channel (smaller, esp. gzipped).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tflite", "c"]),
    default="tflite",
    show_default=True,
    help="c writes a .cc/.h pair for TFLite Micro.",
)
@click.option(
    "--nms",
    is_flag=True,
    help="Detection: end the graph in the YOLO decode and per-class NMS (builtin ops; "
    "fixed-size outputs boxes, scores, classes, count; batch 1).",
)
@click.option(
    "--max-detections",
    type=click.IntRange(min=1),
    default=None,
    help="With --nms: detections kept per image [default: 50].",
)
@click.option(
    "--score-threshold",
    type=float,
    default=None,
    help="With --nms: keep a confidence (objectness x class probability) above this "
    "[default: 0.25].",
)
@click.option(
    "--iou-threshold",
    type=float,
    default=None,
    help="With --nms: suppress a box whose IoU with a better box of its class is at least "
    "this [default: 0.5].",
)
@force_option("existing outputs")
@json_option("the result")
@handle_errors
def convert(
    model,
    output,
    quantize,
    io_type,
    calibration,
    samples,
    verify_samples,
    no_verify,
    sparse,
    per_tensor,
    fmt,
    nms,
    max_detections,
    score_threshold,
    iou_threshold,
    force,
    as_json,
):
    """Convert MODEL (a .keras/.h5 file or a registered model name) to TFLite,
    then run it in LiteRT against Keras and report the agreement."""
    from mobilecv.converters.isolated import start_worker
    from mobilecv.converters.tflite import check_request, model_is_qat, resolve_model
    from mobilecv.converters.tflite import convert as convert_model
    from mobilecv.fileio import check_writable

    # Refuse a bad combination before TensorFlow and the model load (~13 s); a QAT model
    # needs no calibration, and its file says whether it is one.
    nms_settings = _nms_request(
        model, nms, fmt, max_detections=max_detections, score_threshold=score_threshold,
        iou_threshold=iou_threshold,
    )  # fmt: skip
    qat = model_is_qat(model)
    if qat is not None:
        check_request(quantize, io_type, calibration, samples, not per_tensor, qat)
    if fmt == "tflite":
        check_writable(output, force)  # fail before minutes of conversion, not after
    if fmt == "c" and sparse is None:
        sparse = False  # TFLite Micro has no DENSIFY kernel for sparse-encoded weights
    start_worker()  # the converter's process imports TensorFlow while this one loads the model
    keras_model = resolve_model(model)
    result = convert_model(
        keras_model,
        quantize=quantize,
        calibration=calibration,
        samples=samples,
        io=io_type,
        verify=not no_verify,
        verify_samples=verify_samples,
        sparse=sparse,
        per_channel=not per_tensor,
        nms=nms_settings,
    )
    if fmt == "c" and result.sparse:
        result.notes.append(
            "sparse-encoded weights need DENSIFY, which TFLite Micro lacks; use --dense"
        )
    written = result.save(output, format=fmt, force=force)
    summary = {"model": model, "outputs": [str(p) for p in written], **result.to_dict()}
    if nms_settings is not None:
        summary["nms"] = nms_settings
    if as_json:
        echo_json(summary)
        return
    click.echo(f"{model} -> {', '.join(summary['outputs'])}")
    click.echo(
        f"mode {result.mode.value} (io {result.io.value}), {result.size} bytes, "
        f"{result.keras}{', QAT' if result.qat else ''}{', sparse-encoded' if result.sparse else ''}"
        f"{'' if result.per_channel else ', per-tensor weights'}, "
        f"{result.seconds:.1f} s"
    )
    if nms_settings is not None:
        click.echo(
            f"NMS in the graph: up to {nms_settings['max_detections']} detections, score > "
            f"{nms_settings['score_threshold']:g}, IoU >= {nms_settings['iou_threshold']:g} "
            "suppressed; outputs boxes, scores, classes, count (batch 1)"
        )
    v = result.verification
    if v is not None:
        figures = f"max |err| {v.max_abs_error:.3g}, mean |err| {v.mean_abs_error:.3g}"
        if v.agreement:  # the task's figures: top-1, box IoU, point error, ...
            agreed = ", ".join(f"{k.replace('_', ' ')} {x:.4g}" for k, x in v.agreement.items())
            figures = f"{agreed}, {figures}"
        click.echo(
            f"verified in LiteRT ({v.runtime} runtime) on {v.samples} {v.data} samples: {figures}"
        )
    for note in result.notes:
        click.echo(f"note: {note}")


def _nms_request(model: str, nms: bool, fmt: str, **given) -> dict | None:
    """The with_nms settings of --nms (None without it), checked before TensorFlow loads:
    the model's task is read from its file's mobilecv info or its registry entry."""
    from mobilecv.errors import InputError
    from mobilecv.tasks.detection_graph import DEFAULTS, nms_settings

    chosen = {k: v for k, v in given.items() if v is not None}
    if not nms:
        if chosen:
            raise InputError(f"--{next(iter(chosen)).replace('_', '-')} needs --nms")
        return None
    if fmt == "c":
        raise InputError("--nms needs LiteRT: TFLite Micro has no NON_MAX_SUPPRESSION_V5 kernel")
    task = _declared_task(model)
    if task not in (None, "detection"):
        raise InputError(f"--nms needs a detection model; {model} is a {task} model")
    return nms_settings(**{**DEFAULTS, **chosen})


def _declared_task(model: str) -> str | None:
    """MODEL's task without TensorFlow, or None when only loading it can tell."""
    from pathlib import Path

    from mobilecv import registry
    from mobilecv.modelinfo import read_keras_file

    try:
        if Path(model).exists():
            info = read_keras_file(model)
            return None if info is None else info.task
        return registry.get(model).task
    except Exception:  # noqa: BLE001 - unreadable or unknown here; loading it will say why
        return None


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--tensors", is_flag=True, help="With --json: include every tensor and op.")
@json_option("the report")
@handle_errors
def inspect_cmd(model, tensors, as_json):
    """Show what is inside MODEL.tflite: ops, I/O types and quantisation, weight
    dtypes and sparsity, size breakdown, MACs, and float ops left in an integer model."""
    from mobilecv.inspection import format_report, read_tflite

    graph = read_tflite(model)
    if as_json:
        echo_json({"model": model, **graph.to_dict(tensors=tensors)})
    else:
        click.echo(format_report(graph, title=model))
