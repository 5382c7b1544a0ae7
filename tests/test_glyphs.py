"""The glyph identity set (Debian fonts) and the LFW exemplar identities."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobilecv.data import glyphs
from mobilecv.errors import InputError


@pytest.fixture(scope="module")
def glyph_set():
    return glyphs.glyph_identities()


def _digest(data) -> str:
    digest = hashlib.sha256()
    for array in (data.x, data.y, data.source.astype("U64")):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def test_at_least_200_identities_with_15_samples_each(glyph_set):
    counts = np.bincount(glyph_set.y, minlength=glyph_set.classes)
    assert glyph_set.classes >= 200 and len(glyph_set.identities) == glyph_set.classes
    assert counts.min() >= 15
    assert glyph_set.x.shape == (len(glyph_set.y), 32, 32, 1) and glyph_set.x.dtype == np.uint8
    # Ink white on black, every sample with some ink (hairline DejaVu ExtraLight is faint).
    assert (glyph_set.x.reshape(len(glyph_set), -1).max(axis=1) > 64).all()
    assert np.median(glyph_set.x) == 0


def test_each_sample_records_the_font_that_drew_it(glyph_set):
    fonts = {path.name for path in glyphs_font_paths()}
    assert set(glyph_set.source) <= fonts and len(set(glyph_set.source)) == len(fonts) == 46
    pairs = set(zip(glyph_set.y.tolist(), glyph_set.source.tolist(), strict=True))
    assert len(pairs) == len(glyph_set)  # one sample per (character, writer)


def glyphs_font_paths():
    from mobilecv.data.assets import font_paths

    return font_paths()


def test_fonts_lacking_a_character_give_no_sample(glyph_set):
    # The Liberation fonts have no Armenian: without the cmap check Pillow would draw
    # their .notdef box as an Armenian sample.
    armenian = glyph_set.identities.index("U+0531 ARMENIAN CAPITAL LETTER AYB")
    sources = glyph_set.source[glyph_set.y == armenian]
    assert len(sources) >= 15 and not any(s.startswith("Liberation") for s in sources)


def test_a_notdef_box_is_not_taken_for_a_glyph(monkeypatch):
    # A cmap that claims every character: Liberation Sans then "draws" Armenian as its
    # .notdef box, which the rendering check must still refuse.
    import fontTools.ttLib

    class ClaimsEverything(dict):
        def __contains__(self, point):
            return True

    class FakeFont:
        def __init__(self, *args, **kwargs):
            pass

        def __getitem__(self, table):
            return type("Cmap", (), {"getBestCmap": lambda self: ClaimsEverything()})()

    monkeypatch.setattr(fontTools.ttLib, "TTFont", FakeFont)
    sans = next(p for p in glyphs_font_paths() if p.name == "LiberationSans-Regular.ttf")
    found = glyphs._font_glyphs(sans, [0x41, 0x531, 0x10D0], glyphs.GLYPH_SIDE)
    assert list(found) == [0x41]


def test_look_alikes_across_scripts_are_dropped(glyph_set):
    names = set(glyph_set.identities)
    for kept in ("U+0041 LATIN CAPITAL LETTER A", "U+006F LATIN SMALL LETTER O"):
        assert kept in names
    for dropped in (
        "U+0391 GREEK CAPITAL LETTER ALPHA",
        "U+0410 CYRILLIC CAPITAL LETTER A",
        "U+03BF GREEK SMALL LETTER OMICRON",
        "U+043E CYRILLIC SMALL LETTER O",
        "U+0555 ARMENIAN CAPITAL LETTER OH",
        "U+0445 CYRILLIC SMALL LETTER HA",
    ):
        assert dropped not in names
    # Distinct letters of other scripts stay.
    assert {"U+0393 GREEK CAPITAL LETTER GAMMA", "U+0416 CYRILLIC CAPITAL LETTER ZHE"} <= names


def test_near_duplicate_rule_keeps_the_first_of_a_look_alike_pair():
    side = glyphs.GLYPH_SIDE
    bar, ring, blank = (np.zeros((side, side), np.uint8) for _ in range(3))
    bar[4:28, 14:18] = 255
    ring[6:26, 6:26] = 255
    ring[10:22, 10:22] = 0
    fonts = [{1: bar, 2: ring, 3: bar.copy()} for _ in range(glyphs.MIN_WRITERS)]
    fonts[0][4] = ring  # point 4: one writer only
    assert glyphs._kept_identities(fonts, [1, 2, 3, 4]) == [1, 2]


def test_splits_are_disjoint_identities_covering_the_set(glyph_set):
    parts = {s: glyphs.glyph_identities(s) for s in ("train", "validation", "test")}
    ids = {s: set(np.unique(d.y)) for s, d in parts.items()}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["validation"]
    assert not ids["validation"] & ids["test"]
    assert ids["train"] | ids["validation"] | ids["test"] == set(range(glyph_set.classes))
    assert sum(len(d) for d in parts.values()) == len(glyph_set)
    assert len(ids["test"]) >= 20 and len(ids["validation"]) >= 20  # 20-way one-shot
    assert parts["test"].identities == glyph_set.identities  # global ids in every split


def test_generation_is_deterministic_in_process_and_across_processes(glyph_set):
    # In process: the random part again (augmentation and assembly, not the cached set);
    # the fresh process below repeats everything, the font rendering included.
    again = glyphs._glyph_set.__wrapped__(glyphs.GLYPH_SIDE, 0)
    assert _digest(again) == _digest(glyph_set)
    code = (
        "import hashlib, numpy as np; from mobilecv.data.glyphs import glyph_identities\n"
        "d = glyph_identities(); h = hashlib.sha256()\n"
        "for a in (d.x, d.y, d.source.astype('U64')): h.update(np.ascontiguousarray(a).tobytes())\n"
        "print(h.hexdigest())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == _digest(glyph_set)


def test_augmentation_is_mild_and_seeded():
    clean = np.zeros((3, 32, 32), np.uint8)
    clean[:, 8:24, 14:18] = 255
    keys = [(0, 65, 0), (0, 65, 1), (1, 65, 0)]
    first = glyphs._augment(clean, keys)
    np.testing.assert_array_equal(first, glyphs._augment(clean, keys))
    np.testing.assert_array_equal(first[1:2], glyphs._augment(clean[1:2], keys[1:2]))
    assert not np.array_equal(first[0], first[2])  # another seed, another distortion
    for image in first:  # distorted, but within 2 pixels of the bar (+1 for dilation)
        ink = image > 127
        assert ink[6:26, 11:21].sum() == ink.sum() > 0
        assert not np.array_equal(image, clean[0])


def test_bad_options_are_input_errors():
    with pytest.raises(InputError, match="split must be one of"):
        glyphs.glyph_identities("holdout")
    with pytest.raises(InputError, match="side"):
        glyphs.glyph_identities(side=8)
    with pytest.raises(InputError, match="views"):
        glyphs.lfw_identities(views=1)


def test_lfw_identities_are_100_augmented_real_faces():
    data = glyphs.lfw_identities(views=4)
    assert data.classes == 100 and data.x.shape == (400, 25, 25, 1) and data.x.dtype == np.uint8
    assert (np.bincount(data.y) == 4).all()
    assert "not a face-recognition accuracy claim" in data.provenance
    first = data.x[data.y == 0]
    assert not np.array_equal(first[0], first[1])  # views differ
    again = glyphs._lfw_set.__wrapped__(4, 0)
    np.testing.assert_array_equal(again.x, data.x)
    test, train = glyphs.lfw_identities("test", views=4), glyphs.lfw_identities("train", views=4)
    assert not set(test.y) & set(train.y) and len(set(test.y)) == 25


@pytest.mark.slow
def test_font_files_install_into_the_asset_cache(tmp_path, monkeypatch):
    """`make data`'s path for the fonts: apt-get download, extract only the .ttf members."""
    from mobilecv.data import assets

    monkeypatch.setenv("MOBILECV_ASSETS", str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "SYSTEM_ROOT", tmp_path / "no-system")
    liberation = [f for f in assets.FONT_FILES if f.source == "fonts-liberation2"]
    assert assets.missing(liberation) == liberation
    (tmp_path / "work").mkdir()
    assets._install_debs(liberation, tmp_path / "work", assets.cache_dir())
    assert assets.missing(liberation) == []
    installed = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert installed == sorted(Path(f.path).name for f in liberation)  # nothing else


def test_a_corrupt_font_file_is_a_one_line_run_failure(tmp_path):
    from mobilecv.errors import RunFailed

    bad = tmp_path / "Broken.ttf"
    bad.write_bytes(b"not a font at all")
    with pytest.raises(RunFailed, match="cannot read font .*Broken.ttf"):
        glyphs._font_glyphs(bad, [0x41], glyphs.GLYPH_SIDE)
