"""Issue #10: edgeres' default int8 against the stock anchors on every model of the development suite, one table.

    python benchmarks/suite/train.py        # once: trains the 5 extra models, writes suite.json (8-10 min)
    python benchmarks/int8_suite.py [--models NAME,...] [--edgeres-args "--recipe stock"] [--val-size N]
                                    [--calib-size 300] [--runs 300] [--keep DIR] [--json]

For every model listed in suite.json ($EDGERES_SUITE_DIR, else
~/.cache/edgeres/suite; the three shared models and the five trained ones), with
the model's own preprocessing (suite.json's convert_args):

- edgeres convert MODEL --int8 --calib cifar10/calib --data cifar10/test (plus
  --edgeres-args): its int8 TFLite and int8 ONNX;
- TFLiteConverter full-integer int8 (int8 I/O) with a representative dataset of
  the same calibration images edgeres samples (--calib-size, seed 0: 300 by
  default);
- ONNX Runtime quantize_static with its defaults (QDQ, S8S8, per-tensor, min-max)
  and with per-channel weights, U8S8, on the same images (tf2onnx, opset 17).

All five artifacts are evaluated here, by one code path, on the same 2,000
cifar10/test images (or a --val-size sample, seed 0, as edgeres draws it),
decoded and preprocessed as edgeres does, against the Keras float32 outputs
computed once per model: top-1 drop in points, top-1 agreement with float32,
output SQNR (dB), and batch-1 p50 latency (2 threads, XNNPACK for TFLite,
interleaved blocks so drift hits every artifact alike).  edgeres' own report
(--json) is cross-checked against these figures.

Target (issue #10), per model and format: edgeres' agreement >= the best stock
agreement of that format, and edgeres' drop <= the best stock drop + 0.05.
Exit 1 when a model misses it (or fails to run).  All 9 models, 2,000 images: about 7 minutes on
2 idle cores (11 under load); --val-size 200 --runs 50 for a quick check.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
from _common import shared, table
from int8_comparison import stock_onnx, stock_tflite
from suite.manifest import load_suite, preprocess_of, suite_dir

from edgeres.core.data import open_dataset
from edgeres.core.metrics import Tally
from edgeres.core.quiet import quiet
from edgeres.core.runtime import open_runner
from edgeres.core.timing import measure_interleaved

SLACK = 0.05  # points of top-1 drop edgeres may lose against the best stock anchor
ARTIFACTS = (  # key, label, format, kind
    ("stock_tflite", "stock TFLite", "tflite", "stock"),
    ("edgeres_tflite", "edgeres TFLite", "tflite", "edgeres"),
    ("ort_default", "ORT defaults", "onnx", "stock"),
    ("ort_pc_u8s8", "ORT U8S8 per-channel", "onnx", "stock"),
    ("edgeres_onnx", "edgeres ONNX", "onnx", "edgeres"),
)
EDGERES_ARTIFACT = {"edgeres_tflite": "tflite_int8", "edgeres_onnx": "onnx_int8"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated suite model names (default: all of suite.json)")
    ap.add_argument("--suite-dir", help="suite folder (default: $EDGERES_SUITE_DIR or ~/.cache/edgeres/suite)")
    ap.add_argument("--edgeres-args", default="", help='extra `edgeres convert` arguments, e.g. "--recipe stock"')
    ap.add_argument("--val-size", type=int, help="evaluate on a sample of N test images (quick runs)")
    ap.add_argument("--calib-size", type=int, default=300, help="calibration images, for edgeres and the anchors")
    ap.add_argument("--runs", type=int, default=300, help="timed batch-1 runs per artifact (interleaved)")
    ap.add_argument("--keep", type=Path, help="keep every artifact and edgeres run folder under DIR")
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON to stdout instead")
    return ap.parse_args(argv)


def run_edgeres(entry: dict, out: Path, args) -> dict:
    """`edgeres convert ... --json` on one model; its report (raises on failure)."""
    cmd = [sys.executable, "-m", "edgeres", "convert", entry["path"], "--int8",
           "--calib", str(shared("cifar10", "calib")), "--calib-size", str(args.calib_size),
           "--data", str(shared("cifar10", "test")), *entry["convert_args"],
           *(["--val-size", str(args.val_size)] if args.val_size else []),
           *shlex.split(args.edgeres_args), "-o", str(out), "--force", "--json"]
    log("$ edgeres " + " ".join(shlex.quote(c) for c in cmd[4:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode not in (0, 10):
        raise RuntimeError(f"edgeres convert failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def bench_model(entry: dict, work: Path, args) -> dict:
    """Build the anchors, run edgeres, evaluate all five artifacts on one model."""
    from edgeres.backends import keras_io

    name, pre = entry["name"], preprocess_of(entry["convert_args"])
    t0 = time.perf_counter()
    with quiet():
        model = keras_io.load_model(entry["path"]).model
    hwc = tuple(int(d) for d in model.inputs[0].shape[1:])
    calib_ds = open_dataset(shared("cifar10", "calib"))
    calib, _ = calib_ds.sample(min(args.calib_size, len(calib_ds)), 0).load(hwc, pre)  # as edgeres: seed 0
    test_ds = open_dataset(shared("cifar10", "test"))
    if args.val_size:
        test_ds = test_ds.sample(args.val_size, 0)
    batches = [(x, y, keras_io.predict(model, x)) for x, y in test_ds.batches(hwc, 64, pre)]
    float_tally = Tally()
    for _x, y, ref in batches:
        float_tally.update(ref, y)
    float_top1 = float_tally.result()["top1"]

    log(f"[{name}] stock anchors ({len(calib)} calibration images)")
    paths = {"stock_tflite": work / "stock.tflite"}
    with quiet():
        paths["stock_tflite"].write_bytes(stock_tflite(model, calib))
        paths["ort_default"] = stock_onnx(model, calib, work, False)
        paths["ort_pc_u8s8"] = stock_onnx(model, calib, work, True)
    report = run_edgeres(entry, work / "edgeres", args)
    by_name = {a["name"]: a for a in report["artifacts"]}
    for key, art in EDGERES_ARTIFACT.items():
        paths[key] = work / "edgeres" / by_name[art]["path"]

    runners, results, hits = {}, {}, {}
    labels = np.concatenate([y for _x, y, _ref in batches])
    ref_top1 = np.concatenate([ref.reshape(len(ref), -1).argmax(1) for _x, _y, ref in batches])
    for key, _label, fmt, _kind in ARTIFACTS:
        with quiet():
            runners[key] = open_runner(paths[key], threads=2, delegate="xnnpack" if fmt == "tflite" else None)
        t = Tally()
        for x, y, ref in batches:
            t.update(runners[key].predict(x), y, ref)
        results[key] = t.result()
        hits[key] = {"correct": t.predictions == labels, "agrees": t.predictions == ref_top1}
    log(f"[{name}] latency: {args.runs} batch-1 runs per artifact, interleaved")
    x1 = batches[0][0][:1]
    lat = measure_interleaved({k: r.timed_invoke(r.quantize_input(x1)) for k, r in runners.items()},
                              runs=args.runs, warmup=20)
    rows = {}
    for key, label, fmt, kind in ARTIFACTS:
        r = results[key]
        rows[key] = {"label": label, "format": fmt, "kind": kind, "path": str(paths[key]),
                     "top1": r["top1"], "drop_pp": float_top1 - r["top1"], "agreement": r["agreement"],
                     "sqnr_db": r["sqnr_db"], "p50_ms": lat[key][0].p50, "size_bytes": paths[key].stat().st_size}
    cross = {}  # edgeres' own report against this script's measurement of the same files
    for key, art in EDGERES_ARTIFACT.items():
        a = by_name[art]
        cross[key] = {"report_top1_drop": a["top1_drop"], "report_agreement": a["agreement"],
                      "report_sqnr_db": a["sqnr_db"], "report_p50_ms": a["latency_ms"]["p50"],
                      "agreement_diff": abs(a["agreement"] - rows[key]["agreement"]),
                      "drop_diff": abs(a["top1_drop"] - rows[key]["drop_pp"])}
        rows[key]["report"] = cross[key]
    checks = {}
    for fmt in ("tflite", "onnx"):
        stock = [rows[k] for k, _, f, kind in ARTIFACTS if f == fmt and kind == "stock"]
        ours = rows[f"edgeres_{fmt}"]
        best_agree, best_drop = max(s["agreement"] for s in stock), min(s["drop_pp"] for s in stock)
        ok_agree = ours["agreement"] >= best_agree - 1e-9
        ok_drop = ours["drop_pp"] <= best_drop + SLACK + 1e-9
        stock_keys = [k for k, _, f, kind in ARTIFACTS if f == fmt and kind == "stock"]
        agree_key = max(stock_keys, key=lambda k: rows[k]["agreement"])
        drop_key = min(stock_keys, key=lambda k: rows[k]["drop_pp"])
        checks[fmt] = {"ok": ok_agree and ok_drop, "agreement_ok": ok_agree, "drop_ok": ok_drop,
                       "best_stock_agreement": best_agree, "best_stock_drop": best_drop,
                       "edgeres_agreement": ours["agreement"], "edgeres_drop": ours["drop_pp"],
                       # exact two-sided McNemar on the same images: could the difference be chance?
                       "agreement_p": mcnemar_p(hits[f"edgeres_{fmt}"]["agrees"], hits[agree_key]["agrees"]),
                       "drop_p": mcnemar_p(hits[f"edgeres_{fmt}"]["correct"], hits[drop_key]["correct"])}
    return {"name": name, "path": entry["path"], "convert_args": entry["convert_args"], "input": entry["input"],
            "head": entry["head"], "channels": entry["channels"], "images": float_tally.labelled,
            "calib_images": len(calib), "float_top1": float_top1, "artifacts": rows, "target": checks,
            "edgeres_recipe": report["artifacts"][-1].get("details", {}).get("recipe"),
            "max_drop": report.get("max_drop"), "edgeres_passed": report.get("passed"),
            "seconds": time.perf_counter() - t0}


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value of paired per-image outcomes ``a`` and ``b`` (True = a hit)."""
    only_a, only_b = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(b & ~a))
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n)


def fmt_db(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.1f}"


def render(results: list[dict], failures: dict[str, str], args) -> str:
    rows = []
    for m in results:
        for key, *_ in ARTIFACTS:
            a = m["artifacts"][key]
            rows.append((m["name"], a["label"], f"{a['drop_pp']:+.2f}", f"{a['agreement']:.2f}",
                         fmt_db(a["sqnr_db"]), f"{a['p50_ms']:.3f}"))
    lines = []
    if results:
        n = sorted({m["images"] for m in results})
        lines += [f"int8 suite: {len(results)} models, {'/'.join(map(str, n))} cifar10/test images, "
                  f"{results[0]['calib_images']} calibration images, edgeres args: "
                  f"{args.edgeres_args or '(default recipe)'}; drop/agreement/SQNR against Keras float32, "
                  "p50 = batch 1, 2 threads", "",
                  table(("model", "artifact", "drop pp", "agree %", "SQNR dB", "p50 ms"), rows), ""]
        summary = []
        for m in results:
            cells = []
            for fmt in ("tflite", "onnx"):
                c = m["target"][fmt]
                why = [w for w, ok in (("agreement", c["agreement_ok"]), ("drop", c["drop_ok"])) if not ok]
                cells.append("ok" if c["ok"] else "MISSED (" + ", ".join(why) + ")")
                cells.append(f"{c['edgeres_agreement']:.2f} vs {c['best_stock_agreement']:.2f} "
                             f"(p {c['agreement_p']:.2f}), {c['edgeres_drop']:+.2f} vs {c['best_stock_drop']:+.2f} "
                             f"(p {c['drop_p']:.2f})")
            summary.append((m["name"], m["input"], m["head"], f"{m['float_top1']:.2f}", *cells))
        lines += [f"target: edgeres agreement >= best stock agreement and drop <= best stock drop + {SLACK} "
                  "(per format; figures are edgeres vs best stock: agreement, drop, each with the exact two-sided "
                  "McNemar p-value of the difference on the same images)", "",
                  table(("model", "input", "head", "float top-1", "TFLite", "TFLite figures", "ONNX",
                         "ONNX figures"), summary)]
        worst = max(max(c["agreement_diff"], c["drop_diff"]) for m in results
                    for c in (m["artifacts"]["edgeres_tflite"]["report"], m["artifacts"]["edgeres_onnx"]["report"]))
        lines.append(f"\nedgeres' own report.json agrees with this script's evaluation of its files within "
                     f"{worst:.3f} points (agreement and drop)")
    budgeted = [m for m in results if m.get("max_drop") is not None]
    if budgeted:  # --max-drop: edgeres' own verdict, and its figures on the report images (not the selection)
        def half(m, key):
            r = m["artifacts"][key]["report"]
            return f"{r['report_top1_drop']:+.2f} / {r['report_agreement']:.2f}%"

        rows = [(m["name"], "PASSED" if m["edgeres_passed"] else "FAILED", half(m, "edgeres_tflite"),
                 half(m, "edgeres_onnx")) for m in budgeted]
        lines += ["", f"--max-drop {budgeted[0]['max_drop']}: edgeres' verdict and its report-image figures "
                  "(drop / agreement, from its report.json)", "",
                  table(("model", "edgeres run", "TFLite", "ONNX"), rows)]
    for name, err in failures.items():
        lines.append(f"FAILED {name}: {err}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    root = suite_dir(args.suite_dir)
    models = load_suite(root)
    if args.models:
        wanted = args.models.split(",")
        unknown = sorted(set(wanted) - {m["name"] for m in models})
        if unknown:
            sys.exit(f"unknown model(s) {', '.join(unknown)}; suite: {', '.join(m['name'] for m in models)}")
        models = [m for m in models if m["name"] in wanted]
    results, failures = [], {}
    with tempfile.TemporaryDirectory(prefix="edgeres-suite-") as tmp_name:
        base = args.keep.resolve() if args.keep else Path(tmp_name)
        for i, entry in enumerate(models, 1):
            log(f"== {i}/{len(models)} {entry['name']} ({entry['path']})")
            work = base / entry["name"]
            work.mkdir(parents=True, exist_ok=True)
            for stale in ("stock_fp32.onnx", "stock_pre.onnx"):  # stock_onnx reuses these when present
                (work / stale).unlink(missing_ok=True)
            try:
                results.append(bench_model(entry, work, args))
                log(f"[{entry['name']}] done in {results[-1]['seconds']:.0f} s")
            except Exception as exc:  # one model's failure must not lose the others
                failures[entry["name"]] = f"{type(exc).__name__}: {exc}"
                log(traceback.format_exc())
            finally:
                import keras

                keras.backend.clear_session()
    ok = not failures and all(c["ok"] for m in results for c in m["target"].values())
    if args.json:
        print(json.dumps({"suite": str(root / "suite.json"), "edgeres_args": args.edgeres_args,
                          "val_size": args.val_size, "calib_size": args.calib_size, "runs": args.runs,
                          "slack_pp": SLACK, "models": results, "failures": failures, "passed": ok},
                         indent=2, default=str))
    else:
        print(render(results, failures, args))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
