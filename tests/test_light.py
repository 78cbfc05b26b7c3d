"""The light core: `bench`, `validate`, `info` and `targets` on .tflite/.onnx files, without TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CALIBRATION, ROOT, assert_one_line_error, invoke

DIGITS_TEST = CALIBRATION / "digits-test.npz"




def test_light_commands_never_import_tensorflow(default_run: Path):
    script = textwrap.dedent(f"""
        import sys
        from click.testing import CliRunner
        from edgeres.cli import cli
        run = {str(default_run)!r}
        calls = [
            ["info", run + "/model_int8.tflite"], ["info", run + "/model_int8.onnx"], ["targets"],
            ["bench", run + "/model_int8.tflite", run + "/model_int8.onnx", "--runs", "5", "--warmup", "1"],
            ["validate", run + "/model_int8.tflite", "--data", {str(DIGITS_TEST)!r},
             "--reference", run + "/model_fp32.onnx", "--val-size", "50"],
        ]
        for args in calls:
            r = CliRunner().invoke(cli, args)
            assert r.exit_code == 0, (args, r.output)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx"))
        assert not heavy, heavy
        print("light ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "light ok" in proc.stdout


def test_bench_json_sweep(default_run: Path):
    a, b = default_run / "model_int8.tflite", default_run / "model_fp32.onnx"
    result = invoke("bench", a, b, "--threads", "1,2", "--runs", "20", "--warmup", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(Path(r["model"]).name, r["threads"]) for r in report["results"]] == [
        ("model_int8.tflite", 1), ("model_int8.tflite", 2), ("model_fp32.onnx", 1), ("model_fp32.onnx", 2)]
    for r in report["results"]:
        lat = r["latency_ms"]
        assert len(r["samples_ms"]) == lat["runs"] == 20
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
        assert r["load_ms"] > 0 and r["peak_rss_mb"] > 0 and lat["first"] > 0
        assert r["size_bytes"] == Path(r["model"]).stat().st_size
    tfl = report["results"][0]["ops"]
    assert tfl["delegate"] == "xnnpack" and 0 < tfl["ops_delegated"] <= tfl["ops_total"]
    assert tfl["ops_total"] - tfl["ops_delegated"] == sum(tfl["cpu_ops"].values())
    m = report["machine"]
    assert m["cores"] >= 1 and m["arch"] and m["python"] and m["cpu"]


def test_bench_delegate_none_runs_everything_on_cpu(default_run: Path):
    result = invoke("bench", default_run / "model_int8.tflite", "--delegate", "none", "--runs", "5", "--json")
    assert result.exit_code == 0, result.output
    ops = json.loads(result.stdout)["results"][0]["ops"]
    assert ops["ops_delegated"] == 0 and sum(ops["cpu_ops"].values()) == ops["ops_total"]


def test_bench_table_and_plot(default_run: Path, tmp_path: Path):
    png = tmp_path / "lat.png"
    result = invoke("bench", default_run / "model_int8.tflite", "--runs", "10", "--plot", png, "--data",
                    DIGITS_TEST)
    assert result.exit_code == 0, result.output
    assert "p50" in result.stdout and "on xnnpack" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_bad_input(default_run: Path, tmp_path: Path):
    model = default_run / "model_int8.tflite"
    assert_one_line_error(invoke("bench", model, "--threads", "0"), 2, "1 or more")
    assert_one_line_error(invoke("bench", model, "--delegate", "edgetpu"), 7, "libedgetpu")
    assert_one_line_error(invoke("bench", default_run / "model_int8.onnx", "--delegate", "NoSuchEP"), 7,
                          "NoSuchEP")
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"definitely not a flatbuffer" * 10)
    assert_one_line_error(invoke("bench", junk), 3, "junk.tflite")
    assert_one_line_error(invoke("bench", tmp_path / "missing.onnx"), 3, "does not exist")
    text = tmp_path / "model.txt"
    text.write_text("x")
    assert_one_line_error(invoke("bench", text), 3, "not a .tflite or .onnx")


def _dynamic_onnx(path: Path, dtype=None) -> None:
    import onnx
    from onnx import TensorProto, helper

    elem = dtype or TensorProto.FLOAT
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["xf"], ["y"], axes=[1, 2], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, ["n", "h", "w", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_onnx_dynamic_dims_need_shape(tmp_path: Path):
    model = tmp_path / "dyn.onnx"
    _dynamic_onnx(model)
    assert_one_line_error(invoke("bench", model, "--runs", "3"), 5, "--shape")
    ok = invoke("bench", model, "--shape", "1,8,8,3", "--runs", "3", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["results"][0]["input_shape"] == [1, 8, 8, 3]


def test_data_dtype_must_fit_model(tmp_path: Path):
    from onnx import TensorProto

    model = tmp_path / "u8.onnx"
    _dynamic_onnx(model, TensorProto.UINT8)
    data = tmp_path / "px.npz"
    np.savez(data, x=np.full((2, 8, 8, 3), 200, np.uint8))
    ok = invoke("bench", model, "--shape", "1,8,8,3", "--data", data, "--runs", "3")
    assert ok.exit_code == 0, ok.output
    bad = invoke("bench", model, "--shape", "1,8,8,3", "--data", data, "--scale", "0.0123", "--runs", "3")
    assert_one_line_error(bad, 5, "uint8")


def test_validate_matches_convert_report(default_run: Path):
    report = json.loads((default_run / "report.json").read_text())
    for art in report["artifacts"]:
        result = invoke("validate", default_run / art["path"], "--data", DIGITS_TEST, "--json")
        assert result.exit_code == 0, result.output
        v = json.loads(result.stdout)
        assert v["count"] == report["validation"]["count"]
        assert v["top1"] == pytest.approx(art["top1"])  # same images, same runtime, same preprocessing
        assert v["preprocess"]["from"] == "report.json"


def test_validate_reference_fidelity(default_run: Path):
    result = invoke("validate", default_run / "model_int8.tflite", "--data", DIGITS_TEST, "--reference",
                    default_run / "model_fp32.tflite", "--json")
    assert result.exit_code == 0, result.output
    v = json.loads(result.stdout)
    assert 95.0 <= v["agreement"] <= 100.0
    assert 10.0 < v["sqnr_db"] < 80.0 and v["max_abs_diff"] > 0
    assert v["top1_drop"] == pytest.approx(v["reference"]["top1"] - v["top1"])
    same = json.loads(invoke("validate", default_run / "model_fp32.tflite", "--data", DIGITS_TEST, "--reference",
                             default_run / "model_fp32.onnx", "--json").stdout)
    assert same["agreement"] == 100.0 and same["sqnr_db"] > 60


def test_validate_bad_input(default_run: Path, tmp_path: Path):
    unlabelled = tmp_path / "x.npz"
    np.savez(unlabelled, x=np.zeros((4, 8, 8, 1), np.uint8), y=np.array([0, 1, 2, 11]))
    assert_one_line_error(invoke("validate", default_run / "model_int8.tflite", "--data", unlabelled), 5,
                          "label 11")
    wrong = tmp_path / "rgb.npz"
    np.savez(wrong, x=np.zeros((4, 16, 16, 3), np.float32), y=np.zeros(4, np.int64))
    assert_one_line_error(invoke("validate", default_run / "model_int8.tflite", "--data", wrong), 5, "16x16x3")


def test_info_on_artifacts(default_run: Path):
    r = invoke("info", default_run / "model_int8.tflite", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["input_dtype"] == "int8" and d["input_shape"][1:] == [8, 8, 1] and d["op_total"] > 10
    assert "CONV_2D" in d["ops"]
    d = json.loads(invoke("info", default_run / "model_int8.onnx", "--json").stdout)
    assert d["ops"]["QuantizeLinear"] > 0 and d["input_dtype"] == "float32"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("EDGERES_SKIP_VENV_TEST") == "1", reason="EDGERES_SKIP_VENV_TEST=1")
def test_runtime_only_install_in_fresh_venv(default_run: Path, tmp_path: Path):
    """pip install '.[runtime]' in a new venv: no TensorFlow, and bench/validate/info still work."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "--quiet", f"{ROOT}[runtime]"],
                             capture_output=True, text=True)
    if install.returncode != 0 and "No matching distribution" in install.stderr:
        pytest.skip(f"package index unreachable: {install.stderr.strip().splitlines()[-1]}")
    assert install.returncode == 0, install.stderr
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    assert "tensorflow" not in listed.lower() and "keras" not in listed.lower()
    exe = venv / "bin" / "edgeres"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for args in (["info", default_run / "model_int8.tflite"],
                 ["bench", default_run / "model_int8.tflite", default_run / "model_int8.onnx", "--runs", "5"],
                 ["validate", default_run / "model_int8.tflite", "--data", DIGITS_TEST, "--reference",
                  default_run / "model_fp32.tflite"]):
        proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    proc = subprocess.run([str(exe), "convert", "--int8", "-o", str(tmp_path / "o")], capture_output=True,
                          text=True, env=env, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr  # convert needs the [convert] extra


def test_bench_reports_throughput_against_a_measured_ceiling(default_run: Path):
    result = invoke("bench", default_run / "model_int8.tflite", default_run / "model_fp32.tflite", "--runs", "20",
                    "--json")
    int8, fp32 = json.loads(result.stdout)["results"]
    tp = int8["throughput"]
    assert tp["macs"] == 747_136  # the default ResNet-8's convolutions and FC at 8x8x1 (same as Keras' count)
    assert tp["gops"] == pytest.approx(2 * tp["macs"] / (int8["latency_ms"]["p50"] / 1000) / 1e9)
    assert tp["precision"] == "int8" and fp32["throughput"]["precision"] == "float32"
    # a tiny 8x8 model is overhead-bound: far below what one big convolution reaches on the same runtime
    assert 0 < tp["fraction_of_ceiling"] < 1
    assert tp["ceiling"]["threads"] == int8["threads"] and tp["ceiling"]["precision"] == "int8"
    assert fp32["throughput"]["ceiling"]["precision"] == "float32"
    from edgeres.core.machine import int8_peak

    if int8_peak().get("gops"):
        assert 0 < tp["fraction_of_peak"] < 2 and "MACs/cycle" in tp["peak_basis"]
        # a peak below what was measured is flagged, never left to read as a limit
        assert ("peak_note" in tp) == (tp["ceiling_gops"] > tp["int8_peak_gops"])
