"""Issue #13 part 2: where edgeres' ONNX int8 time goes, against TFLite int8, in one run.

    python benchmarks/onnx_profile.py [--model resnet50] [--runs 200]

Converts the model (`edgeres convert --int8 --recipe default`, 100 ImageNet
sample images), then, in this process with 2 threads and batch 1:

- p50 (interleaved blocks of 10 runs, so drift hits all alike) of the TFLite
  int8 model (XNNPACK) and of the ONNX int8 model as edgeres
  wrote it (each convolution on the ORT kernel that was faster on this CPU,
  `targets/x86-64.toml` `kernels = "measure"`) and on ORT's default symmetric
  kernels only (`onnx_kernels.canonical`), without the int8-graph rewrites
  (`edgeres.backends.onnx_int8_graph`, from a second conversion with them
  switched off) and with each added in turn, with the session options edgeres
  uses, and with the alternatives the issue names
  (no spinning, extended instead of full graph optimisation, sequential
  execution), as ratios to TFLite;
- head to head: TFLite int8 and edgeres' ONNX int8 alone, in ``--rounds`` rounds
  of interleaved blocks; the median of the rounds' p50 ratios, and every round's;
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
from pathlib import Path

import numpy as np
import onnx
from _common import shared, table

WITHOUT_REWRITES = ("import sys; import edgeres.backends.onnx_int8_graph as g; g.apply_all = lambda q: []; "
                    "from edgeres.cli import main; sys.argv[0] = 'edgeres'; main()")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7,
                    help="head-to-head rounds of TFLite int8 against the ONNX int8 edgeres wrote, alone")
    a = ap.parse_args()
    import onnxruntime as ort

    from edgeres.core.runtime import open_runner
    from edgeres.core.timing import measure_interleaved

    with tempfile.TemporaryDirectory(prefix="edgeres-prof-") as tmp:
        run = Path(tmp) / "run"
        args = ["convert", a.model, "--int8", "--recipe", "default", "--calib", str(shared("imagenet-samples")),
                "--calib-size", "100", "--jobs", "1"]
        subprocess.run([sys.executable, "-m", "edgeres", *args, "-o", str(run)], check=True, capture_output=True)
        # the same conversion with the int8-graph rewrites switched off (one process, so the patch holds)
        subprocess.run([sys.executable, "-c", WITHOUT_REWRITES, *args, "-o", str(Path(tmp) / "plain")], check=True,
                       capture_output=True)
        from edgeres.backends import onnx_int8_graph

        plain = onnx.load(Path(tmp) / "plain" / "model_int8.onnx")
        steps = {"ONNX int8, no int8-graph rewrites (before)": Path(tmp) / "plain" / "model_int8.onnx"}
        for rewrite in (onnx_int8_graph.widen_input_constants, onnx_int8_graph.space_to_depth_stem):
            if rewrite(plain):
                steps[f"  + {rewrite.__name__}"] = Path(tmp) / f"{rewrite.__name__}.onnx"
                onnx.save(plain, steps[f"  + {rewrite.__name__}"])
        tfl = open_runner(run / "model_int8.tflite", threads=2)
        x = np.random.default_rng(0).uniform(0, 255, (1, *tfl.hwc)).astype(np.float32)

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

        configs = {"ONNX int8 as edgeres wrote it": {},
                   "ONNX int8, ORT's symmetric kernels only": {"path": symmetric},
                   **{label: {"path": path} for label, path in steps.items()},
                   "ONNX int8, no spinning": {"session.intra_op.allow_spinning": "0"},
                   "ONNX int8, extended optimisation": {"level": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED},
                   "ONNX int8, sequential execution": {"mode": ort.ExecutionMode.ORT_SEQUENTIAL}}
        fns = {"TFLite int8, XNNPACK": tfl.timed_invoke(tfl.quantize_input(x))}
        fns.update((label, session(**cfg)) for label, cfg in configs.items())
        stats = measure_interleaved(fns, runs=a.runs, warmup=10, block=10)
        t_tfl = stats["TFLite int8, XNNPACK"][0].p50
        # the figure itself: the two models timed alone (the other sessions idle), in repeated rounds,
        # since one round's ratio moves by a few percent on a shared VM
        pair = {k: fns[k] for k in ("TFLite int8, XNNPACK", "ONNX int8 as edgeres wrote it")}
        ratios = []
        for _ in range(a.rounds):
            two = measure_interleaved(pair, runs=a.runs, warmup=10, block=10)
            ratios.append(two["ONNX int8 as edgeres wrote it"][0].p50 / two["TFLite int8, XNNPACK"][0].p50)
        rows = [(label, f"{st.p50:.2f}", f"{st.p50 / t_tfl:.3f}x") for label, (st, _) in stats.items()]
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
    if ratios:
        print(f"\nhead to head, TFLite int8 and edgeres' ONNX int8 alone, {len(ratios)} rounds of {a.runs} runs each: "
              f"ONNX/TFLite p50 median {np.median(ratios):.3f}x (rounds: {', '.join(f'{r:.3f}' for r in ratios)})")
    gemm = f", {kernels['gemm_layers']} of {kernels['layers']} convolutions as GEMM" if "gemm_layers" in kernels else ""
    print(f"\nkernel choice at convert: {kernels.get('choice')} ({kernels.get('why', '')}{gemm})")
    print()
    print(table(("ORT operator (optimised graph)", "nodes", "share of kernel time"), ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
