"""Issue #13: why ResNet-50's 7x7 convolutions run slower per pixel in ONNX Runtime, in one run.

    python benchmarks/mlas_partition.py [--threads 2] [--rounds 5] [--runs 300]

ORT's int8 convolution (``QLinearConv``, MLAS' symmetric kernels) splits the work between threads by
output pixels only, in tasks of a fixed number of pixels (``ComputeOutputStride`` in ORT's
``qlinearconv.cc``); every task reads all the weights.  At 7x7 = 49 output pixels and 2 threads, that is
7 tasks of 8 pixels, so one thread does 4 tasks and the other 3.  This script times the same 3x3 512->512
int8 convolution (the layer conv5 repeats in ResNet-50) on output sizes around 49 pixels, interleaved in
``--rounds`` rounds, and prints the median time and time per pixel: a 6x8 output (48 pixels, 6 tasks, 3
each) against the 7x7 one (49 pixels).  If the per-pixel time jumps at 49, the gap is the partition, and
no exact rewrite of the graph removes it: any split of the 49 pixels into two convolutions pays the
fixed cost of a second weight pass.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import table

SIZES = ((5, 5), (4, 7), (7, 6), (6, 8), (7, 7), (7, 8), (8, 8))


def quantized_conv(h: int, w: int, c: int, o: int, k: int) -> bytes:
    """A QDQ U8S8 per-channel model: NHWC float input -> 3x3 conv -> ReLU, quantized by quantize_static."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["input"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w", "b"], ["c"], pads=[k // 2] * 4),
             helper.make_node("Relu", ["c"], ["y"])]
    inits = [numpy_helper.from_array(rng.normal(0, 0.05, (o, c, k, k)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(o, np.float32), "b")]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, h, w, c])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    class Reader:
        def __init__(self):
            self.batches = iter([{"input": rng.uniform(0, 1, (1, h, w, c)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as d:
        onnx.save(model, Path(d) / "f.onnx")
        logging.disable(logging.WARNING)  # quantize_static's "consider pre-processing" advice
        quantize_static(Path(d) / "f.onnx", Path(d) / "q.onnx", Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        logging.disable(logging.NOTSET)
        return (Path(d) / "q.onnx").read_bytes()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    import onnxruntime as ort

    sessions = {}
    for h, w in SIZES:
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.log_severity_level = 3
        x = np.random.default_rng(1).uniform(0, 1, (1, h, w, 512)).astype(np.float32)
        sessions[(h, w)] = (ort.InferenceSession(quantized_conv(h, w, 512, 512, 3), so,
                                                 providers=["CPUExecutionProvider"]), x)
    times: dict[tuple, list[float]] = {hw: [] for hw in SIZES}
    for _ in range(args.rounds):
        for hw, (sess, x) in sessions.items():
            for _ in range(30):
                sess.run(None, {"input": x})
            ts = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                sess.run(None, {"input": x})
                ts.append(time.perf_counter() - t0)
            times[hw].append(float(np.median(ts)) * 1e6)
    rows = []
    for (h, w), t in times.items():
        us = statistics.median(t)
        rows.append((f"{h}x{w}", h * w, f"{us:.0f}", f"{us / (h * w):.2f}"))
    print(f"3x3 512->512 int8 convolution, ORT {ort.__version__}, {args.threads} threads, median of "
          f"{args.rounds} interleaved rounds of {args.runs} runs:")
    print(table(("output", "pixels", "p50 us", "us per pixel"), rows))
    t48, t49 = statistics.median(times[(6, 8)]), statistics.median(times[(7, 7)])
    print(f"\n7x7 (49 pixels) / 6x8 (48 pixels): {t49 / t48:.2f}x the time for 1.02x the pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
