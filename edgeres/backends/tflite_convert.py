"""Keras -> TFLite float32 and full-integer int8.  HEAVY layer (TensorFlow).

The int8 model is *full integer*: the converter is restricted to
``TFLITE_BUILTINS_INT8`` and the result is checked op by op, so an op that
would silently stay in float is reported by name instead of shipped.
These are the converter calls both the float export and the quantizer
(:mod:`.tflite_quant`) use.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

from edgeres.core.errors import ConversionError, first_line

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
    """Stock full-integer int8 TFLite, calibrated on ``calib`` (N,H,W,C float32) by the converter's min/max.

    The one-call conversion a user would write by hand; edgeres' own int8 goes through
    :class:`TFLiteQuantizer` and a recipe.
    """
    tf, conv = _quantizing_converter(model, calib)
    conv.inference_input_type = conv.inference_output_type = _io_type(tf, io_dtype)
    data = _run(conv, "int8")
    _refuse_float_ops(data)
    return data


def _quantizing_converter(model: Any, calib: np.ndarray, ops: str = "int8", images: int | None = None):
    """A TFLiteConverter set up for post-training integer quantization on ``calib`` (batch 1)."""
    tf, conv = _converter(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if ops == "int8" else
                                      tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    n = len(calib) if images is None else min(len(calib), images)
    conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(n))
    return tf, conv


def _io_type(tf, io_dtype: str):
    if io_dtype not in _IO_TYPES:
        raise ConversionError(f"unknown TFLite I/O dtype {io_dtype!r}; choose from {', '.join(_IO_TYPES)}")
    return {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[io_dtype]


def _refuse_float_ops(data: bytes) -> set[str]:
    """Raise when an op with no int8 kernel stayed in float; returns the (empty) set otherwise."""
    float_ops = float_compute_ops(data)
    if float_ops:
        raise ConversionError(f"ops with no int8 kernel stayed in float: {', '.join(sorted(float_ops))}")
    return float_ops


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
    return {op for op, _ in float_compute_sites(model_bytes)}


def float_compute_sites(model_bytes: bytes) -> list[tuple[str, str]]:
    """(op name, output tensor name) of every op in an int8 model that computes in float, in graph order
    (excluding I/O (de)quantize): the output name says which Keras layer it came from."""
    from edgeres.core.runtime import tflite_module

    mod, _ = tflite_module()
    interp = mod.Interpreter(model_content=model_bytes)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    found: list[tuple[str, str]] = []
    for op in interp._get_ops_details():
        if op["op_name"] in _BOUNDARY_OPS:
            continue
        idx = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if any(np.dtype(tensors[i]["dtype"]) == np.float32 for i in idx):
            outs = [i for i in op["outputs"] if i >= 0]
            found.append((op["op_name"], tensors[outs[0]]["name"] if outs else ""))
    return found
