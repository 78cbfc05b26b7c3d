"""What ``edgeres bundle --fold-preprocessing`` changes on real models: the outputs (nothing) and batch-1 latency.

    python benchmarks/bundle_fold.py [--models PATH[:SCALE:MEAN:STD] ...] [--val-size N] [--threads 2]
                                     [--rounds 30] [--block 20] [--keep DIR] [--json]

For each model (default: the shared ResNet-20, which takes raw pixels, and the shared ResNet-32, which needs
``--scale 0.00392156862745098 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225``), in one run:

1. ``edgeres convert MODEL --int8 --calib cifar10/calib --data cifar10/test [preprocessing] -o TMP/run``, then
   ``edgeres bundle TMP/run -o TMP/app --fold-preprocessing`` and ``edgeres bundle TMP/run -o TMP/app-nofold``.
2. Outputs on every test image (or ``--val-size`` of them): the run's ``model_int8.tflite`` fed edgeres'
   preprocessing (``Preprocess.from_dict(report["preprocess"])``) against the folded bundle model fed raw pixels
   (``Preprocess()``): top-1 agreement, images whose float32 outputs differ at all, and each one's top-1.
   The unfolded bundle model is checked against the run's model the same way (it only adds metadata).
3. Latency: batch 1 on one real test image, ``timed_invoke`` (the interpreter's invoke only), run and folded
   model alternated in ``--rounds`` blocks of ``--block`` invocations (2 untimed settle runs each), median of the
   per-invocation times.  The folded graph has a few more ops: the pixel path (QUANTIZE, or CAST/ADD/GATHER) in
   front and a DEQUANTIZE at the end (the run's model returns int8 and the caller dequantizes).

Exit 1 when the top-1 agreement is not 100% or any output differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import shared, table

from edgeres.core.data import Preprocess, open_dataset
from edgeres.core.quiet import quiet
from edgeres.core.runtime import open_runner
from edgeres.core.timing import measure_interleaved

IMAGENET = "0.00392156862745098:0.485,0.456,0.406:0.229,0.224,0.225"
DEFAULT_MODELS = ["resnet20_cifar10.keras", f"resnet32_cifar10_normalized_input.keras:{IMAGENET}"]


def parse_spec(spec: str) -> tuple[Path, list[str]]:
    """``PATH[:SCALE:MEAN:STD]`` -> (model path, convert's preprocessing options); a bare name is a shared model."""
    path, pre = spec, []
    if spec.count(":") >= 3 and not Path(spec).exists():
        path, scale, mean, std = spec.rsplit(":", 3)
        pre = ["--scale", scale, "--mean", mean, "--std", std]
    p = Path(path)
    return (p if p.exists() else shared("models", path)), pre


def edgeres(*args) -> None:
    cmd = [sys.executable, "-m", "edgeres", *map(str, args)]
    print("$ edgeres", " ".join(map(str, args)), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"edgeres failed ({proc.returncode}): {proc.stderr.strip()}")


def predict_all(runner, x: np.ndarray, batch: int = 100) -> np.ndarray:
    return np.concatenate([runner.predict(x[i:i + batch]) for i in range(0, len(x), batch)])


def one_model(spec: str, work: Path, args) -> dict:
    model, pre_opts = parse_spec(spec)
    calib, data = shared("cifar10", "calib"), shared("cifar10", "test")
    run, app, nofold = work / "run", work / "app", work / "app-nofold"
    size = ["--val-size", args.val_size] if args.val_size else []
    edgeres("convert", model, "--int8", "--calib", calib, "--data", data, *size, *pre_opts, "-o", run, "--force")
    edgeres("bundle", run, "-o", app, "--fold-preprocessing", "--force")
    edgeres("bundle", run, "-o", nofold, "--force")
    report = json.loads((run / "report.json").read_text())
    manifest = json.loads((app / "manifest.json").read_text())
    entry = manifest["models"][0]
    pre = Preprocess.from_dict(report["preprocess"])
    with quiet():
        a = open_runner(run / "model_int8.tflite", threads=args.threads)
        b = open_runner(app / entry["file"], threads=args.threads)
        c = open_runner(nofold / json.loads((nofold / "manifest.json").read_text())["models"][0]["file"],
                        threads=args.threads)
    ds = open_dataset(data)
    if args.val_size:
        ds = ds.sample(args.val_size, 0)
    x_pre, y = ds.load(a.hwc, pre, "warn")
    x_raw, y_raw = ds.load(b.hwc, Preprocess(resize=pre.resize), "warn")
    assert np.array_equal(y, y_raw)
    ya, yb, yc = predict_all(a, x_pre), predict_all(b, x_raw), predict_all(c, x_pre)
    ta, tb = ya.argmax(1), yb.argmax(1)
    lat = measure_interleaved({"run": a.timed_invoke(a.quantize_input(x_pre[:1])),
                               "bundle": b.timed_invoke(b.quantize_input(x_raw[:1]))},
                              runs=args.rounds * args.block, warmup=20, block=args.block)
    p50a, p50b = lat["run"][0].p50, lat["bundle"][0].p50
    return {"model": model.name, "preprocess": pre.to_dict(), "fold": entry["fold"], "images": len(y),
            "bundle_input_dtype": np.dtype(b.input_dtype).name, "bundle_output_dtype": np.dtype(b.output_dtype).name,
            "ops_run": a.op_counts(), "ops_bundle": b.op_counts(),
            "agreement_pct": 100.0 * float((ta == tb).mean()),
            "differing_outputs": int((ya != yb).any(axis=1).sum()),
            "max_abs_diff": float(np.abs(ya - yb).max()),
            "differing_outputs_nofold": int((ya != yc).any(axis=1).sum()),
            "top1_run": 100.0 * float((ta == y).mean()), "top1_bundle": 100.0 * float((tb == y).mean()),
            "top1_report": next((t.get("top1") for t in report["artifacts"] if t.get("name") == "tflite_int8"), None),
            "p50_ms_run": p50a, "p50_ms_bundle": p50b, "ratio": p50b / p50a,
            "runs_each": lat["run"][0].runs, "threads": args.threads}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="PATH[:SCALE:MEAN:STD]",
                    help="Keras models (a bare name is one in ../shared/data/models), with their preprocessing")
    ap.add_argument("--val-size", type=int, default=None, help="test images to use (default: all 2,000)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--block", type=int, default=20, help="invocations per round and model")
    ap.add_argument("--keep", type=Path, default=None, metavar="DIR", help="keep the runs and bundles in DIR")
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout (the table: stderr)")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for i, spec in enumerate(args.models):
            results.append(one_model(spec, root / f"{i}-{Path(spec.split(':')[0]).stem}", args))
    rows = [(r["model"], r["fold"]["method"], r["images"], f"{r['agreement_pct']:.2f}", r["differing_outputs"],
             f"{r['top1_run']:.2f} / {r['top1_bundle']:.2f}", f"{r['p50_ms_run']:.3f}", f"{r['p50_ms_bundle']:.3f}",
             f"{r['ratio']:.3f}") for r in results]
    out = sys.stderr if args.json else sys.stdout
    print(f"int8 TFLite, batch 1, {args.threads} threads, {args.rounds} interleaved rounds of {args.block}; "
          "run = model_int8.tflite fed edgeres' preprocessing, bundle = folded model fed raw uint8 pixels", file=out)
    print(table(("model", "fold", "images", "agreement %", "differing outputs", "top-1 % run / bundle",
                 "p50 ms run", "p50 ms bundle", "bundle / run"), rows), file=out)
    print("unfolded bundle vs run, differing outputs: " + ", ".join(str(r["differing_outputs_nofold"])
                                                                    for r in results), file=out)
    if args.json:
        print(json.dumps(results, indent=2))
    bad = [r["model"] for r in results if r["agreement_pct"] < 100.0 or r["differing_outputs"]
           or r["differing_outputs_nofold"]]
    if bad:
        print(f"FAIL: the bundle's outputs differ from the run's for {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
