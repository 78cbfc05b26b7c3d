"""Issue #2 overhead figure: `edgeres convert` costs little over the raw converter calls.

    python benchmarks/conversion_overhead.py [--model PATH] [--repeat 2]

In one process (TensorFlow imported once for both), alternately:

- raw: the calls edgeres makes, written by hand: TFLiteConverter float32,
  TFLiteConverter full-int8 with the same representative images, tf2onnx
  from_keras, ORT quant_pre_process + quantize_static with the same options;
- edgeres: `run_convert` with validation and benchmarking skipped, measuring
  its conversion stages (model load, decoding calibration images, the four
  conversions, checks, atomic writes).

Reports the best of --repeat rounds of each, and the ratio (figure: <= 1.3x).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import shared, table


def raw_calls(model_path: Path, calib, tmp: Path) -> dict[str, float]:
    import keras
    import tensorflow as tf
    import tf2onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t: dict[str, float] = {}
    model = keras.saving.load_model(model_path, safe_mode=True)
    c0 = time.perf_counter()
    tf.lite.TFLiteConverter.from_keras_model(model).convert()
    t["tflite_fp32"] = time.perf_counter() - c0
    c0 = time.perf_counter()
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
    conv.inference_input_type = conv.inference_output_type = tf.int8
    conv.convert()
    t["tflite_int8"] = time.perf_counter() - c0
    c0 = time.perf_counter()
    spec = (tf.TensorSpec((None, *calib.shape[1:]), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    (tmp / "f.onnx").write_bytes(proto.SerializeToString())
    t["onnx_fp32"] = time.perf_counter() - c0
    c0 = time.perf_counter()
    quant_pre_process(str(tmp / "f.onnx"), str(tmp / "p.onnx"), skip_symbolic_shape=True)

    class Reader:
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(tmp / "p.onnx"), str(tmp / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Percentile, extra_options={"CalibPercentile": 99.999})
    t["onnx_int8"] = time.perf_counter() - c0
    return t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--calib", type=Path, default=None)
    ap.add_argument("--calib-size", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    model = args.model or shared("models", "resnet20_cifar10.keras")
    calib_src = args.calib or shared("cifar10", "calib")

    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras  # noqa: F401  (import cost is paid once, before any timing)

    from edgeres.backends.keras_io import load_model
    from edgeres.core.data import Preprocess, open_dataset
    from edgeres.core.quiet import quiet
    from edgeres.devices.targets import resolve_target
    from edgeres.pipeline import convert as pipeline

    hwc = load_model(str(model)).hwc
    calib = open_dataset(calib_src).sample(args.calib_size, 0).load(hwc, Preprocess())[0]
    raw_best, ours_best, ours_stages = None, None, None
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp, quiet():
            raw = raw_calls(model, calib, Path(tmp))
        if raw_best is None or sum(raw.values()) < sum(raw_best.values()):
            raw_best = raw
        with tempfile.TemporaryDirectory() as tmp:
            cfg = pipeline.ConvertConfig(model=str(model), calib=str(calib_src), data=None,
                                         output_dir=Path(tmp) / "run", target=resolve_target("x86-64"),
                                         calib_size=args.calib_size)
            report = pipeline.run_convert(cfg)
        if ours_best is None or report.conversion_seconds < ours_best:
            ours_best, ours_stages = report.conversion_seconds, report.stages_seconds
    raw_total = sum(raw_best.values())
    rows = [(k, f"{raw_best.get(k, 0):.2f}", f"{ours_stages.get(k, 0):.2f}")
            for k in ("load", "calibration_data", "tflite_fp32", "tflite_int8", "onnx_fp32", "onnx_int8")]
    rows.append(("total (conversion)", f"{raw_total:.2f}", f"{ours_best:.2f}"))
    print(f"model {model.name}, {args.calib_size} calibration images, best of {args.repeat} rounds")
    print(table(("stage", "raw calls s", "edgeres s"), rows))
    ratio = ours_best / raw_total
    print(f"\nedgeres conversion / raw converter calls: {ratio:.2f}x (figure: <= 1.3x)")
    return 0 if ratio <= 1.3 else 1


if __name__ == "__main__":
    sys.exit(main())
