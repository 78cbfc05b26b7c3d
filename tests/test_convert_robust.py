"""``convert`` on hard input: every adaptive candidate collapsing, ``--bundle`` conflicts found before converting,
and the adaptive default skipped for want of calibration images (said in the report)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeres.core.data import Dataset
from edgeres.quant.adaptive import MIN_HOLDOUT, choose
from edgeres.quant.recipes import resolve_recipe
from tests.conftest import CALIBRATION, assert_one_line_error, invoke
from tests.test_adaptive import FakeBackend, _holdout

MODEL, TRAIN, TEST = (CALIBRATION / "digits_resnet8.keras", CALIBRATION / "digits-train.npz",
                      CALIBRATION / "digits-test.npz")

# ------------------------------------------------------------------ every candidate collapses


def test_when_every_candidate_collapses_the_recipe_ships_and_it_is_recorded():
    split, ref = _holdout()
    one_class = np.zeros_like(ref)
    one_class[:, 0] = 1  # every image the same class
    data, details = choose(FakeBackend({"*": one_class}), resolve_recipe("default"), split)
    a = details["adaptive"]
    assert a["all_collapsed"] and a["chosen"] == "recipe default" and data == b"recipe default"
    assert all(c["collapsed"] for c in a["candidates"])
    assert not any("gptq" in c["name"] for c in a["candidates"])  # no second round for a collapsed winner
    # the recipe failed to build: the most faithful of the others by the same rule
    less = one_class.copy()
    less[:5] = ref[:5]  # agrees on 5 more images, still one class for 97.5% of them
    data, details = choose(FakeBackend({"*": one_class, "recipe default": None, "mse": less}),
                           resolve_recipe("default"), split)
    assert details["adaptive"]["all_collapsed"] and data == b"mse"


def test_a_working_candidate_is_never_passed_over_for_a_collapsed_one():
    split, ref = _holdout()
    one_class = np.zeros_like(ref)
    one_class[:, 0] = 1
    _, details = choose(FakeBackend({"*": one_class, "stock": ref}), resolve_recipe("default"), split)
    assert details["adaptive"]["chosen"] == "stock" and not details["adaptive"]["all_collapsed"]


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory) -> Path:
    """The embedded ResNet-8 with one constant 1e5 feature that its classifier ignores: the concatenation's
    int8 range is then so wide that every real feature rounds to zero, and every int8 configuration answers
    one class (as the sweep's ResNet-20 did)."""
    import keras

    p = keras.saving.load_model(MODEL)
    i = keras.Input(p.input_shape[1:])
    f = keras.Model(p.input, p.layers[-2].output)(i)
    big = keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(1e5))(f)
    dense = keras.layers.Dense(10)
    out = dense(keras.layers.Concatenate()([f, big]))
    w, b = p.layers[-1].get_weights()
    dense.set_weights([np.concatenate([w, np.zeros((1, 10), "float32")]), b])
    path = tmp_path_factory.mktemp("outlier") / "outlier.keras"
    keras.Model(i, out).save(path)
    return path


def test_a_model_that_collapses_under_every_candidate_is_written_and_fails_like_the_recipe(tmp_path, outlier_model):
    runs = {}
    for name, extra in (("adaptive", ()), ("recipe", ("--recipe", "default"))):
        out = tmp_path / name
        result = invoke("convert", outlier_model, "--int8", "--calib", TRAIN, "--data", TEST, "--val-size", "200",
                        *extra, "-o", out)
        line = _error_line(result, 10, "tflite_int8 collapsed", "onnx_int8 collapsed", "diagnosis")
        assert (out / "model_int8.tflite").is_file() and (out / "model_int8.onnx").is_file()
        runs[name] = (line.replace(str(out), "OUT"), json.loads((out / "report.json").read_text()))
    assert runs["adaptive"][0] == runs["recipe"][0]  # the same one line
    report = runs["adaptive"][1]
    assert report["passed"] is False and report["diagnosis"]
    for fmt in ("tflite", "onnx"):
        a = next(x for x in report["artifacts"] if x["name"] == f"{fmt}_int8")["details"]["adaptive"]
        assert a["all_collapsed"] and a["chosen"] == "recipe default"
        assert all(c.get("collapsed") or c.get("error") for c in a["candidates"])
    assert sum("every configuration the adaptive default built collapsed" in n for n in report["notes"]) == 2


def _error_line(result, code: int, *needles: str) -> str:
    """assert_one_line_error, but past the adaptive default's progress lines (``edgeres: info:``, one per
    candidate), which precede the error on stderr."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [x for x in result.stderr.strip().splitlines() if not x.startswith("edgeres: info: ")]
    assert len(lines) == 1 and lines[0].startswith("edgeres: error: "), result.stderr
    assert "Traceback" not in result.output and all(n in lines[0] for n in needles), lines[0]
    return lines[0]


# ------------------------------------------------------------------ --bundle: checked before converting


@pytest.fixture
def no_conversion(monkeypatch):
    """Fail the test if the conversion starts: each refusal below must come before it."""
    import edgeres.pipeline.artifacts as artifacts

    def build_artifacts(*args, **kwargs):
        raise AssertionError("the conversion started")

    monkeypatch.setattr(artifacts, "build_artifacts", build_artifacts)


def _unlabelled(tmp_path: Path) -> Path:
    path = tmp_path / "flat.npz"
    np.savez(path, x=np.load(TRAIN)["x"][:200])
    return path


@pytest.mark.parametrize("case", ["inside", "same", "holds_run", "holds_input", "no_names", "labels_count",
                                  "labels_blank"])
def test_bundle_conflicts_are_refused_before_converting(tmp_path, no_conversion, case):
    run, app = tmp_path / "out" / "run", tmp_path / "app"
    args, code, needles = [], 2, ["--bundle"]
    if case == "inside":
        app = run / "app"
        needles += ["inside the run folder -o"]
    elif case == "same":
        app = run
        needles += ["is the run folder -o"]
    elif case == "holds_run":
        app = tmp_path / "out"
        needles += ["holds the run folder -o"]
    elif case == "holds_input":  # with --force this would have deleted the calibration data
        app = tmp_path / "data"
        app.mkdir()
        calib = app / "calib.npz"
        calib.write_bytes(TRAIN.read_bytes())
        args += [MODEL, "--calib", calib, "--force"]
        needles += ["holds this run's input"]
    elif case == "no_names":  # a flat calibration set, no --data, no --labels: no class names
        args += [MODEL, "--calib", _unlabelled(tmp_path)]
        needles += ["no class names", "--labels"]
    elif case == "labels_count":
        (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
        args += ["--labels", tmp_path / "labels.txt"]
        code, needles = 5, ["--labels", "names 3 classes but the model outputs 10"]
    elif case == "labels_blank":
        (tmp_path / "labels.txt").write_text("cat\n\ndog\n")
        args += ["--labels", tmp_path / "labels.txt"]
        needles = ["--labels", "blank line 2"]
    result = invoke("convert", *args, "--int8", "-o", run, "--bundle", app)
    assert_one_line_error(result, code, *needles)
    if case != "holds_input":
        assert not app.exists()
    else:
        assert sorted(p.name for p in app.iterdir()) == ["calib.npz"]
    assert not run.exists() and not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.rglob("*") if "partial" in p.name or p.name.endswith(".lock")]


def test_convert_bundle_with_labels_still_writes_both(tmp_path):
    """The checks moved before the conversion pass a good bundle through (the labels file is read twice)."""
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    run, app = tmp_path / "run", tmp_path / "app"
    result = invoke("convert", "--int8", "--val-size", "100", "--recipe", "default", "-o", run, "--bundle", app,
                    "--labels", labels)
    assert result.exit_code == 0, result.stderr
    assert (run / "report.json").is_file()
    assert (app / "labels.txt").read_text().splitlines()[3] == "digit 3"


# ------------------------------------------------------------------ the adaptive default skipped


def _flat(n: int) -> Dataset:
    return Dataset("calib", "flat", tuple(f"{i}.png" for i in range(n)))


@pytest.mark.parametrize("calib_size", [32, 64, 150, 191, 192, 300])
def test_the_skip_note_names_exactly_the_images_the_adaptive_default_needs(calib_size):
    """At the count the note names the adaptive default runs; one fewer, it is skipped."""
    from edgeres.pipeline.convert import ConvertConfig, _adaptive_skipped, _holdout

    cfg = ConvertConfig(model="m", calib="c", data=None, output_dir=Path("o"), target=None, calib_size=calib_size,
                        adaptive=True)
    note = _adaptive_skipped(cfg, 10, min(calib_size, 10))
    need = int(note.split("it needs ")[1].split()[0])
    for n, runs in ((need, True), (need - 1, False)):
        ds = _flat(n)
        sample = ds.sample(min(calib_size, n), cfg.seed)
        assert (_holdout(cfg, ds, sample) is not None) == runs, (n, note)
    assert f"at least {MIN_HOLDOUT}" in note and "recipe 'default' alone" in note


def test_a_calibration_set_too_small_for_the_adaptive_default_says_so_in_the_report(tmp_path):
    calib = tmp_path / "calib.npz"
    d = np.load(TRAIN)
    np.savez(calib, x=d["x"][:100], y=d["y"][:100], class_names=d["class_names"])
    out = tmp_path / "run"
    result = invoke("convert", "--int8", "--calib", calib, "--calib-size", "64", "--val-size", "100", "-o", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert all("adaptive" not in a["details"] for a in report["artifacts"])
    note = next(n for n in report["notes"] if "adaptive default was skipped" in n)
    assert "the 100 calibration images" in note and "it needs 128 calibration images" in note
    assert "note: the adaptive default was skipped" in result.output
    # a recipe named on purpose is no skip
    out2 = tmp_path / "run2"
    result = invoke("convert", "--int8", "--calib", calib, "--calib-size", "64", "--val-size", "100",
                    "--recipe", "default", "-o", out2)
    assert result.exit_code == 0, result.stderr
    assert not any("adaptive" in n for n in json.loads((out2 / "report.json").read_text())["notes"])


# ------------------------------------------------------------------ validation images that were calibration images


def test_images_shared_by_two_datasets_are_counted_by_file_and_by_npz_row(tmp_path):
    from PIL import Image

    from edgeres.core.data import open_dataset

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "link").symlink_to(tmp_path / "imgs")
    folder, linked = open_dataset(tmp_path / "imgs", "calibration"), open_dataset(tmp_path / "link", "validation")
    assert linked.shared_with(folder) == 6  # the same files under another name
    assert linked.sample(4, 1).shared_with(folder) == 4 and folder.shared_with(linked.sample(4, 1)) == 4
    a, b = folder.split(3, 0)
    assert a.shared_with(b) == 0 and a.shared_with(linked) == 3
    npz = open_dataset(TEST, "validation")
    assert npz.sample(50, 0).shared_with(npz.sample(60, 0)) == 50  # rows 0.. of one sample are in the other
    assert npz.shared_with(open_dataset(TRAIN, "calibration")) == 0 and npz.shared_with(folder) == 0


def test_validating_on_the_calibration_images_is_a_report_note(tmp_path):
    out = tmp_path / "run"
    result = invoke("convert", "--int8", "--recipe", "default", "--calib", TEST, "--data", TEST, "--val-size",
                    "40", "-o", out)
    assert result.exit_code == 0, result.stderr
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert any(n.startswith("40 of the 40 validation images were also calibration images") for n in notes), notes
    assert json.loads((out / "report.json").read_text())["validation"]["seed"] == 0  # the sample can be redrawn
    assert "give --data held-out images" in result.output


# ------------------------------------------------------------------ an int8 model its own runtime refuses

@pytest.fixture(scope="module")
def refused_model(tmp_path_factory) -> Path:
    """A conv with a bias of 1e6 on one channel: XNNPACK refuses the int8 model's requantization scale."""
    import keras
    from keras import layers

    i = keras.Input((8, 8, 1))
    conv, dense = layers.Conv2D(16, 3), layers.Dense(10)
    m = keras.Model(i, dense(layers.GlobalAveragePooling2D()(conv(layers.Rescaling(1 / 16.0)(i)))))
    rng = np.random.default_rng(0)
    w, b = conv.get_weights()
    b[:] = 0
    b[0] = 1e6
    conv.set_weights([rng.normal(size=w.shape).astype("float32") * 0.3, b])
    w, b = dense.get_weights()
    w = rng.normal(size=w.shape).astype("float32")
    w[0] = 0
    dense.set_weights([w, b * 0])
    path = tmp_path_factory.mktemp("refused") / "refused.keras"
    m.save(path)
    return path


@pytest.mark.parametrize("recipe", [None, "stock"], ids=["adaptive", "stock"])
def test_an_int8_model_its_runtime_refuses_is_a_conversion_failure(refused_model, tmp_path, recipe):
    """Not exit 3 naming a temporary or staging file as if the user's model were bad: exit 6, one line."""
    out = tmp_path / "run"
    result = invoke("convert", refused_model, "--int8", "--calib", TRAIN, "--calib-size", "64", "--jobs", "1",
                    *(["--recipe", recipe] if recipe else []), "-o", out)
    assert_one_line_error(result, 6, "does not load in its runtime")
    assert "partial" not in result.stderr and "trial.tflite" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".run*"))


@pytest.mark.parametrize("args, needle", [
    (["--max-drop", "1"], "--max-drop shape the int8 models"),
    (["--recipe", "stock"], "--recipe shape the int8 models"),
    (["--io-dtype", "uint8", "--metric", "agreement"], "--io-dtype, --metric shape the int8 models"),
    (["--int8", "--metric", "agreement"], "--metric shape the --max-drop search"),
    (["--int8", "--select-fraction", "0.3"], "--select-fraction shape the --max-drop search"),
    (["--int8", "--input-size", "16"], "--input-size build a zoo model"),
    (["--int8", "--weights", "imagenet"], "--weights build a zoo model"),
])
def test_options_that_would_change_nothing_are_refused(tmp_path, args, needle):
    out = tmp_path / "run"
    assert_one_line_error(invoke("convert", *args, "-o", out), 2, needle)
    assert not out.exists()


def test_diagnose_refuses_a_calibration_sample_too_small_to_diagnose():
    assert_one_line_error(invoke("diagnose", "--calib-size", "10", "--no-sensitivity"), 2, "--calib-size 10",
                          "at least 32")
