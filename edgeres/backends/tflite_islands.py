"""Ops with no int8 TFLite kernel: found in the converter's model, kept in float with the arithmetic after them,
and recorded.  HEAVY layer (TensorFlow Lite)."""

from __future__ import annotations

from edgeres.backends.tflite_convert import float_compute_sites
from edgeres.core import tflite_edit, tflite_schema
from edgeres.core.errors import ConversionError

#: where a float chain ends: a convolution or matrix product (its int8 kernel is the point), or an op that only
#: moves data (exact in int8); the boundary (de)quantize ops are not arithmetic either
STOPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV", "CONV_3D",
         "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "PAD", "PADV2", "CONCATENATION", "GATHER", "SLICE",
         "STRIDED_SLICE", "SPLIT", "SPLIT_V", "PACK", "UNPACK", "QUANTIZE", "DEQUANTIZE"}


def float_chain(q, data: bytes) -> list[str]:
    """Output tensor names of the ops to keep in float in every build of ``q`` (a TFLiteQuantizer): the ops the
    converter left in float in ``data`` for lack of an int8 kernel (LayerNormalization's NEG), and the
    arithmetic after them up to the next convolution, matrix product or data move
    (:func:`edgeres.core.graphs.float_chain`).  The converter quantizes LayerNormalization's MEAN, SUB, RSQRT,
    MUL and ADD one by one around its float NEG; left float, the normalised value is quantized once."""
    from edgeres.core.graphs import float_chain as chain

    islands = {tensor for _, tensor in float_compute_sites(data)}
    if not islands:
        return []
    model = tflite_schema.schema().ModelT.InitFromPackedBuf(q.calibrated, 0)
    g = model.subgraphs[0]
    names = [g.tensors[op.outputs[0]].name.decode() for op in g.operators]
    kind = {name: tflite_edit.op_kind(model, op, q._opnames) for name, op in zip(names, g.operators)}
    readers: dict[int, list[str]] = {}
    for name, op in zip(names, g.operators):
        for i in op.inputs:
            if i >= 0:
                readers.setdefault(int(i), []).append(name)
    users = {name: [u for o in op.outputs for u in readers.get(int(o), [])] for name, op in zip(names, g.operators)}
    return chain(names, kind, users, islands, STOPS)


def record_float_ops(q, data: bytes, details: dict) -> dict[str, list[str]]:
    """The ops computing in float in ``data``, by the layers they belong to, recorded in ``details["float_ops"]``
    with a note; a ConversionError naming them when the target needs a full-integer model
    (``q.allow_float_ops`` False)."""
    from edgeres.core.layers import describe_ops, float_ops_note, ops_by_layer

    where = ops_by_layer(float_compute_sites(data), q.layer_types)
    if not where:
        return where
    if not q.allow_float_ops:
        raise ConversionError(f"ops with no int8 kernel stayed in float: {describe_ops(where)}; the target needs a "
                              f"full-integer model: replace those layers, or convert for another target")
    details["float_ops"] = where
    details["float_ops_note"] = float_ops_note(where, "TFLite's converter")
    return where
