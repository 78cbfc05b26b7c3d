"""Issue #2 latency figures, and proof that edgeres' default choices are the fast ones.

    python benchmarks/latency_resnet50.py [--runs 100]

Converts a zoo ResNet-50 at 224x224 (random weights: no ImageNet weights offline;
latency does not depend on weight values) with `edgeres convert --int8`,
calibrating on the 100 ImageNet sample photos.  Then, in one process with
interleaved timing (2 threads, batch 1), it times edgeres' four artifacts and the
alternatives a user might pick by hand:

- TFLite int8 on the built-in kernels (no XNNPACK);
- ONNX Runtime int8 with quantize_static's default S8S8 activations.

Figures checked: TFLite int8 >= 3x faster than TFLite float32 (p50), and ONNX
int8 within 1.1x of TFLite int8.  Exit code 1 when a figure is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import edgeres_json, shared, table


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    from edgeres.backends.keras_io import load_model
    from edgeres.backends.onnx_quant import OnnxQuantizer
    from edgeres.core.data import Preprocess, open_dataset
    from edgeres.core.runtime import open_runner
    from edgeres.core.timing import measure_interleaved
    from edgeres.quant.recipes import resolve_recipe

    photos = shared("imagenet-samples")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        report = edgeres_json("convert", "resnet50", "--int8", "--calib", photos, "--calib-size", "100",
                              "-o", run)
        calib = open_dataset(photos).sample(32).load((224, 224, 3), Preprocess())[0]
        # ORT's default activation type (S8S8), everything else as edgeres' default recipe
        layer_types = {la.name: type(la).__name__ for la in load_model("resnet50").model.layers}
        quantizer = OnnxQuantizer((run / "model_fp32.onnx").read_bytes(), calib, layer_types, "int8")
        s8s8, _ = quantizer.quantize(resolve_recipe("default").for_backend("onnx"))
        (Path(tmp) / "s8s8.onnx").write_bytes(s8s8)
        runners = {
            "edgeres tflite_fp32 (XNNPACK)": open_runner(run / "model_fp32.tflite", 2),
            "edgeres tflite_int8 (XNNPACK)": open_runner(run / "model_int8.tflite", 2),
            "edgeres onnx_fp32": open_runner(run / "model_fp32.onnx", 2),
            "edgeres onnx_int8 (QDQ U8S8)": open_runner(run / "model_int8.onnx", 2),
            "by hand: tflite_int8, built-in kernels": open_runner(run / "model_int8.tflite", 2, "none"),
            "by hand: onnx_int8, QDQ S8S8 (ORT default)": open_runner(Path(tmp) / "s8s8.onnx", 2),
        }
        x = calib[:1]
        fns = {k: r.timed_invoke(r.quantize_input(x)) for k, r in runners.items()}
        res = measure_interleaved(fns, runs=args.runs, warmup=10)
    p50 = {k: s.p50 for k, (s, _) in res.items()}
    base = p50["edgeres tflite_fp32 (XNNPACK)"]
    rows = [(k, f"{s.p50:.2f}", f"{s.p90:.2f}", f"{s.stdev / s.mean * 100:.0f}%", f"{base / s.p50:.2f}x")
            for k, (s, _) in res.items()]
    print(f"ResNet-50 224x224, 2 threads, batch 1, {args.runs} interleaved runs each "
          f"({report['machine']['cpu']})")
    print(table(("configuration", "p50 ms", "p90 ms", "cv", "speed vs tflite fp32"), rows))
    int8_speedup = base / p50["edgeres tflite_int8 (XNNPACK)"]
    onnx_ratio = p50["edgeres onnx_int8 (QDQ U8S8)"] / p50["edgeres tflite_int8 (XNNPACK)"]
    print(f"\nTFLite int8 vs float32: {int8_speedup:.2f}x faster (figure: >= 3x)")
    print(f"ONNX int8 / TFLite int8: {onnx_ratio:.2f}x (figure: <= 1.1x)")
    u8s8 = p50["by hand: onnx_int8, QDQ S8S8 (ORT default)"] / p50["edgeres onnx_int8 (QDQ U8S8)"]
    print(f"U8S8 vs S8S8 (ORT): {u8s8:.2f}x faster")
    print(f"XNNPACK vs built-in (TFLite int8): "
          f"{p50['by hand: tflite_int8, built-in kernels'] / p50['edgeres tflite_int8 (XNNPACK)']:.2f}x faster")
    print(f"conversion stages: {report['conversion_seconds']:.1f} s "
          + ", ".join(f"{k} {v:.1f}" for k, v in report["stages_seconds"].items()))
    return 0 if int8_speedup >= 3.0 and onnx_ratio <= 1.1 else 1


if __name__ == "__main__":
    sys.exit(main())
