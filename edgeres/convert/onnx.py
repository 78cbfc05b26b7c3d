"""Keras -> ONNX float32 (tf2onnx) -> ONNX int8 (ONNX Runtime static QDQ).

HEAVY layer.  The int8 scheme comes from the target: U8S8 (uint8 activations,
int8 per-channel weights) on x86, where ORT's VNNI/AVX2 kernels want unsigned
activations, and S8S8 on ARM.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.errors import ConversionError

OPSET = 17
INPUT_NAME = "input"


def to_float32(model: Any, hwc: tuple[int, int, int]) -> bytes:
    """tf2onnx conversion with an explicit (None, H, W, C) input signature (Keras 3 needs it)."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, *hwc), tf.float32, name=INPUT_NAME),)
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    except Exception as exc:
        raise ConversionError(f"ONNX conversion (tf2onnx) failed: {_first_line(exc)}") from None
    check(proto)
    return proto.SerializeToString()


def check(proto_or_bytes) -> None:
    import onnx

    proto = proto_or_bytes
    if isinstance(proto_or_bytes, (bytes, bytearray)):
        proto = onnx.load_from_string(bytes(proto_or_bytes))
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"ONNX model fails onnx.checker: {_first_line(exc)}") from None


class _Reader:
    """The one-method data reader ONNX Runtime's calibrators expect."""

    def __init__(self, name: str, calib: np.ndarray, batch: int = 16):
        self._batches = iter([{name: calib[i:i + batch]} for i in range(0, len(calib), batch)])

    def get_next(self):
        return next(self._batches, None)


CALIBRATION_METHODS = ("percentile", "minmax", "entropy")
DEFAULT_PERCENTILE = 99.999


def to_int8(float_model: bytes, calib: np.ndarray, activation_type: str = "uint8",
            per_channel: bool = True, method: str = "percentile",
            percentile: float = DEFAULT_PERCENTILE) -> tuple[bytes, list[str]]:
    """Static QDQ quantization of a float ONNX model, calibrated on ``calib``.

    Returns the model and the names of the nodes left in float.

    The default clips activation ranges at the 99.999th percentile of |x|
    instead of the raw min/max, so one outlier image cannot stretch a range.
    On ResNet-20/CIFAR-10 this halved the top-1 loss of min-max (see
    benchmarks/accuracy_resnet20.py).  Histogram methods get batch-1 input:
    ORT's histogram collector fails on a ragged last batch.
    """
    if method not in CALIBRATION_METHODS:
        raise ConversionError(f"unknown calibration method {method!r}; choose from {', '.join(CALIBRATION_METHODS)}")
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    act = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[activation_type]
    ort_method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[method]
    extra = {"WeightSymmetric": True, "ActivationSymmetric": False}
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    batch = 16 if method == "minmax" else 1
    input_name = onnx.load_from_string(float_model).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="edgeres-ort-") as tmp:
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(float_model)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantize the raw graph instead
            pre = src
        keep_float = input_normalization_nodes(onnx.load(str(pre)))
        try:
            quantize_static(
                str(pre), str(dst), _Reader(input_name, calib, batch),
                nodes_to_exclude=keep_float,
                quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=act, weight_type=QuantType.QInt8,
                calibrate_method=ort_method, extra_options=extra,
            )
        except Exception as exc:
            raise ConversionError(f"ONNX int8 quantization failed: {_first_line(exc)}") from None
        data = dst.read_bytes()
    check(data)
    return data, keep_float


_AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


def input_normalization_nodes(proto) -> list[str]:
    """Nodes of the model's own input normalization (``preprocess_*`` layers).

    They are a per-channel affine map on the raw input.  Kept in float they
    cost about 0.9 ms on ResNet-50 at 224x224; quantized, ORT runs them as
    QLinearMul/QLinearAdd at full resolution for about 3 ms, and they add a
    rounding step before the first convolution.  So they stay float, and the
    QuantizeLinear before the first Conv quantizes the normalized input.
    """
    return [n.name for n in proto.graph.node if n.op_type in _AFFINE_OPS and "preprocess_" in n.name]


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
