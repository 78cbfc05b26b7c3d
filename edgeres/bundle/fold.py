"""Fold the preprocessing into an integer-input TFLite model, exactly, so an app feeds raw uint8 pixels.

LIGHT: numpy and the TFLite flatbuffer schema (``ai_edge_litert``'s copy) only.

The run validated ``model(quantize((pixels * scale - mean) / std))``, with :func:`edgeres.core.runtime.
quantize` doing the rounding.  A pixel is one of 256 values per channel, so that whole input path is a
table of 256 x C integers, computed here with the very functions the run used.  The folded model takes
``uint8`` pixels (scale 1, zero-point 0: 0..255 map to themselves) and looks each one up:

* nothing, when the model already takes raw ``uint8`` pixels;
* one ``QUANTIZE`` (uint8 -> int8, scale 1, zero-point -128), when the table is ``p - 128`` (raw pixels into
  an int8 model: the usual case for models that normalise inside);
* else ``CAST`` (uint8 -> int32), for per-channel tables an ``ADD`` of ``256 * channel``, and ``GATHER``
  from the int8/uint8 table.  All integer ops, so the fold is exact by construction (the tests feed every
  pixel value through the runtime to prove it).

With ``float_output`` an int8/uint8 output gets one ``DEQUANTIZE`` to float32, the same
``scale * (q - zero_point)`` the run applied, so scores come out as floats (what the TFLite Task Library
and ML Model Binding read) and the top-1 cannot change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeres.core.errors import ModelError, ShapeError
from edgeres.core.preprocess import Preprocess
from edgeres.core.runtime import quantize
from edgeres.core.tflite_schema import schema

_NP = {"INT8": np.int8, "UINT8": np.uint8}


@dataclass(frozen=True)
class Fold:
    """What :func:`fold_preprocessing` did, for the manifest."""

    method: str  # "none" | "quantize" | "gather" | "gather-per-channel"
    input_quant: tuple[float, int]  # of the new uint8 input: always (1.0, 0)
    body_input_quant: tuple[float, int]  # what the body takes, as in the run
    output_dequantized: bool

    def to_dict(self) -> dict:
        return {"method": self.method, "input_dtype": "uint8", "input_quant": list(self.input_quant),
                "body_input_quant": list(self.body_input_quant), "output_dequantized": self.output_dequantized}


def _type_name(code: int) -> str:
    names = {v: k for k, v in vars(schema().TensorType).items() if not k.startswith("_")}
    return names.get(code, str(code))


def pixel_table(preprocess: Preprocess, quant: tuple[float, int], dtype: np.dtype, channels: int) -> np.ndarray:
    """(256, C) integers: what the run fed the model for pixel value ``p`` in channel ``c``."""
    pixels = np.repeat(np.arange(256, dtype=np.float32)[:, None], channels, axis=1)[None, None]  # 1x1x256xC
    return quantize(preprocess.apply(pixels), quant, dtype)[0, 0]


def fold_preprocessing(model: bytes, preprocess: Preprocess, *, float_output: bool = True) -> tuple[bytes, Fold]:
    """``model`` (an int8/uint8-input TFLite flatbuffer) taking raw uint8 pixels; see the module docstring."""
    s = schema()
    m = s.ModelT.InitFromPackedBuf(bytearray(model), 0)
    if len(m.subgraphs) != 1:
        raise ModelError(f"--fold-preprocessing handles single-subgraph models; this one has {len(m.subgraphs)}")
    g = m.subgraphs[0]
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise ModelError(f"--fold-preprocessing handles one input and one output; this model has "
                         f"{len(g.inputs)} and {len(g.outputs)}")
    old = g.tensors[g.inputs[0]]
    kind = _type_name(old.type)
    if kind not in _NP:
        raise ModelError(f"--fold-preprocessing needs an int8 or uint8 input, so that the fold is exact; this "
                         f"model takes {kind.lower()} (convert with --io-dtype int8 or uint8)")
    q = old.quantization
    if q is None or q.scale is None or len(q.scale) != 1:
        raise ModelError("--fold-preprocessing needs a per-tensor quantized input; this model's input has "
                         "no single scale and zero-point")
    shape = [int(v) for v in old.shape]
    if len(shape) != 4:
        raise ShapeError(f"--fold-preprocessing needs an NHWC image input; this model's input is {shape}")
    channels = shape[3]
    body_quant = (float(q.scale[0]), int(q.zeroPoint[0]))
    table = pixel_table(preprocess, body_quant, np.dtype(_NP[kind]), channels)
    raw = np.arange(256)[:, None]
    if kind == "UINT8" and (table == raw).all():
        method = "none"
    else:
        new = _tensor(s, old.name, shape, s.TensorType.UINT8, (1.0, 0), old.shapeSignature)
        old.name = old.name + b"/folded" if isinstance(old.name, bytes) else f"{old.name}/folded"
        new_index = _add_tensor(g, new)
        if kind == "INT8" and body_quant == (1.0, -128) and (table == raw - 128).all():
            method = "quantize"
            _insert(m, g, 0, s.BuiltinOperator.QUANTIZE, 1, [new_index], [g.inputs[0]])
        else:
            method = _gather(s, m, g, new_index, table, kind, body_quant, shape)
        for sig in m.signatureDefs or []:
            for t in sig.inputs or []:
                if t.tensorIndex == g.inputs[0]:
                    t.tensorIndex = new_index
        g.inputs = np.array([new_index], dtype=np.int32)
    dequantized = float_output and _dequantize_output(s, m, g)
    return _pack(s, m), Fold(method, (1.0, 0), body_quant, dequantized)


def _gather(s, m, g, new_index: int, table: np.ndarray, kind: str, quant: tuple[float, int],
            shape: list[int]) -> str:
    """CAST (+ ADD 256 * channel) + GATHER from ``table`` into the body's input tensor."""
    per_channel = not (table == table[:, :1]).all()
    flat = (table.T.reshape(-1) if per_channel else table[:, 0]).astype(_NP[kind])
    idx = _add_tensor(g, _tensor(s, b"pixels/index", shape, s.TensorType.INT32, None))
    _insert(m, g, 0, s.BuiltinOperator.CAST, 1, [new_index], [idx],
            s.BuiltinOptions.CastOptions, _options(s.CastOptionsT(), inDataType=s.TensorType.UINT8,
                                                     outDataType=s.TensorType.INT32))
    if per_channel:
        offsets = _add_tensor(g, _tensor(s, b"pixels/channel_offset", [shape[3]], s.TensorType.INT32, None,
                                         buffer=_add_buffer(s, m, 256 * np.arange(shape[3], dtype=np.int32))))
        shifted = _add_tensor(g, _tensor(s, b"pixels/index_per_channel", shape, s.TensorType.INT32, None))
        _insert(m, g, 1, s.BuiltinOperator.ADD, 1, [idx, offsets], [shifted], s.BuiltinOptions.AddOptions,
                _options(s.AddOptionsT(), fusedActivationFunction=s.ActivationFunctionType.NONE))
        idx = shifted
    params = _add_tensor(g, _tensor(s, b"pixels/table", [flat.size], getattr(s.TensorType, kind), quant,
                                    buffer=_add_buffer(s, m, flat)))
    _insert(m, g, 2 if per_channel else 1, s.BuiltinOperator.GATHER, 2 if kind == "INT8" else 1,
            [params, idx], [int(g.inputs[0])], s.BuiltinOptions.GatherOptions,
            _options(s.GatherOptionsT(), axis=0, batchDims=0))
    return "gather-per-channel" if per_channel else "gather"


def _dequantize_output(s, m, g) -> bool:
    """Append DEQUANTIZE to float32 after an int8/uint8 output; False when the output is already float."""
    out_index = int(g.outputs[0])
    out = g.tensors[out_index]
    if _type_name(out.type) not in _NP:
        return False
    name = out.name.decode() if isinstance(out.name, bytes) else out.name
    fl = _tensor(s, name, [int(v) for v in out.shape], s.TensorType.FLOAT32, None, out.shapeSignature)
    out.name = f"{name}/quantized"
    new_index = _add_tensor(g, fl)
    _insert(m, g, len(g.operators), s.BuiltinOperator.DEQUANTIZE, 2 if _type_name(out.type) == "INT8" else 1,
            [out_index], [new_index])
    for sig in m.signatureDefs or []:
        for t in sig.outputs or []:
            if t.tensorIndex == out_index:
                t.tensorIndex = new_index
    g.outputs = np.array([new_index], dtype=np.int32)
    return True


def _options(obj, **fields):
    for k, v in fields.items():
        setattr(obj, k, v)
    return obj


def _tensor(s, name, shape, dtype: int, quant: tuple[float, int] | None, signature=None, buffer: int = 0):
    t = s.TensorT()
    t.name = name.encode() if isinstance(name, str) else name
    t.shape = np.asarray(shape, dtype=np.int32)
    if signature is not None:
        t.shapeSignature = np.asarray(signature, dtype=np.int32)
    t.type, t.buffer, t.hasRank = dtype, buffer, True
    if quant is not None:
        t.quantization = s.QuantizationParametersT()
        t.quantization.scale = np.asarray([quant[0]], dtype=np.float32)
        t.quantization.zeroPoint = np.asarray([quant[1]], dtype=np.int64)
    return t


def _add_tensor(g, t) -> int:
    g.tensors.append(t)
    return len(g.tensors) - 1


def _add_buffer(s, m, data: np.ndarray) -> int:
    b = s.BufferT()
    b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
    m.buffers.append(b)
    return len(m.buffers) - 1


def _opcode(s, m, code: int, version: int) -> int:
    for i, oc in enumerate(m.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code and oc.version >= version and not oc.customCode:
            return i
    oc = s.OperatorCodeT()
    oc.builtinCode, oc.version = code, version
    oc.deprecatedBuiltinCode = min(code, s.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    m.operatorCodes.append(oc)
    return len(m.operatorCodes) - 1


def _insert(m, g, at: int, code: int, version: int, inputs, outputs, options_type: int = 0,
            options=None) -> None:
    s = schema()
    op = s.OperatorT()
    op.opcodeIndex = _opcode(s, m, code, version)
    op.inputs = np.asarray(inputs, dtype=np.int32)
    op.outputs = np.asarray(outputs, dtype=np.int32)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    g.operators.insert(at, op)


def _pack(s, m) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())
