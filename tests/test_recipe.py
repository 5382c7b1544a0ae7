"""Recipe loading: strict keys, types and enums; overrides; safe YAML only."""

import pytest

from mobilecv import recipe
from mobilecv.errors import InputError


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_shipped_recipe_loads_by_name():
    names = recipe.builtin_recipes()
    assert {
        "mobilenet_v2_fashion_int8",
        "efficientnet_b0_qat_int8",
        "mobilenet_v1_mcu",
        "resnet18_pruned",
        "transfer_frozen_head",
    } <= set(names)
    for name in names:
        loaded = recipe.load(name)
        assert loaded.name == name
        # the resolved recipe round-trips through its own YAML dump
        assert (
            recipe._decode_dataclass(
                recipe.Recipe, __import__("yaml").safe_load(recipe.dump(loaded)), "", "x"
            )
            == loaded
        )


def test_defaults_then_recipe_then_overrides(tmp_path):
    path = write(tmp_path, "model:\n  name: mobilenet_v1\ntrain:\n  epochs: 4\n")
    r = recipe.load(path, ["train.epochs=2", "model.width=0.5", "devices=[{name: rpi4}]"])
    assert r.model.name == "mobilenet_v1"  # recipe over default
    assert r.train.epochs == 2  # override over recipe
    assert r.model.width == 0.5
    assert r.train.batch_size == recipe.TrainSpec().batch_size  # default kept
    assert [d.name for d in r.devices] == ["rpi4"]
    assert recipe.load(path, ["devices.0.max_latency_ms=5"]).devices[0].max_latency_ms == 5.0
    erk = recipe.load(path, ["compress.prune=0.8", "compress.prune_allocation=erk"]).compress
    assert erk.prune == 0.8 and erk.prune_allocation == "erk"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model:\n  nmae: x\n", "model.nmae: unknown key; allowed: name, width"),
        ("trian: {}\n", "trian: unknown key"),
        ("train:\n  epochs: three\n", "train.epochs: expected an integer, got 'three'"),
        ("train:\n  epochs: 2.5\n", "train.epochs: expected an integer"),
        ("train:\n  cache_features: 1\n", "train.cache_features: expected true or false"),
        (
            "train:\n  strategy: cluster\n",
            "train.strategy: 'cluster' is not allowed; allowed: default, mirrored, multi_worker",
        ),
        (
            "convert:\n  modes: [int4]\n",
            "convert.modes[0]: 'int4' is not allowed; allowed: none, dynamic",
        ),
        (
            "compress:\n  prune_allocation: global\n",
            "compress.prune_allocation: 'global' is not allowed; allowed: uniform, erk",
        ),
        ("devices: host\n", "devices: expected a list"),
        ("data:\n  classes: [a]\n", "data.classes[0]: expected an integer"),
        ("data:\n  test_limit: 5\n", "data.test_limit: unknown key"),
        ("pretrain:\n  epoch: 2\n", "pretrain.epoch: unknown key; allowed: epochs"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("model: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_recipes_name_file_key_and_allowed_values(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        recipe.load(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_yaml_tags_that_construct_python_objects_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(InputError, match="not valid YAML"):
        recipe.load(path)
    assert not marker.exists()


def test_bad_override_and_missing_recipe(tmp_path):
    path = write(tmp_path, "name: x\n")
    with pytest.raises(InputError, match="expected KEY.PATH=VALUE"):
        recipe.load(path, ["train.epochs"])
    with pytest.raises(InputError, match="train.epochs: expected an integer"):
        recipe.load(path, ["train.epochs=lots"])
    with pytest.raises(FileNotFoundError, match="shipped recipes: .*mobilenet_v2_fashion_int8"):
        recipe.load("no_such_recipe")


def test_pretrain_and_class_selection(tmp_path):
    path = write(tmp_path, "pretrain:\n  epochs: 2\n  classes: [0, 1]\ndata:\n  classes: [2, 3]\n")
    loaded = recipe.load(path, ["pretrain.limit=50"])
    assert loaded.pretrain.classes == (0, 1) and loaded.pretrain.limit == 50
    assert loaded.data.classes == (2, 3)
    assert loaded.pretrain.compare_scratch  # the comparison is on by default
    assert recipe.load(path, ["data.classes=[]"]).data.classes == ()
