"""The model-adaptive default (edgeres.quant.adaptive) and non-logit heads (edgeres.backends.heads)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgeres.core.errors import ConversionError
from edgeres.quant.adaptive import TIE_ALPHA, candidates, choose, recipe_named, refined, worse
from edgeres.quant.evaluate import Split
from edgeres.quant.recipes import resolve_recipe
from tests.conftest import CALIBRATION, invoke


def _agrees(lost: int, won: int, same: int = 100) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([False] * lost + [True] * won + [True] * same)
    best = np.array([True] * lost + [False] * won + [True] * same)
    return a, best


@pytest.mark.parametrize("lost, won, expected", [(5, 0, True), (4, 0, False), (3, 3, False), (0, 2, False),
                                                  (9, 1, True), (8, 2, False)])
def test_exact_mcnemar(lost, won, expected):
    a, best = _agrees(lost, won)
    p = sum(math.comb(lost + won, k) for k in range(lost, lost + won + 1)) / 2 ** (lost + won)
    assert (p < TIE_ALPHA) == expected
    assert worse(a, best) is expected


@pytest.mark.parametrize("backend", ["tflite", "onnx"])
def test_candidates_are_distinct_and_include_stock(backend):
    cands = candidates(resolve_recipe("default"), backend)
    keys = [repr(sorted(c.recipe.for_backend(backend).to_dict().items())) for c in cands]
    assert len(keys) == len(set(keys)) and len(cands) >= 7
    stock = next(c for c in cands if c.name == "stock").recipe
    assert (stock.calibration, stock.bias_correction, stock.output) == ("minmax", False, "calibrated")
    assert cands[0].name == "recipe default"


class FakeRunner:
    def __init__(self, out):
        self.out = out

    def predict(self, x):
        return self.out[x[:, 0, 0, 0].astype(int)]


class FakeBackend:
    """Each candidate's outputs on the holdout, by candidate name; None: it fails to convert."""

    name, suffix = "tflite", ".tflite"
    float_layers_allowed = False  # no layers to keep float: the broken-layer step runs on real models
                                  # (tests/test_unseen_architectures.py)

    def __init__(self, outputs: dict):
        self.outputs, self.by_data = outputs, {}

    def build(self, recipe, keep_float=None):
        options = [o for c in candidates(resolve_recipe("default"), "tflite") for o in (c, refined(c))]
        name = next(o.name for o in options if o.recipe.for_backend("tflite") == recipe.for_backend("tflite"))
        out = self.outputs.get(name, self.outputs["*"])
        if out is None:
            raise ConversionError(f"{name}: no kernel")
        data = name.encode()
        self.by_data[data] = out
        return data, {"calibration": name}

    def runner(self, data, tmp):
        return FakeRunner(self.by_data[data])


def _holdout(n=200, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n, classes)).astype(np.float32)
    ref[np.arange(n), rng.integers(0, classes, n)] += 10.0  # a clear top class: noise alone flips nothing
    for i in range(20):  # ... except the first 20 images, near-ties: their top two differ by 0.02
        a, b = np.argsort(ref[i])[-2:]
        ref[i, a] = ref[i, b] - 0.02
    x = np.zeros((n, 1, 1, 1), np.float32)
    x[:, 0, 0, 0] = np.arange(n)
    return Split(x, None, ref), ref


def _noisy(ref, sigma, flips=0, seed=1):
    out = ref + np.random.default_rng(seed).normal(scale=sigma, size=ref.shape).astype(np.float32)
    out[:20] = ref[:20]  # near-ties stay as the reference has them, unless flipped below
    for i in range(flips):  # make near-tie image i disagree: its top two classes swap
        a, b = np.argsort(ref[i])[-2:]
        out[i, a], out[i, b] = out[i, b], out[i, a]
    return out


def test_highest_sqnr_among_the_statistically_tied_wins():
    split, ref = _holdout()
    outputs = {"*": _noisy(ref, 0.5, flips=8), "stock": _noisy(ref, 0.5, flips=1),
               "mse, bias correction": _noisy(ref, 0.05, flips=3)}  # 2 images worse than stock: a tie
    data, details = choose(FakeBackend(outputs), resolve_recipe("default"), split)
    a = details["adaptive"]
    assert a["chosen"] == "mse, bias correction" and data == b"mse, bias correction"
    rows = {c["name"]: c for c in a["candidates"]}
    assert rows["mse, bias correction"]["sqnr_db"] > rows["stock"]["sqnr_db"]  # the premise
    assert rows["mse, bias correction"]["agreement"] < rows["stock"]["agreement"]
    assert rows["stock"]["tied_with_best"] and not rows["recipe default"]["tied_with_best"]  # 8 vs 1: worse


def test_the_recipe_is_kept_unless_a_candidate_is_at_least_min_gain_more_precise():
    """SQNR within MIN_GAIN_DB of the highest: the recipe stays (it does not flip between configurations that
    another calibration sample would rank the other way); beyond it, the highest SQNR wins."""
    from edgeres.quant.adaptive import MIN_GAIN_DB

    split, ref = _holdout()
    base = _noisy(ref, 0.1, seed=1)
    for shrink, chosen in ((0.995, "recipe default"), (0.97, "mse, bias correction")):
        better = ref + (base - ref) * shrink  # the same errors, scaled: 0.04 dB, then 0.26 dB more precise
        outputs = {"*": _noisy(ref, 0.5, seed=2), "recipe default": base, "mse, bias correction": better}
        data, details = choose(FakeBackend(outputs), resolve_recipe("default"), split)
        rows = {c["name"]: c for c in details["adaptive"]["candidates"]}
        gain = rows["mse, bias correction"]["sqnr_db"] - rows["recipe default"]["sqnr_db"]
        assert gain > 0 and (gain < MIN_GAIN_DB) == (chosen == "recipe default")  # the premise
        assert details["adaptive"]["chosen"] == chosen and data == chosen.encode()
        assert rows["recipe default"]["sqnr_tied_with_best"] == (chosen == "recipe default")
        assert not rows["stock"]["sqnr_tied_with_best"]


def test_a_significantly_less_faithful_candidate_never_wins_on_sqnr():
    split, ref = _holdout()
    outputs = {"*": _noisy(ref, 0.5, flips=0), "mse": _noisy(ref, 0.05, flips=12)}
    _, details = choose(FakeBackend(outputs), resolve_recipe("default"), split)
    rows = {c["name"]: c for c in details["adaptive"]["candidates"]}
    assert rows["mse"]["sqnr_db"] == max(r["sqnr_db"] for r in rows.values())  # the premise
    assert details["adaptive"]["chosen"] != "mse" and not rows["mse"]["tied_with_best"]


def test_failures_are_recorded_and_all_failing_is_an_error():
    split, ref = _holdout()
    _, details = choose(FakeBackend({"*": _noisy(ref, 0.1), "minmax, bias correction": None}),
                        resolve_recipe("default"), split)
    rows = {c["name"]: c for c in details["adaptive"]["candidates"]}
    assert "no kernel" in rows["minmax, bias correction"]["error"]
    with pytest.raises(ConversionError, match="no int8 configuration"):
        choose(FakeBackend({"*": None}), resolve_recipe("default"), split)
    collapsed = np.zeros_like(ref)
    collapsed[:, 0] = 1  # every image the same class: still a model to ship (the validation fails it), no error
    data, details = choose(FakeBackend({"*": collapsed}), resolve_recipe("default"), split)
    assert details["adaptive"]["all_collapsed"] and data == b"recipe default"


def _npz(tmp_path: Path, n: int) -> Path:
    d = np.load(CALIBRATION / "digits-train.npz")
    path = tmp_path / f"calib{n}.npz"
    np.savez(path, x=d["x"][:n], y=d["y"][:n], class_names=d["class_names"])
    return path


@pytest.mark.parametrize("n, holdout", [(250, 83), (150, None)])
def test_small_calibration_sets_carve_a_holdout_or_skip(tmp_path: Path, n, holdout):
    out = tmp_path / "run"
    calib = _npz(tmp_path, n)
    result = invoke("convert", CALIBRATION / "digits_resnet8.keras", "--int8", "--calib", calib, "--data",
                    CALIBRATION / "digits-test.npz", "--val-size", "100", "-o", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    d = next(a for a in report["artifacts"] if a["name"] == "tflite_int8")["details"]
    if holdout is None:
        assert "adaptive" not in d and report["calibration"]["used"] == n
    else:  # chosen on the carved holdout, then built again from all n images
        assert d["adaptive"]["holdout_images"] == holdout and d["adaptive"]["rebuilt_from_images"] == n
        assert report["calibration"]["used"] == n == report["calibration"]["count"]


# ------------------------------------------------------------------ heads


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict:
    """One small trained network saved three ways: logits, softmax in the Dense layer, a separate Softmax layer,
    and a sigmoid head; plus RGB digits to run them on."""
    import keras

    root = tmp_path_factory.mktemp("heads")
    d = np.load(CALIBRATION / "digits-train.npz")
    x, y = np.repeat(d["x"], 3, axis=3).astype(np.float32), d["y"]
    np.savez(root / "data.npz", x=x.astype(np.uint8), y=y, class_names=d["class_names"])
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Rescaling(1 / 255)(inp)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    dense = keras.layers.Dense(10, name="logits")
    logits = keras.Model(inp, dense(h))
    logits.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logits.fit(x, y, epochs=3, batch_size=64, verbose=0)
    models = {"logits": logits,
              "dense_softmax": keras.Model(inp, keras.layers.Activation("softmax")(dense(h))),
              "softmax_layer": keras.Model(inp, keras.layers.Softmax()(dense(h))),
              "sigmoid": keras.Model(inp, keras.layers.Activation("sigmoid")(dense(h)))}
    seq_dense = keras.layers.Dense(10, activation="softmax", name="probs")
    models["dense_activation"] = keras.Model(inp, seq_dense(h))
    seq_dense.set_weights(dense.get_weights())
    paths = {}
    for name, m in models.items():
        paths[name] = root / f"{name}.keras"
        m.save(paths[name])
    return {"data": root / "data.npz", **paths}


def _run(heads: dict, name: str, out: Path, *extra) -> dict:
    result = invoke("convert", heads[name], "--int8", "--recipe", "default", "--calib", heads["data"], "--data",
                    heads["data"], "--val-size", "200", "-o", out, *extra)
    assert result.exit_code == 0, result.stderr
    return json.loads((out / "report.json").read_text())


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("name", ["dense_activation", "softmax_layer"])
def test_softmax_head_is_float_after_the_int8_logits(tmp_path: Path, heads: dict, name):
    from edgeres.core.runtime import open_runner

    logits_run = tmp_path / "logits"
    _run(heads, "logits", logits_run)
    report = _run(heads, name, tmp_path / name)
    for fmt in ("tflite", "onnx"):
        art = next(a for a in report["artifacts"] if a["name"] == f"{fmt}_int8")
        assert art["details"]["head"]["activation"] == "softmax" and art["details"]["head"]["float_activation"]
        assert art["output_dtype"] == "float32" and art["details"]["full_integer"] is False
        x = np.load(heads["data"])["x"][:64].astype(np.float32)
        probs = open_runner(tmp_path / name / art["path"]).predict(x)
        z = open_runner(logits_run / art["path"]).predict(x)  # the same int8 body, with logits out
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(probs, _softmax(z.astype(np.float64)), atol=1e-5)
    ops = open_runner(tmp_path / name / "model_int8.tflite").op_counts()
    assert ops.get("SOFTMAX") == 1 and ops.get("DEQUANTIZE") == 1


def test_sigmoid_head_and_full_integer_targets(tmp_path: Path, heads: dict):
    from edgeres.core.runtime import open_runner

    report = _run(heads, "sigmoid", tmp_path / "sig")
    art = next(a for a in report["artifacts"] if a["name"] == "tflite_int8")
    assert art["details"]["head"]["activation"] == "sigmoid"
    assert open_runner(tmp_path / "sig" / "model_int8.tflite").op_counts().get("LOGISTIC") == 1
    # A full-integer target outputs the int8 logits; edgeres applies the softmax on the host when it measures
    # (an int8 softmax ties in 1/256 steps: on this barely trained model edgeres flagged a collapse)
    tpu = tmp_path / "tpu"
    report = _run(heads, "dense_softmax", tpu, "--target", "coral-edgetpu")
    art = next(a for a in report["artifacts"] if a["name"] == "tflite_int8")
    head = art["details"]["head"]
    assert head["float_activation"] is False and head["host_activation"] == "softmax"
    assert art["details"]["full_integer"] is True and art["output_dtype"] == "uint8"
    assert "SOFTMAX" not in open_runner(tpu / "model_int8.tflite").op_counts()
    assert art["agreement"] >= 95.0 and art["sqnr_db"] > 15  # probabilities against probabilities
    result = invoke("validate", tpu / "model_int8.tflite", "--data", heads["data"], "--val-size", "200", "--json")
    assert result.exit_code == 0, result.stderr
    v = json.loads(result.stdout)
    assert v["host_activation"] == "softmax" and v["top1"] == pytest.approx(art["top1"], abs=1.0)
    bundle = invoke("bundle", tpu, "-o", tmp_path / "app", "--json")
    assert bundle.exit_code == 0, bundle.stderr
    out = json.loads(bundle.stdout)["models"][0]["output"]
    assert out["host_activation"] == "softmax" and out["scores"] == "logits"
    assert "apply softmax" in (tmp_path / "app" / "README.md").read_text()


def test_a_logits_model_has_no_head_entry(tmp_path: Path, heads: dict):
    report = _run(heads, "logits", tmp_path / "l")
    assert all("head" not in a["details"] for a in report["artifacts"])


def test_adaptive_default_gives_a_softmax_model_the_body_of_its_logits_model(tmp_path: Path, heads: dict):
    """The candidates are compared on logits, so both choose alike and the int8 bodies are the same model."""
    from edgeres.core.runtime import open_runner

    reports = {}
    for name in ("logits", "dense_activation"):
        result = invoke("convert", heads[name], "--int8", "--calib", heads["data"], "--data", heads["data"],
                        "--val-size", "200", "-o", tmp_path / name)
        assert result.exit_code == 0, result.stderr
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    x = np.load(heads["data"])["x"][:64].astype(np.float32)
    for fmt in ("tflite", "onnx"):
        a, b = (next(x for x in reports[n]["artifacts"] if x["name"] == f"{fmt}_int8")
                for n in ("logits", "dense_activation"))
        assert a["details"]["adaptive"]["chosen"] == b["details"]["adaptive"]["chosen"], fmt
        assert b["details"]["adaptive"]["compared_on"].startswith("logits")
        assert b["agreement"] >= a["agreement"] - 1e-9
        z = open_runner(tmp_path / "logits" / a["path"]).predict(x)
        np.testing.assert_allclose(open_runner(tmp_path / "dense_activation" / b["path"]).predict(x),
                                   _softmax(z.astype(np.float64)), atol=1e-5)


def test_the_first_rounds_winner_is_tried_again_with_gptq_rounding_and_judged_by_the_same_rule():
    """Second round: one more build, of the winner with GPTQ rounding; it wins only by the module's rule."""
    split, ref = _holdout()
    base = _noisy(ref, 0.1, seed=1)
    for shrink, gptq_wins in ((0.995, False), (0.9, True), (1.5, False)):
        outputs = {"*": _noisy(ref, 0.5, seed=2), "mse, bias correction": base,
                   "mse, bias correction, gptq rounding": ref + (base - ref) * shrink}
        backend = FakeBackend(outputs)
        data, details = choose(backend, resolve_recipe("default"), split)
        rows = [c["name"] for c in details["adaptive"]["candidates"]]
        assert rows[-1] == "mse, bias correction, gptq rounding" and rows.count(rows[-1]) == 1
        assert sum(name.endswith("gptq rounding") for name in rows) == 1  # the winner's alone
        chosen = details["adaptive"]["chosen"]
        assert (chosen == "mse, bias correction, gptq rounding") == gptq_wins, (shrink, chosen)
        assert gptq_wins or chosen == "mse, bias correction"
        recipe = recipe_named(resolve_recipe("default"), "tflite", chosen)  # what the rebuild builds
        assert recipe.weight_rounding == ("gptq" if gptq_wins else "nearest") and recipe.calibration == "mse"
