"""The error contract at its edges, as an adversarial sweep of the CLI found them: plot paths checked before the
work, --json on every kind of error, a line break in a file or class name, libtiff's own stderr, a signal while
the command line is still loading, a bundle manifest with bad preprocessing, a broken link in a data folder, and
`info` on a TFLite model with dynamic dims."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CALIBRATION, ROOT, assert_one_line_error, invoke

DIGITS = CALIBRATION / "digits-test.npz"


def _digit_folder(root: Path, per_class: int = 2) -> Path:
    """A class-folder copy of a few embedded digits (8x8 grayscale PNGs), for the folder cases below."""
    from PIL import Image

    d = np.load(DIGITS)
    for cls in range(10):
        (root / str(cls)).mkdir(parents=True)
        for i, x in enumerate(d["x"][d["y"] == cls][:per_class]):
            Image.fromarray(np.asarray(x, np.uint8)[..., 0]).save(root / str(cls) / f"{i}.png")
    return root


# ------------------------------------------------------------------ --plot: checked before any work

@pytest.mark.parametrize("command", ["bench", "diagnose"])
def test_a_plot_path_that_cannot_be_written_fails_before_the_work(default_run: Path, tmp_path: Path, command):
    args = ([default_run / "model_int8.tflite", "--runs", "1000000"] if command == "bench" else
            ["--calib-size", "64", "--val-size", "50", "--no-sensitivity"])
    assert_one_line_error(invoke(command, *args, "--plot", tmp_path / "p.txt"), 2, "'.txt' is not an image format",
                          ".png")
    assert_one_line_error(invoke(command, *args, "--plot", tmp_path / "no" / "p.png"), 8, "does not exist")
    assert_one_line_error(invoke(command, *args, "--plot", tmp_path), 8, "is a folder")
    assert list(tmp_path.iterdir()) == []


def test_bench_writes_the_plot_in_the_format_its_name_gives(default_run: Path, tmp_path: Path):
    pytest.importorskip("matplotlib")
    for name, magic in (("p.svg", b"<?xml"), ("p.png", b"\x89PNG"), ("p.pdf", b"%PDF")):
        result = invoke("bench", default_run / "model_int8.tflite", "--runs", "3", "--warmup", "1", "--plot",
                        tmp_path / name)
        assert result.exit_code == 0, result.stderr
        assert (tmp_path / name).read_bytes().startswith(magic), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.pdf", "p.png", "p.svg"]  # no temporary left


# ------------------------------------------------------------------ --json: one document on every error

@pytest.mark.parametrize("args, code", [
    (["bench", "m.tflite", "--runs", "0", "--json"], 2),          # click's own range check
    (["recipes", "--json", "--bogus"], 2),                        # an unknown option
    (["validate", "m.tflite", "--json"], 2),                      # a missing required option
    (["bench", "missing.tflite", "--json"], 3),                   # edgeres' own check
])
def test_json_errors_are_one_document_whoever_found_them(args, code):
    result = invoke(*args)
    assert result.exit_code == code
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("edgeres: error: ")
    doc = json.loads(result.stdout)["error"]
    assert doc["exit_code"] == code and doc["message"] == result.stderr.strip()[len("edgeres: error: "):]


def test_without_json_a_usage_error_prints_nothing_on_stdout():
    result = invoke("bench", "m.tflite", "--runs", "0")
    assert result.exit_code == 2 and result.stdout == ""


# ------------------------------------------------------------------ names with line breaks, and libtiff

def test_a_line_break_in_a_file_name_keeps_the_error_on_one_line(default_run: Path, tmp_path: Path):
    data = _digit_folder(tmp_path / "data")
    (data / "3" / "bad\nname.png").write_bytes(b"not a png")
    result = invoke("validate", default_run / "model_int8.tflite", "--data", data, "--on-bad-image", "error")
    assert_one_line_error(result, 4, "bad\\nname.png")
    warned = invoke("validate", default_run / "model_int8.tflite", "--data", data, "--json")
    assert warned.exit_code == 0
    assert [ln for ln in warned.stderr.splitlines() if ln.strip()] == [
        ln for ln in warned.stderr.splitlines() if ln.startswith("edgeres: ")]


def test_a_class_folder_name_with_a_line_break_is_no_label(default_run: Path, tmp_path: Path):
    from edgeres.pipeline.bundle import check_labels

    names = [str(i) for i in range(10)]
    check_labels(names, "the folders", 10)
    with pytest.raises(Exception, match="not one line of labels.txt"):
        check_labels([*names[:3], "ca\nt", *names[4:]], "the folders", 10)


def test_a_corrupt_tiff_gives_edgeres_line_only(default_run: Path, tmp_path: Path):
    from PIL import Image

    data = _digit_folder(tmp_path / "data")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
        buf, "TIFF", compression="tiff_lzw")
    raw = bytearray(buf.getvalue())
    random.seed(3)
    raw[20:60] = bytes(random.randrange(256) for _ in range(40))  # libtiff: "Using code not yet in table."
    (data / "5" / "bad.tiff").write_bytes(raw)
    result = invoke("validate", default_run / "model_int8.tflite", "--data", data, "--on-bad-image", "error")
    assert_one_line_error(result, 4, "bad.tiff")


# ------------------------------------------------------------------ a broken link in a data folder

def test_a_broken_link_named_like_an_image_is_an_unreadable_image_not_nothing(default_run: Path, tmp_path: Path):
    data = _digit_folder(tmp_path / "data")
    (data / "7" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    counted = json.loads(invoke("validate", default_run / "model_int8.tflite", "--data", data, "--json").stdout)
    assert counted["count"] == 20 and counted["data"]["count"] == 21
    assert_one_line_error(invoke("validate", default_run / "model_int8.tflite", "--data", data, "--on-bad-image",
                                 "error"), 4, "gone.png")


# ------------------------------------------------------------------ a bundle manifest with bad preprocessing

@pytest.mark.parametrize("field, value", [("mean", [float("nan")]), ("std", [0.0]), ("resize", "bogus")])
def test_a_manifest_with_bad_preprocessing_is_a_broken_bundle(default_run: Path, tmp_path: Path, field, value):
    bundle = tmp_path / "bundle"
    assert invoke("bundle", default_run, "-o", bundle).exit_code == 0
    m = json.loads((bundle / "manifest.json").read_text())
    m["models"][0]["preprocessing"][field] = value
    (bundle / "manifest.json").write_text(json.dumps(m))
    assert_one_line_error(invoke("verify", bundle), 9, f"preprocess.{field}")
    assert_one_line_error(invoke("validate", bundle, "--data", DIGITS), 9, f"preprocess.{field}")


# ------------------------------------------------------------------ info on a dynamic TFLite model

def test_info_describes_a_tflite_model_with_dynamic_dims(tmp_path: Path):
    import keras
    import tensorflow as tf
    from keras import layers

    i = keras.Input((None, None, 3))
    m = keras.Model(i, layers.Dense(10)(layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(i))))
    (tmp_path / "dyn.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(m).convert())
    result = invoke("info", tmp_path / "dyn.tflite", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["input_shape"] == [-1, -1, -1, 3]
    # running it still needs the dims
    assert_one_line_error(invoke("bench", tmp_path / "dyn.tflite", "--runs", "3"), 5, "--shape")


# ------------------------------------------------------------------ a signal while the CLI is still loading

@pytest.mark.parametrize("sig, code, line", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                             (signal.SIGINT, 130, "interrupted")], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_command_line_loads_exits_cleanly(tmp_path: Path, sig, code, line):
    """The entry point handles the signals before it imports the command line (click, the commands): a
    signal that comes while they load gives its exit code and one line, never a traceback or a bare -15."""
    program = f"""
import os, signal, sys, time

class SignalOnImport:  # the signal arrives exactly while edgeres.cli is being imported
    def find_spec(self, name, path=None, target=None):
        if name == "edgeres.cli":
            os.kill(os.getpid(), {int(sig)})
            time.sleep(5)
        return None

sys.meta_path.insert(0, SignalOnImport())
sys.argv = ["edgeres", "bench", "model.tflite"]
from edgeres.__main__ import main
main()
"""
    proc = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [f"edgeres: warning: {line}"], proc.stderr


def test_diagnose_never_replaces_an_existing_file_without_force(default_run: Path, tmp_path: Path):
    """-o onto a run folder's report.json replaced it and broke the run (validate then failed on it)."""
    before = (default_run / "report.json").read_bytes()
    for option in ("-o", "--plot"):
        target = default_run / ("report.json" if option == "-o" else "model_int8.tflite.png")
        if option == "--plot":
            target.write_bytes(b"mine")
        assert_one_line_error(invoke("diagnose", "--no-sensitivity", option, target), 8, "already exists",
                              "--force")
    assert (default_run / "report.json").read_bytes() == before
    (default_run / "model_int8.tflite.png").unlink()
