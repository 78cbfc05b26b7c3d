"""Keras -> TFLite float32 and full-integer int8.  HEAVY layer (TensorFlow).

The int8 model is *full integer*: the converter is restricted to
``TFLITE_BUILTINS_INT8`` and the result is checked op by op, so an op that
would silently stay in float is reported by name instead of shipped.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

from edgeres.errors import ConversionError, first_line

_IO_TYPES = ("int8", "uint8", "float32")
# Ops that only move data between float and int8 at the model boundary.
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


def _converter(model: Any):
    import tensorflow as tf

    return tf, tf.lite.TFLiteConverter.from_keras_model(model)


def to_float32(model: Any) -> bytes:
    tf, conv = _converter(model)
    return _run(conv, "float32")


def to_int8(model: Any, calib: np.ndarray, io_dtype: str = "int8") -> bytes:
    """Full-integer int8 TFLite, calibrated on ``calib`` (N,H,W,C float32)."""
    if io_dtype not in _IO_TYPES:
        raise ConversionError(f"unknown TFLite I/O dtype {io_dtype!r}; choose from {', '.join(_IO_TYPES)}")
    tf, conv = _converter(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

    def representative():
        for i in range(len(calib)):
            yield [calib[i:i + 1]]

    conv.representative_dataset = representative
    io_type = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[io_dtype]
    conv.inference_input_type = io_type
    conv.inference_output_type = io_type
    data = _run(conv, "int8")
    float_ops = float_compute_ops(data)
    if float_ops:
        raise ConversionError(f"ops with no int8 kernel stayed in float: {', '.join(sorted(float_ops))}")
    return data


def _run(conv, precision: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return conv.convert()
        except Exception as exc:  # ConverterError and friends
            raise ConversionError(_explain(exc, precision)) from None


_FLEX_RE = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")
_TF_OP_RE = re.compile(r'"tf\.(\w+)"')
_QUANT_RE = re.compile(r"Quantization not yet supported for op: '?(\w+)'?")


def _explain(exc: Exception, precision: str) -> str:
    text = str(exc)
    ops = set(_FLEX_RE.findall(text)) or set(_TF_OP_RE.findall(text))
    if ops:
        return (f"TFLite {precision} conversion failed: ops with no TFLite builtin "
                f"{'int8 ' if precision == 'int8' else ''}kernel: {', '.join(sorted(ops))}")
    quant = set(_QUANT_RE.findall(text))
    if quant:
        return f"TFLite int8 conversion failed: ops with no int8 kernel: {', '.join(sorted(quant))}"
    return f"TFLite {precision} conversion failed: {first_line(exc)}"


def float_compute_ops(model_bytes: bytes) -> set[str]:
    """Names of ops in an int8 model that compute in float (excluding I/O (de)quantize)."""
    from edgeres.runtime import tflite_module

    mod, _ = tflite_module()
    interp = mod.Interpreter(model_content=model_bytes)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    found: set[str] = set()
    for op in interp._get_ops_details():
        if op["op_name"] in _BOUNDARY_OPS:
            continue
        idx = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if any(np.dtype(tensors[i]["dtype"]) == np.float32 for i in idx):
            found.add(op["op_name"])
    return found
