"""Issue #13 part 2: where edgeres' ONNX int8 time goes, against TFLite int8, in one run.

    python benchmarks/onnx_profile.py [--model resnet50] [--runs 40]

Converts the model (`edgeres convert --int8 --recipe default`, 100 ImageNet
sample images), then, in this process with 2 threads and batch 1:

- p50 of the TFLite int8 model (XNNPACK) and of the ONNX int8 model as edgeres
  wrote it (each convolution on the ORT kernel that was faster on this CPU,
  `targets/x86-64.toml` `kernels = "measure"`) and on ORT's default symmetric
  kernels only (`onnx_kernels.canonical`), with the session options edgeres
  uses, and with the alternatives the issue names
  (no spinning, extended instead of full graph optimisation, sequential
  execution), as ratios to TFLite;
- ONNX Runtime's own profiler: time per operator type of the optimised graph
  (what ORT fused the QDQ graph into), as shares of the total.

When almost all of the time is in QLinearConv, the gap is in ORT's integer
convolution kernels on this CPU, not in the graph: no exact rewrite can close it.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from _common import shared, table


def p50(fn, runs: int) -> float:
    for _ in range(10):
        fn()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return 1000 * float(np.median(t))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--runs", type=int, default=40)
    a = ap.parse_args()
    import onnxruntime as ort

    from edgeres.core.runtime import open_runner

    with tempfile.TemporaryDirectory(prefix="edgeres-prof-") as tmp:
        run = Path(tmp) / "run"
        subprocess.run([sys.executable, "-m", "edgeres", "convert", a.model, "--int8", "--recipe", "default",
                        "--calib", str(shared("imagenet-samples")), "--calib-size", "100", "-o", str(run)],
                       check=True, capture_output=True)
        tfl = open_runner(run / "model_int8.tflite", threads=2)
        x = np.random.default_rng(0).uniform(0, 255, (1, *tfl.hwc)).astype(np.float32)
        t_tfl = p50(tfl.timed_invoke(tfl.quantize_input(x)), a.runs)

        from edgeres.backends.onnx_kernels import canonical

        report = json.loads((run / "report.json").read_text())
        kernels = next(a["details"].get("kernels", {}) for a in report["artifacts"] if a["name"] == "onnx_int8")
        symmetric = Path(tmp) / "symmetric.onnx"
        symmetric.write_bytes(canonical(onnx.load(run / "model_int8.onnx")).SerializeToString())

        def session(path=run / "model_int8.onnx", **config):
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 2, 1, 3
            for k, v in config.items():
                if k == "level":
                    so.graph_optimization_level = v
                elif k == "mode":
                    so.execution_mode = v
                else:
                    so.add_session_config_entry(k, v)
            s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            name = s.get_inputs()[0].name
            return lambda: s.run(None, {name: x})

        rows = [("TFLite int8, XNNPACK", f"{t_tfl:.2f}", "1.00x")]
        for label, cfg in (("ONNX int8, edgeres' session", {}),
                           ("ONNX int8, ORT's symmetric kernels only", {"path": symmetric}),
                           ("ONNX int8, no spinning", {"session.intra_op.allow_spinning": "0"}),
                           ("ONNX int8, extended optimisation",
                            {"level": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}),
                           ("ONNX int8, sequential execution", {"mode": ort.ExecutionMode.ORT_SEQUENTIAL})):
            t = p50(session(**cfg), a.runs)
            rows.append((label, f"{t:.2f}", f"{t / t_tfl:.2f}x"))
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.log_severity_level, so.enable_profiling = 2, 3, True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        s = ort.InferenceSession(str(run / "model_int8.onnx"), so, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        for _ in range(a.runs):
            s.run(None, {name: x})
        events = json.loads(Path(s.end_profiling()).read_text())
    spent, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            spent[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    total = sum(spent.values())
    ops = [(op, count[op] // a.runs, f"{100 * d / total:.1f}%") for op, d in spent.most_common(8)]
    print(table(("model", "p50 ms", "vs TFLite"), rows))
    gemm = f", {kernels['gemm_layers']} of {kernels['layers']} convolutions as GEMM" if "gemm_layers" in kernels else ""
    print(f"\nkernel choice at convert: {kernels.get('choice')} ({kernels.get('why', '')}{gemm})")
    print()
    print(table(("ORT operator (optimised graph)", "nodes", "share of kernel time"), ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
