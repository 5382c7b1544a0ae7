"""What convnets learn (mobilecv.visualize): a tiny network with the course's vertical-edge
filter set by hand, whose top patches and deconvnet projections must land on vertical edges."""

import json

import numpy as np
import pytest
from conftest import run_cli

from mobilecv import visualize as vz
from mobilecv.errors import InputError

SIZE = 16
VERTICAL = np.array([[1, 0, -1]] * 3, np.float32)  # the course's vertical-edge detector


def _edge_net():
    import tf_keras as K

    inputs = K.layers.Input((SIZE, SIZE, 1), name="input")
    x = K.layers.Conv2D(2, 3, activation="relu", use_bias=False, name="edges")(inputs)
    x = K.layers.MaxPooling2D(2, name="pool")(x)
    model = K.Model(inputs, x)
    kernel = np.stack([VERTICAL, VERTICAL.T], axis=-1)[:, :, None, :]  # (3, 3, 1, 2)
    model.get_layer("edges").set_weights([kernel])
    return model


def _edge_images(count=40, seed=0):
    """Half bright-left/dark-right vertical edges at a random column, half horizontal
    ones at a random row; the column (or -1) of each vertical edge's first dark pixel."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, SIZE, SIZE, 1), np.uint8)
    columns = np.full(count, -1)
    for i in range(count):
        at = int(rng.integers(4, SIZE - 4))
        if i % 2 == 0:
            images[i, :, :at] = 200
            columns[i] = at
        else:
            images[i, :at] = 200
    return images, columns


def _gradient_energy(patch):
    across = np.abs(np.diff(patch, axis=1)).sum()  # changes along a row: vertical edges
    down = np.abs(np.diff(patch, axis=0)).sum()
    return across, down


@pytest.fixture(scope="module")
def edges():
    model = _edge_net()
    images, columns = _edge_images()
    fed, shown = vz.model_images(model, images)
    return model, fed, shown, columns


def test_top_patches_of_the_vertical_edge_unit_are_vertical_edges(edges):
    model, fed, shown, columns = edges
    layer = model.get_layer("pool")
    acts = vz.activations(model, layer, fed)
    fields = vz.unit_fields(model, layer)
    assert [f.size for f in fields] == [4, 4]  # 3x3 conv then 2x2 pool
    hits = vz.top_hits(acts, unit=0)
    assert len(hits) == vz.TOP and len({h.image for h in hits}) == vz.TOP
    for hit in hits:
        assert columns[hit.image] >= 0  # an image with a vertical edge
        patch = vz.crop_patch(shown[hit.image], fields, hit.y, hit.x)
        assert patch.shape == (4, 4, 1)
        across, down = _gradient_energy(patch[..., 0])
        assert across > 0 and down == 0


def test_deconvnet_puts_its_energy_on_the_edge(edges):
    model, fed, _, columns = edges
    layer = model.get_layer("pool")
    acts = vz.activations(model, layer, fed)
    hits = vz.top_hits(acts, unit=0)
    back = vz.deconvnet(model, layer, fed, 0, hits)
    assert back.shape == (len(hits), SIZE, SIZE, 1)
    for projection, hit in zip(back, hits, strict=True):
        energy = projection[..., 0] ** 2
        edge = columns[hit.image]
        near = energy[:, max(edge - 2, 0) : edge + 2].sum()  # the 2 columns either side
        assert energy.sum() > 0 and near / energy.sum() > 0.95
        across, down = _gradient_energy(projection[..., 0])
        assert across > 3 * down


def test_deconvnet_unpools_through_the_switches():
    """A max pool's projection lands only on the input position that won the max."""
    import tf_keras as K

    inputs = K.layers.Input((4, 4, 1))
    pool = K.layers.MaxPooling2D(2, name="pool")
    model = K.Model(inputs, pool(inputs))
    image = np.zeros((1, 4, 4, 1), np.float32)
    image[0, 1, 0, 0] = 0.9  # the winner of the top-left window
    image[0, 0, 1, 0] = 0.5
    back = vz.deconvnet(model, pool, image, 0, [vz.Hit(0, 0, 0, 0.9)])
    expected = np.zeros_like(image)
    expected[0, 1, 0, 0] = 0.9
    np.testing.assert_allclose(back, expected)


def test_crop_pads_where_the_field_leaves_the_image():
    from mobilecv.arch import Field

    image = np.arange(25, dtype=np.float32).reshape(5, 5, 1)
    field = Field(size=5, jump=2, start=0)  # unit 0's field is centred on pixel 0
    patch = vz.crop_patch(image, (field, field), 0, 0, fill=-1)
    assert patch.shape == (5, 5, 1)
    assert (patch[:2] == -1).all() and (patch[:, :2] == -1).all()
    np.testing.assert_array_equal(patch[2:, 2:, 0], image[:3, :3, 0])


def test_deconvnet_refuses_a_layer_it_cannot_invert():
    import tf_keras as K

    inputs = K.layers.Input((8, 8, 1))
    x = K.layers.Conv2D(2, 3, activation="sigmoid", name="squash")(inputs)
    model = K.Model(inputs, x)
    with pytest.raises(InputError, match="cannot invert layer 'squash'"):
        vz.deconv_chain(model, model.get_layer("squash"))


def test_deconvnet_refuses_a_branch():
    import tf_keras as K

    inputs = K.layers.Input((8, 8, 1))
    a = K.layers.Conv2D(2, 3, padding="same", name="a")(inputs)
    b = K.layers.Conv2D(2, 3, padding="same", name="b")(inputs)
    model = K.Model(inputs, K.layers.Add(name="sum")([a, b]))
    with pytest.raises(InputError, match="chain of layers"):
        vz.deconv_chain(model, model.get_layer("b"))


def _cli(*args, cwd):
    return run_cli(*args, cwd=cwd, timeout=300)


def test_visualize_cli_writes_grids_and_an_index(tmp_path):
    """Save in this process, visualize in another (the saved file and the CLI path)."""
    model = _edge_net()
    model.save(tmp_path / "edges.keras")
    images, _ = _edge_images(60)
    np.savez(tmp_path / "edges.npz", x=images, y=np.zeros(len(images), np.int64))
    out = tmp_path / "out"
    args = ["visualize", "edges.keras", "--data", "edges.npz", "--layers", "edges,pool"]
    done = _cli(*args, "--units", "0,1", "--samples", 20, "-o", out, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [v["layer"] for v in result["layers"]] == ["edges", "pool"]
    for view in result["layers"]:
        assert view["units"] == [0, 1]
        for name in view["pictures"].values():
            assert (out / name).stat().st_size > 0
    index = (out / "index.md").read_text()
    assert "![top9](pool_top9.png)" in index and "![deconv](pool_deconv.png)" in index
    again = _cli(*args, "-o", out, cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr
    bad = _cli("visualize", "edges.keras", "--data", "edges.npz", "--layers", "nope", "-o",
               tmp_path / "o2", cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "no layer 'nope'" in bad.stderr
