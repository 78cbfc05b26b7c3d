"""``edgeres convert --ray``: the --max-drop search and the validation fan out on a real local Ray and give the
sequential run's choices and figures.  A real ResNet-20, real converters, a private Ray of two workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import invoke, shared

pytest.importorskip("ray", reason="needs Ray: pip install 'edgeres[cluster]' (the dev extra has it)")

#: what differs between two runs of the same conversion: timings, paths, the hardware and the executor;
#: ONNX hashes (tf2onnx numbers the nodes it adds per process)
VOLATILE = {"latency_ms", "latency_samples_ms", "speedup_vs_fp32", "stages_seconds", "conversion_seconds", "p50_ms",
            "created", "machine", "resources", "seconds", "path", "source", "timed_ms"}


def _stable(o, key: str = ""):
    if isinstance(o, dict):
        d = {k: _stable(v, k) for k, v in o.items() if k not in VOLATILE}
        if d.get("format") == "onnx":
            d.pop("sha256", None)
        return d
    if isinstance(o, list):
        return [_stable(v) for v in o if not (isinstance(v, str) and v.startswith("latency unstable"))]
    return o


def _convert(*args) -> dict:
    proc = subprocess.run([sys.executable, "-m", "edgeres", "convert", *map(str, args), "--json"],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # --json: stdout is the report alone (Ray printed nothing there)


def _differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in a.keys() | b.keys() for d in _differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_search_and_validation_on_ray_match_the_sequential_run(tmp_path):
    model, calib, data = (shared("models", "resnet20_cifar10.keras"), shared("cifar10", "calib"),
                          shared("cifar10", "test"))
    # a budget neither the calibration methods nor bias correction meet: the layers get ranked (one conversion
    # each, fanned out) and kept float one by one (measured ahead, side by side)
    # (800 selection images: since bias correction runs layer by layer, ONNX met 1.0 point on 400 of them with
    # a calibration method alone)
    args = [model, "--int8", "--calib", calib, "--calib-size", 100, "--data", data, "--val-size", 1600,
            "--max-drop", 0.5, "--metric", "agreement", "--recipe", "default", "--runs", 50, "--warmup", 1]
    # both in fresh processes: TensorFlow's float kernels can differ in their last bits in a process that ran
    # other conversions first (see test_report_compat.py), and that is not what is compared here
    seq = _convert(*args, "-o", tmp_path / "seq")
    ray = _convert(*args, "-o", tmp_path / "ray", "--ray")
    assert ray == json.loads((tmp_path / "ray" / "report.json").read_text())
    # the search went through the ranking on both back ends
    for backend in ("tflite", "onnx"):
        steps = [t["step"] for t in seq["search"]["backends"][backend]["trials"]]
        assert any(s.startswith("keep ") for s in steps), steps
    assert not _differences(_stable(seq), _stable(ray))
    ex = ray["resources"]["executor"]
    assert ex["backend"] == "ray" and ex["workers"] >= 2 and ex["address"] == "local"
    assert ray["resources"]["formats_built"] == "in one process"  # the fan-out is Ray's
    for name in ("tflite_int8", "onnx_int8"):  # the TFLite artifacts are the same bytes
        a, b = (next(x for x in rep["artifacts"] if x["name"] == name) for rep in (seq, ray))
        if name.startswith("tflite"):
            assert a["sha256"] == b["sha256"]


def test_ray_and_jobs_are_exclusive(tmp_path):
    from tests.conftest import assert_one_line_error

    assert_one_line_error(invoke("convert", "--int8", "--jobs", 2, "--ray", "-o", tmp_path / "run"), 2,
                          "give --ray or --jobs")
    assert not (tmp_path / "run").exists()
