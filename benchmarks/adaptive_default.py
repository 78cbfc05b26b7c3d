"""Issue #10: what the model-adaptive default costs in conversion time, and what it buys, in one run.

    python benchmarks/adaptive_default.py [--model PATH [--scale S --mean M --std D]] [--rounds 2]

For one model (default: ../shared/data/models/resnet20_cifar10.keras, raw pixels), alternately in
``--rounds`` rounds: ``edgeres convert MODEL --int8`` (adaptive: no --recipe) and the same with
``--recipe default`` (the fixed recipe alone), both calibrated on 300 of cifar10/calib and validated on the
2,000 cifar10/test images.  Reports the median of the conversion time (``conversion_seconds``: load, the four
conversions, the candidates; not validation or benchmarking), their ratio (figure: at most 2x), and each
int8 artifact's top-1 drop, agreement and SQNR against the Keras float32 model for both, and which candidate
the adaptive default chose.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _common import add_model_options, edgeres_json, model_and_preprocessing, shared, table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(ap)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a checkout of the code before the adaptive default (git worktree add DIR f2e347f): "
                         "its --recipe default is timed too, in the same rounds, as the issue's 'today'")
    args = ap.parse_args()
    model, pre = model_and_preprocessing(args)
    common = [model, "--int8", "--calib", shared("cifar10", "calib"), "--data", shared("cifar10", "test"), *pre]
    seconds: dict[str, list[float]] = {"adaptive": [], "fixed": []}
    runs = [("adaptive", [], None), ("fixed", ["--recipe", "default"], None)]
    if args.baseline:
        seconds["baseline"] = []
        runs.append(("baseline", ["--recipe", "default"], args.baseline.resolve()))
    reports: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="edgeres-adaptive-bench-") as tmp:
        for r in range(args.rounds):
            for name, extra, tree in runs:
                rep = edgeres_json("convert", *common, *extra, "-o", Path(tmp) / f"{name}{r}", tree=tree)
                seconds[name].append(rep["conversion_seconds"])
                reports[name] = rep
    rows = []
    for name in [n for n in ("baseline", "fixed", "adaptive") if n in reports]:
        for a in reports[name]["artifacts"]:
            if a["precision"] != "int8":
                continue
            chosen = (a["details"].get("adaptive") or {}).get("chosen", "recipe default (fixed)")
            rows.append((name, a["name"], f"{a['top1_drop']:+.2f}", f"{a['agreement']:.2f}", f"{a['sqnr_db']:.1f}",
                         chosen))
    print(table(("default", "artifact", "drop pp", "agree %", "SQNR dB", "configuration"), rows))
    fixed, adaptive = statistics.median(seconds["fixed"]), statistics.median(seconds["adaptive"])
    print(f"\nconversion time, median of {args.rounds}: fixed {fixed:.1f} s, adaptive {adaptive:.1f} s, "
          f"ratio {adaptive / fixed:.2f}x (figure: at most 2x)")
    if args.baseline:
        base = statistics.median(seconds["baseline"])
        print(f"against the baseline checkout's --recipe default ({base:.1f} s): adaptive {adaptive / base:.2f}x "
              "(figure: at most 2x)")
        return 0 if adaptive / base <= 2.0 else 1
    return 0 if adaptive / fixed <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
