"""`edgeres convert` end to end, on real converters and runtimes, and every kind of bad input."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CALIBRATION, assert_one_line_error, invoke, shared

ARTIFACTS = ("model_fp32.tflite", "model_int8.tflite", "model_fp32.onnx", "model_int8.onnx")




# ------------------------------------------------------------------ the embedded default

def test_default_run_writes_all_artifacts_and_reports(default_run: Path):
    names = sorted(p.name for p in default_run.iterdir())
    assert names == sorted([*ARTIFACTS, "report.json", "report.md"])
    report = json.loads((default_run / "report.json").read_text())
    assert report["passed"] is True
    assert report["edgeres_version"]
    assert report["model"]["name"] == "digits_resnet8"
    assert report["model"]["input_shape"] == [None, 8, 8, 1]
    assert report["calibration"]["count"] == 300
    assert report["validation"]["count"] == 500
    assert [a["name"] for a in report["artifacts"]] == ["tflite_fp32", "tflite_int8", "onnx_fp32", "onnx_int8"]
    for a in report["artifacts"]:
        data = (default_run / a["path"]).read_bytes()
        assert a["size_bytes"] == len(data)
        assert a["sha256"] == hashlib.sha256(data).hexdigest()
        assert a["threads"] == 2
        lat = a["latency_ms"]
        assert lat["runs"] >= 50 and 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
        assert len(a["latency_samples_ms"]) == lat["runs"]
        # A trained model on held-out real digits: float artifacts match Keras, int8 stays close.
        assert a["top1"] > 95.0
        assert a["agreement"] >= (99.9 if a["precision"] == "float32" else 97.0)
        assert abs(a["top1_drop"]) <= (0.01 if a["precision"] == "float32" else 1.0)
    assert report["reference"]["top1"] > 95.0
    stages = report["stages_seconds"]
    assert {"load", "calibration_data", "tflite_fp32", "tflite_int8", "onnx_fp32", "onnx_int8",
            "validate", "bench"} <= set(stages)
    assert report["conversion_seconds"] < sum(stages.values())


def test_same_input_gives_the_same_bytes(tmp_path: Path, default_run: Path):
    """A second conversion of the same model, images and seed writes the same artifacts (README: "the same
    input gives the same bytes"): the adaptive default's candidates, GPTQ rounding and tf2onnx's made-up
    names all included.  The one exception is by design: an ONNX int8 model whose convolution kernels were
    chosen by timing them may take the other kernel on a close call, and must then give the same outputs."""
    from edgeres.core.runtime import open_runner

    out = tmp_path / "again"
    result = invoke("convert", "--int8", "-o", out)
    assert result.exit_code == 0, result.stderr
    first = {a["name"]: a for a in json.loads((default_run / "report.json").read_text())["artifacts"]}
    again = {a["name"]: a for a in json.loads((out / "report.json").read_text())["artifacts"]}
    assert first.keys() == again.keys()
    for name, a in first.items():
        b = again[name]
        kernels = (a["details"].get("kernels") or {}).get("choice"), (b["details"].get("kernels") or {}).get("choice")
        same_kernels = a["details"].get("kernels") == b["details"].get("kernels") or "measured" not in kernels
        if same_kernels or name != "onnx_int8":
            assert a["sha256"] == b["sha256"], (name, a["details"].get("kernels"), b["details"].get("kernels"))
        else:
            x = np.load(CALIBRATION / "digits-test.npz")["x"][:64].astype(np.float32)
            r1, r2 = open_runner(default_run / a["path"]), open_runner(out / b["path"])
            np.testing.assert_array_equal(r1.predict(x), r2.predict(x))
        assert a["top1"] == b["top1"] and a["agreement"] == b["agreement"]


def test_report_md_has_one_row_per_artifact(default_run: Path):
    md = (default_run / "report.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(rows) == 1 + 1 + 4  # header, keras reference, four artifacts
    assert "top-1" in rows[0] and "p50 ms" in rows[0] and "speedup" in rows[0]
    assert "PASSED" in md


def test_int8_tflite_is_full_integer_with_int8_io(default_run: Path):
    from edgeres.backends.tflite import float_compute_ops
    from edgeres.core.runtime import open_runner

    path = default_run / "model_int8.tflite"
    assert float_compute_ops(path.read_bytes()) == set()
    runner = open_runner(path)
    assert runner.input_dtype == np.int8 and runner.output_dtype == np.int8
    assert runner.input_quant is not None


def test_onnx_artifacts_pass_checker_and_int8_is_qdq(default_run: Path):
    import onnx

    for name in ("model_fp32.onnx", "model_int8.onnx"):
        onnx.checker.check_model(onnx.load(default_run / name))
    ops = {n.op_type for n in onnx.load(default_run / "model_int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # x86 target: uint8 activations (U8S8)
    q = [n for n in onnx.load(default_run / "model_int8.onnx").graph.node if n.op_type == "QuantizeLinear"]
    zp_names = {n.input[2] for n in q if len(n.input) > 2}
    inits = {i.name: i for i in onnx.load(default_run / "model_int8.onnx").graph.initializer}
    assert any(inits[z].data_type == onnx.TensorProto.UINT8 for z in zp_names if z in inits)


def test_json_output_is_the_report(tmp_path: Path):
    out = tmp_path / "run"
    result = invoke("convert", "--int8", "--json", "--val-size", "100", "--calib-size", "50", "-o", out)
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == json.loads((out / "report.json").read_text())
    assert printed["validation"]["count"] == 100


def test_uint8_io_and_float_io(tmp_path: Path):
    from edgeres.core.runtime import open_runner

    for io in ("uint8", "float32"):
        out = tmp_path / io
        result = invoke("convert", "--int8", "--io-dtype", io, "--val-size", "100", "--calib-size", "50",
                        "-o", out)
        assert result.exit_code == 0, result.stderr
        runner = open_runner(out / "model_int8.tflite")
        assert runner.input_dtype == np.dtype(io)
        report = json.loads((out / "report.json").read_text())
        assert report["artifacts"][1]["input_dtype"] == io
        assert report["artifacts"][1]["agreement"] >= 95.0


def test_image_folder_data_and_preprocessing_recorded(tmp_path: Path, digits_folder: Path):
    from edgeres.core import defaults

    out = tmp_path / "run"
    result = invoke("convert", defaults.default_model(), "--int8", "--calib", digits_folder, "--data",
                    digits_folder, "--calib-size", "40", "--val-size", "120", "--scale", "1", "-o", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"]["layout"] == "classes"
    assert report["validation"]["count"] == 120
    assert report["preprocess"]["formula"] == "x = (pixels * scale - mean) / std"
    assert report["artifacts"][0]["top1"] > 95


def test_max_drop_search_keeps_selection_and_final_images_apart(tmp_path: Path):
    ok = tmp_path / "ok"
    # 250 selection images resolve an agreement budget of 1.33 points or more (docs/quantization.md)
    result = invoke("convert", "--int8", "--max-drop", "2", "--metric", "agreement", "-o", ok)
    assert result.exit_code == 0, result.stderr
    report = json.loads((ok / "report.json").read_text())
    search = report["search"]
    # 500 held-out digits: half choose the configuration, the other half give the figures.
    assert search["selection"]["count"] == 250 and report["validation"]["count"] == 250
    for backend in ("tflite", "onnx"):
        s = search["backends"][backend]
        assert s["met"] is True and s["trials"][-1]["meets_budget"] is True
        assert s["trials"][0]["step"] == "recipe"
        # chosen on the 90% upper bound of the loss, which is above the point estimate
        assert 100 - s["winner"]["agreement"] <= s["winner"]["loss_upper"] <= 2.0
    assert "tflite search" in result.output and "chosen:" in result.output and "90% bound" in result.output
    md = (ok / "report.md").read_text()
    assert "--max-drop search: budget 2 (agreement)" in md and "Int8: tflite_int8: recipe `default`" in md
    # the figures on the report images, with 95% intervals around them; PASSED means within budget there
    assert report["passed"] is True
    for a in report["artifacts"]:
        lo, hi = a["top1_drop_ci"]
        assert lo <= a["top1_drop"] <= hi and hi - lo > 0
        lo, hi = a["agreement_ci"]
        assert lo <= a["agreement"] <= hi <= 100
        if a["precision"] == "int8":
            assert 100 - a["agreement"] <= 2.0
    assert "drop pp (95% CI)" in md and "95% confidence intervals on these 250 images" in md


def test_max_drop_rejects_too_few_images_and_negative_budgets(tmp_path: Path):
    few = invoke("convert", "--int8", "--calib-size", "8", "--max-drop", "1", "-o", tmp_path / "a")
    assert few.exit_code == 4 and "at least 32 calibration images" in few.stderr
    few = invoke("convert", "--int8", "--val-size", "150", "--max-drop", "1", "-o", tmp_path / "b")
    assert few.exit_code == 4 and "at least 200 labelled validation images" in few.stderr
    neg = invoke("convert", "--int8", "--max-drop", "-1", "-o", tmp_path / "c")
    assert neg.exit_code == 2 and "--max-drop must be 0 or more" in neg.stderr
    for d in "abc":
        assert not (tmp_path / d).exists()


def test_max_drop_refuses_a_budget_the_selection_images_cannot_resolve(tmp_path: Path):
    """Before any conversion: one line naming the selection images needed and the data that gives them."""
    fine = invoke("convert", "--int8", "--max-drop", "0.5", "--metric", "agreement", "-o", tmp_path / "a")
    assert_one_line_error(fine, 2, "--max-drop 0.5 (agreement) is finer than 250 selection images resolve",
                          "it needs 667 selection images (--data of 1334 at --select-fraction 0.5)",
                          "or a budget of 1.33 or more")
    top1 = invoke("convert", "--int8", "--max-drop", "1", "-o", tmp_path / "b")
    assert_one_line_error(top1, 2, "--max-drop 1 (top1)", "it needs 333 selection images",
                          "--select-fraction 0.67 of these 500")
    zero = invoke("convert", "--int8", "--max-drop", "0", "-o", tmp_path / "c")
    assert_one_line_error(zero, 2, "--max-drop 0 (top1) can never be met with confidence")
    for d in "abc":
        assert not (tmp_path / d).exists()


def test_max_drop_pass_fail_is_judged_on_the_report_images():
    """A PASSED run never shows a loss above the budget on the report images (the point estimate there), whatever
    the search saw on the selection images; an agreement budget is judged on agreement.  A failure whose interval
    holds the budget says about how many report images would tell the two apart."""
    from types import SimpleNamespace

    from edgeres.pipeline.assemble import _judge_budget

    def judged(metric: str, budget: float, drop: float, agreement: float, ci=(-0.1, 0.5)) -> list[str]:
        report = SimpleNamespace(failures=[])
        report.fail = report.failures.append
        art = SimpleNamespace(name="tflite_int8", top1_drop=drop, agreement=agreement, top1_drop_ci=list(ci),
                              agreement_ci=[99.2, 99.9])
        _judge_budget(report, art, budget, metric)
        return report.failures

    assert judged("top1", 0.3, 99.2 - 98.9, 99.6) == []  # 0.30000000000000426: the budget itself
    assert judged("top1", 0.3, 0.4, 99.6) == ["tflite_int8 drops 0.40 points of top-1 (budget 0.3; 95% CI "
                                               "-0.10..+0.50, which holds the budget: telling 0.40 from 0.3 takes "
                                               "about 15,366 report images)"]  # 1.96^2 * 0.004 / 0.001^2
    assert judged("top1", 0.3, 0.6, 99.6, ci=[0.35, 0.9]) == [
        "tflite_int8 drops 0.60 points of top-1 (budget 0.3; 95% CI +0.35..+0.90)"]  # over it with confidence
    assert judged("top1", 0.3, -0.2, 90.0) == []  # agreement is not what a top-1 budget is
    assert judged("agreement", 0.5, 0.0, 99.6) == []
    assert judged("agreement", 0.3, 0.0, 99.6) == ["tflite_int8 loses 0.40 points of agreement with float32 "
                                                    "(budget 0.3; 95% CI +0.10..+0.80, which holds the budget: "
                                                    "telling 0.40 from 0.3 takes about 15,305 report images)"]


def test_no_int8_gives_float_artifacts_only(tmp_path: Path):
    out = tmp_path / "run"
    assert invoke("convert", "--val-size", "60", "-o", out).exit_code == 0
    assert sorted(p.name for p in out.glob("model_*")) == ["model_fp32.onnx", "model_fp32.tflite"]


def test_force_replaces_existing_folder(tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = invoke("convert", "--val-size", "60", "-o", out, "--force")
    assert result.exit_code == 0, result.stderr
    assert not (out / "old.txt").exists() and (out / "report.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


# ------------------------------------------------------------------ bad input

def _bad_model_files(tmp: Path) -> dict[str, Path]:
    corrupt = tmp / "corrupt.keras"
    corrupt.write_bytes(b"\x00garbage" * 100)
    zipped = tmp / "notmodel.keras"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("hello.txt", "not a model")
    truncated = tmp / "truncated.keras"
    src = (CALIBRATION / "digits_resnet8.keras").read_bytes()
    truncated.write_bytes(src[: len(src) // 2])
    text = tmp / "notes.txt"
    text.write_text("hello")
    return {"corrupt": corrupt, "zip": zipped, "truncated": truncated, "text": text,
            "missing": tmp / "nope.keras"}


@pytest.mark.parametrize("kind", ["corrupt", "zip", "truncated", "text", "missing"])
def test_bad_model_files(tmp_path: Path, kind: str):
    model = _bad_model_files(tmp_path)[kind]
    out = tmp_path / "out"
    result = invoke("convert", model, "--int8", "--calib", CALIBRATION / "digits-train.npz", "-o", out)
    assert_one_line_error(result, 3, model.name)
    assert not out.exists()


def test_unknown_zoo_name(tmp_path: Path):
    result = invoke("convert", "resnet9000", "--calib", CALIBRATION / "digits-train.npz", "-o", tmp_path / "o")
    assert_one_line_error(result, 3, "resnet9000")


def test_own_model_needs_calibration(tmp_path: Path):
    from edgeres.core import defaults

    result = invoke("convert", defaults.default_model(), "--int8", "-o", tmp_path / "o")
    assert_one_line_error(result, 2, "--calib")


def test_empty_and_unreadable_calibration_folders(tmp_path: Path):
    from edgeres.core import defaults

    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("convert", defaults.default_model(), "--int8", "--calib", empty, "-o", tmp_path / "o1")
    assert_one_line_error(result, 4, "empty")
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"{i}.png").write_bytes(b"not a png")
    result = invoke("convert", defaults.default_model(), "--int8", "--calib", junk, "-o", tmp_path / "o2")
    assert_one_line_error(result, 4, "no readable image")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    assert not list(tmp_path.glob(".o*partial*"))


def test_unreadable_images_skip_with_warning_or_fail(tmp_path: Path, digits_folder: Path):
    import shutil

    from edgeres.core import defaults

    calib = tmp_path / "calib"
    shutil.copytree(digits_folder, calib)
    (calib / "3" / "broken.png").write_bytes(b"\x89PNG broken")
    common = [defaults.default_model(), "--int8", "--calib", calib, "--calib-size", "600", "--val-size", "50"]
    warn = invoke("convert", *common, "-o", tmp_path / "warn")
    assert warn.exit_code == 0, warn.stderr
    assert "broken.png" in warn.stderr and "warning" in warn.stderr
    strict = invoke("convert", *common, "--on-bad-image", "error", "-o", tmp_path / "strict")
    assert_one_line_error(strict, 4, "broken.png")
    assert not (tmp_path / "strict").exists()


def test_class_count_mismatch(tmp_path: Path, digits_folder: Path):
    import shutil

    from edgeres.core import defaults

    three = tmp_path / "three"
    for c in ("0", "1", "2"):
        shutil.copytree(digits_folder / c, three / c)
    result = invoke("convert", defaults.default_model(), "--int8", "--calib", three, "-o", tmp_path / "o")
    assert_one_line_error(result, 5, "3 classes", "outputs 10")


def test_input_shape_that_cannot_be_fed(tmp_path: Path):
    import keras

    inp = keras.Input((16,))
    model = keras.Model(inp, keras.layers.Dense(10)(inp))
    path = tmp_path / "flat.keras"
    model.save(path)
    result = invoke("convert", path, "--int8", "--calib", CALIBRATION / "digits-train.npz", "-o", tmp_path / "o")
    assert_one_line_error(result, 5, "cannot be fed")


def test_lambda_layer_refused_by_safe_mode(tmp_path: Path):
    import keras

    inp = keras.Input((8, 8, 1))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(10)(x))
    path = tmp_path / "lambda.keras"
    model.save(path)
    result = invoke("convert", path, "--calib", CALIBRATION / "digits-train.npz", "-o", tmp_path / "o")
    assert_one_line_error(result, 3, "lambda.keras")


def test_op_without_int8_kernel_is_named(tmp_path: Path):
    import keras

    inp = keras.Input((8, 8, 1))
    x = keras.layers.Resizing(16, 16, interpolation="bicubic")(inp)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(10)(x))
    path = tmp_path / "bicubic.keras"
    model.save(path)
    out = tmp_path / "o"
    result = invoke("convert", path, "--int8", "--calib", CALIBRATION / "digits-train.npz", "--calib-size", "8",
                    "-o", out)
    assert_one_line_error(result, 6, "ResizeBicubic")
    assert not out.exists()
    assert not list(tmp_path.glob(".o.partial-*"))  # the staging folder was removed


def test_existing_output_folder(tmp_path: Path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = invoke("convert", "--int8", "-o", out)
    assert_one_line_error(result, 8, "--force")
    assert (out / "keep.txt").read_text() == "precious"


def test_negative_budget(tmp_path: Path):
    result = invoke("convert", "--int8", "--max-drop", "-1", "-o", tmp_path / "o")
    assert_one_line_error(result, 2, "--max-drop")


# ------------------------------------------------------------------ other model formats

def test_h5_and_savedmodel_inputs(tmp_path: Path):
    import keras
    import tensorflow as tf

    from edgeres.backends.keras_io import load_model
    from edgeres.core import defaults

    model = keras.saving.load_model(defaults.default_model(), safe_mode=True)
    x = np.load(CALIBRATION / "digits-test.npz")["x"][:16].astype("float32")
    want = np.asarray(model(x))
    h5 = tmp_path / "m.h5"
    model.save(h5)
    sm = tmp_path / "sm"
    model.export(str(sm), format="tf_saved_model")
    for src in (h5, sm):
        loaded = load_model(str(src))
        np.testing.assert_allclose(np.asarray(loaded.model(tf.constant(x))), want, rtol=1e-4, atol=1e-4)
    out = tmp_path / "run"
    result = invoke("convert", sm, "--int8", "--calib", CALIBRATION / "digits-train.npz", "--calib-size", "50",
                    "--data", CALIBRATION / "digits-test.npz", "--val-size", "100", "-o", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["kind"] == "savedmodel"
    assert report["artifacts"][1]["agreement"] >= 95.0


# ------------------------------------------------------------------ a real model from ../shared

@pytest.mark.slow
def test_shared_resnet20_int8_close_to_float(tmp_path: Path):
    model = shared("models", "resnet20_cifar10.keras")
    calib, test = shared("cifar10", "calib"), shared("cifar10", "test")
    out = tmp_path / "run"
    result = invoke("convert", model, "--int8", "--calib", calib, "--calib-size", "200", "--data", test,
                    "--val-size", "400", "-o", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["params"] == 273_658
    assert abs(report["reference"]["top1"] - 90.0) < 4.0
    for a in report["artifacts"]:
        if a["precision"] == "int8":
            assert a["agreement"] >= 96.0 and a["top1_drop"] <= 1.5, a


def test_coral_target_converts_with_static_batch_and_uint8_io(tmp_path: Path):
    from edgeres.core.runtime import open_runner

    out = tmp_path / "coral"
    result = invoke("convert", "--int8", "--target", "coral-edgetpu", "--val-size", "100", "-o", out)
    assert result.exit_code == 0, result.stderr
    runner = open_runner(out / "model_int8.tflite")
    assert runner.input_shape == (1, 8, 8, 1) and runner.input_dtype == np.uint8
    report = json.loads((out / "report.json").read_text())
    assert report["target"]["name"] == "coral-edgetpu"
    assert any("aarch64" in n for n in report["notes"])  # x86 accuracy is not the device's
    assert report["artifacts"][3]["details"]["scheme"] == "S8S8"
    # The static int8 model passes the Edge TPU checker; without edgetpu_compiler the report says how to get it.
    assert report["edgetpu"]["check"]["compatible"] is True
    assert report["edgetpu"]["check"]["ops_mappable"] == report["edgetpu"]["check"]["ops_total"]
    if report["edgetpu"]["compiler"] is None:
        assert any("edgetpu_compiler" in n and "apt-get install" in n for n in report["notes"])
    ok = invoke("check", out / "model_int8.tflite", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["compatible"] is True


def test_check_rejects_dynamic_batch_and_non_edgetpu_targets(default_run: Path):
    bad = invoke("check", default_run / "model_int8.tflite")
    assert bad.exit_code == 6
    assert "dynamic shapes" in bad.stdout and bad.stderr.count("\n") == 1
    assert "batch_size=1" in bad.stderr
    assert_one_line_error(invoke("check", default_run / "model_int8.tflite", "--target", "x86-64"), 2, "x86-64")


def test_legacy_keras2_h5(tmp_path: Path):
    """A Keras 2 (tf-keras) .h5 file, written in a separate process, loads and converts."""
    import subprocess
    import sys

    pytest.importorskip("tf_keras", reason="tf-keras (in the dev extra) writes the legacy Keras 2 file")
    h5 = tmp_path / "legacy.h5"
    script = f"""
import numpy as np, tf_keras as k2
k2.utils.set_random_seed(0)
inp = k2.Input((8, 8, 1))
x = k2.layers.Rescaling(1 / 255.0)(inp)
x = k2.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
x = k2.layers.BatchNormalization()(x)
x = k2.layers.GlobalAveragePooling2D()(x)
m = k2.Model(inp, k2.layers.Dense(10)(x))
m.save({str(h5)!r})
x = np.load({str(CALIBRATION / "digits-test.npz")!r})["x"][:8].astype("float32")
np.save({str(tmp_path / "want.npy")!r}, m.predict(x, verbose=0))
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    import h5py

    with h5py.File(h5) as f:
        assert str(f.attrs["keras_version"]).startswith("2.")
    from edgeres.backends.keras_io import load_model

    loaded = load_model(str(h5))
    x = np.load(CALIBRATION / "digits-test.npz")["x"][:8].astype("float32")
    np.testing.assert_allclose(np.asarray(loaded.model(x)), np.load(tmp_path / "want.npy"), rtol=1e-4, atol=1e-5)
    out = tmp_path / "run"
    result = invoke("convert", h5, "--int8", "--calib", CALIBRATION / "digits-train.npz", "--calib-size", "20",
                    "--val-size", "50", "--data", CALIBRATION / "digits-test.npz", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert json.loads((out / "report.json").read_text())["model"]["kind"] == "h5"


def test_build_and_info_on_keras_models(tmp_path: Path):
    from edgeres.zoo import count_params, create_model

    path = tmp_path / "r20b.keras"
    built = invoke("build", "resnet20", "--input-size", "32", "--num-classes", "7", "--shortcut", "B", "-o", path)
    assert built.exit_code == 0, built.output
    info = invoke("info", path, "--json")
    assert info.exit_code == 0, info.output
    d = json.loads(info.stdout)  # stdout is clean JSON: TensorFlow's chatter is silenced
    total, trainable = count_params(create_model("resnet20", num_classes=7, shortcut="B"))
    assert (d["params"], d["trainable_params"]) == (total, trainable)
    assert d["input_shape"] == [None, 32, 32, 3] and d["output_shape"] == [None, 7]
    assert d["macs"] > 40_000_000 and d["layers"] > 60
    zoo = json.loads(invoke("info", "resnet20", "--json").stdout)
    assert zoo["params"] < total  # option A (default) has no projection convolutions
    assert_one_line_error(invoke("build", "resnet20", "-o", path), 8, "--force")
    assert_one_line_error(invoke("build", "resnet20", "-o", tmp_path / "x.h5"), 2, ".keras")
    assert_one_line_error(invoke("info", tmp_path / "missing.keras"), 3, "does not exist")
