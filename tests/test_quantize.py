"""Recipes, diagnosis and the --max-drop search on the real converters and runtimes.

All on the embedded default (ResNet-8 on 8x8 digits), so each conversion takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import invoke


def write_recipe(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_recipes_command_lists_bundled_recipes():
    result = invoke("recipes", "--json")
    assert result.exit_code == 0, result.output
    names = {r["name"]: r for r in json.loads(result.output)}
    assert {"default", "stock", "percentile", "entropy", "per-tensor", "int16x8"} <= set(names)
    assert names["default"]["calibration"] == "mse" and names["default"]["tflite"]["calibration"] == "percentile"
    table = invoke("recipes")
    assert table.exit_code == 0 and "default" in table.output and "stock" in table.output


def test_default_run_is_adaptive_and_stays_full_integer(default_run: Path):
    """No --recipe: each back end chose among candidates on held-out calibration images, by the documented rule."""
    report = json.loads((default_run / "report.json").read_text())
    int8 = {a["name"]: a for a in report["artifacts"] if a["precision"] == "int8"}
    for name in ("tflite_int8", "onnx_int8"):
        d = int8[name]["details"]
        assert d["recipe"] == "default" and d["full_integer"] is True and d["float_layers"] == []
        a = d["adaptive"]
        cands = {c["name"]: c for c in a["candidates"]}
        assert "stock" in cands and "recipe default" in cands and len(cands) >= 6, name
        assert a["holdout_images"] >= 64 and a["chosen"] in cands
        chosen, tied = cands[a["chosen"]], [c for c in cands.values() if c.get("tied_with_best")]
        assert chosen["tied_with_best"] and chosen["sqnr_db"] == max(c["sqnr_db"] for c in tied)
        best = max(c["agreement"] for c in cands.values() if "agreement" in c)
        assert all(c["agreement"] <= best for c in tied)
        assert d["recipe_summary"] == chosen["recipe"]


def test_a_named_recipe_is_built_alone(tmp_path: Path):
    out = tmp_path / "run"
    result = invoke("convert", "--int8", "--recipe", "default", "--val-size", "100", "-o", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    int8 = {a["name"]: a for a in report["artifacts"] if a["precision"] == "int8"}
    for name in ("tflite_int8", "onnx_int8"):
        d = int8[name]["details"]
        assert "adaptive" not in d and d["full_integer"] is True
        assert d["bias_corrected_layers"], name  # bias correction really moved some biases
    assert int8["tflite_int8"]["details"]["calibration"] == "percentile"
    assert int8["onnx_int8"]["details"]["calibration"] == "mse"
    assert int8["onnx_int8"]["details"]["output_range"].startswith("float")


def test_recipe_file_keeps_matching_layers_in_float(tmp_path: Path):
    recipe = write_recipe(tmp_path, 'calibration = "minmax"\noutput = "calibrated"\nkeep_float = ["predictions"]\n'
                                    'io_dtype = "uint8"\n')
    out = tmp_path / "run"
    result = invoke("convert", "--int8", "--recipe", recipe, "--val-size", "100", "-o", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    for a in report["artifacts"]:
        if a["precision"] == "int8":
            assert a["details"]["float_layers"] == ["predictions"], a["name"]
            assert a["details"]["full_integer"] is False
            assert a["details"]["calibration"] == "minmax"
    from edgeres.backends.tflite import float_compute_ops

    assert float_compute_ops((out / "model_int8.tflite").read_bytes()) == {"FULLY_CONNECTED"}
    # The recipe's I/O dtype applies at the input; the float classifier at the output keeps float32 there.
    tfl = next(a for a in report["artifacts"] if a["name"] == "tflite_int8")
    assert (tfl["input_dtype"], tfl["output_dtype"]) == ("uint8", "float32")


@pytest.mark.parametrize("text, message", [
    ('calibrate = "mse"\n', "unknown key 'calibrate'"),
    ('calibration = "magic"\n', "'calibration' = 'magic' is not one of"),
    ('bias_correction = "yes"\n', "'bias_correction' must be bool"),
    ('keep_float = ["no_such_layer*"]\n', "layer pattern 'no_such_layer*' matches no quantized layer"),
])
def test_bad_recipes_get_one_line_and_exit_2_and_leave_nothing(tmp_path: Path, text: str, message: str):
    out = tmp_path / "run"
    result = invoke("convert", "--int8", "--recipe", write_recipe(tmp_path, text), "-o", out)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_max_drop_needs_validation_data(tmp_path: Path):
    model = tmp_path / "m.keras"
    assert invoke("build", "resnet8", "--input-size", "8", "--num-classes", "10", "--channels", "1",
                  "-o", model).exit_code == 0
    from edgeres.core.defaults import default_calib

    result = invoke("convert", model, "--int8", "--calib", default_calib(), "--max-drop", "0.5",
                    "-o", tmp_path / "run")
    assert result.exit_code == 2 and "--max-drop needs --data" in result.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_recipe_name_lists_the_known_ones(tmp_path: Path):
    result = invoke("convert", "--int8", "--recipe", "fastest", "-o", tmp_path / "run")
    assert result.exit_code == 2 and "unknown recipe 'fastest'" in result.stderr and "default" in result.stderr


def test_collapsed_int8_fails_with_the_diagnosis_attached(tmp_path: Path):
    # Ranges clipped at the median of every activation: the int8 model loses the plot.
    recipe = write_recipe(tmp_path, 'calibration = "percentile"\npercentile = 50.5\noutput = "calibrated"\n')
    out = tmp_path / "run"
    result = invoke("convert", "--int8", "--recipe", recipe, "--val-size", "200", "-o", out)
    assert result.exit_code == 10, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False
    assert any("collapsed" in f for f in report["failures"])
    assert any("diagnosis" in f for f in report["failures"])
    diag = report["diagnosis"]
    assert diag and all(d["layers"] for d in diag.values())
    assert any(r["sqnr_db"] is not None for d in diag.values() for r in d["layers"])


def test_diagnose_table_json_and_plot(tmp_path: Path):
    out, png = tmp_path / "diag.json", tmp_path / "diag.png"
    result = invoke("diagnose", "--val-size", "100", "--no-sensitivity", "-o", out, "--plot", png)
    assert result.exit_code == 0, result.stderr
    assert "SQNR dB" in result.output and "only-float gain" in result.output
    d = json.loads(out.read_text())
    assert d["backend"] == "tflite" and d["images"] == 100
    convs = [r for r in d["layers"] if "CONV_2D" in r["ops"]]
    assert len(convs) >= 7
    assert all(r["sqnr_db"] is not None and 10 < r["sqnr_db"] < 80 for r in convs)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_diagnose_sensitivity_on_onnx(tmp_path: Path):
    result = invoke("diagnose", "--backend", "onnx", "--val-size", "100", "--calib-size", "64", "--json")
    assert result.exit_code == 0, result.stderr
    d = json.loads(result.output)
    assert d["backend"] == "onnx"
    rows = [r for r in d["layers"] if r["only_quantized_loss"] is not None]
    assert len(rows) == len(d["layers"]) and rows
    # Keeping one layer float can never make a model disagree with float by more than 100 points.
    assert all(-100 <= r["only_float_gain"] <= 100 and 0 <= r["only_quantized_loss"] <= 100 for r in rows)


def _convert_with_plan(tmp_path: Path, recipe_text: str, plan, max_drop: float):
    """The pipeline as the CLI runs it, with a narrowed search plan (a parameter, not a patched constant)."""
    from edgeres.core import defaults
    from edgeres.devices.targets import resolve_target
    from edgeres.pipeline.convert import ConvertConfig, run_convert
    from edgeres.quant.recipes import load_recipe

    out = tmp_path / "run"
    cfg = ConvertConfig(model=defaults.default_model(), calib=defaults.default_calib(), data=defaults.default_data(),
                        output_dir=out, target=resolve_target(None),
                        recipe=load_recipe(write_recipe(tmp_path, recipe_text)), max_drop=max_drop,
                        metric="agreement", plan=plan)
    return out, lambda: run_convert(cfg)


def test_search_that_cannot_meet_the_budget_writes_the_best_marked_failing(tmp_path: Path):
    from edgeres.core.errors import BudgetExceededError
    from edgeres.quant.search import SearchPlan

    plan = SearchPlan(ladder=(("percentile", 51.0),), max_float_layers=0)  # only one more calibration method
    out, run = _convert_with_plan(tmp_path, 'calibration = "percentile"\npercentile = 50.5\noutput = "calibrated"\n',
                                  plan, 2.0)  # the smallest round budget 250 selection images resolve
    with pytest.raises(BudgetExceededError) as err:
        run()
    from edgeres.report import to_json

    report = json.loads(to_json(err.value.report))  # the error carries the report it wrote
    assert report == json.loads((out / "report.json").read_text())
    assert report["passed"] is False
    for backend in ("tflite", "onnx"):
        s = report["search"]["backends"][backend]
        assert s["met"] is False and len(s["trials"]) == 4  # recipe, one calibration, bias correction, gptq
        assert not any(t["meets_budget"] for t in s["trials"])
    assert any("FAILS the budget" in f for f in report["failures"])
    assert (out / "model_int8.tflite").is_file() and (out / "model_int8.onnx").is_file()


def test_int16x8_recipe_is_labelled_and_runs_on_both_runtimes(tmp_path: Path):
    out = tmp_path / "run"
    result = invoke("convert", "--int8", "--recipe", "int16x8", "--val-size", "100", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "int16x8" in result.output
    report = json.loads((out / "report.json").read_text())
    int8 = {a["name"]: a for a in report["artifacts"] if a["precision"] == "int8"}
    assert int8["tflite_int8"]["details"]["activations"] == "int16"
    assert int8["tflite_int8"]["details"]["full_integer"] is True       # TFLite's 16x8 integer kernels
    assert int8["onnx_int8"]["details"]["full_integer"] is False        # ORT dequantizes int16 QDQ to float
    assert all(a["agreement"] >= 99.0 for a in int8.values())


def test_search_keeps_layers_in_float_when_calibration_alone_cannot_meet_the_budget(tmp_path: Path):
    from edgeres.quant.search import SearchPlan

    out, run = _convert_with_plan(tmp_path, 'calibration = "percentile"\npercentile = 95.0\noutput = "calibrated"\n',
                                  SearchPlan(ladder=()), 2.0)  # straight to bias correction, then layers
    run()
    report = json.loads((out / "report.json").read_text())
    for backend in ("tflite", "onnx"):
        s = report["search"]["backends"][backend]
        steps = [t["step"] for t in s["trials"]]
        assert steps[0] == "recipe" and steps[1].startswith("bias correction")
        assert s["met"] and s["winner"]["keep_float"], steps
        assert 100 - s["winner"]["agreement"] <= s["winner"]["loss_upper"] <= 2.0
        assert steps[2] == "gptq rounding"
        kept = [t["keep_float"] for t in s["trials"][3:]]
        assert all(len(k) == i + 1 for i, k in enumerate(kept))  # one more layer per step
    from edgeres.backends.tflite import float_compute_ops

    assert float_compute_ops((out / "model_int8.tflite").read_bytes())  # the kept layers really are float


def test_search_honours_the_recipes_own_float_layers(tmp_path: Path):
    recipe = write_recipe(tmp_path, 'keep_float = ["pred*"]\n')
    out = tmp_path / "run"
    result = invoke("convert", "--int8", "--recipe", recipe, "--max-drop", "5", "--metric", "agreement", "-o", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    for a in report["artifacts"]:
        if a["precision"] == "int8":
            assert a["details"]["float_layers"] == ["predictions"], a["name"]


def test_diagnose_refuses_a_recipe_pattern_that_matches_no_layer(tmp_path: Path):
    """diagnose builds its back end through the same factory as convert, and checks the recipe the same way."""
    from tests.conftest import assert_one_line_error

    recipe = write_recipe(tmp_path, 'keep_float = ["nope*"]\n')
    assert_one_line_error(invoke("diagnose", "--recipe", recipe, "--no-sensitivity", "--val-size", "50"), 2,
                          "layer pattern 'nope*' matches no quantized layer")


@pytest.mark.parametrize("option, where, needle", [
    ("-o", "missing/diag.json", "does not exist"),
    ("--plot", ".", "is a folder"),
])
def test_diagnose_refuses_an_unwritable_output_before_it_works(tmp_path: Path, option, where, needle):
    from tests.conftest import assert_one_line_error

    assert_one_line_error(invoke("diagnose", "--no-sensitivity", option, tmp_path / where), 8, needle)
