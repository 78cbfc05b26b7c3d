"""Tests for edgeres.core.data: folders, .npz files, decoding, preprocessing, streaming.

Light layer only: numpy and Pillow, real image files written into tmp_path.
"""

import logging
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import edgeres.core.data as data_mod
from edgeres.core.data import Dataset, Preprocess, decode_image, open_dataset
from edgeres.core.errors import DataError, ShapeError, UsageError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
IDENTITY = Preprocess()


def _png(path, color=(10, 20, 30), size=(8, 8), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture(autouse=True)
def _edgeres_logs_reach_caplog(monkeypatch):
    # The CLI sets propagate=False on the "edgeres" logger; a CLI test run earlier
    # in the same process would then hide our warnings from caplog.
    monkeypatch.setattr(logging.getLogger("edgeres"), "propagate", True)


# --------------------------------------------------------------------------- light layer


def test_light_modules_do_not_import_tensorflow_or_keras():
    code = ("import edgeres.core.data, edgeres.devices.targets, edgeres.core.metrics, edgeres.core.timing, sys; "
            "import edgeres.core.runtime, edgeres.core.layers, edgeres.report, edgeres.measure.bench; "
            "import edgeres.quant.recipes, edgeres.quant.stats, edgeres.quant.diagnosis, edgeres.quant.search; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')); "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- folders


def test_class_folders_labels_follow_sorted_names(tmp_path):
    # Created out of order: labels must follow sorted folder names, not creation order.
    for cls, n in (("zebra", 2), ("ant", 3), ("moose", 1)):
        for i in range(n):
            _png(tmp_path / cls / f"{i}.png")
    ds = open_dataset(tmp_path)
    assert ds.layout == "classes"
    assert ds.class_names == ("ant", "moose", "zebra")
    assert ds.num_classes == 3
    assert ds.labelled
    assert len(ds) == 6
    by_item = {p.split("/")[-2] + "/" + p.split("/")[-1]: int(lab) for p, lab in zip(ds.items, ds.labels)}
    assert by_item == {"ant/0.png": 0, "ant/1.png": 0, "ant/2.png": 0, "moose/0.png": 1,
                       "zebra/0.png": 2, "zebra/1.png": 2}


def test_class_folders_ignore_hidden_dirs_and_non_images(tmp_path):
    _png(tmp_path / "a" / "x.png")
    _png(tmp_path / "b" / "y.jpg")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    _png(tmp_path / "b" / ".hidden.png")
    _png(tmp_path / ".ipynb_checkpoints" / "z.png")
    _png(tmp_path / "a" / ".ipynb_checkpoints" / "x-checkpoint.png")  # hidden inside a class folder too
    ds = open_dataset(tmp_path)
    assert ds.class_names == ("a", "b")
    assert [p.rsplit("/", 1)[-1] for p in ds.items] == ["x.png", "y.jpg"]
    assert ds.labels.tolist() == [0, 1]


def test_nested_images_inside_class_folders(tmp_path):
    _png(tmp_path / "cat" / "2019" / "jan" / "a.png")
    _png(tmp_path / "cat" / "b.png")
    _png(tmp_path / "dog" / "deep" / "c.png")
    ds = open_dataset(tmp_path)
    assert ds.layout == "classes"
    assert len(ds) == 3
    assert sorted(zip([p.rsplit("/", 1)[-1] for p in ds.items], ds.labels.tolist())) == [
        ("a.png", 0), ("b.png", 0), ("c.png", 1)]


def test_flat_folder_is_unlabelled(tmp_path):
    for name in ("b.png", "a.png", "c.jpeg"):
        _png(tmp_path / name)
    (tmp_path / "readme.md").write_text("x")
    ds = open_dataset(tmp_path)
    assert ds.layout == "flat"
    assert not ds.labelled
    assert ds.labels is None
    assert ds.num_classes is None
    assert [p.rsplit("/", 1)[-1] for p in ds.items] == ["a.png", "b.png", "c.jpeg"]
    x, y = ds.load((8, 8, 3), IDENTITY)
    assert x.shape == (3, 8, 8, 3) and x.dtype == np.float32
    assert y is None


def test_missing_path_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist") as ei:
        open_dataset(tmp_path / "nope", role="calibration")
    assert "calibration" in str(ei.value)
    assert ei.value.exit_code == 4


def test_empty_folder_raises(tmp_path):
    with pytest.raises(DataError, match="empty or holds no image"):
        open_dataset(tmp_path)


def test_folder_with_only_non_images_raises(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.csv").write_text("1,2")
    with pytest.raises(DataError, match="no image"):
        open_dataset(tmp_path)


def test_class_folders_all_without_images_raise(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="no image"):
        open_dataset(tmp_path)


def test_a_class_folder_without_images_is_named(tmp_path):
    _png(tmp_path / "cat" / "a.png")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="without images: dog"):
        open_dataset(tmp_path)


def test_file_that_is_not_npz_raises(tmp_path):
    p = _png(tmp_path / "one.png")
    with pytest.raises(DataError, match="not an .npz"):
        open_dataset(p)


# --------------------------------------------------------------------------- npz


def test_npz_with_x_and_y(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    y = np.array([3, 0, 1, 1, 2], np.int32)
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=y)
    ds = open_dataset(p)
    assert ds.layout == "npz" and len(ds) == 5 and ds.labelled
    assert ds.labels.dtype == np.int64
    assert ds.num_classes == 4
    got_x, got_y = ds.load((6, 7, 3), IDENTITY, batch_size=2)
    np.testing.assert_array_equal(got_x, x.astype(np.float32))
    np.testing.assert_array_equal(got_y, y)


def test_npz_x_only_is_unlabelled(tmp_path):
    x = np.full((3, 4, 4, 3), 7, np.uint8)
    p = tmp_path / "d.npz"
    np.savez(p, x=x)
    ds = open_dataset(p)
    assert not ds.labelled and ds.num_classes is None
    got_x, got_y = ds.load((4, 4, 3), IDENTITY)
    assert got_y is None
    np.testing.assert_array_equal(got_x, np.full((3, 4, 4, 3), 7, np.float32))


def test_npz_grayscale_nhw(tmp_path):
    x = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    p = tmp_path / "g.npz"
    np.savez(p, x=x, y=np.array([0, 1]))
    ds = open_dataset(p)
    gray, _ = ds.load((4, 5, 1), IDENTITY)
    np.testing.assert_array_equal(gray[..., 0], x.astype(np.float32))
    rgb, _ = ds.load((4, 5, 3), IDENTITY)
    assert rgb.shape == (2, 4, 5, 3)
    for ch in range(3):
        np.testing.assert_array_equal(rgb[..., ch], x.astype(np.float32))


def test_npz_uint8_of_other_size_is_resized(tmp_path):
    x = np.full((2, 10, 12, 3), 99, np.uint8)
    p = tmp_path / "d.npz"
    np.savez(p, x=x)
    got, _ = open_dataset(p).load((5, 6, 3), IDENTITY)
    assert got.shape == (2, 5, 6, 3)
    assert np.all(got == 99)


def test_npz_float_of_other_size_is_a_shape_error(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((2, 10, 12, 3), np.float32))
    with pytest.raises(ShapeError, match="10x12x3"):
        open_dataset(p).load((5, 6, 3), IDENTITY)


def test_npz_without_x(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="no 'x' array.*images"):
        open_dataset(p)


def test_npz_label_count_mismatch(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((3, 4, 4, 3), np.uint8), y=np.array([0, 1]))
    with pytest.raises(DataError, match="2 labels for 3 images"):
        open_dataset(p)


@pytest.mark.parametrize("y", [np.array([0, -1, 2]), np.array([0.0, 1.0, 2.0]), np.array([0.5, 1, 2])])
def test_npz_negative_or_float_labels(tmp_path, y):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((3, 4, 4, 3), np.uint8), y=y)
    with pytest.raises(DataError, match="non-negative integer labels"):
        open_dataset(p)


def test_npz_x_with_wrong_rank(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((3, 4), np.uint8))
    with pytest.raises(DataError, match=r"\(N,H,W\[,C\]\)"):
        open_dataset(p)


def test_npz_empty_x(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="non-empty"):
        open_dataset(p)


def test_corrupt_npz_random_bytes(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="not a readable .npz"):
        open_dataset(p)


def test_truncated_npz(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((4, 8, 8, 3), np.uint8))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DataError, match="not a readable .npz"):
        open_dataset(bad)


def test_npy_renamed_to_npz_is_a_data_error(tmp_path):
    p = tmp_path / "x.npz"
    with open(p, "wb") as f:
        np.save(f, np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="not an .npz archive"):
        open_dataset(p)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="not a readable .npz"):
        open_dataset(p)


# --------------------------------------------------------------------------- decoding


def test_grayscale_png_fed_to_three_channel_model(tmp_path):
    p = tmp_path / "g.png"
    Image.new("L", (6, 4), 77).save(p)
    arr = decode_image(str(p), 4, 6, 3)
    assert arr.shape == (4, 6, 3) and arr.dtype == np.uint8
    assert np.all(arr == 77)
    one = decode_image(str(p), 4, 6, 1)
    assert one.shape == (4, 6, 1) and np.all(one == 77)


def test_rgb_fed_to_one_channel_model_is_luma(tmp_path):
    p = _png(tmp_path / "c.png", color=(255, 0, 0), size=(4, 4))
    arr = decode_image(str(p), 4, 4, 1)
    assert arr.shape == (4, 4, 1)
    # ITU-R 601-2 luma: L = R * 299/1000
    assert np.all(arr == 76)


def test_rgba_is_composited_on_black(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., :3] = (200, 100, 40)
    a[:4, :, 3] = 0      # top half fully transparent
    a[4:, :, 3] = 128    # bottom half half transparent
    p = tmp_path / "a.png"
    Image.fromarray(a, "RGBA").save(p)
    arr = decode_image(str(p), 8, 8, 3).astype(int)
    assert np.all(arr[:4] == 0)
    expected = np.rint(np.array([200, 100, 40]) * 128 / 255)
    assert np.abs(arr[4:] - expected).max() <= 1


def test_palette_image(tmp_path):
    a = np.zeros((6, 12, 3), np.uint8)
    a[:, :6] = RED
    a[:, 6:] = BLUE
    p = tmp_path / "p.png"
    Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(p)
    assert Image.open(p).mode == "P"
    arr = decode_image(str(p), 6, 12, 3)
    np.testing.assert_array_equal(arr, a)


def test_palette_image_with_transparency_is_composited(tmp_path):
    p = tmp_path / "pt.png"
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 250, 250, 250] + [0] * (254 * 3))
    im.info["transparency"] = 1
    im.save(p, transparency=1)
    arr = decode_image(str(p), 4, 4, 3)
    assert np.all(arr == 0)  # the only colour is transparent -> black


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    # A 0..65535 gradient must map to 0..255, not saturate at 255.
    ramp = np.linspace(0, 65535, 16).astype(np.uint16)
    a = np.tile(ramp, (4, 1))
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I")
    arr = decode_image(str(p), 4, 16, 1)[..., 0].astype(int)
    expected = np.rint(ramp / 257.0).astype(int)
    assert np.abs(arr[0] - expected).max() <= 1
    assert arr.min() == 0 and arr.max() == 255
    assert np.all(np.diff(arr[0]) > 0)
    rgb = decode_image(str(p), 4, 16, 3)
    assert np.all(rgb[..., 0] == rgb[..., 2])
    assert np.abs(rgb[0, :, 1].astype(int) - expected).max() <= 1


def test_16bit_resized(tmp_path):
    a = np.full((30, 50), 32896, np.uint16)  # 32896 / 257 = 128
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    arr = decode_image(str(p), 7, 9, 3)
    assert arr.shape == (7, 9, 3)
    assert np.all(arr == 128)


def _bands(path, widths_colors, height=20):
    """An RGB PNG made of vertical colour bands, left to right."""
    cols = []
    for w, color in widths_colors:
        band = np.zeros((height, w, 3), np.uint8)
        band[:] = color
        cols.append(band)
    Image.fromarray(np.concatenate(cols, axis=1)).save(path)
    return path


def test_crop_keeps_aspect_and_takes_the_centre(tmp_path):
    # 80x20: red | green (middle half) | blue.  A 20x20 centre crop sees only green.
    p = _bands(tmp_path / "wide.png", [(20, RED), (40, GREEN), (20, BLUE)])
    arr = decode_image(str(p), 10, 10, 3, resize="crop")
    assert arr.shape == (10, 10, 3)
    assert np.all(arr == GREEN)


def test_crop_of_two_halves_is_split_down_the_middle(tmp_path):
    # 40x20, left half red, right half blue: the centre 20x20 is half red, half blue.
    p = _bands(tmp_path / "halves.png", [(20, RED), (20, BLUE)])
    arr = decode_image(str(p), 10, 10, 3, resize="crop")
    assert np.all(arr[:, :4] == RED)
    assert np.all(arr[:, 6:] == BLUE)


def test_stretch_keeps_everything(tmp_path):
    p = _bands(tmp_path / "wide.png", [(20, RED), (40, GREEN), (20, BLUE)])
    arr = decode_image(str(p), 10, 20, 3, resize="stretch")
    assert arr.shape == (10, 20, 3)
    assert np.all(arr[:, :4] == RED)
    assert np.all(arr[:, 6:14] == GREEN)
    assert np.all(arr[:, 16:] == BLUE)


def test_resize_mode_is_honoured_through_batches(tmp_path):
    _bands(tmp_path / "wide.png", [(20, RED), (40, GREEN), (20, BLUE)])
    ds = open_dataset(tmp_path)
    crop, _ = ds.load((10, 10, 3), Preprocess(resize="crop"))
    stretch, _ = ds.load((10, 10, 3), Preprocess(resize="stretch"))
    assert np.all(crop[0] == GREEN)
    assert np.all(stretch[0, :, 0] == RED)


def _exif_jpeg(path, orientation):
    # Stored 40 wide x 20 tall: left half red, right half blue.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = RED
    a[:, 20:] = BLUE
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, quality=95)
    return path


def _close(pixel, color, tol=20):
    return np.abs(pixel.astype(int) - np.array(color)).max() <= tol


@pytest.mark.parametrize("orientation, top, bottom", [(6, RED, BLUE), (8, BLUE, RED)])
def test_exif_orientation_applied_before_resize(tmp_path, orientation, top, bottom):
    p = _exif_jpeg(tmp_path / "o.jpg", orientation)
    # Displayed upright the image is 20 wide x 40 tall, exactly the model input,
    # so with 'crop' nothing is cut off: one half on top, the other at the bottom.
    arr = decode_image(str(p), 40, 20, 3, resize="crop")
    assert arr.shape == (40, 20, 3)
    for row in (2, 10, 17):
        assert _close(arr[row, 10], top), arr[row, 10]
    for row in (22, 30, 37):
        assert _close(arr[row, 10], bottom), arr[row, 10]
    # Left and right columns are the same colour: there is no vertical split any more.
    assert _close(arr[5, 2], top) and _close(arr[5, 17], top)


def test_exif_orientation_with_crop_to_square(tmp_path):
    # Rotated upright (20x40 portrait), a square centre crop straddles the
    # red/blue boundary horizontally; without rotation it would be split vertically.
    p = _exif_jpeg(tmp_path / "o.jpg", 6)
    arr = decode_image(str(p), 10, 10, 3, resize="crop")
    assert _close(arr[1, 5], RED) and _close(arr[8, 5], BLUE)
    assert _close(arr[1, 1], RED) and _close(arr[1, 8], RED)


def test_exif_orientation_1_is_untouched(tmp_path):
    p = _exif_jpeg(tmp_path / "o.jpg", 1)
    arr = decode_image(str(p), 20, 40, 3, resize="crop")
    assert _close(arr[10, 5], RED) and _close(arr[10, 35], BLUE)


def test_decode_garbage_raises_data_error(tmp_path):
    p = tmp_path / "bad.png"
    p.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(DataError, match="unreadable image"):
        decode_image(str(p), 8, 8, 3)


def test_decode_truncated_png_raises_data_error(tmp_path):
    good = _png(tmp_path / "good.png", size=(64, 64))
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match="unreadable image"):
        decode_image(str(bad), 8, 8, 3)


def test_unsupported_channel_count_is_shape_error(tmp_path):
    p = _png(tmp_path / "c.png")
    with pytest.raises(ShapeError, match="2-channel input"):
        decode_image(str(p), 8, 8, 2)


# --------------------------------------------------------------------------- unreadable files in folders


def _folder_with_one_bad(tmp_path):
    _png(tmp_path / "a.png", color=(1, 1, 1))
    (tmp_path / "b.png").write_bytes(b"\x00garbage\xff" * 50)
    _png(tmp_path / "c.png", color=(3, 3, 3))
    return open_dataset(tmp_path)


def test_unreadable_image_is_skipped_with_warning(tmp_path, caplog):
    ds = _folder_with_one_bad(tmp_path)
    assert len(ds) == 3  # listed by extension, found unreadable only when decoded
    with caplog.at_level(logging.WARNING, logger="edgeres.core.data"):
        x, y = ds.load((8, 8, 3), IDENTITY, on_error="warn")
    assert x.shape == (2, 8, 8, 3)
    assert x[0, 0, 0, 0] == 1 and x[1, 0, 0, 0] == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "edgeres.core.data"]
    assert len(warnings) == 1
    assert "b.png" in warnings[0].getMessage()


def test_unreadable_image_keeps_labels_aligned(tmp_path, caplog):
    _png(tmp_path / "a" / "1.png", color=(10, 10, 10))
    (tmp_path / "a" / "2.png").write_bytes(b"junk" * 30)
    _png(tmp_path / "b" / "1.png", color=(20, 20, 20))
    _png(tmp_path / "c" / "1.png", color=(30, 30, 30))
    ds = open_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="edgeres.core.data"):
        x, y = ds.load((8, 8, 3), IDENTITY)
    assert y.tolist() == [0, 1, 2]
    assert x[:, 0, 0, 0].tolist() == [10, 20, 30]


def test_unreadable_image_raises_under_on_error_error(tmp_path):
    ds = _folder_with_one_bad(tmp_path)
    with pytest.raises(DataError, match="b.png"):
        ds.load((8, 8, 3), IDENTITY, on_error="error")


def test_folder_whose_only_image_is_corrupt(tmp_path, caplog):
    (tmp_path / "only.png").write_bytes(b"not an image")
    ds = open_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="edgeres.core.data"):
        with pytest.raises(DataError, match="no readable image"):
            ds.load((8, 8, 3), IDENTITY)
        with pytest.raises(DataError, match="no readable image"):
            list(ds.batches((8, 8, 3), 4, IDENTITY))


# --------------------------------------------------------------------------- preprocess


def test_preprocess_formula_matches_numpy():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    pre = Preprocess.parse(1 / 255, "0.485,0.456,0.406", "0.229,0.224,0.225")
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert not pre.is_identity
    got = pre.apply(pixels)
    expected = (pixels.astype(np.float64) * (1 / 255) - np.array([0.485, 0.456, 0.406])) / np.array(
        [0.229, 0.224, 0.225])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_preprocess_single_value_broadcasts():
    pixels = np.array([[[[0, 128, 255]]]], np.uint8)
    got = Preprocess.parse(2.0, "127.5", "127.5").apply(pixels)
    np.testing.assert_allclose(got, (pixels * 2.0 - 127.5) / 127.5, rtol=1e-6)


def test_preprocess_identity_default():
    pixels = np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3)
    for pre in (Preprocess(), Preprocess.parse(), Preprocess.parse(1, "", " ")):
        assert pre.is_identity
        out = pre.apply(pixels)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, pixels.astype(np.float32))


@pytest.mark.parametrize("mean, std", [("a,b,c", None), ("1;2;3", None), (None, "0.2,x,0.2"),
                                       ("1,2", None), (None, "1,2,3,4")])
def test_preprocess_bad_strings(mean, std):
    with pytest.raises(UsageError):
        Preprocess.parse(1.0, mean, std)


@pytest.mark.parametrize("std", ["0", "1,0,1", "0.0"])
def test_preprocess_zero_std(std):
    with pytest.raises(UsageError, match="non-zero"):
        Preprocess.parse(1.0, None, std)


def test_preprocess_bad_resize_mode():
    with pytest.raises(UsageError, match="--resize"):
        Preprocess.parse(1.0, resize="squash")


def test_preprocess_three_means_on_one_channel_is_shape_error():
    pre = Preprocess.parse(1.0, "1,2,3", "1,1,1")
    with pytest.raises(ShapeError, match="3 values.*1 channels"):
        pre.apply(np.zeros((1, 4, 4, 1), np.uint8))


def test_preprocess_round_trips_through_dict():
    pre = Preprocess.parse(0.5, "1,2,3", "4,5,6", "stretch")
    assert Preprocess.from_dict(pre.to_dict()) == pre


def test_preprocess_applied_by_batches(tmp_path):
    _png(tmp_path / "a.png", color=(100, 150, 200), size=(4, 4))
    pre = Preprocess.parse(0.5, "10,20,30", "2,4,5")
    x, _ = open_dataset(tmp_path).load((4, 4, 3), pre)
    np.testing.assert_allclose(x[0, 0, 0], [(50 - 10) / 2, (75 - 20) / 4, (100 - 30) / 5])


# --------------------------------------------------------------------------- sample / split / classes


def _ds(n, labelled=True):
    labels = np.arange(n, dtype=np.int64) % 5 if labelled else None
    return Dataset("mem", "flat", tuple(f"item{i}" for i in range(n)), labels)


def test_sample_is_deterministic_and_seeded():
    ds = _ds(100)
    a, b = ds.sample(10, seed=1), ds.sample(10, seed=1)
    assert a.items == b.items
    np.testing.assert_array_equal(a.labels, b.labels)
    assert len(a) == 10
    assert len(set(a.items)) == 10
    assert ds.sample(10, seed=2).items != a.items
    # labels stay attached to their items
    for item, lab in zip(a.items, a.labels):
        assert int(item[4:]) % 5 == lab


def test_sample_all_and_oversized():
    ds = _ds(30)
    everything = ds.sample(None, seed=0)
    assert sorted(everything.items) == sorted(ds.items)
    assert everything.items != ds.items  # shuffled
    assert sorted(ds.sample(1000).items) == sorted(ds.items)


@pytest.mark.parametrize("n", [0, -3])
def test_sample_size_must_be_positive(n):
    with pytest.raises(UsageError):
        _ds(5).sample(n)


def test_split_is_disjoint_and_covers_everything():
    ds = _ds(50)
    first, rest = ds.split(15, seed=7)
    assert len(first) == 15 and len(rest) == 35
    assert not set(first.items) & set(rest.items)
    assert set(first.items) | set(rest.items) == set(ds.items)
    for part in (first, rest):
        for item, lab in zip(part.items, part.labels):
            assert int(item[4:]) % 5 == lab
    again = ds.split(15, seed=7)
    assert again[0].items == first.items and again[1].items == rest.items
    assert ds.split(15, seed=8)[0].items != first.items


def test_split_unlabelled():
    first, rest = _ds(10, labelled=False).split(4)
    assert first.labels is None and rest.labels is None
    assert len(first) + len(rest) == 10


def test_check_classes_folder_count(tmp_path):
    for cls in ("a", "b", "c"):
        _png(tmp_path / cls / "1.png")
    ds = open_dataset(tmp_path)
    ds.check_classes(3, "validation")
    with pytest.raises(ShapeError, match="3 classes but the model outputs 10"):
        ds.check_classes(10, "validation")
    with pytest.raises(ShapeError):
        ds.check_classes(2, "validation")


def test_check_classes_label_out_of_range(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((3, 4, 4, 3), np.uint8), y=np.array([0, 9, 2]))
    ds = open_dataset(p)
    ds.check_classes(10, "validation")
    with pytest.raises(ShapeError, match="label 9 .* only 9 classes"):
        ds.check_classes(9, "validation")


def test_check_classes_ignores_unlabelled():
    _ds(5, labelled=False).check_classes(1, "calibration")


# --------------------------------------------------------------------------- streaming


def test_batches_stream_lazily(tmp_path, monkeypatch):
    for i in range(200):
        _png(tmp_path / f"{i:03d}.png", color=(i, 0, 0), size=(4, 4))
    ds = open_dataset(tmp_path)
    assert len(ds) == 200

    calls = []
    real = data_mod.decode_image

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data_mod, "decode_image", counting)
    gen = ds.batches((4, 4, 3), 8, IDENTITY)
    assert calls == []  # a generator: nothing decoded before the first next()
    x, y = next(gen)
    assert x.shape == (8, 4, 4, 3) and y is None
    assert len(calls) == 8
    assert x[:, 0, 0, 0].tolist() == list(range(8))
    gen.close()

    calls.clear()
    sizes = [len(b[0]) for b in ds.batches((4, 4, 3), 64, IDENTITY)]
    assert sizes == [64, 64, 64, 8]
    assert len(calls) == 200


def test_load_concatenates_all_batches(tmp_path):
    for cls in ("a", "b"):
        for i in range(5):
            _png(tmp_path / cls / f"{i}.png", color=(i * 10 + (cls == "b"), 0, 0), size=(4, 4))
    ds = open_dataset(tmp_path)
    x, y = ds.load((4, 4, 3), IDENTITY, batch_size=3)
    assert x.shape == (10, 4, 4, 3)
    assert y.tolist() == [0] * 5 + [1] * 5
    assert x[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40, 1, 11, 21, 31, 41]
    batches = list(ds.batches((4, 4, 3), 3, IDENTITY))
    assert [len(b[0]) for b in batches] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)


def test_describe(tmp_path):
    _png(tmp_path / "a" / "1.png")
    _png(tmp_path / "b" / "1.png")
    d = open_dataset(tmp_path, "validation").describe()
    assert d == {"source": str(tmp_path), "layout": "classes", "count": 2, "labelled": True,
                 "classes": ["a", "b"]}
