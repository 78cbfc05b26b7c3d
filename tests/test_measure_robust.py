"""`validate` and `bench` on the models people actually bring: a fixed batch of N, NCHW inputs (PyTorch
exports), dynamic H and W; partial preprocessing options; a reference from another run; an empty --remote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CALIBRATION, assert_one_line_error, invoke

DIGITS = CALIBRATION / "digits-test.npz"  # 500 8x8x1 digits


# --------------------------------------------------------------------------- tiny real models


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """One small Keras classifier's weights as TFLite (batch 1 and a fixed batch of 4) and as ONNX built by
    hand in NCHW (a fixed batch of 4, a dynamic batch, and dynamic H and W), all computing the same function."""
    import keras
    import onnx
    import tensorflow as tf
    from keras import layers
    from onnx import TensorProto, helper, numpy_helper

    root = tmp_path_factory.mktemp("batch-models")
    keras.utils.set_random_seed(0)
    conv, dense = layers.Conv2D(4, 3, activation="relu"), layers.Dense(10)
    pool = layers.GlobalAveragePooling2D()
    out: dict[str, Path] = {}
    for name, batch, hw in (("b1", None, 8), ("b4", 4, 8), ("dynhw", None, None)):
        i = keras.Input((hw, hw, 1), batch_size=batch)
        m = keras.Model(i, dense(pool(conv(layers.Rescaling(1 / 16.0)(i)))))
        out[f"{name}.tflite"] = root / f"{name}.tflite"
        out[f"{name}.tflite"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(m).convert())
    w, b = (v.numpy() if hasattr(v, "numpy") else np.asarray(v) for v in conv.weights)
    dw, db = (v.numpy() if hasattr(v, "numpy") else np.asarray(v) for v in dense.weights)

    def onnx_model(name: str, shape: list, two_outputs: bool = False) -> None:
        inits = [numpy_helper.from_array(np.float32(1 / 16.0).reshape(()), "s"),
                 numpy_helper.from_array(w.transpose(3, 2, 0, 1).copy(), "w"),  # HWIO -> OIHW
                 numpy_helper.from_array(b, "b"), numpy_helper.from_array(dw, "dw"),
                 numpy_helper.from_array(db, "db")]
        nodes = [helper.make_node("Mul", ["x", "s"], ["xs"]), helper.make_node("Conv", ["xs", "w", "b"], ["c"]),
                 helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["g"]),
                 helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("MatMul", ["f", "dw"], ["mm"]),
                 helper.make_node("Add", ["mm", "db"], ["y"])]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 10])]
        if two_outputs:  # a second head: the class scores' softmax
            nodes.append(helper.make_node("Softmax", ["y"], ["p"], axis=-1))
            outputs.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, [shape[0], 10]))
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                  outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        out[f"{name}.onnx"] = root / f"{name}.onnx"
        onnx.save(model, out[f"{name}.onnx"])

    onnx_model("nchw_b4", [4, 1, 8, 8])
    onnx_model("nchw", ["N", 1, 8, 8])
    onnx_model("nchw_dynhw", ["N", 1, "H", "W"])
    onnx_model("two_outputs", ["N", 1, 8, 8], two_outputs=True)
    return out


def _validate(*args) -> dict:
    result = invoke("validate", *args, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("model", ["b4.tflite", "nchw_b4.onnx", "nchw.onnx"])
def test_validate_a_fixed_batch_or_nchw_model_agrees_with_the_batch_1_model(models, model):
    # 50 images: batches of 32 and 18, so the fixed batch of 4 pads its last chunk (18 = 4 x 4 + 2)
    alone = _validate(models["b1.tflite"], "--data", DIGITS, "--val-size", "50")
    v = _validate(models[model], "--data", DIGITS, "--val-size", "50", "--reference", models["b1.tflite"])
    assert v["count"] == alone["count"] == 50
    assert v["top1"] == alone["top1"]
    assert v["agreement"] == 100.0 and v["max_abs_diff"] < 1e-4
    assert v.get("batch") == (4 if "b4" in model else None)


def test_bench_times_a_fixed_batch_model_at_its_batch_and_says_so(models):
    result = invoke("bench", models["b4.tflite"], models["nchw_b4.onnx"], models["nchw.onnx"], "--runs", "5",
                    "--warmup", "1", "--data", DIGITS)
    assert result.exit_code == 0, result.output + result.stderr
    assert "b4.tflite (2 threads): timed at batch 4 (the model's fixed batch)" in result.stdout
    assert "nchw_b4.onnx (2 threads): timed at batch 4" in result.stdout
    assert "ms per inference, batch 1 or 4 (above)" in result.stdout
    report = json.loads(invoke("bench", models["nchw_b4.onnx"], models["nchw.onnx"], "--runs", "3",
                               "--json").stdout)
    b4, dyn = report["results"]
    assert (b4["batch"], b4["input_shape"], b4["layout"]) == (4, [4, 1, 8, 8], "NCHW")
    assert (dyn["batch"], dyn["input_shape"]) == (1, [1, 1, 8, 8])
    assert b4["per_image_p50_ms"] == pytest.approx(b4["latency_ms"]["p50"] / 4)


def test_a_model_with_two_outputs_is_benchmarked_but_not_validated_on_one_of_them(models):
    two = models["two_outputs.onnx"]
    for args in ((two,), (models["nchw.onnx"], "--reference", two)):
        assert_one_line_error(invoke("validate", *args, "--data", DIGITS, "--val-size", "20"), 5,
                              "two_outputs.onnx has 2 outputs", "one class vector")
    result = invoke("bench", two, "--runs", "3", "--warmup", "1", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads(result.stdout)["results"][0]["latency_ms"]["p50"] > 0


def test_shape_is_nhwc_mapped_to_the_model_layout_and_must_fit_its_fixed_dims(models):
    dyn = models["nchw_dynhw.onnx"]
    assert_one_line_error(invoke("bench", dyn, "--runs", "3"), 5, "dynamic input dims", "--shape")
    report = json.loads(invoke("bench", dyn, "--shape", "1,8,8,1", "--runs", "3", "--json").stdout)
    assert report["results"][0]["input_shape"] == [1, 1, 8, 8]  # N,H,W,C given, fed as N,C,H,W
    assert_one_line_error(invoke("bench", models["nchw.onnx"], "--shape", "1,16,16,1", "--runs", "3"), 5,
                          "conflicts", "H is 8, not 16")
    assert_one_line_error(invoke("bench", models["b4.tflite"], "--shape", "1,8,8,1", "--runs", "3"), 5,
                          "conflicts", "N is 4, not 1")
    assert_one_line_error(invoke("bench", models["b1.tflite"], "--shape", "1,8,8,3", "--runs", "3"), 5,
                          "C is 1, not 3")
    # validate takes the same --shape for a model with dynamic H and W, and measures the same thing
    assert_one_line_error(invoke("validate", dyn, "--data", DIGITS), 5, "--shape")
    alone = _validate(models["b1.tflite"], "--data", DIGITS, "--val-size", "40")
    v = _validate(dyn, "--data", DIGITS, "--val-size", "40", "--shape", "1,8,8,1", "--reference",
                  models["b1.tflite"])
    assert v["top1"] == alone["top1"] and v["agreement"] == 100.0
    # a TFLite model with dynamic H and W: sized by --shape before its first allocation
    tfl = models["dynhw.tflite"]
    assert_one_line_error(invoke("bench", tfl, "--runs", "3"), 5, "dynamic input dims", "--shape")
    report = json.loads(invoke("bench", tfl, "--shape", "2,8,8,1", "--runs", "3", "--json").stdout)
    assert (report["results"][0]["input_shape"], report["results"][0]["batch"]) == ([2, 8, 8, 1], 2)
    v = _validate(tfl, "--data", DIGITS, "--val-size", "40", "--shape", "1,8,8,1", "--reference", models["b1.tflite"])
    assert v["top1"] == alone["top1"] and v["agreement"] == 100.0


# --------------------------------------------------------------------------- recorded preprocessing


def _run_copy(default_run: Path, dest: Path, preprocess: dict | None = None) -> Path:
    """A copy of the default run folder, with another recorded preprocessing."""
    shutil.copytree(default_run, dest)
    if preprocess is not None:
        report = json.loads((dest / "report.json").read_text())
        report["preprocess"] = {**report["preprocess"], **preprocess}
        (dest / "report.json").write_text(json.dumps(report))
    return dest


# x = (pixels * 0.5 - 0) / 0.5 is exactly the raw pixels the default model takes, so one option given
# alone must keep the other recorded values to measure what the run measured
HALVES = {"scale": 0.5, "mean": [0.0], "std": [0.5]}


def test_one_preprocessing_option_replaces_only_its_own_field(default_run: Path, tmp_path: Path):
    run = _run_copy(default_run, tmp_path / "run", HALVES)
    base = _validate(default_run / "model_int8.tflite", "--data", DIGITS)
    recorded = _validate(run / "model_int8.tflite", "--data", DIGITS)
    assert recorded["top1"] == base["top1"] and recorded["preprocess"]["from"] == "report.json"
    only_std = _validate(run / "model_int8.tflite", "--data", DIGITS, "--std", "0.5")
    assert only_std["top1"] == base["top1"]
    assert only_std["preprocess"]["scale"] == 0.5
    assert only_std["preprocess"]["sources"] == {"scale": "report.json", "mean": "report.json", "std": "given",
                                                 "resize": "report.json"}
    only_resize = _validate(run / "model_int8.tflite", "--data", DIGITS, "--resize", "crop")
    assert only_resize["top1"] == base["top1"]
    assert (only_resize["preprocess"]["scale"], only_resize["preprocess"]["std"]) == (0.5, [0.5])
    text = invoke("validate", run / "model_int8.tflite", "--data", DIGITS, "--resize", "crop").stdout
    assert "preprocessing from report.json (scale, mean, std); given (resize)" in text
    # every field given: the record is not consulted
    given = _validate(run / "model_int8.tflite", "--data", DIGITS, "--scale", "1", "--mean", "0", "--std", "1",
                      "--resize", "crop")
    assert given["preprocess"]["from"] == "given" and given["top1"] == base["top1"]


def test_a_bundled_model_keeps_its_manifest_preprocessing_under_one_option(default_run: Path, tmp_path: Path):
    run = _run_copy(default_run, tmp_path / "run", HALVES)
    bundled = invoke("bundle", run, "-o", tmp_path / "app")
    assert bundled.exit_code == 0, bundled.output + bundled.stderr
    model = next((tmp_path / "app").glob("*_int8.tflite"))
    base = _validate(model, "--data", DIGITS)
    v = _validate(model, "--data", DIGITS, "--resize", "crop")
    assert v["top1"] == base["top1"] and (v["preprocess"]["scale"], v["preprocess"]["std"]) == (0.5, [0.5])
    assert v["preprocess"]["sources"]["scale"] == "manifest.json"
    assert v["preprocess"]["sources"]["resize"] == "given"


def test_a_reference_from_another_run_gets_its_own_recorded_preprocessing(default_run: Path, tmp_path: Path):
    a = _run_copy(default_run, tmp_path / "a")
    b = _run_copy(default_run, tmp_path / "b", {"mean": [128.0]})  # B's run feeds its model pixels - 128
    b_alone = _validate(b / "model_fp32.tflite", "--data", DIGITS)
    a_alone = _validate(a / "model_int8.tflite", "--data", DIGITS)
    assert b_alone["top1"] != a_alone["top1"]  # so feeding B the model's preprocessing would show
    v = _validate(a / "model_int8.tflite", "--data", DIGITS, "--reference", b / "model_fp32.tflite")
    assert v["top1"] == a_alone["top1"]
    assert v["reference"]["top1"] == b_alone["top1"]
    assert v["reference"]["preprocess"]["mean"] == [128.0]
    assert v["top1_drop"] == pytest.approx(b_alone["top1"] - a_alone["top1"])
    # the same run: one preprocessing, as before
    same = _validate(a / "model_int8.tflite", "--data", DIGITS, "--reference", a / "model_fp32.tflite")
    assert "preprocess" not in same["reference"] and same["agreement"] > 90
    # a different resize cannot share one pass over the images: refused, not guessed
    c = _run_copy(default_run, tmp_path / "c", {"resize": "stretch"})
    assert_one_line_error(invoke("validate", a / "model_int8.tflite", "--data", DIGITS, "--reference",
                                 c / "model_fp32.tflite"), 2, "recorded different preprocessing")
    ok = _validate(a / "model_int8.tflite", "--data", DIGITS, "--reference", c / "model_fp32.tflite",
                   "--resize", "crop")
    assert ok["agreement"] > 90


def test_sharded_validation_feeds_the_reference_its_own_preprocessing(default_run: Path, tmp_path: Path):
    from edgeres.core.executor import LocalExecutor
    from edgeres.measure.validate import run_validate

    a = _run_copy(default_run, tmp_path / "a")
    b = _run_copy(default_run, tmp_path / "b", {"mean": [128.0]})
    args = (str(a / "model_int8.tflite"), str(DIGITS))
    kw = {"reference": str(b / "model_fp32.tflite"), "batch_size": 8, "val_size": 300, "seed": 3}
    sequential = run_validate(*args, **kw)
    sharded = run_validate(*args, **kw, executor=LocalExecutor(workers=3))
    assert {k: v for k, v in sharded.items() if k != "executor"} == sequential
    assert sharded["reference"]["preprocess"]["mean"] == [128.0]


# --------------------------------------------------------------------------- --remote


@pytest.mark.parametrize("value", ["", ",,", " , "])
def test_an_empty_remote_is_refused_not_run_here(default_run: Path, value: str):
    model = default_run / "model_int8.tflite"
    assert_one_line_error(invoke("bench", model, "--remote", value, "--runs", "3"), 2, "--remote", "names no host")
    assert_one_line_error(invoke("validate", model, "--data", DIGITS, "--remote", value), 2, "names no host")


@pytest.mark.parametrize("command", ["bench", "validate", "check"])
def test_a_run_folder_given_as_the_model_names_its_models(default_run, command):
    args = ["--data", CALIBRATION / "digits-test.npz"] if command == "validate" else []
    assert_one_line_error(invoke(command, default_run, *args), 3, "is a folder: give one of its models",
                          "model_int8.tflite")


@pytest.mark.parametrize("command", ["bench", "validate", "info", "check"])
def test_json_on_an_error_is_one_error_document_on_stdout(tmp_path: Path, command):
    """A machine reading stdout gets a document on an error too; people still get the one stderr line."""
    missing = tmp_path / "missing.onnx"
    extra = ["--data", str(DIGITS)] if command == "validate" else []
    result = invoke(command, missing, *extra, "--json")
    assert_one_line_error(result, 3, "missing.onnx does not exist")
    assert json.loads(result.stdout) == {"error": {"message": f"model file {missing} does not exist",
                                                   "exit_code": 3, "kind": "ModelError"}}
    assert invoke(command, missing, *extra).stdout == ""  # without --json: nothing on stdout


def test_validate_redraws_the_runs_own_sample_of_its_validation_data(tmp_path: Path):
    """report.json records the seed of its validation sample: `validate --val-size N` on the same data measures
    the images the report did (and says so), unless --seed is given."""
    out = tmp_path / "run"
    assert invoke("convert", "--int8", "--recipe", "default", "--val-size", "60", "--seed", "3", "-o",
                  out).exit_code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["seed"] == 3
    int8 = next(a for a in report["artifacts"] if a["name"] == "tflite_int8")
    again = invoke("validate", out / "model_int8.tflite", "--data", DIGITS, "--val-size", "60", "--json")
    assert again.exit_code == 0, again.stderr
    assert "--seed 3 from report.json" in again.stderr
    assert json.loads(again.stdout)["top1"] == int8["top1"] and json.loads(again.stdout)["count"] == 60
    mine = invoke("validate", out / "model_int8.tflite", "--data", DIGITS, "--val-size", "60", "--seed", "0")
    assert mine.exit_code == 0 and "from report.json:" not in mine.stderr
