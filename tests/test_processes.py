"""Formats built in their own processes (edgeres.pipeline.processes): identical artifacts, errors that keep
their exit codes, and children that never outlive a failed or stopped run.  Real converters, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, invoke

ARTIFACTS = ("model_fp32.tflite", "model_int8.tflite", "model_fp32.onnx", "model_int8.onnx")


def _convert(out: Path, *extra) -> dict:
    r = invoke("convert", "--int8", "--runs", 50, "--warmup", 1, "-o", out, *extra)
    assert r.exit_code == 0, r.output + r.stderr
    return json.loads((out / "report.json").read_text())


def _convert_fresh(out: Path, *extra) -> dict:
    """A run in a fresh process, as a user starts one: tf2onnx numbers the nodes it adds with a counter that
    lives as long as the process, so only fresh processes can be compared byte for byte."""
    subprocess.run([sys.executable, "-m", "edgeres", "convert", "--int8", "--runs", "50", "--warmup", "1",
                    "-o", str(out), *map(str, extra)], check=True, capture_output=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return json.loads((out / "report.json").read_text())


def test_processes_build_the_same_bytes_as_one_process(tmp_path):
    """The embedded default (adaptive default: holdout, candidates, rebuild) with --jobs 2 and --jobs 1."""
    one = _convert_fresh(tmp_path / "one", "--jobs", 1)
    two = _convert_fresh(tmp_path / "two", "--jobs", 2)
    for name in ARTIFACTS:
        a, b = tmp_path / "one" / name, tmp_path / "two" / name
        if name.endswith(".tflite"):
            assert a.read_bytes() == b.read_bytes(), name
        else:
            _assert_same_onnx(a, b)
    assert [_untimed(a["details"]) for a in one["artifacts"]] == [_untimed(a["details"]) for a in two["artifacts"]]
    assert [a["agreement"] for a in one["artifacts"]] == [a["agreement"] for a in two["artifacts"]]
    # the report says how, and what each process peaked at
    assert one["resources"]["formats_built"] == "in one process"
    assert set(one["resources"]["peak_rss_mb"]) == {"main"}
    res = two["resources"]
    assert res["formats_built"] == "2 at a time in their own processes"
    assert set(res["peak_rss_mb"]) == {"main", "tflite", "onnx"}
    assert all(v > 50 for v in res["peak_rss_mb"].values())  # MB: every process loaded a runtime at least
    assert set(res["processes"]["tflite"]["seconds"]) == {"tflite_fp32", "tflite_int8"}
    assert "formats (2 at a time)" in two["stages_seconds"]


def test_the_search_in_processes_is_the_search_in_one(tmp_path):
    """--max-drop with each format in its own process: the same trials as with both in this process."""
    args = ("--max-drop", 2, "--metric", "agreement")
    one, two = _convert(tmp_path / "one", "--jobs", 1, *args), _convert(tmp_path / "two", "--jobs", 2, *args)
    assert one["resources"]["formats_built"] == "in one process"
    assert two["resources"]["formats_built"] == "2 at a time in their own processes"

    def trials(report):
        return {name: [(t["step"], t["agreement"], t["loss_upper"], t["meets_budget"]) for t in b["trials"]]
                for name, b in report["search"]["backends"].items()}

    assert set(trials(two)) == {"tflite", "onnx"} and trials(one) == trials(two)


def _untimed(o):
    """``o`` without its timings (the adaptive default records how long each candidate took)."""
    if isinstance(o, dict):
        return {k: _untimed(v) for k, v in o.items() if k not in ("seconds", "timed_ms")}
    return [_untimed(v) for v in o] if isinstance(o, list) else o


def _assert_same_onnx(a: Path, b: Path) -> None:
    """The same graph, weights and outputs.  Only names may differ: tf2onnx names the nodes it adds from
    TensorFlow's name scopes and its own counter, which both depend on what the process traced before."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from edgeres.backends.onnx_kernels import canonical
    from edgeres.core.runtime import open_runner
    from tests.conftest import CALIBRATION

    ma, mb = canonical(onnx.load(a)), canonical(onnx.load(b))  # each run times ORT's kernels for itself

    def nodes(m):  # the order of independent nodes follows their names too
        return sorted((n.op_type, [x.SerializeToString() for x in n.attribute]) for n in m.graph.node)

    assert nodes(ma) == nodes(mb)
    wa = sorted(numpy_helper.to_array(i).tobytes() for i in ma.graph.initializer)
    wb = sorted(numpy_helper.to_array(i).tobytes() for i in mb.graph.initializer)
    assert wa == wb
    x = np.load(CALIBRATION / "digits-test.npz")["x"][:64].astype(np.float32)
    ra, rb = open_runner(a, threads=1), open_runner(b, threads=1)
    assert np.array_equal(ra.predict(x), rb.predict(x))


def test_small_models_stay_in_one_process_by_default(tmp_path):
    """The digits ResNet-8 is far below the work where a child's start pays (AUTO_MIN_WORK)."""
    report = _convert(tmp_path / "run", "--recipe", "default")
    assert report["resources"]["formats_built"] == "in one process"


def test_plan_follows_the_work_and_the_flag():
    from types import SimpleNamespace

    import numpy as np

    from edgeres.pipeline.processes import AUTO_MIN_WORK, backend_plan

    def inputs(macs, images):
        return SimpleNamespace(model_info={"macs": macs, "params": 25_000_000}, calib=np.zeros((images, 1)),
                               holdout=None)

    big, small = inputs(4e9, 100), inputs(4e6, 300)
    assert 4e9 * 100 >= AUTO_MIN_WORK > 4e6 * 300
    assert not backend_plan(SimpleNamespace(jobs=None), small, 2).processes
    auto = backend_plan(SimpleNamespace(jobs=None), big, 2)
    assert auto.processes and 1 <= auto.jobs <= 2
    assert not backend_plan(SimpleNamespace(jobs=1), big, 2).processes  # --jobs 1: all in this process
    assert backend_plan(SimpleNamespace(jobs=8), small, 2).jobs == 2    # never more processes than formats
    assert not backend_plan(SimpleNamespace(jobs=None), big, 1).processes


def test_an_error_in_a_child_keeps_its_class_and_exit_code(tmp_path):
    """A real spawned child with real shared inputs: an EdgeresError raised there reaches the parent as itself."""
    import multiprocessing
    import shutil

    import numpy as np

    from edgeres.core.errors import ConversionError, UsageError
    from edgeres.pipeline.artifacts import build_format
    from edgeres.pipeline.processes import Job, _child, _collect
    from tests.conftest import CALIBRATION

    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(CALIBRATION / "digits_resnet8.keras", shared / "model.keras")
    np.save(shared / "calib.npy", np.zeros((4, 28, 28, 1), np.float32))
    ctx = multiprocessing.get_context("spawn")

    def run(name: str, folder: Path):
        receive, send = ctx.Pipe(duplex=False)
        job = Job(cfg=None, settings=None, name=name, shared=folder, stage=tmp_path, hwc=(28, 28, 1),
                  log_level=30, holdout_carved=False, build=build_format)
        proc = ctx.Process(target=_child, args=(send, job))
        proc.start()
        send.close()
        return _collect(name, proc, receive)

    with pytest.raises(UsageError, match="unknown back end 'no-such-format'"):  # raised in the child
        run("no-such-format", shared)
    with pytest.raises(ConversionError, match="conversion failed in its process"):  # not an EdgeresError there
        run("tflite", tmp_path / "missing")


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeres", "convert", "--int8", "--recipe", "default",
                             "--jobs", "2", "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def _wait_for_children(proc: subprocess.Popen, n: int, timeout: float = 120) -> list[int]:
    import psutil

    t0 = time.time()
    while time.time() - t0 < timeout:
        kids = [p for p in _children(proc.pid) if "edgeres" in " ".join(psutil.Process(p).cmdline() or [])
                or psutil.Process(p).name().startswith("python")]
        if len(kids) >= n and (Path(str(proc.args[-1])).parent.exists()):
            return kids
        if proc.poll() is not None:
            pytest.fail(f"convert ended before its children started: {proc.stderr.read()}")
        time.sleep(0.2)
    pytest.fail("the format processes never started")


@pytest.mark.skipif(sys.platform != "linux", reason="psutil process trees and signals as on Linux")
def test_a_child_killed_for_memory_fails_the_run_in_one_line(tmp_path):
    out = tmp_path / "run"
    proc = _start(out)
    kids = _wait_for_children(proc, 2)
    os.kill(kids[-1], signal.SIGKILL)  # what the kernel's OOM killer does
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 6, err
    lines = [ln for ln in err.splitlines() if ln.startswith("edgeres: error:")]
    assert len(lines) == 1 and "died with exit code -9" in lines[0] and "--jobs 1" in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()
    time.sleep(1)
    assert not [p for p in kids if _alive(p)], "a format process outlived the failed run"


@pytest.mark.skipif(sys.platform != "linux", reason="psutil process trees and signals as on Linux")
def test_sigterm_stops_the_children_and_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    proc = _start(out)
    kids = _wait_for_children(proc, 2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert not out.exists()
    time.sleep(1)
    assert not [p for p in kids if _alive(p)], "a format process outlived the stopped run"


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_jobs_is_validated():
    assert_one_line_error(invoke("convert", "--int8", "--jobs", 0), 2, "--jobs")
