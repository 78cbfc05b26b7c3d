"""The CLI's error contract, fuzzed: hostile option values, corrupt data and corrupt model files.

For every generated case: the exit code is one of the documented ones, a
failure prints exactly one ``edgeres: error:`` line and no traceback, and
nothing is left behind (no run folder, no ``.partial-*``).  The cases are kept
fast (each fails before any conversion, or runs a light command on the tiny
embedded default), and derandomized so CI sees the same ones every run:
about 600 cases in well under a minute.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import CALIBRATION, invoke

EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 130}
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

HOSTILE_NUMBERS = st.sampled_from(["nan", "NaN", "inf", "-inf", "1e309", "-1", "0", "-0", "1e-45", "1e45",
                                   "9" * 40, str(2**63 - 1), str(2**63), "-9223372036854775809", "0x10", "1_0",
                                   "", " ", "1,2", "٣", "½", "1e", "--", "0.0000001"])
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
VALUES = st.one_of(HOSTILE_NUMBERS, TEXT, st.integers(-2**70, 2**70).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr))

CONVERT_OPTIONS = ["--max-drop", "--scale", "--mean", "--std", "--calib-size", "--val-size", "--runs", "--warmup",
                   "--threads", "--seed", "--select-fraction", "--input-size", "--num-classes", "--io-dtype",
                   "--metric", "--resize", "--target", "--recipe", "--on-bad-image"]
BENCH_OPTIONS = ["--threads", "--runs", "--warmup", "--min-time", "--scale", "--mean", "--std", "--shape",
                 "--delegate", "--target", "--seed"]
VALIDATE_OPTIONS = ["--threads", "--val-size", "--seed", "--scale", "--mean", "--std", "--resize", "--delegate"]


def _slow_but_valid(option: str, value: str) -> bool:
    """A valid timing count so large the run would take minutes: legitimate, and not what this test is about."""
    if option not in ("--runs", "--warmup", "--min-time", "--val-size"):
        return False
    try:
        v = float(value.strip().replace("_", ""))
    except ValueError:
        return False
    return v == v and v > (1.0 if option == "--min-time" else 200)


def check_contract(result, workdir: Path, before: set[str]) -> None:
    assert result.exit_code in EXIT_CODES, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output, result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("edgeres: error:")]
    if result.exit_code == 0:
        assert not errors, result.stderr
    else:
        assert len(errors) == 1, result.stderr
    left = {p.name for p in workdir.iterdir()} - before
    assert not any(".partial" in n or ".old-" in n for n in left), left
    if result.exit_code != 0:
        assert not left, left


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(option=st.sampled_from(CONVERT_OPTIONS), value=VALUES)
def test_convert_option_values(workdir: Path, option: str, value: str):
    """Every convert option with a hostile value: a usage error, or (if the value is valid) the missing model."""
    before = {p.name for p in workdir.iterdir()}
    result = invoke("convert", workdir / "no-such-model.keras", "--int8", "--calib", CALIBRATION / "digits-train.npz",
                    "--data", CALIBRATION / "digits-test.npz", "-o", workdir / "run", f"{option}={value}")
    check_contract(result, workdir, before)
    assert result.exit_code in (2, 3), result.stderr  # bad value, else the missing model


@FUZZ
@given(option=st.sampled_from(BENCH_OPTIONS), value=VALUES)
def test_bench_option_values(default_run: Path, workdir: Path, option: str, value: str):
    assume(not _slow_but_valid(option, value))
    before = {p.name for p in workdir.iterdir()}
    result = invoke("bench", default_run / "model_int8.tflite", "--runs", "2", "--warmup", "0",
                    f"{option}={value}", "--json")
    check_contract(result, workdir, before)


@FUZZ
@given(option=st.sampled_from(VALIDATE_OPTIONS), value=VALUES)
def test_validate_option_values(default_run: Path, workdir: Path, option: str, value: str):
    assume(not _slow_but_valid(option, value))
    before = {p.name for p in workdir.iterdir()}
    result = invoke("validate", default_run / "model_int8.onnx", "--data", CALIBRATION / "digits-test.npz",
                    "--val-size", "8", f"{option}={value}")
    check_contract(result, workdir, before)


DTYPES = st.sampled_from(["uint8", "int8", "int16", "int64", "float16", "float32", "float64", "bool", "complex64",
                          "<U3", "S2", "datetime64[s]", "uint64"])
SHAPES = st.one_of(st.just(()), st.lists(st.integers(0, 9), min_size=1, max_size=5).map(tuple))
SPECIALS = st.sampled_from([None, "nan", "inf", "-inf", "huge", "allnan"])


def _array(dtype: str, shape: tuple, special: str | None) -> np.ndarray:
    n = int(np.prod(shape)) if shape else 1
    a = (np.arange(n) % 256).reshape(shape)
    if np.dtype(dtype).kind in "US":
        return a.astype(str).astype(dtype)
    if np.dtype(dtype).kind == "M":
        return a.astype("datetime64[s]")
    a = a.astype(dtype)
    if special and a.size and np.dtype(dtype).kind in "fc":
        flat = a.reshape(-1)
        value = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": np.finfo(np.float16).max}.get(special)
        if special == "allnan":
            flat[:] = np.nan
        else:
            flat[0] = value
    return a


@FUZZ
@given(dtype=DTYPES, shape=SHAPES, special=SPECIALS, with_y=st.booleans(), y_kind=st.sampled_from(
    ["ok", "float", "negative", "short", "2d", "nan", "huge"]), command=st.sampled_from(["validate", "convert"]))
def test_corrupt_npz_data(default_run: Path, workdir: Path, dtype, shape, special, with_y, y_kind, command):
    before = {p.name for p in workdir.iterdir()}
    path = workdir / "fuzz.npz"
    x = _array(dtype, shape, special)
    arrays = {"x": x}
    if with_y:
        n = shape[0] if shape else 1
        y = {"ok": np.arange(n) % 10, "float": np.arange(n) + 0.5, "negative": -np.ones(n, int),
             "short": np.zeros(max(n - 1, 0), int), "2d": np.zeros((n, 2), int), "nan": np.full(n, np.nan),
             "huge": np.full(n, 2**62)}[y_kind]
        arrays["y"] = y
    np.savez(path, **arrays)
    before.add(path.name)
    if command == "validate":
        result = invoke("validate", default_run / "model_int8.tflite", "--data", path, "--val-size", "16")
    else:  # fails before the model loads: -o is an existing, non-empty folder (exit 8), or on the data
        out = workdir / "occupied"
        out.mkdir(exist_ok=True)
        (out / "keep.txt").write_text("mine")
        before |= {"occupied"}
        result = invoke("convert", "--int8", "--calib", path, "--data", CALIBRATION / "digits-test.npz", "-o", out)
        assert (out / "keep.txt").read_text() == "mine"
    check_contract(result, workdir, before)


@FUZZ
@given(data=st.binary(max_size=256), suffix=st.sampled_from([".tflite", ".onnx", ".keras", ".h5", ".npz"]),
       truncate=st.integers(0, 4096), command=st.sampled_from(["info", "bench", "validate", "check"]))
def test_corrupt_and_truncated_files(default_run: Path, workdir: Path, data, suffix, truncate, command):
    """Random bytes, or a real file truncated, given where a model or data file is expected."""
    before = {p.name for p in workdir.iterdir()}
    real = {".tflite": default_run / "model_int8.tflite", ".onnx": default_run / "model_int8.onnx",
            ".keras": CALIBRATION / "digits_resnet8.keras", ".npz": CALIBRATION / "digits-test.npz"}.get(suffix)
    path = workdir / f"corrupt{suffix}"
    if real is not None and truncate % 2 == 0:
        blob = real.read_bytes()
        path.write_bytes(blob[: min(len(blob) - 1, truncate * 37)])
    else:
        path.write_bytes(data)
    before.add(path.name)
    if suffix == ".npz":
        args = {"info": ("info", default_run / "model_int8.tflite"),
                "bench": ("bench", default_run / "model_int8.tflite", "--runs", "2", "--data", path),
                "validate": ("validate", default_run / "model_int8.tflite", "--data", path),
                "check": ("check", default_run / "model_int8.tflite")}[command]
    else:
        args = {"info": ("info", path), "bench": ("bench", path, "--runs", "2"),
                "validate": ("validate", path, "--data", CALIBRATION / "digits-test.npz"),
                "check": ("check", path)}[command]
    result = invoke(*args)
    check_contract(result, workdir, before)


def test_zip_bomb_like_npz_is_refused_without_allocating(workdir: Path):
    """An .npz whose header claims a huge array is refused from the header, not by trying to allocate it."""
    path = workdir / "huge.npz"
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False,
                                               "shape": (1, 100000, 100000, 3)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", buf.getvalue())  # the header alone: 30 GB claimed, a few bytes present
    result = invoke("convert", "--int8", "--calib", path, "-o", workdir / "run-huge")
    assert result.exit_code == 4, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (workdir / "run-huge").exists()
