"""Issue #3 figure: repeat runs of `edgeres bench` agree within 5% at p50.

    python benchmarks/bench_stability.py MODEL [--repeat 3] [--runs 200]

Runs `edgeres bench MODEL --json` REPEAT times as separate processes (as a
user would) and reports each p50, the spread (max/min - 1), and whether any
run flagged itself as unstable.  Exit code 1 when the spread is 5% or more.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    p50s, flagged = [], []
    for i in range(args.repeat):
        proc = subprocess.run([sys.executable, "-m", "edgeres", "bench", args.model, "--runs", str(args.runs),
                               "--json"], capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout)["results"][0]
        p50s.append(r["latency_ms"]["p50"])
        flagged.append(bool(r["warnings"]))
        print(f"run {i + 1}: p50 {p50s[-1]:.3f} ms, stdev {r['latency_ms']['stdev']:.3f} ms"
              + (f"  [{'; '.join(r['warnings'])}]" if r["warnings"] else ""))
    spread = max(p50s) / min(p50s) - 1
    print(f"p50 spread across {args.repeat} runs: {100 * spread:.2f}% (figure: < 5%); "
          f"runs flagged unstable by edgeres: {sum(flagged)}")
    return 0 if spread < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
