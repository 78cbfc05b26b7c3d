"""edgeres.core.data against hostile input: bad --scale/--mean/--std, malformed report.json values,
NaN/Inf/complex/string/object pixels, odd .npz layouts, lying headers, odd paths.

Every failure must be exactly a DataError, ShapeError or UsageError with a clear message: never
another exception, never a silent NaN.  Light layer only (numpy, Pillow), except three CLI cases.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

import edgeres.core.data as data_mod
from edgeres.core.data import Preprocess, decode_image, open_dataset
from edgeres.core.errors import DataError, ShapeError, UsageError
from tests.conftest import CALIBRATION, assert_one_line_error, invoke

IDENTITY = Preprocess()


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _raw_npz(path: Path, shape: tuple, descr: str = "|u1", data: bytes = b"", name: str = "x.npy") -> Path:
    """An .npz whose x header says ``shape``/``descr`` whatever the data that follows (a lying header)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name, buf.getvalue() + data)
    return path


# --------------------------------------------------------------------------- Preprocess values


@pytest.mark.parametrize("scale, mean, std, option", [
    (float("nan"), None, None, "--scale"),
    (float("inf"), None, None, "--scale"),
    (float("-inf"), None, None, "--scale"),
    (0.0, None, None, "--scale"),
    (-0.0, None, None, "--scale"),
    (1e-45, None, None, "--scale"),  # rounds to a float32 denormal: effectively 0
    (1e31, None, None, "--scale"),
    (1.0, "nan", None, "--mean"),
    (1.0, "inf", None, "--mean"),
    (1.0, "0,-inf,0", None, "--mean"),
    (1.0, "1e300", None, "--mean"),  # finite in float64, inf in float32
    (1.0, None, "nan", "--std"),
    (1.0, None, "inf", "--std"),
    (1.0, None, "1,nan,1", "--std"),
    (1.0, None, "0", "--std"),
    (1.0, None, "1e-45", "--std"),
    (1.0, None, "1e-7", "--std"),
    (1.0, None, "1,1e-9,1", "--std"),
    (1e25, None, "1e-5", "--scale/--mean/--std"),  # each value fine, the product overflows
    (1.0, "1e29", "1e-5", "--scale/--mean/--std"),
])
def test_preprocess_refuses_bad_values(scale, mean, std, option):
    with pytest.raises(UsageError) as info:
        Preprocess.parse(scale, mean, std)
    assert str(info.value).startswith(option + " "), str(info.value)
    assert "\n" not in str(info.value)


def test_preprocess_tiny_std_says_why():
    with pytest.raises(UsageError, match=r"--std .*1e-06.*overflows float32"):
        Preprocess.parse(1.0, None, "1e-45")


@pytest.mark.parametrize("scale, mean, std", [
    (-1 / 255, None, None),  # odd but well defined
    (1 / 255, "0.485,0.456,0.406", "0.229,0.224,0.225"),
    (1.0, "1e-45", "1e-6"),
    (1.0, "127.5", "-127.5"),
    (1e20, None, "1"),
])
def test_preprocess_accepts_odd_but_finite_values(scale, mean, std):
    pre = Preprocess.parse(scale, mean, std)
    x = pre.apply(np.array([[[[0, 128, 255]]]], np.uint8))
    assert x.dtype == np.float32 and np.isfinite(x).all()


def test_preprocess_validates_direct_construction_and_normalises():
    assert Preprocess(scale=1, mean=[1, 2, 3], std=np.array([1, 2, 3])) == Preprocess(1.0, (1.0, 2.0, 3.0),
                                                                                        (1.0, 2.0, 3.0))
    assert isinstance(Preprocess(scale=2).scale, float)
    hash(Preprocess(mean=[1, 2, 3]))
    with pytest.raises(UsageError, match="--std"):
        Preprocess(std=(float("nan"),))
    with pytest.raises(UsageError, match="--scale"):
        Preprocess(scale="abc")
    for bad in (np.array(0.5), np.zeros((1, 3)), [True], {"a": 1}):
        with pytest.raises(UsageError, match="--mean"):
            Preprocess(mean=bad)
    with pytest.raises(UsageError, match="--scale"):
        Preprocess.parse(10**400)


@pytest.mark.parametrize("d, key", [
    ({"mean": "abc"}, "preprocess.mean"),
    ({"std": [0]}, "preprocess.std"),
    ({"std": [1e-9]}, "preprocess.std"),
    ({"std": [None]}, "preprocess.std"),
    ({"std": "0.5"}, "preprocess.std"),
    ({"mean": [1, 2]}, "preprocess.mean"),
    ({"mean": None}, "preprocess.mean"),
    ({"mean": [float("nan")]}, "preprocess.mean"),
    ({"scale": "abc"}, "preprocess.scale"),
    ({"scale": None}, "preprocess.scale"),
    ({"scale": True}, "preprocess.scale"),
    ({"scale": float("inf")}, "preprocess.scale"),
    ({"scale": 10**400}, "preprocess.scale"),  # json.loads("1" + "0" * 400) is a Python int
    ({"mean": [10**400]}, "preprocess.mean"),
    ({"mean": [[1, 2, 3]]}, "preprocess.mean"),
    ({"resize": 3}, "preprocess.resize"),
    ({"resize": "squash"}, "preprocess.resize"),
    ({"scale": 1e25, "std": [1e-5]}, "preprocess.scale/mean/std"),
    ([1, 2], "preprocess"),
    (None, "preprocess"),
])
def test_from_dict_with_source_blames_the_file_not_an_option(d, key):
    source = "report.json in run/"
    with pytest.raises(DataError) as info:
        Preprocess.from_dict(d, source=source)
    msg = str(info.value)
    assert msg.startswith(f"{source}: {key} "), msg
    assert "--" not in msg, msg  # the file's key is blamed, not an option the user never gave


def test_from_dict_without_source_still_works():
    pre = Preprocess.parse(0.5, "1,2,3", "4,5,6", "stretch")
    assert Preprocess.from_dict(pre.to_dict()) == pre
    assert Preprocess.from_dict(pre.to_dict(), source="report.json in x") == pre
    assert Preprocess.from_dict({}) == Preprocess()  # an old report without the keys: defaults
    assert Preprocess.from_dict({"scale": 2, "mean": 0.5}) == Preprocess(2.0, (0.5,))
    with pytest.raises(UsageError, match="--std"):
        Preprocess.from_dict({"std": [0]})


# --------------------------------------------------------------------------- .npz pixels


@pytest.mark.parametrize("x, needles", [
    (np.full((3, 4, 4, 3), np.nan), ["144 pixel values", "144 NaN, 0 Inf"]),
    (np.where(np.arange(48).reshape(1, 4, 4, 3) == 5, np.inf, 1.0), ["1 pixel values", "0 NaN, 1 Inf"]),
    (np.concatenate([np.zeros((2, 4, 4, 3)), np.full((1, 4, 4, 3), -np.inf)]), ["48 pixel", "48 Inf"]),
    (np.full((2, 4, 4, 3), 1e300), ["96 Inf or beyond float32's range"]),
    (np.full((2, 4, 4, 3), np.nan, np.float16), ["96 NaN"]),
    (np.ones((2, 4, 4, 3), np.complex64), ["complex", "complex64"]),
    (np.full((2, 4, 4, 3), "12", "<U2"), ["strings", "<U2"]),
    (np.full((2, 4, 4, 3), b"1", "S1"), ["byte strings", "|S1"]),
    (np.zeros((2, 4, 4, 3), "datetime64[s]"), ["dates", "datetime64"]),
    (np.zeros((2, 4, 4, 3), "timedelta64[s]"), ["time spans"]),
    (np.zeros((2, 4, 4), [("r", "u1"), ("g", "u1"), ("b", "u1")]), ["structured"]),
    (np.array([{"a": 1}, None], dtype=object), ["Python objects", "never unpickles"]),
    (np.empty((2, 4, 4, 3), dtype=object), ["Python objects"]),
])
def test_npz_bad_pixels_are_one_data_error(tmp_path, x, needles):
    p = _npz(tmp_path / "bad.npz", x=x)
    with pytest.raises(DataError) as info:
        ds = open_dataset(p, "calibration")
        list(ds.batches((4, 4, 3), 2, IDENTITY))
    msg = str(info.value)
    assert str(p) in msg and "calibration" in msg, msg
    for n in needles:
        assert n in msg, msg


def test_object_npz_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Bomb:
        def __reduce__(self):
            return (Path.touch, (marker,))

    p = _npz(tmp_path / "obj.npz", x=np.array([Bomb(), Bomb()], dtype=object), y=np.array([Bomb()], dtype=object))
    with pytest.raises(DataError, match="never unpickles"):
        open_dataset(p)
    assert not marker.exists()
    source = "".join(f.read_text() for f in Path(data_mod.__file__).parent.glob("*.py"))
    loads = re.findall(r"np\.load\([^)]*\)", source)
    assert loads and all("allow_pickle=False" in call for call in loads), loads


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int8", "int16", "uint16", "int64", "uint64", "float16",
                                   "float32", "float64", ">f8"])
def test_npz_real_numeric_dtypes_stream_as_finite_float32(tmp_path, dtype):
    x = (np.arange(2 * 4 * 4 * 3) % 2).reshape(2, 4, 4, 3).astype(dtype)
    p = _npz(tmp_path / "ok.npz", x=x, y=np.array([0, 1], np.uint8))
    got, y = open_dataset(p).load((4, 4, 3), IDENTITY)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_array_equal(got, x.astype(np.float32))
    assert y.dtype == np.int64 and y.tolist() == [0, 1]


def test_finite_pixels_that_overflow_after_preprocess_are_a_data_error(tmp_path):
    p = _npz(tmp_path / "big.npz", x=np.full((2, 4, 4, 3), 1e35, np.float32))
    with pytest.raises(DataError, match=r"big\.npz: pixels 1e\+35\.\.1e\+35 are not finite in float32.*--scale"):
        open_dataset(p).load((4, 4, 3), Preprocess(scale=1e5))


# --------------------------------------------------------------------------- .npz layouts


@pytest.mark.parametrize("arrays, error, pattern", [
    ({"x": np.array(3, np.uint8)}, DataError, r"non-empty \(N,H,W\[,C\]\).*\(\)"),
    ({"x": np.zeros(4, np.uint8)}, DataError, r"non-empty"),
    ({"x": np.zeros((1, 2, 4, 4, 3), np.uint8)}, DataError, r"\(1, 2, 4, 4, 3\)"),
    ({"x": np.zeros((0, 4, 4, 3), np.uint8)}, DataError, r"non-empty"),
    ({"x": np.zeros((0,), np.float32)}, DataError, r"non-empty"),
    ({"x": np.zeros((2, 0, 0, 3), np.uint8)}, DataError, r"images are 0x0x3, 0 values each"),
    ({"x": np.zeros((2, 4, 4, 0), np.float32)}, DataError, r"images are 4x4x0, 0 values each"),
    ({"x": np.zeros((2, 4, 4, 3)), "y": np.zeros(3, int)}, DataError, r"3 labels for 2 images"),
    ({"x": np.zeros((2, 4, 4, 3)), "y": np.zeros((2, 10), int)}, DataError, r"\(2, 10\).*one-hot"),
    ({"x": np.zeros((1, 4, 4, 3)), "y": np.array(0)}, DataError, r"'y' must be \(N,\)"),
    ({"x": np.zeros((2, 4, 4, 3)), "y": np.zeros((2, 1, 1), int)}, DataError, r"'y' must be \(N,\)"),
    ({"x": np.zeros((2, 4, 4, 3)), "y": np.array([True, False])}, DataError, r"integer labels.*bool"),
    ({"x": np.zeros((2, 4, 4, 3)), "y": np.array([0.0, np.nan])}, DataError, r"integer labels.*float64"),
    ({"x": np.zeros((2, 4, 4, 3)), "y": np.array(["a", "b"])}, DataError, r"integer labels"),
    ({"x": np.zeros((2, 4, 4, 3)), "y": np.array([1, -3])}, DataError, r"non-negative integer labels, found -3"),
    ({"x": np.zeros((2, 4, 4, 3)), "y": np.array([2**63 + 1, 0], np.uint64)}, DataError, r"found 0\.\.9223"),
    ({"x": np.zeros((2, 4, 4, 3)), "y": np.array([0, 1j])}, DataError, r"integer labels"),
    ({"images": np.zeros((2, 4, 4, 3))}, DataError, r"no 'x' array"),
    ({}, DataError, r"no 'x' array \(found: nothing\)"),
])
def test_npz_layouts(tmp_path, arrays, error, pattern):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    with pytest.raises(error, match=pattern):
        open_dataset(p)


def test_npz_y_column_is_accepted(tmp_path):
    p = _npz(tmp_path / "d.npz", x=np.zeros((3, 4, 4, 3), np.uint8), y=np.array([[2], [0], [1]]))
    assert open_dataset(p).labels.tolist() == [2, 0, 1]


def test_npz_header_describing_a_huge_image_is_refused_without_allocating(tmp_path):
    p = _raw_npz(tmp_path / "huge.npz", (1, 100000, 100000, 3), data=b"\0" * 64)
    with pytest.raises(DataError, match=r"100000x100000x3, 30,000,000,000 values each; edgeres reads 1 to"):
        open_dataset(p)


@pytest.mark.parametrize("shape, data", [((10**9, 8, 8, 3), b"\0" * 192), ((2, 4, 4, 3), b"\0" * 10),
                                         ((2, 4, 4, 3), b"\0" * 200)])
def test_npz_header_that_lies_about_its_size(tmp_path, shape, data):
    p = _raw_npz(tmp_path / "lie.npz", shape, data=data)
    with pytest.raises(DataError, match=r"not a readable \.npz: 'x' claims shape"):
        open_dataset(p)


def test_npz_larger_than_memory_is_refused(tmp_path, monkeypatch):
    p = _npz(tmp_path / "d.npz", x=np.zeros((4, 8, 8, 3), np.uint8))
    import edgeres.core.npz as npz_mod

    monkeypatch.setattr(npz_mod, "physical_memory", lambda: 100)
    with pytest.raises(DataError, match=r"more than this machine's .* memory"):
        open_dataset(p)


def test_npz_member_that_is_not_an_array(tmp_path):
    p = tmp_path / "raw.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x", b"hello, not an array")
    with pytest.raises(DataError, match="'x' is not a numpy array"):
        open_dataset(p)


def test_npz_encrypted_or_exotic_members_are_data_errors(tmp_path):
    p = _npz(tmp_path / "d.npz", x=np.zeros((2, 4, 4, 3), np.uint8))
    raw = bytearray(p.read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # set the "encrypted" flag in both headers
        i = raw.find(sig)
        flag_at = i + (6 if sig == b"PK\x03\x04" else 8)
        raw[flag_at] |= 1
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        open_dataset(p)


@pytest.mark.parametrize("c", [2, 4])
def test_npz_uint8_of_any_channel_count_is_resized(tmp_path, c):
    # Was a ValueError traceback (Pillow has no mode for 2 or 4 arbitrary channels); the 4th channel is not alpha.
    p = _npz(tmp_path / "d.npz", x=np.full((2, 8, 8, c), 77, np.uint8))
    x, _ = open_dataset(p).load((4, 4, c), IDENTITY)
    assert x.shape == (2, 4, 4, c) and np.all(x == 77)
    with pytest.raises(ShapeError, match=f"8x8x{c} but the model takes 4x4x3"):
        open_dataset(p).load((4, 4, 3), IDENTITY)


# --------------------------------------------------------------------------- paths, model inputs, batches


def test_odd_paths(tmp_path):
    with pytest.raises(DataError, match="path '' is empty"):
        open_dataset("")
    with pytest.raises(DataError, match="cannot be read: File name too long"):
        open_dataset(tmp_path / ("x" * 5000))
    with pytest.raises(DataError, match="does not exist"):
        open_dataset("a\0b")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "data.npz"
        os.mkfifo(fifo)
        with pytest.raises(DataError, match="neither a file nor a folder"):
            open_dataset(fifo)
    if Path("/dev/null").exists():
        with pytest.raises(DataError, match="neither a file nor a folder"):
            open_dataset("/dev/null")


@pytest.mark.parametrize("hwc, pattern", [((0, 4, 3), r"\(0, 4, 3\)"), ((4, -1, 3), r"\(4, -1, 3\)"),
                                          ((None, 4, 3), "None"), (None, "None"), (("a", 4, 3), "'a'"),
                                          ((4, 4), r"\(4, 4\)"), ((100000, 100000, 3), r"\(100000, 100000, 3\)")])
def test_bad_model_inputs_are_shape_errors(tmp_path, hwc, pattern):
    ds = open_dataset(_npz(tmp_path / "d.npz", x=np.zeros((2, 4, 4, 3), np.uint8)))
    with pytest.raises(ShapeError, match=pattern):
        next(ds.batches(hwc, 2, IDENTITY))
    if hwc is not None and len(hwc) == 3:  # decode_image checks its own h, w, c (it is public)
        Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
        with pytest.raises(ShapeError, match=pattern):
            decode_image(str(tmp_path / "a.png"), *hwc)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_batch_size_must_be_positive_whole(tmp_path, size):
    ds = open_dataset(_npz(tmp_path / "d.npz", x=np.zeros((2, 4, 4, 3), np.uint8)))
    with pytest.raises(UsageError, match="batch size"):
        next(ds.batches((4, 4, 3), size, IDENTITY))


def test_big_inputs_get_smaller_batches(tmp_path, monkeypatch):
    ds = open_dataset(_npz(tmp_path / "d.npz", x=np.zeros((5, 4, 4, 3), np.uint8)))
    monkeypatch.setattr(data_mod, "MAX_BATCH_ELEMENTS", 2 * 4 * 4 * 3)
    assert [len(x) for x, _ in ds.batches((4, 4, 3), 64, IDENTITY)] == [2, 2, 1]


def test_decompression_bombs(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (100, 100), (5, 6, 7)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10,000 pixels: Pillow warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(str(p), 4, 4, 3).shape == (4, 4, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # more than twice the limit: Pillow refuses
    with pytest.raises(DataError, match="unreadable image"):
        decode_image(str(p), 4, 4, 3)


def test_sample_size_must_be_whole():
    ds = data_mod.Dataset("mem", "flat", ("a", "b"))
    with pytest.raises(UsageError, match="whole number"):
        ds.sample(1.5)


# --------------------------------------------------------------------------- property


PIXEL_DTYPES = ["float32", "float64", "uint8", "float16", ">f4", "int8", "int32", "uint64", "bool", "complex64",
                "<U3", "S2", "datetime64[s]"]
SHAPES = st.one_of(hnp.array_shapes(min_dims=3, max_dims=4, min_side=1, max_side=4),  # mostly plausible
                   hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4))
PREPROCESS = st.sampled_from([IDENTITY, Preprocess.parse(1 / 255, "0.5", "0.25"), Preprocess.parse(1e20),
                              Preprocess.parse(-3.0, "1,2,3", "1e-6,1,1", "stretch")])


@st.composite
def npz_arrays(draw):
    dtype = draw(st.sampled_from(PIXEL_DTYPES))
    shape = draw(SHAPES)
    if draw(st.integers(0, 9)) == 9:
        x = np.empty(shape, dtype=object)
    elif dtype == "<U3":
        x = draw(hnp.arrays(dtype, shape, elements=st.sampled_from(["", "1", "abc", "nan"])))
    elif dtype == "S2":
        x = draw(hnp.arrays(dtype, shape, elements=st.sampled_from([b"", b"1", b"ab"])))
    else:
        x = draw(hnp.arrays(dtype, shape))  # floats include NaN, Inf, huge and subnormal values
        if x.size and dtype.startswith("float") and draw(st.booleans()):
            x[...] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e300 if dtype == "float64" else 6e4]))
    arrays = {"x": x}
    if draw(st.booleans()):
        n = shape[0] if shape else 1
        n = draw(st.sampled_from([n, max(n - 1, 0), n + 1]))
        arrays["y"] = draw(hnp.arrays(st.sampled_from(["int64", "uint8", "float32", "bool", "int8"]),
                                      st.sampled_from([(n,), (n, 1), (n, 2), ()])))
    return arrays


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(arrays=npz_arrays(), hwc=st.sampled_from(["own", (4, 4, 3), (2, 3, 1), (4, 4, 4)]),
       batch_size=st.integers(1, 3), preprocess=PREPROCESS)
def test_any_npz_streams_finite_float32_or_raises_data_or_shape_error(arrays, hwc, batch_size, preprocess):
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "d.npz"
        np.savez(p, **arrays)
        x = arrays["x"]
        if hwc == "own":
            hwc = (tuple(x.shape[1:]) + (1,))[:3] if x.ndim in (3, 4) else (4, 4, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a numpy RuntimeWarning (overflow, invalid cast) is a bug too
            try:
                ds = open_dataset(p)
                seen = 0
                for bx, by in ds.batches(hwc, batch_size, preprocess):
                    assert bx.dtype == np.float32 and bx.shape[1:] == tuple(hwc)
                    assert np.isfinite(bx).all()
                    assert by is None or (by.dtype == np.int64 and len(by) == len(bx) and (by >= 0).all())
                    seen += len(bx)
                assert seen == len(x)
            except (DataError, ShapeError) as exc:
                assert "\n" not in str(exc) and str(exc).strip()


# --------------------------------------------------------------------------- CLI (one line, right exit code)


def test_cli_validate_nan_npz_is_a_data_error(default_run, tmp_path):
    bad = _npz(tmp_path / "nan.npz", x=np.full((4, 28, 28, 1), np.nan, np.float32), y=np.arange(4))
    assert_one_line_error(invoke("validate", default_run / "model_int8.tflite", "--data", bad), 4,
                          str(bad), "NaN")


def test_cli_validate_string_pixels_is_a_data_error(default_run, tmp_path):
    bad = _npz(tmp_path / "str.npz", x=np.full((4, 28, 28, 1), "7"), y=np.arange(4))
    assert_one_line_error(invoke("validate", default_run / "model_int8.tflite", "--data", bad), 4,
                          str(bad), "strings")


def test_cli_validate_nan_scale_is_a_usage_error(default_run):
    assert_one_line_error(invoke("validate", default_run / "model_int8.tflite", "--data",
                                 CALIBRATION / "digits-test.npz", "--scale=nan"), 2, "--scale", "finite")


def test_a_flat_folder_with_an_empty_subfolder_is_flat_and_a_mixed_one_is_refused(tmp_path):
    pixels = np.zeros((8, 8, 3), np.uint8)
    for i in range(3):
        Image.fromarray(pixels).save(tmp_path / f"top{i}.png")
    (tmp_path / "old").mkdir()  # empty: not a class folder
    ds = open_dataset(tmp_path, "calibration")
    assert ds.layout == "flat" and len(ds) == 3
    Image.fromarray(pixels).save(tmp_path / "old" / "a.png")
    with pytest.raises(DataError, match=r"mixes 3 images at its top level with class folders \(old\)"):
        open_dataset(tmp_path, "calibration")
