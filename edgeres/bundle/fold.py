"""Fold the preprocessing into an integer-input TFLite model, exactly, so an app feeds raw uint8 pixels.

LIGHT: numpy and the TFLite flatbuffer schema (``ai_edge_litert``'s copy) only.

The run validated ``model(quantize((pixels * scale - mean) / std))``, with :func:`edgeres.core.runtime.
quantize` doing the rounding.  A pixel is one of 256 values per channel, so that whole input path is a
table of 256 x C integers, computed here with the very functions the run used.  The folded model takes
``uint8`` pixels (scale 1, zero-point 0: 0..255 map to themselves) and looks each one up:

* nothing, when the model already takes raw ``uint8`` pixels;
* one ``QUANTIZE`` (uint8 -> int8, scale 1, zero-point -128), when the table is ``p - 128`` (raw pixels into
  an int8 model: the usual case for models that normalise inside);
* else, when it reproduces the table exactly, ``DEQUANTIZE`` (pixels as float32), ``MUL`` and ``ADD`` by
  per-channel constants and ``QUANTIZE`` into the body: four ops XNNPACK runs, so the fold costs no
  latency.  Float rounding could differ from the run's in a last bit, so this path is only taken after the
  pixel path alone, cut out of the folded model, gives the table's value for every pixel value in every
  channel with XNNPACK and with the built-in kernels;
* otherwise ``CAST`` (uint8 -> int32), for per-channel tables an ``ADD`` of ``256 * channel``, and
  ``GATHER`` from the int8/uint8 table: integer ops, exact by construction (and checked the same way).

With ``float_output`` an int8/uint8 output gets one ``DEQUANTIZE`` to float32, the same
``scale * (q - zero_point)`` the run applied, so scores come out as floats (what the TFLite Task Library
and ML Model Binding read) and the top-1 cannot change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeres.core import tflite_edit as tfl
from edgeres.core.errors import ModelError, ShapeError
from edgeres.core.preprocess import Preprocess
from edgeres.core.runtime import quantize
from edgeres.core.stop import temp_dir
from edgeres.core.tflite_schema import schema

_NP = {"INT8": np.int8, "UINT8": np.uint8}


@dataclass(frozen=True)
class Fold:
    """What :func:`fold_preprocessing` did, for the manifest."""

    method: str  # "none" | "quantize" | "float" | "gather" | "gather-per-channel"
    input_quant: tuple[float, int]  # of the new uint8 input: always (1.0, 0)
    body_input_quant: tuple[float, int]  # what the body takes, as in the run
    output_dequantized: bool

    def to_dict(self) -> dict:
        return {"method": self.method, "input_dtype": "uint8", "input_quant": list(self.input_quant),
                "body_input_quant": list(self.body_input_quant), "output_dequantized": self.output_dequantized}


def ramp_images(hwc) -> np.ndarray:
    """As few float32 images as hold every pixel value 0..255 in every channel (the same value in all
    channels of a pixel)."""
    h, w, c = hwc
    n = -(-256 // (h * w))
    return (np.arange(n * h * w) % 256).reshape(n, h, w, 1).repeat(c, axis=3).astype(np.float32)


def pixel_table(preprocess: Preprocess, quant: tuple[float, int], dtype: np.dtype, channels: int) -> np.ndarray:
    """(256, C) integers: what the run fed the model for pixel value ``p`` in channel ``c``."""
    pixels = np.repeat(np.arange(256, dtype=np.float32)[:, None], channels, axis=1)[None, None]  # 1x1x256xC
    return quantize(preprocess.apply(pixels), quant, dtype)[0, 0]


def fold_preprocessing(model: bytes, preprocess: Preprocess, *, float_output: bool = True) -> tuple[bytes, Fold]:
    """``model`` (an int8/uint8-input TFLite flatbuffer) taking raw uint8 pixels; see the module docstring."""
    s = schema()
    m = tfl.load(model)
    if len(m.subgraphs) != 1:
        raise ModelError(f"--fold-preprocessing handles single-subgraph models; this one has {len(m.subgraphs)}")
    g = m.subgraphs[0]
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise ModelError(f"--fold-preprocessing handles one input and one output; this model has "
                         f"{len(g.inputs)} and {len(g.outputs)}")
    old = g.tensors[g.inputs[0]]
    kind = tfl.type_name(old.type)
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
    body_quant = (float(q.scale[0]), int(q.zeroPoint[0]))
    table = pixel_table(preprocess, body_quant, np.dtype(_NP[kind]), shape[3])
    raw = np.arange(256)[:, None]
    if kind == "UINT8" and (table == raw).all():
        method = "none"
    elif kind == "INT8" and body_quant == (1.0, -128) and (table == raw - 128).all():
        method = "quantize"
        body_input, new = _new_input(g, shape)
        tfl.insert(m, g, 0, s.BuiltinOperator.QUANTIZE, 1, [new], [body_input])
        tfl.retarget(m, g, "inputs", body_input, new)
    else:
        m, g, method = _pixel_path(model, preprocess, kind, body_quant, shape, table)
    dequantized = float_output and tfl.type_name(g.tensors[int(g.outputs[0])].type) in _NP
    if dequantized:
        tfl.append_float_tail(m, g, None)
    return tfl.pack(m), Fold(method, (1.0, 0), body_quant, dequantized)


def _new_input(g, shape: list[int]) -> tuple[int, int]:
    """A uint8 input (scale 1, zero-point 0) named as the model's input, which becomes the body's input."""
    body_input = int(g.inputs[0])
    old = g.tensors[body_input]
    new = tfl.add_tensor(g, tfl.tensor(old.name, shape, schema().TensorType.UINT8, (1.0, 0), old.shapeSignature))
    old.name = old.name + b"/folded" if isinstance(old.name, bytes) else f"{old.name}/folded"
    return body_input, new


def _pixel_path(model: bytes, preprocess: Preprocess, kind: str, quant: tuple[float, int], shape: list[int],
                table: np.ndarray):
    """The float path when it is exact for every pixel value, else the GATHER path; (ModelT, subgraph, method)."""
    for method in ("float", "gather"):
        m = tfl.load(model)
        g = m.subgraphs[0]
        body_input, new = _new_input(g, shape)
        if method == "float":
            n_ops = _float_ops(m, g, new, body_input, preprocess, shape)
        else:
            method, n_ops = _gather(m, g, new, body_input, table, kind, quant, shape)
        tfl.retarget(m, g, "inputs", body_input, new)
        if _pixel_path_exact(m, n_ops, body_input, table, shape):
            return m, g, method
    raise ModelError("the folded preprocessing does not reproduce the run's input exactly; bundle without "
                     "--fold-preprocessing")


def _float_ops(m, g, new: int, body_input: int, preprocess: Preprocess, shape: list[int]) -> int:
    """uint8 -> DEQUANTIZE -> MUL a -> ADD b -> QUANTIZE (the body's scale and zero-point), a = scale / std and
    b = -mean / std per channel: x = (pixels * scale - mean) / std rearranged."""
    s = schema()
    c = shape[3]
    std = np.resize(np.asarray(preprocess.std, np.float64), c)
    a = (preprocess.scale / std).astype(np.float32)
    b = (-np.resize(np.asarray(preprocess.mean, np.float64), c) / std).astype(np.float32)
    fl = s.TensorType.FLOAT32
    x = tfl.add_tensor(g, tfl.tensor(b"pixels/float", shape, fl, None))
    xa = tfl.add_tensor(g, tfl.tensor(b"pixels/scaled", shape, fl, None))
    xb = tfl.add_tensor(g, tfl.tensor(b"pixels/normalised", shape, fl, None))
    ta = tfl.add_tensor(g, tfl.tensor(b"pixels/scale", [c], fl, None, buffer=tfl.add_buffer(m, a)))
    tb = tfl.add_tensor(g, tfl.tensor(b"pixels/offset", [c], fl, None, buffer=tfl.add_buffer(m, b)))
    none = s.ActivationFunctionType.NONE
    tfl.insert(m, g, 0, s.BuiltinOperator.DEQUANTIZE, 1, [new], [x])
    tfl.insert(m, g, 1, s.BuiltinOperator.MUL, 1, [x, ta], [xa], s.BuiltinOptions.MulOptions,
               tfl.options(s.MulOptionsT(), fusedActivationFunction=none))
    tfl.insert(m, g, 2, s.BuiltinOperator.ADD, 1, [xa, tb], [xb], s.BuiltinOptions.AddOptions,
               tfl.options(s.AddOptionsT(), fusedActivationFunction=none))
    tfl.insert(m, g, 3, s.BuiltinOperator.QUANTIZE, 1, [xb], [body_input])
    return 4


def _pixel_path_exact(m, n_ops: int, body_input: int, table: np.ndarray, shape: list[int]) -> bool:
    """Run the first ``n_ops`` ops alone (the pixel path, cut out of the model) on every pixel value in every
    channel, with XNNPACK and with the built-in kernels, and compare with ``table``."""
    from pathlib import Path

    from edgeres.core.quiet import quiet
    from edgeres.core.runtime import open_runner

    cut = tfl.load(tfl.pack(m))
    g = cut.subgraphs[0]
    g.operators = g.operators[:n_ops]
    g.outputs = np.asarray([body_input], dtype=np.int32)
    for sig in cut.signatureDefs or []:
        sig.outputs = []
    pixels = ramp_images(shape[1:])
    want = table[pixels.astype(np.int64), np.arange(shape[3])]
    with temp_dir("edgeres-fold-") as tmp:
        path = Path(tmp) / "pixel_path.tflite"
        path.write_bytes(tfl.pack(cut))
        for delegate in ("xnnpack", "none"):
            with quiet():
                r = open_runner(path, threads=1, delegate=delegate)
                got = np.concatenate([r._run(r.quantize_input(pixels[i:i + 1])) for i in range(len(pixels))])
            if not np.array_equal(got.reshape(want.shape), want):
                return False
    return True


def _gather(m, g, new: int, body_input: int, table: np.ndarray, kind: str, quant: tuple[float, int],
            shape: list[int]) -> tuple[str, int]:
    """CAST (+ ADD 256 * channel) + GATHER from ``table`` into the body's input tensor; (method, ops added)."""
    s = schema()
    per_channel = not (table == table[:, :1]).all()
    flat = (table.T.reshape(-1) if per_channel else table[:, 0]).astype(_NP[kind])
    idx = tfl.add_tensor(g, tfl.tensor(b"pixels/index", shape, s.TensorType.INT32, None))
    tfl.insert(m, g, 0, s.BuiltinOperator.CAST, 1, [new], [idx], s.BuiltinOptions.CastOptions,
               tfl.options(s.CastOptionsT(), inDataType=s.TensorType.UINT8, outDataType=s.TensorType.INT32))
    if per_channel:
        offsets = tfl.add_tensor(g, tfl.tensor(b"pixels/channel_offset", [shape[3]], s.TensorType.INT32, None,
                                               buffer=tfl.add_buffer(m, 256 * np.arange(shape[3], dtype=np.int32))))
        shifted = tfl.add_tensor(g, tfl.tensor(b"pixels/index_per_channel", shape, s.TensorType.INT32, None))
        tfl.insert(m, g, 1, s.BuiltinOperator.ADD, 1, [idx, offsets], [shifted], s.BuiltinOptions.AddOptions,
                   tfl.options(s.AddOptionsT(), fusedActivationFunction=s.ActivationFunctionType.NONE))
        idx = shifted
    params = tfl.add_tensor(g, tfl.tensor(b"pixels/table", [flat.size], getattr(s.TensorType, kind), quant,
                                          buffer=tfl.add_buffer(m, flat)))
    tfl.insert(m, g, 2 if per_channel else 1, s.BuiltinOperator.GATHER, 2 if kind == "INT8" else 1,
               [params, idx], [body_input], s.BuiltinOptions.GatherOptions,
               tfl.options(s.GatherOptionsT(), axis=0, batchDims=0))
    return ("gather-per-channel", 3) if per_channel else ("gather", 2)
