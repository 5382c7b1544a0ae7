"""The segmentation task: metrics and losses by hand, labels as the model sees them, the
nuclei splits, the numpy overlay, and `mobilecv segment` in a subprocess."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

import mobilecv
from mobilecv import postprocess
from mobilecv.data import assets, nuclei
from mobilecv.errors import InputError
from mobilecv.tasks import get_task
from mobilecv.tasks.segmentation import confusion, confusion_scores, labels_to_output


def test_confusion_scores_by_hand():
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, 1]])
    predicted = np.array([[0, 1, 1, 1], [0, 2, 0, 0]])
    scores = confusion_scores(confusion(predicted, truth, 4))
    # class 0: hits 2 (labels 3, predictions 4) -> 2 / 5; class 1: hits 2, labels 3,
    # predictions 3 -> 2 / 4; class 2: hits 1, labels 2, predictions 1 -> 1 / 2;
    # class 3 is in neither and is left out of the mean.
    assert scores["iou_0"] == pytest.approx(2 / 5)
    assert scores["iou_1"] == pytest.approx(2 / 4)
    assert scores["iou_2"] == pytest.approx(1 / 2)
    assert "iou_3" not in scores
    assert scores["miou"] == pytest.approx((2 / 5 + 2 / 4 + 1 / 2) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(5 / 8)
    binary = confusion_scores(confusion(predicted > 0, truth > 0, 2))
    # foreground: labels 5, predictions 4, both 3 -> IoU 3 / 6, Dice 2 * 3 / 9
    assert binary["foreground_iou"] == pytest.approx(3 / 6)
    assert binary["dice"] == pytest.approx(6 / 9)


def test_loss_is_cross_entropy_plus_dice_by_hand():
    from mobilecv.tasks.segmentation import segmentation_loss

    p = np.array([[[[0.8, 0.2], [0.3, 0.7]]]], np.float32)  # (1, 1, 2, 2)
    truth = np.array([[[0, 1]]], np.int32)
    plain = np.asarray(segmentation_loss(0.0)(truth, p))
    np.testing.assert_allclose(plain, [[[-np.log(0.8), -np.log(0.7)]]], rtol=1e-5)
    # Dice per class, smoothed by 1: class 0 (2 * 0.8 + 1) / (1 + 1.1 + 1), class 1
    # (2 * 0.7 + 1) / (1 + 0.9 + 1); the loss adds 1 - their mean to every pixel.
    dice = 1 - ((2 * 0.8 + 1) / 3.1 + (2 * 0.7 + 1) / 2.9) / 2
    with_dice = np.asarray(segmentation_loss(0.5)(truth, p))
    np.testing.assert_allclose(with_dice, plain + 0.5 * dice, rtol=1e-5)


def test_labels_follow_the_model_resize_then_centre_crop():
    labels = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    np.testing.assert_array_equal(labels_to_output(labels, 2, (2, 2)), [[[5, 7], [13, 15]]])
    doubled = labels_to_output(labels, 8, (4, 4))  # an unpadded model: the centre 4 x 4
    # Doubled: source rows and columns 0 0 1 1 2 2 3 3; the centre four: 1 1 2 2.
    np.testing.assert_array_equal(doubled[0], [[5, 5, 6, 6], [5, 5, 6, 6], [9, 9, 10, 10], [9, 9, 10, 10]])  # fmt: skip


def test_keras_targets_are_the_numpy_labels():
    """tf.data's targets (training) and the numpy scoring see the same label pixels."""
    model = mobilecv.build("unet", width=0.25, resolution=44, depth=0.5, padding="valid")
    task = get_task("segmentation").bind({}, model)
    labels = np.random.default_rng(0).integers(0, 2, (1, 96, 96)).astype(np.uint8)
    targets, weights = task.keras_targets({"mask": labels[0]})
    expected = labels_to_output(labels, 44, model.outputs[0].shape[1:3])[0]
    assert weights is None
    np.testing.assert_array_equal(np.asarray(targets["mask"]), expected)


def test_masks_stay_on_their_pixels_through_resizing_and_augmentation():
    """Scenes are 96 px, the model 48: the mask is resized with the image before the crop
    and mirror move both (a 96-px mask shifted by 48-px offsets was misaligned)."""
    from mobilecv.data.augment import from_names
    from mobilecv.data.datasets import ArrayData, to_dataset

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 10, (4, 12, 12)).astype(np.uint8)  # 8 x 8 px blocks of a class
    mask = np.kron(blocks, np.ones((8, 8), np.uint8))
    data = ArrayData(x=(mask * 25)[..., None], y={"mask": mask}, classes=10, name="blocks")
    ds = to_dataset(
        data, resolution=48, channels=1, batch_size=4, augment=from_names("mirror,crop")
    )
    for _ in range(3):  # fresh random crops and mirrors each pass
        x, y = next(iter(ds))
        np.testing.assert_array_equal(np.rint(np.asarray(x)[..., 0] * 255 / 25), y["mask"])


def test_nuclei_splits_are_disjoint_places_and_deterministic():
    train = nuclei.load("train", nuclei.NucleiConfig(size=32, train_tiles=64))
    validation, test = nuclei.load("validation"), nuclei.load("test")
    assert train.x.shape == (64, 32, 32, 1) and train.x.dtype == np.uint8
    assert len(validation) == 12 and len(test) == 16  # 64-px tiles of 128 x 384, 512 x 128
    image, labels = assets.stardist_nuclei()
    # The test tiles are the right quarter, in row-major order, never anything else.
    np.testing.assert_array_equal(test.y["mask"][1], labels[0:64, 448:512] > 0)
    assert 0.05 < test.y["mask"].mean() < 0.5
    again = nuclei.load("train", nuclei.NucleiConfig(size=32, train_tiles=64))
    np.testing.assert_array_equal(train.x, again.x)
    with pytest.raises(InputError, match="divide 128"):
        nuclei.NucleiConfig(size=48)


def test_scenes_masks_have_background_and_ten_classes():
    data = get_task("segmentation").load("scenes", "validation", limit=8)
    assert data.classes == 11 and data.y["mask"].shape == (8, 96, 96)
    assert data.y["mask"].max() <= 10 and (data.y["mask"] > 0).any()
    with pytest.raises(InputError, match="scenes or nuclei"):
        get_task("segmentation").load("fashion_mnist", "train")


def test_overlay_colours_only_the_classes_and_respects_the_margin():
    image = np.full((8, 8), 100, np.uint8)
    classes = np.array([[0, 1], [2, 0]], np.uint8)
    out = postprocess.overlay(image, classes, alpha=1.0)
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])  # background keeps the image
    np.testing.assert_array_equal(out[0, 7], postprocess.PALETTE[1])
    np.testing.assert_array_equal(out[7, 0], postprocess.PALETTE[2])
    placed = postprocess.class_map_to(np.ones((2, 2), np.uint8), 8, 8, margin=0.25)
    assert placed.sum() == 16 and placed[2:6, 2:6].all()
    decoded = postprocess.decode("segmentation", {"mask": np.eye(3)[None, None, :2]})
    np.testing.assert_array_equal(decoded["classes"], [[[0, 1]]])


def test_agreement_of_identical_outputs_is_one():
    task = get_task("segmentation")
    mask = np.random.default_rng(1).random((2, 8, 8, 3)).astype(np.float32)
    assert task.agreement({"mask": mask}, {"mask": mask}) == {
        "miou_agreement": 1.0,
        "pixel_agreement": 1.0,
    }


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """An untrained 3-class U-Net as float .tflite whose argmax varies from pixel to pixel:
    its last 1x1 conv's weights scaled up from their (near-constant) initial values."""
    from mobilecv.converters.tflite import convert

    model = mobilecv.build("unet", width=0.25, resolution=32, classes=3, input_channels=3)
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([np.random.default_rng(0).normal(0, 5, kernel.shape), bias])
    path = tmp_path_factory.mktemp("segmenter") / "unet.tflite"
    convert(model, "none", verify=False, progress=False).save(path)
    return path


_cli = run_cli


def test_segment_cli_writes_the_numpy_pipelines_mask_and_overlay(segmenter, tmp_path):
    from PIL import Image

    from mobilecv.commands.imagefiles import model_input, read_image
    from mobilecv.evaluate import TfliteModel

    photo = tmp_path / "photo.png"
    Image.fromarray(assets.background("chelsea")[:90, :120]).save(photo)
    done = _cli("segment", segmenter, photo, "-o", tmp_path / "out", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    mask = np.asarray(Image.open(tmp_path / "out" / "photo_mask.png"))
    runner = TfliteModel(str(segmenter))
    x = model_input(read_image(photo), runner.input_shape, (0.0, 1.0))
    want = postprocess.segmentation(runner.predict_outputs(x, ("mask",))["mask"])["classes"][0]
    np.testing.assert_array_equal(mask, postprocess.class_map_to(want, 90, 120))
    assert len(np.unique(mask)) >= 2  # the check below means something
    overlay = np.asarray(Image.open(tmp_path / "out" / "photo_overlay.png"))
    original = np.asarray(Image.open(photo))
    np.testing.assert_array_equal(overlay[mask == 0], original[mask == 0])
    assert (overlay[mask > 0] != original[mask > 0]).any()
    shares = summary["images"][0]["class_shares"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "out" / "segments.json").exists()


def test_segment_cli_refuses_bad_input_in_one_line(segmenter, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("background\nshirt\n")
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((10, 10), np.uint8)).save(image)
    cases = [
        (("segment", segmenter, tmp_path / "none.png", "-o", tmp_path / "o"), "no such file"),
        (("segment", segmenter, image, "-o", tmp_path / "o", "--alpha", "2"), "--alpha"),
        (("segment", segmenter, image, "-o", tmp_path / "o", "--names", names), "3 classes"),
        (("segment", image, image, "-o", tmp_path / "o"), "a.png"),
    ]
    for args, message in cases:
        done = _cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
