"""Models that are not class-vector classifiers, reports that must not overstate, and the remaining bounds.

Real Keras models, tiny (8x8 inputs), real converters where a run is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CALIBRATION, assert_one_line_error, invoke

CALIB, DATA = CALIBRATION / "digits-train.npz", CALIBRATION / "digits-test.npz"


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory) -> dict[str, Path]:
    """Small real models whose output or layer names edgeres must refuse, in the model's own terms."""
    import keras
    from keras import layers

    root = tmp_path_factory.mktemp("odd-models")

    def save(name: str, inputs, outputs) -> None:
        keras.Model(inputs, outputs).save(root / f"{name}.keras")

    i = keras.Input((8, 8, 1))
    fmap = layers.Conv2D(4, 3, padding="same")(i)
    save("feature_map", i, fmap)
    save("one_value", i, layers.Reshape(())(layers.Dense(1)(layers.Flatten()(fmap))))
    save("one_score", i, layers.Dense(1)(layers.Flatten()(fmap)))
    save("spatial_1x1", i, layers.Conv2D(10, 8)(fmap))  # (N, 1, 1, 10): a class vector in disguise
    dyn = keras.Input((None, None, 1))
    save("dynamic", dyn, layers.Dense(10)(layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(dyn))))
    j = keras.Input((8, 8, 1))
    bad = layers.Conv2D(4, 3, padding="same", name='conv"q\\x')(j)
    save("bad_names", j, layers.Dense(10)(layers.GlobalAveragePooling2D()(bad)))
    return {p.stem: p for p in root.glob("*.keras")}


@pytest.mark.parametrize("name, code, needle", [
    ("feature_map", 5, "is not a class vector"),
    ("one_value", 5, "one value per image"),
    ("one_score", 5, "single output score"),
    ("bad_names", 3, "not valid TensorFlow op names"),
    ("dynamic", 5, "fixed H, W and C"),
])
def test_models_that_are_not_classifiers_are_refused_in_their_own_terms(odd_models, tmp_path, name, code, needle):
    out = tmp_path / "run"
    result = invoke("convert", odd_models[name], "--int8", "--calib", CALIB, "--data", DATA, "-o", out)
    assert_one_line_error(result, code, needle)
    assert not out.exists() and not list(tmp_path.glob(".run*"))


def test_a_1x1_spatial_class_vector_converts(odd_models, tmp_path):
    out = tmp_path / "run"
    result = invoke("convert", odd_models["spatial_1x1"], "--calib", CALIB, "--data", DATA, "--val-size", "50",
                    "-o", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"][0]["agreement"] == 100.0  # ten classes, compared as a vector


def test_info_on_a_model_with_a_dynamic_input_size(odd_models):
    result = invoke("info", odd_models["dynamic"], "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["macs"] is None
    table = invoke("info", odd_models["dynamic"])
    assert table.exit_code == 0 and "unknown (dynamic input size)" in table.stdout


def test_validate_refuses_unlabelled_data_without_a_reference(default_run: Path, tmp_path: Path):
    unlabelled = tmp_path / "x.npz"
    np.savez(unlabelled, x=np.load(DATA)["x"][:20])
    assert_one_line_error(invoke("validate", default_run / "model_int8.tflite", "--data", unlabelled), 4,
                          "no labels", "--reference")
    ok = invoke("validate", default_run / "model_int8.tflite", "--data", unlabelled,
                "--reference", default_run / "model_fp32.tflite", "--json")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["agreement"] > 90  # agreement needs no labels


@pytest.mark.parametrize("preprocess, needle", [
    ({"scale": 1.0, "mean": "abc", "std": [1.0]}, "mean"),
    ({"scale": 1.0, "mean": [0.0], "std": [0]}, "std"),
    (None, "no 'preprocess' table"),
    ("not json", "cannot read"),
])
def test_validate_blames_a_malformed_report_json_not_the_options(default_run: Path, tmp_path: Path,
                                                                 preprocess, needle):
    run = tmp_path / "copy"
    run.mkdir()
    (run / "model_int8.tflite").write_bytes((default_run / "model_int8.tflite").read_bytes())
    report = json.loads((default_run / "report.json").read_text())
    if preprocess == "not json":
        (run / "report.json").write_text("{ not json")
    else:
        report["preprocess"] = preprocess
        (run / "report.json").write_text(json.dumps(report))
    result = invoke("validate", run / "model_int8.tflite", "--data", DATA)
    assert_one_line_error(result, 4, "report.json", needle)
    assert "--std values" not in result.stderr.split("report.json")[0]  # not blamed on an option never given
    # the user's own options still win over the broken file
    ok = invoke("validate", run / "model_int8.tflite", "--data", DATA, "--scale", "1", "--val-size", "20")
    assert ok.exit_code == 0, ok.stderr


def test_report_counts_what_was_measured_and_the_float_share(tmp_path: Path, digits_folder: Path):
    """Unreadable validation images are counted as skipped; an all-float 'int8' model says so."""
    data = tmp_path / "data"
    for cls in sorted(digits_folder.iterdir())[:10]:
        (data / cls.name).mkdir(parents=True)
        for png in sorted(cls.iterdir())[:12]:
            (data / cls.name / png.name).write_bytes(png.read_bytes())
    (data / "3" / "broken.png").write_bytes(b"not a png")
    (data / "7" / "empty.png").write_bytes(b"")
    recipe = tmp_path / "all-float.toml"
    recipe.write_text('keep_float = ["*"]\n')
    out = tmp_path / "run"
    result = invoke("convert", "--int8", "--data", data, "--recipe", recipe, "--on-bad-image", "warn", "-o", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    v = report["validation"]
    assert (v["count"], v["measured"], v["skipped"]) == (122, 120, 2)
    assert all(a["top1"] is not None for a in report["artifacts"])
    int8 = [a for a in report["artifacts"] if a["precision"] == "int8"]
    assert int8 and all(a["details"]["float_share"] == 1.0 for a in int8)
    assert "every layer kept float" in result.stdout
    assert "(2 unreadable, skipped)" in (out / "report.md").read_text()


def test_few_calibration_images_warn(tmp_path: Path):
    result = invoke("convert", "--calib-size", "4", "-o", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert "note: only 4 calibration images" in result.stdout
    assert not result.stderr.strip()  # a note in the report, not noise on a run that may still fail


def test_images_that_would_not_fit_in_memory_are_refused_before_decoding(tmp_path: Path, monkeypatch):
    import edgeres.pipeline.convert as pipeline

    monkeypatch.setattr(pipeline, "available_memory", lambda: 1000)  # bytes: nothing fits
    out = tmp_path / "run"
    assert_one_line_error(invoke("convert", "-o", out), 4, "GiB in memory", "--calib-size")
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [
    (("convert", "--threads", "100000"), "at most 256"),
    (("convert", "--runs", "10000000"), "--runs"),
    (("convert", "--calib-size", "1000000000"), "--calib-size"),
    (("convert", "--seed", "-1"), "--seed"),
    (("convert", "--max-drop", "nan"), "--max-drop"),
    (("convert", "--select-fraction", "nan"), "--select-fraction"),
    (("convert", "--scale", "inf"), "--scale"),
    (("convert", "--std", "1e-45"), "--std"),
    (("bench", "x.tflite", "--min-time", "nan"), "--min-time"),
    (("bench", "x.tflite", "--shape", "1,100000,100000,3"), "--shape"),
    (("build", "resnet8", "-o", "m.keras", "--width", "inf"), "--width"),
    (("build", "resnet8", "-o", "m.keras", "--input-size", "100000"), "--input-size"),
])
def test_counts_and_floats_are_bounded(tmp_path: Path, args, needle):
    result = invoke(*args)
    assert_one_line_error(result, 2, needle)


# --------------------------------------------------------------- models saved the way users save them

@pytest.fixture(scope="module")
def saved_oddly(tmp_path_factory) -> dict[str, Path]:
    """Real models saved in ways Keras allows and a converter chokes on."""
    import keras
    from keras import layers

    root = tmp_path_factory.mktemp("saved-oddly")
    rng = np.random.default_rng(0)

    def body():
        return [layers.Conv2D(6, 3, padding="same", activation="relu"), layers.GlobalAveragePooling2D(),
                layers.Dense(10)]

    # A Sequential (tf2onnx failed on every one), with a fixed batch of 8 and a float16 input.
    seq = keras.Sequential([keras.Input((8, 8, 1), batch_size=8, dtype="float16"), *body()])
    seq.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in seq.get_weights()])
    seq.save(root / "sequential_b8_f16.keras")
    keras.Sequential(body()).save(root / "unbuilt.keras")  # no input shape: saved before it was built
    i = keras.Input((8, 8, 1), dtype="float64")
    f64 = keras.Model(i, body()[2](layers.Flatten()(i)))
    f64.save(root / "float64_input.keras")
    nan = keras.Sequential([keras.Input((8, 8, 1)), *body()])
    w = nan.get_weights()
    w[0][0, 0, 0, 0] = np.nan
    nan.set_weights(w)
    nan.save(root / "nan_weights.keras")
    return {p.stem: p for p in root.glob("*.keras")}


def test_a_fixed_batch_float16_sequential_converts_with_any_batch_and_the_same_outputs(saved_oddly, tmp_path):
    import keras
    import onnxruntime as ort

    from edgeres.core.runtime import open_runner

    out = tmp_path / "run"
    result = invoke("convert", saved_oddly["sequential_b8_f16"], "--int8", "--calib", CALIB, "--data", DATA,
                    "--calib-size", "64", "--val-size", "100", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "fixed batch of 8" in result.stderr and "float16" in result.stderr  # said, not silent
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["input_shape"] == [None, 8, 8, 1]
    x = np.load(DATA)["x"][:5].astype(np.float32)  # 5 images: not the saved batch of 8
    want = keras.saving.load_model(saved_oddly["sequential_b8_f16"]).predict(
        np.concatenate([x, x[:3]]).astype(np.float16), verbose=0)[:5].astype(np.float32)
    sess = ort.InferenceSession(str(out / "model_fp32.onnx"), providers=["CPUExecutionProvider"])
    got_onnx = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    got_tflite = open_runner(out / "model_fp32.tflite").predict(x)
    np.testing.assert_allclose(got_onnx, want, atol=2e-2)  # float16 in the saved model, float32 here
    np.testing.assert_allclose(got_tflite, want, atol=2e-2)
    for a in report["artifacts"]:
        assert a["agreement"] >= (99.9 if a["precision"] == "float32" else 90.0), a["name"]


@pytest.mark.parametrize("name, code, needle", [
    ("unbuilt", 5, "no input shape"),
    ("nan_weights", 3, "NaN or infinite weight"),
])
def test_models_that_cannot_run_are_refused_in_one_line(saved_oddly, tmp_path, name, code, needle):
    out = tmp_path / "run"
    assert_one_line_error(invoke("info", saved_oddly[name]), code, needle)
    result = invoke("convert", saved_oddly[name], "--int8", "--calib", CALIB, "-o", out)
    assert_one_line_error(result, code, needle)
    assert not out.exists()


def test_a_float64_input_is_converted_in_float32(saved_oddly):
    result = invoke("info", saved_oddly["float64_input"], "--json")
    assert result.exit_code == 0, result.stderr
    assert "float64" in result.stderr and "converted in float32" in result.stderr
    assert json.loads(result.stdout)["input_shape"] == [None, 8, 8, 1]


def test_misnamed_custom_and_channels_first_models_are_named_for_what_they_are(tmp_path):
    import shutil

    import keras
    from keras import layers

    i = keras.Input((8, 8, 1))
    plain = keras.Model(i, layers.Dense(10)(layers.Flatten()(i)))
    plain.save(tmp_path / "plain.keras")
    plain.save(tmp_path / "plain.h5")
    shutil.copy(tmp_path / "plain.keras", tmp_path / "archive.h5")
    shutil.copy(tmp_path / "plain.h5", tmp_path / "hdf5.keras")
    assert_one_line_error(invoke("info", tmp_path / "archive.h5"), 3, ".keras archive named .h5")
    assert_one_line_error(invoke("info", tmp_path / "hdf5.keras"), 3, "HDF5 model named .keras")

    @keras.saving.register_keras_serializable(package="mine")
    class MyScale(layers.Layer):
        def call(self, x):
            return 2.0 * x

    keras.Model(i, layers.Dense(10)(layers.Flatten()(MyScale()(i)))).save(tmp_path / "custom.keras")
    keras.saving.get_custom_objects().pop("mine>MyScale")  # as in another process, where it is not imported
    assert_one_line_error(invoke("info", tmp_path / "custom.keras"), 3, "custom class 'mine>MyScale'")

    j = keras.Input((3, 8, 8))
    nchw = layers.Conv2D(4, 3, data_format="channels_first")(j)
    keras.Model(j, layers.Dense(10)(layers.Flatten()(nchw))).save(tmp_path / "nchw.keras")
    out = tmp_path / "run"
    result = invoke("convert", tmp_path / "nchw.keras", "--int8", "--calib", CALIB, "-o", out)
    assert_one_line_error(result, 5, "looks channels-first")
    assert not out.exists()
