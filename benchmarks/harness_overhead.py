"""Issue #3 figure: `edgeres bench`'s timing adds under 3% over a bare invoke() loop.

    python benchmarks/harness_overhead.py [MODEL.tflite] [--runs 200] [--rounds 10]

In one process, on one interpreter, alternates rounds of
- a bare loop: `t = perf_counter(); interpreter.invoke(); samples.append(perf_counter() - t)`;
- edgeres' harness: `edgeres.core.timing.measure(runner.timed_invoke(x))`, what `edgeres bench` runs;
and compares the pooled p50s.  Without MODEL it converts the embedded default
and uses its int8 TFLite model; pass a bigger model for a less noisy ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", type=Path)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    from edgeres.core.quiet import quiet
    from edgeres.core.runtime import open_runner
    from edgeres.core.timing import measure

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            subprocess.run([sys.executable, "-m", "edgeres", "convert", "--int8", "--val-size", "50",
                            "-o", f"{tmp}/run"], check=True, capture_output=True)
            model = Path(tmp) / "run" / "model_int8.tflite"
        with quiet():
            runner = open_runner(model, threads=2)
        x = runner.quantize_input(np.random.default_rng(0).uniform(0, 255, (1, *runner.hwc)).astype(np.float32))
        interp = runner.interp
        interp.set_tensor(runner._in["index"], x)
        for _ in range(20):
            interp.invoke()
        bare: list[float] = []
        ours: list[float] = []
        for _ in range(args.rounds):
            for _ in range(args.runs):
                t = time.perf_counter()
                interp.invoke()
                bare.append((time.perf_counter() - t) * 1000.0)
            _, samples = measure(runner.timed_invoke(x), runs=args.runs, warmup=0)
            ours.extend(samples)
    b, o = float(np.median(bare)), float(np.median(ours))
    print(f"model {model.name}: {args.rounds} interleaved rounds of {args.runs} runs each")
    print(f"bare invoke() loop p50:   {b:.4f} ms")
    print(f"edgeres bench harness p50: {o:.4f} ms")
    ratio = o / b
    print(f"harness / bare: {ratio:.4f} ({100 * (ratio - 1):+.2f}%; figure: within 3%)")
    return 0 if abs(ratio - 1) <= 0.03 else 1


if __name__ == "__main__":
    sys.exit(main())
