"""Issue #4: edgeres int8 against the stock baselines written by hand, in one run.

    python benchmarks/int8_comparison.py [--runs 200]

Same model (../shared/data/models/resnet20_cifar10.keras), same 1,000
calibration images (cifar10/calib), same test images (cifar10/test):

- TFLiteConverter, representative dataset, full-integer int8 (int8 I/O);
- ONNX Runtime quantize_static with its defaults (QDQ, S8S8, per-tensor, min-max);
- ONNX Runtime quantize_static, per-channel weights, U8S8;
- edgeres convert --int8 (default recipe);
- edgeres convert --int8 --max-drop 0.35 (search on a selection split).  Issue #4 asked for 0.05; since
  issue #10 the search decides with a 90% bound, and 1,000 selection images resolve budgets from 0.34
  points up (docs/quantization.md, "Budgets with confidence"): 0.05 is refused, as it should be.

The --max-drop search chooses on 1,000 of the 2,000 test images (the same
deterministic split edgeres uses: Dataset.split(1000, seed=1)); every row is
measured on the other 1,000 ("final"), and the non-search rows also on all
2,000.  Latency: batch 1, 2 threads, XNNPACK for TFLite, interleaved blocks
so drift hits every model alike.  Exit 1 when a figure of the issue is missed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import shared, table

from edgeres.core.data import Preprocess, open_dataset
from edgeres.core.metrics import Tally
from edgeres.core.quiet import quiet
from edgeres.core.runtime import open_runner
from edgeres.core.timing import measure_interleaved


def stock_tflite(model, calib: np.ndarray) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def stock_onnx(model, calib: np.ndarray, tmp: Path, per_channel_u8s8: bool) -> Path:
    import tensorflow as tf
    import tf2onnx
    from onnxruntime.quantization import QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, pre = tmp / "stock_fp32.onnx", tmp / "stock_pre.onnx"
    if not fp32.exists():
        import onnx

        spec = (tf.TensorSpec((None, *calib.shape[1:]), tf.float32, name="input"),)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
        try:
            onnx.checker.check_model(proto)
            fp32.write_bytes(proto.SerializeToString())
        except onnx.checker.ValidationError as exc:
            # tf2onnx by hand cannot export it (a Keras grouped convolution or exact GELU): the stock
            # quantizer gets edgeres' float export instead, the only valid float graph there is
            from edgeres.backends.onnx import to_float32

            print(f"stock ONNX: tf2onnx's own export is invalid ({str(exc).splitlines()[0][:120]}); "
                  f"quantize_static runs on edgeres' float export", file=sys.stderr, flush=True)
            fp32.write_bytes(to_float32(model, tuple(calib.shape[1:])))
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)

    class Reader:
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    out = tmp / ("ort_pc_u8s8.onnx" if per_channel_u8s8 else "ort_default.onnx")
    kwargs = dict(per_channel=True, activation_type=QuantType.QUInt8) if per_channel_u8s8 else {}
    quantize_static(str(pre), str(out), Reader(), **kwargs)
    return out


def edgeres_run(out: Path, *extra: str) -> Path:
    cmd = [sys.executable, "-m", "edgeres", "convert", str(shared("models", "resnet20_cifar10.keras")), "--int8",
           "--calib", str(shared("cifar10", "calib")), "--calib-size", "1000", "--data",
           str(shared("cifar10", "test")), "-o", str(out), "--runs", "50", *extra]
    print("$ edgeres", " ".join(cmd[4:]), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode not in (0, 10):
        sys.exit(f"edgeres failed ({proc.returncode}): {proc.stderr.strip()}")
    return out


def evaluate(runner, x, y, ref) -> dict:
    t = Tally()
    for s in range(0, len(x), 100):
        t.update(runner.predict(x[s:s + 100]), y[s:s + 100], ref[s:s + 100])
    return t.result()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000,
                    help="timed runs per model (interleaved; ResNet-20 runs in ~0.3 ms)")
    args = ap.parse_args()
    import keras

    with quiet():
        model = keras.models.load_model(shared("models", "resnet20_cifar10.keras"), safe_mode=True)
    pre = Preprocess()
    calib, _ = open_dataset(shared("cifar10", "calib")).load((32, 32, 3), pre)
    test_ds = open_dataset(shared("cifar10", "test"))
    select_ds, final_ds = test_ds.split(len(test_ds) // 2, 1)  # as `convert --max-drop` (seed 0 + 1)
    xa, ya = test_ds.load((32, 32, 3), pre)
    xf, yf = final_ds.load((32, 32, 3), pre)
    ref_a = model.predict(xa, batch_size=200, verbose=0)
    ref_f = model.predict(xf, batch_size=200, verbose=0)
    fp_top1 = {"all": 100 * (ref_a.argmax(1) == ya).mean(), "final": 100 * (ref_f.argmax(1) == yf).mean()}

    with tempfile.TemporaryDirectory(prefix="edgeres-cmp-") as tmp_name:
        tmp = Path(tmp_name)
        with quiet():
            (tmp / "stock.tflite").write_bytes(stock_tflite(model, calib))
            ort_default = stock_onnx(model, calib, tmp, False)
            ort_pc = stock_onnx(model, calib, tmp, True)
        default = edgeres_run(tmp / "default")
        budget = edgeres_run(tmp / "budget", "--max-drop", "0.35")
        rows_in = [
            ("TFLiteConverter full int8", "stock", tmp / "stock.tflite"),
            ("ORT quantize_static defaults", "stock", ort_default),
            ("ORT per-channel U8S8", "stock", ort_pc),
            ("edgeres default recipe", "edgeres", default / "model_int8.tflite"),
            ("edgeres default recipe", "edgeres", default / "model_int8.onnx"),
            ("edgeres --max-drop 0.35", "search", budget / "model_int8.tflite"),
            ("edgeres --max-drop 0.35", "search", budget / "model_int8.onnx"),
        ]
        import json

        budget_report = json.loads((budget / "report.json").read_text())
        runners, results = {}, {}
        for i, (_label, kind, path) in enumerate(rows_in):
            with quiet():
                r = open_runner(path, threads=2, delegate="xnnpack" if path.suffix == ".tflite" else None)
            runners[i] = r
            results[i] = {"final": evaluate(r, xf, yf, ref_f),
                          "all": evaluate(r, xa, ya, ref_a) if kind != "search" else None}
        lat = measure_interleaved({i: r.timed_invoke(r.quantize_input(xa[:1])) for i, r in runners.items()},
                                  runs=args.runs, warmup=20)
        sizes = {i: p.stat().st_size for i, (_, _, p) in enumerate(rows_in)}

    def drop(res, split):
        return fp_top1[split] - res["top1"]

    rows, p50 = [], {i: lat[i][0].p50 for i in lat}
    for i, (label, kind, path) in enumerate(rows_in):
        f, a = results[i]["final"], results[i]["all"]
        float_layers = ""
        if kind == "search":
            w = budget_report["search"]["backends"][path.suffix[1:]]["winner"]
            float_layers = ", ".join(w["keep_float"]) or "none"
        rows.append((label, path.suffix[1:], f"{drop(f, 'final'):+.2f}", f"{f['agreement']:.2f}",
                     f"{drop(a, 'all'):+.2f}" if a else "-", f"{a['agreement']:.2f}" if a else "-",
                     f"{p50[i]:.3f}", f"{sizes[i] / 1024:.0f} KB", float_layers or "-"))
    print(f"ResNet-20 CIFAR-10, calibration 1000 images; float32 top-1 {fp_top1['all']:.2f}% on all 2000 test "
          f"images, {fp_top1['final']:.2f}% on the final 1000 (never used by the search)")
    print(table(("setting", "format", "drop (final)", "agree % (final)", "drop (all)", "agree % (all)",
                 "p50 ms", "size", "float layers"), rows))

    ok = True
    checks = []
    for fmt, ours in (("tflite", 3), ("onnx", 4)):
        fastest = min((p50[i] for i, (_, k, p) in enumerate(rows_in) if k == "stock" and p.suffix[1:] == fmt))
        a = results[ours]["all"]
        for name, good in ((f"{fmt} default drop <= 0.10 (all)", drop(a, "all") <= 0.10 + 1e-9),
                           (f"{fmt} default agreement >= 99.0 (all)", a["agreement"] >= 99.0),
                           (f"{fmt} default latency <= 1.05x fastest stock {fmt} ({p50[ours] / fastest:.3f}x)",
                            p50[ours] <= 1.05 * fastest)):
            checks.append((name, "ok" if good else "MISSED"))
            ok &= good
    for fmt, ours in (("tflite", 5), ("onnx", 6)):
        f = results[ours]["final"]
        for name, good in ((f"{fmt} --max-drop 0.35 drop <= 0.35 (final)", drop(f, "final") <= 0.35 + 1e-9),
                           (f"{fmt} --max-drop 0.35 agreement >= 99.3 (final)", f["agreement"] >= 99.3)):
            checks.append((name, "ok" if good else "MISSED"))
            ok &= good
    print()
    print(table(("figure", "result"), checks))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
