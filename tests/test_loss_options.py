"""Loss options (a triplet margin and mining, a Dice weight): checked against the task,
passed through `train`, `mobilecv train --loss-option` and recipes, kept in the model's
info, and used again by every later compile of the model (a reload in another process,
a fine-tune, QAT)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

import mobilecv
from mobilecv.errors import InputError
from mobilecv.modelinfo import get_info, read_keras_file
from mobilecv.tasks import get_task
from mobilecv.train import compile_for_task, record_loss_options


def _loss_at_zero_distance(model) -> float:
    """The compiled embedding loss on 8 identical embeddings of 2 identities: every
    triplet has d(a, p) = d(a, n) = 0, so the batch-all triplet loss is the margin."""
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    same = np.tile(np.eye(1, 8, dtype=np.float32), (8, 1))
    loss = model.loss["embedding"] if isinstance(model.loss, dict) else model.loss
    return float(loss(labels, same))


@pytest.mark.parametrize(
    ("task", "options", "message"),
    [
        ("embedding", {"mine": "batch_all"}, "no option 'mine'; it takes loss, mining, margin"),
        ("segmentation", {"dice": 1.0}, "it takes dice_weight"),
        ("classification", {"margin": 0.2}, "classification loss has no option 'margin'; it takes none"),
    ],
)  # fmt: skip
def test_an_option_the_task_loss_does_not_take_is_named(task, options, message):
    with pytest.raises(InputError, match=message):
        get_task(task).loss_options(options)
    assert get_task("embedding").loss_options({"margin": 0.5}) == {"margin": 0.5}


def test_recorded_options_compile_again_and_survive_a_reload(tmp_path):
    from mobilecv.modelio import load_model, save_model

    model = mobilecv.build("embedding", width=0.25, resolution=32, input_channels=1, dim=8)
    for _ in range(2):  # twice: recording replaces, it does not accumulate
        record_loss_options(model, {"mining": "batch_all", "margin": 0.7})
    compile_for_task(model, 1e-3)
    assert model.loss["embedding"].__name__ == "triplet_batch_all_loss"
    assert _loss_at_zero_distance(model) == pytest.approx(0.7)
    save_model(model, tmp_path / "m.keras")
    assert read_keras_file(tmp_path / "m.keras").loss_options == {
        "mining": "batch_all",
        "margin": 0.7,
    }
    reloaded = load_model(tmp_path / "m.keras")
    compile_for_task(reloaded, 1e-3)
    assert _loss_at_zero_distance(reloaded) == pytest.approx(0.7)
    record_loss_options(reloaded, None)  # None keeps them
    assert get_info(reloaded).loss_options == {"mining": "batch_all", "margin": 0.7}


def test_a_bad_value_fails_before_training():
    from mobilecv.train import train

    model = mobilecv.build("embedding", width=0.25, resolution=32, input_channels=1, dim=8)
    with pytest.raises(InputError, match="mining"):
        train(model, "glyphs", 1, limit=32, batch_size=16, progress=False,
              loss_options={"mining": "hardest"})  # fmt: skip


_cli = run_cli


def test_train_cli_takes_loss_options_and_refuses_unknown_ones(tmp_path):
    common = ["train", "embedding", "--data", "glyphs", "--epochs", "1", "--width", "0.25",
              "--resolution", "32", "--limit", "32", "--batch-size", "16"]  # fmt: skip
    bad = _cli(*common, "--loss-option", "mine=batch_all", "-o", "bad", cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert bad.stderr.strip().count("\n") == 0 and "it takes loss, mining, margin" in bad.stderr
    assert not (tmp_path / "bad" / "model.keras").exists()
    options = ["--loss-option", "loss=contrastive", "--loss-option", "margin=0.5"]
    done = _cli(*common, *options, "-o", "out", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["loss_options"] == {"loss": "contrastive", "margin": 0.5}
    info = read_keras_file(tmp_path / "out" / "model.keras")
    assert info.loss_options == {"loss": "contrastive", "margin": 0.5}


def test_a_recipe_with_an_unknown_loss_option_fails_its_dry_run(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {name: embedding, width: 0.25, resolution: 32}\n"
        "data: {dataset: glyphs}\n"
        "train: {epochs: 1, loss_options: {mining: batch_all, alpha: 0.2}}\n"
    )
    done = _cli("run", recipe, "--dry-run", "-o", "out", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "train.loss_options: the embedding loss has no option 'alpha'" in done.stderr
