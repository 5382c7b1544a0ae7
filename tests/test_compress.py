"""Every compression technique on a tiny model with a few hundred digits, each property measured."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_model

from mobilecv._tf import get_keras, silenced_stderr, tf
from mobilecv.compress import cluster as C
from mobilecv.compress import prune as P
from mobilecv.compress import qat as Q
from mobilecv.compress._common import kernels
from mobilecv.compress.pipeline import compress
from mobilecv.errors import InputError
from mobilecv.train import evaluate, fit, load_splits, steps_per_epoch

BATCH = 32
_CACHE: dict = {}


def splits():
    if "splits" not in _CACHE:
        _CACHE["splits"] = load_splits("digits", limit=320)
    return _CACHE["splits"]


def trained():
    """A trained tiny model (~3.4k params), cached; callers get a copy."""
    if "weights" not in _CACHE:
        model = tiny_model()
        fit(model, splits(), 4, batch_size=BATCH, learning_rate=5e-3, progress=False)
        _CACHE["weights"] = model.get_weights()
        _CACHE["accuracy"] = evaluate(model, splits().validation)["accuracy"]
    model = tiny_model()
    model.set_weights(_CACHE["weights"])
    return model


def se_model():
    """EfficientNet-style: Rescaling input, MBConv-ish body with a squeeze-excite block."""
    K = get_keras("tf_keras")
    inp = K.Input((16, 16, 1))
    x = K.layers.Rescaling(1.0 / 255.0, name="rescale")(inp)
    x = K.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = K.layers.BatchNormalization(name="stem_bn")(x)
    x = K.layers.Activation("swish", name="stem_act")(x)
    x = K.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = K.layers.BatchNormalization(name="dw_bn")(x)
    x = K.layers.Activation("swish", name="dw_act")(x)
    s = K.layers.GlobalAveragePooling2D(name="se_squeeze")(x)
    s = K.layers.Reshape((1, 1, 8), name="se_reshape")(s)
    s = K.layers.Conv2D(4, 1, activation="swish", name="se_reduce")(s)
    s = K.layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")(s)
    x = K.layers.Multiply(name="se_excite")([x, s])
    x = K.layers.Conv2D(16, 1, use_bias=False, name="project")(x)
    x = K.layers.BatchNormalization(name="project_bn")(x)
    x = K.layers.GlobalAveragePooling2D(name="pool")(x)
    out = K.layers.Dense(10, name="head")(x)
    return K.Model(inp, out)


def _fine_tune(model, epochs=2, callbacks=()):
    fit(
        model,
        splits(),
        epochs,
        batch_size=BATCH,
        learning_rate=1e-3,
        callbacks=callbacks,
        progress=False,
    )


STEPS = steps_per_epoch(320, BATCH)  # 10 steps per epoch: a "short run" of 20 steps


# ------------------------------------------------------------------ pruning


def test_derived_schedule_lands_on_a_pruning_step():
    for epochs, steps in [(1, 2), (2, 10), (3, 469), (10, 1875)]:
        s = P.derive_schedule(epochs, steps)
        assert 0 < s.end_step < epochs * steps
        assert (s.end_step - s.begin_step) % s.frequency == 0  # the last update hits the target
        assert s.frequency <= 100
    with pytest.raises(InputError):
        P.derive_schedule(1, 1)


def test_short_run_reaches_target_sparsity_where_tfmot_default_frequency_does_not():
    model = trained()
    wrapped, info = P.prune(model, 0.8, epochs=2, steps_per_epoch=STEPS)
    assert info.layers == ["stem", "pw", "head"] and "dw" in info.skipped
    _fine_tune(wrapped, 2, P.callbacks())
    stripped = P.strip(wrapped)
    measured = P.measured_sparsity(stripped, info.layers)
    assert all(abs(v - 0.8) < 0.01 for v in measured.values()), measured
    # original model untouched (weights were copied, not shared)
    assert P.measured_sparsity(model)["head"] < 0.01

    # tfmot's default frequency=100 on the same 20-step run never prunes past step 0.
    wrapped, _ = P.prune(model, 0.8, epochs=2, steps_per_epoch=STEPS, frequency=100)
    _fine_tune(wrapped, 2, P.callbacks())
    assert max(P.measured_sparsity(P.strip(wrapped)).values()) < 0.05


def test_erk_allocation_meets_the_target_overall_with_large_layers_sparser():
    shapes = {"stem": (3, 3, 1, 16), "pw": (1, 1, 160, 1280), "fc": (1280, 10)}
    targets = P.erk_sparsities(shapes, 0.8)
    sizes = {n: np.prod(s) for n, s in shapes.items()}
    overall = sum(targets[n] * sizes[n] for n in shapes) / sum(sizes.values())
    assert abs(overall - 0.8) < 1e-9
    assert targets["stem"] == 0.0 and targets["fc"] == 0.0  # density would exceed 1: dense
    assert targets["pw"] > 0.8
    assert P.erk_sparsities({"stem": (3, 3, 1, 16)}, 0.99)["stem"] == pytest.approx(0.99)

    model = trained()
    wrapped, info = P.prune(model, 0.5, epochs=2, steps_per_epoch=STEPS, allocation="erk")
    assert info.allocation == "erk" and set(info.layer_targets) == {"stem", "pw", "head"}
    assert info.layer_targets["head"] > 0.5 > info.layer_targets["stem"]
    _fine_tune(wrapped, 2, P.callbacks())
    stripped = P.strip(wrapped)
    assert abs(P.overall(stripped, info.layers) - 0.5) < 0.01
    measured = P.measured_sparsity(stripped, info.layers)
    for name, target in info.layer_targets.items():
        assert abs(measured[name] - target) < 0.02, (name, measured[name], target)
    with pytest.raises(InputError, match="allocation"):
        P.prune(model, 0.5, epochs=2, steps_per_epoch=STEPS, allocation="global")
    with pytest.raises(InputError, match="no allocation"):
        P.prune(model, epochs=2, steps_per_epoch=STEPS, m_by_n=(2, 4), allocation="erk")


def test_2by4_every_group_of_four_has_two_zeros():
    wrapped, info = P.prune(trained(), epochs=2, steps_per_epoch=STEPS, m_by_n=(2, 4))
    assert info.layers == ["pw", "head"]
    assert "not a multiple of 4" in info.skipped["stem"]  # 1 input channel
    _fine_tune(wrapped, 2, P.callbacks())
    stripped = P.strip(wrapped)
    for name, kernel in kernels(stripped, P.SUPPORTED_LAYERS, set(info.layers)).items():
        groups = np.moveaxis(kernel, -2, -1).reshape(-1, 4)
        assert np.all(np.sum(groups == 0, axis=1) >= 2), name
        assert P.m_by_n_violations(kernel) == 0
    dense = kernels(trained(), P.SUPPORTED_LAYERS)["head"]
    assert P.m_by_n_violations(dense) > 0  # the check does detect unstructured kernels


def test_1x1_policy_prunes_only_pointwise_convs():
    wrapped, info = P.prune(trained(), 0.5, epochs=2, steps_per_epoch=STEPS, policy="1x1")
    assert info.layers == ["pw"]
    _fine_tune(wrapped, 2, P.callbacks())
    measured = P.measured_sparsity(P.strip(wrapped))
    assert abs(measured["pw"] - 0.5) < 0.01
    assert measured["stem"] < 0.01 and measured["head"] < 0.01
    with pytest.raises(InputError, match="policy"):
        P.prune(trained(), 0.5, epochs=2, steps_per_epoch=STEPS, policy="3x3")


def test_unsupported_layer_names_layer_and_technique():
    K = get_keras("tf_keras")
    i = K.Input((8, 8, 2))
    x = K.layers.Conv2DTranspose(4, 3, name="upconv")(i)
    x = K.layers.Flatten()(x)
    model = K.Model(i, K.layers.Dense(3)(x))
    with pytest.raises(
        InputError, match=r"prune: layer 'upconv' \(Conv2DTranspose\) is not supported"
    ):
        P.prune(model, 0.5, epochs=1, steps_per_epoch=10)
    with pytest.raises(InputError, match=r"cluster: layer 'upconv' \(Conv2DTranspose\)"):
        C.cluster(model, 8)
    j = K.Input((4,))
    lam = K.Model(j, K.layers.Lambda(lambda t: t * 2, name="double")(j))
    with pytest.raises(InputError, match=r"qat: layer 'double' \(Lambda\) is not supported"):
        Q.quantize(lam)


def test_keras3_models_are_refused_with_a_reason():
    K3 = get_keras("keras3")
    i = K3.Input((4,))
    model = K3.Model(i, K3.layers.Dense(2)(i))
    with pytest.raises(InputError, match="tf_keras"):
        P.prune(model, 0.5, epochs=1, steps_per_epoch=10)


# ------------------------------------------------------------------ clustering


@pytest.mark.parametrize("k", [4, 16])
def test_clustering_leaves_at_most_k_values_per_kernel(k):
    wrapped, info = C.cluster(trained(), k)
    assert info.layers == ["stem", "pw", "head"]
    _fine_tune(wrapped, 1)
    counts = C.unique_weights(C.strip(wrapped), info.layers)
    assert all(2 <= n <= k for n in counts.values()), counts


def test_sparsity_preserving_clustering_keeps_the_zeros():
    wrapped, info = P.prune(trained(), 0.5, epochs=2, steps_per_epoch=STEPS)
    _fine_tune(wrapped, 2, P.callbacks())
    pruned = P.strip(wrapped)
    zeros_before = {n: k == 0 for n, k in kernels(pruned, C.SUPPORTED_LAYERS).items()}
    wrapped, cinfo = C.cluster(pruned, 8, preserve_sparsity=True)
    _fine_tune(wrapped, 1)
    after = kernels(C.strip(wrapped), C.SUPPORTED_LAYERS)
    for name in cinfo.layers:
        assert np.all(after[name][zeros_before[name]] == 0), name
        assert np.unique(after[name]).size <= 8


# ------------------------------------------------------------------ QAT


def _int8_conversion(model) -> tuple[set[str], list[str]]:
    T = tf()
    converter = T.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [T.lite.Optimize.DEFAULT]
    converter.inference_input_type = T.int8
    converter.inference_output_type = T.int8
    with silenced_stderr():
        flat = converter.convert()
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flat)
    tensors = interpreter.get_tensor_details()
    float_ops = []
    for op in interpreter._get_ops_details():
        dtypes = {tensors[i]["dtype"].__name__ for i in [*op["inputs"], *op["outputs"]] if i >= 0}
        if dtypes & {"float32", "float16"}:
            float_ops.append(op["op_name"])
    return {t["dtype"].__name__ for t in tensors}, float_ops


def test_split_fused_activations_keeps_the_function():
    model = se_model()
    x = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 1)).astype("float32")
    split = Q.split_fused_activations(model)
    names = [layer.name for layer in split.layers]
    assert (
        "se_reduce_activation" in names
        and split.get_layer("se_reduce").activation.__name__ == "linear"
    )
    assert (
        split.get_layer("se_expand").activation.__name__ == "sigmoid"
    )  # tfmot handles sigmoid itself
    np.testing.assert_allclose(split(x).numpy(), model(x).numpy(), atol=1e-5)


def test_plain_tfmot_rejects_the_se_model_but_ours_quantises_it():
    import tensorflow_model_optimization as tfmot

    with pytest.raises(RuntimeError, match="Rescaling"):
        tfmot.quantization.keras.quantize_model(se_model())
    q = Q.quantize(se_model())
    kinds = {type(layer).__name__ for layer in q.layers}
    assert "QuantizeWrapperV2" in kinds


def test_qat_squeeze_excite_model_converts_to_full_int8(tmp_path):
    q = Q.quantize(se_model())
    _fine_tune(q, 1)
    dtypes, float_ops = _int8_conversion(q)
    assert float_ops == [], f"ops left in float: {float_ops}"
    assert dtypes <= {"int8", "int32"}, dtypes  # int32 only for biases and shapes
    # A saved QAT model comes back with the same outputs.
    q.save(tmp_path / "q.h5")
    again = Q.load(tmp_path / "q.h5")
    x = np.random.default_rng(1).random((2, 16, 16, 1)).astype("float32") * 255
    np.testing.assert_allclose(again(x).numpy(), q(x).numpy(), atol=1e-5)


def test_without_the_split_the_se_conv_stays_float(monkeypatch):
    """Guards the reason split_fused_activations exists: tfmot leaves a fused-swish conv in float."""
    monkeypatch.setattr(Q, "split_fused_activations", lambda model: model)
    q = Q.quantize(se_model())
    _, float_ops = _int8_conversion(q)
    assert "CONV_2D" in float_ops


# ------------------------------------------------------------------ pipeline


def test_pipeline_prune_cluster_qat_preserves_each_stage():
    model, report = compress(
        trained(),
        splits(),
        prune=0.5,
        cluster=8,
        qat=True,
        epochs=2,
        learning_rate=1e-3,
        progress=False,
    )
    stages = {s.stage: s for s in report.stages}
    assert list(stages) == ["baseline", "prune", "cluster", "qat"]
    assert report.qat_scheme == "pcqat"
    assert stages["prune"].sparsity >= 0.49
    assert stages["cluster"].max_unique_weights <= 8 and stages["cluster"].sparsity >= 0.49
    # PCQAT kept both the zeros and the centroids through QAT fine-tuning
    # (tfmot's CQAT keeps Conv2D clusters per output channel, so count per channel)
    assert stages["qat"].sparsity >= 0.49 and stages["qat"].max_unique_per_channel <= 8
    assert stages["qat"].val_accuracy > 0.5  # chance is 0.1
    dtypes, float_ops = _int8_conversion(model)
    assert float_ops == []


def test_pipeline_2by4_then_pqat_cluster_then_cqat_and_arguments():
    _, report = compress(
        trained(), splits(), prune_2by4=True, qat=True, epochs=1, learning_rate=1e-3, progress=False
    )
    assert report.qat_scheme == "pqat"
    assert report.stage("prune").details["m_by_n_violations"] == 0
    _, report = compress(
        trained(), splits(), cluster=8, qat=True, epochs=1, learning_rate=1e-3, progress=False
    )
    assert (
        report.qat_scheme == "cqat" and report.stage("qat").max_unique_per_channel <= 8
    )  # centroids kept
    with pytest.raises(InputError, match="nothing to do"):
        compress(trained(), splits())
    with pytest.raises(InputError, match="either"):
        compress(trained(), splits(), prune=0.5, prune_2by4=True)


def test_pipeline_hands_schedule_and_augmentation_to_every_stage(monkeypatch):
    """Long prune fine-tunes need a decaying rate; each stage's fit() must receive it."""
    import mobilecv.compress.pipeline as pipeline
    from mobilecv.data.augment import Mirror

    seen = []

    def recording_fit(model, splits, epochs, **kwargs):
        seen.append((kwargs["schedule"], kwargs["augment"]))
        return fit(model, splits, epochs, **kwargs)

    monkeypatch.setattr(pipeline, "fit", recording_fit)
    mirror = Mirror()
    compress(
        trained(),
        splits(),
        prune=0.5,
        cluster=4,
        epochs=1,
        learning_rate=1e-3,
        schedule="cosine",
        augment=mirror,
        progress=False,
    )
    assert seen == [("cosine", mirror), ("cosine", mirror)]
    with pytest.raises(InputError, match="schedule must be one of constant, cosine; got 'linear'"):
        compress(trained(), splits(), prune=0.5, schedule="linear")


@pytest.mark.slow
def test_registry_efficientnet_goes_through_qat_to_full_int8():
    """The real EfficientNet builder (Rescaling + Normalization stem, SE blocks): ~2 min."""
    import mobilecv

    model = mobilecv.build(
        "efficientnet_b0", width=0.25, resolution=32, classes=10, input_channels=1
    )
    q = Q.quantize(model)
    dtypes, float_ops = _int8_conversion(q)
    assert float_ops == [] and dtypes <= {"int8", "int32"}


def test_softmax_head_is_seen_through_every_wrapper():
    """The fine-tuning loss must not treat a wrapped softmax output as logits."""
    from mobilecv.train import outputs_probabilities

    K = get_keras("tf_keras")
    i = K.Input((8, 8, 1))
    x = K.layers.Flatten()(K.layers.Conv2D(8, 3)(i))
    model = K.Model(i, K.layers.Dense(10, activation="softmax")(x))
    assert outputs_probabilities(model)
    assert outputs_probabilities(P.prune(model, 0.5, epochs=1, steps_per_epoch=10)[0])
    assert outputs_probabilities(C.cluster(model, 4)[0])
    assert outputs_probabilities(Q.quantize(model))
    assert not outputs_probabilities(Q.quantize(tiny_model()))


def test_cqat_model_saves_and_reloads_exactly(tmp_path):
    """A CQAT .h5 alone reloads with plain quantizers (weight-count mismatch); the sidecar rebuild is exact."""
    from mobilecv.compress.pipeline import save_outputs

    model, report = compress(
        trained(), splits(), cluster=8, qat=True, epochs=1, learning_rate=1e-3, progress=False
    )
    written = save_outputs(model, report.to_dict(), tmp_path)
    assert written["model"].endswith("model.h5") and (tmp_path / "qat.json").exists()
    again = Q.load(written["model"])
    x = np.random.default_rng(2).random((4, 16, 16, 1)).astype("float32")
    np.testing.assert_allclose(again(x).numpy(), model(x).numpy(), atol=1e-5)
    _, float_ops = _int8_conversion(again)
    assert float_ops == []


def test_unique_count_ignores_round_off_but_not_real_values():
    from mobilecv.compress._common import unique_count, unique_per_channel

    centroids = np.array([-0.5, 0.1, 0.3], np.float32)
    kernel = centroids[np.arange(30) % 3]
    noisy = kernel + np.float32(1e-9) * (np.arange(30) % 2)
    assert unique_count(kernel) == 3 and unique_count(noisy) == 3
    assert unique_count(kernel + np.linspace(0, 0.01, 30, dtype=np.float32)) == 30
    per_channel = np.stack(
        [kernel.reshape(3, 10), kernel.reshape(3, 10) * 2], axis=-1
    )  # 2 channels
    assert unique_count(per_channel) == 6 and unique_per_channel(per_channel) == 3


def test_qat_ranges_start_from_the_data_not_tfmots_six():
    # tfmot starts activation ranges at [-6, 6] (EMA decay 0.999): a short QAT fine-tune
    # kept a sigmoid box output on ~25 levels. calibrate_ranges sets them from data and
    # leaves every other variable (BatchNorm statistics, kernels) as it was.
    import mobilecv
    from mobilecv.data.datasets import model_inputs
    from mobilecv.tasks import get_task
    from mobilecv.train import train

    model = mobilecv.build("localizer", width=0.35, resolution=48, input_channels=3, classes=10)
    model, _ = train(model, "scenes", 1, limit=64, batch_size=32, progress=False)
    images = get_task("localisation").load("scenes", "validation", limit=96).x
    x = model_inputs(images[:32], model)
    q = Q.quantize(model)
    others = {v.name: v.numpy() for v in q.variables if not Q._is_range(v)}
    drift_before = np.abs(q(x)["box"].numpy() - model(x)["box"].numpy()).mean()
    Q.calibrate_ranges(q, images, batch_size=32, batches=3)
    drift_after = np.abs(q(x)["box"].numpy() - model(x)["box"].numpy()).mean()
    (box_max,) = [v for v in q.variables if v.name == "quant_box/pre_activation_max:0"]
    assert 0 < float(box_max.numpy()) < 5  # the box logits' own range, not 6
    assert drift_after < drift_before / 2, (drift_before, drift_after)
    for v in q.variables:
        if v.name in others:
            np.testing.assert_array_equal(v.numpy(), others[v.name], err_msg=v.name)
