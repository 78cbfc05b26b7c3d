"""Coral Edge TPU: a static compatibility check, and the real compiler when it is installed.

LIGHT layer: numpy plus the TFLite flatbuffer schema bindings of a TFLite
runtime (``ai_edge_litert.schema_py_generated``; ``tensorflow.lite`` only as a
lazy last resort).  No model is loaded into an interpreter.

:func:`check_model` reads a ``.tflite`` file and checks it against the
requirements published on coral.ai, "TensorFlow models on the Edge TPU"
(https://coral.ai/docs/edgetpu/models-intro/, "Model requirements" and
"Supported operations", for Edge TPU compiler 16 / runtime 14 and later):

* tensor parameters are 8-bit quantized (int8 or uint8);
* tensor sizes are constant at compile time (no dynamic shapes);
* tensors have at most 3 dimensions larger than 1, the innermost 3 (so batch 1);
* only the ops of the supported-ops table are used, within their limitations.

The compiler maps ops in graph order and partitions the graph once: "as soon
as an unsupported operation occurs, that operation and everything after it
executes on the CPU, even if the subsequent operations are supported".  So
the report names the first unsupported op and counts everything from there on
as CPU work.  A float-to-int QUANTIZE on a model input and an int-to-float
DEQUANTIZE on a model output are the exception: they run on the CPU at the
boundary without splitting the graph.

:func:`compile_model` runs ``edgetpu_compiler`` (x86-64 Debian/Ubuntu only)
and :func:`parse_compiler_log` reads what it prints.
"""

from __future__ import annotations

import functools
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.core.errors import ConversionError, ModelError, RuntimeUnavailableError

DOCS_URL = "https://coral.ai/docs/edgetpu/models-intro/"
COMPILER_URL = "https://coral.ai/docs/edgetpu/compiler/"
ON_CHIP_BYTES = 8 * 2**20  # the Edge TPU's on-chip parameter cache (8 MiB)
SOFTMAX_MAX_ELEMENTS = 16_000
COMPILE_TIMEOUT_S = 600.0

# The supported-operations table of DOCS_URL (compiler 16, runtime 14: the
# latest), by TFLite builtin op name, with its "known limitations" column; ""
# means none.  Rows for runtime <= 12 only (the old Squeeze limitation) are
# left out.  The limitations that the flatbuffer can show are checked in
# _op_constraints(); "might not be mapped" ones become warnings.  Not on the
# list, so CPU-only: HARD_SWISH, LEAKY_RELU, GELU, DEQUANTIZE, SPLIT_V, PADV2,
# ... (see also google-coral/edgetpu issues #272 and #597).
SUPPORTED_OPS: dict[str, str] = {
    "ADD": "",
    "AVERAGE_POOL_2D": "No fused activation function.",
    "CONCATENATION": ("No fused activation function. If any input is a compile-time constant tensor, "
                      "there must be only 2 inputs, and this constant tensor must be all zeros."),
    "CONV_2D": "Must use the same dilation in x and y dimensions.",
    "DEPTHWISE_CONV_2D": "Must use the same dilation in x and y dimensions.",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": ("Only the default format is supported for fully-connected weights. "
                        "Output tensor is one-dimensional."),
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "Unidirectional LSTM only.",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "Unidirectional LSTM only.",
    "MAXIMUM": "",
    "MAX_POOL_2D": "No fused activation function.",
    "MEAN": "No reduction in batch dimension. If a z-reduction, the z-dimension must be multiple of 4.",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "No packing in batch dimension.",
    "PAD": "No padding in batch dimension.",
    "PRELU": "Alpha must be 1-dimensional (only the innermost dimension can be >1 size).",
    "QUANTIZE": "",
    "REDUCE_MAX": "Cannot operate on the batch dimension.",
    "REDUCE_MIN": "Cannot operate on the batch dimension.",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "Certain reshapes might not be mapped for large tensor sizes.",
    "RESIZE_BILINEAR": ("Input/output is a 3-dimensional tensor. Depending on input/output size, "
                        "this operation might not be mapped to the Edge TPU to avoid loss in precision."),
    "RESIZE_NEAREST_NEIGHBOR": ("Input/output is a 3-dimensional tensor. Depending on input/output size, "
                                "this operation might not be mapped to the Edge TPU to avoid loss in precision."),
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "Supports only 1-D input tensor with a max of 16,000 elements.",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "No splitting in batch dimension.",
    "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "",
    "STRIDED_SLICE": ("Supported only when all strides are equal to 1 (that is, effectively a Stride op), "
                      "and with ellipsis-axis-mask == 0, and new-axis-mask == 0."),
    "SUB": "",
    "SUM": "Cannot operate on the batch dimension.",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}

# Common ops that are not on the list, with the usual Edge TPU-friendly replacement.
_HINTS = {
    "HARD_SWISH": "replace hard-swish with ReLU/ReLU6",
    "LEAKY_RELU": "replace LeakyReLU with ReLU, or PReLU with shared_axes=[1, 2]",
    "GELU": "replace GELU with ReLU/ReLU6",
    "ELU": "replace ELU with ReLU/ReLU6",
    "DEQUANTIZE": "only an int-to-float DEQUANTIZE on a model output is allowed",
    "SHAPE": "a run-time SHAPE comes from a dynamic shape: convert with a fixed batch of 1",
    "RESIZE_BICUBIC": "use bilinear or nearest-neighbour resizing",
    "PADV2": "pad with zeros (PAD)",
    "MIRROR_PAD": "pad with zeros (PAD)",
    "SPLIT_V": "split into equal parts (SPLIT)",
}

_BATCH_AXIS_OPS = {"MEAN": "reduces over", "SUM": "reduces over", "REDUCE_MAX": "reduces over",
                   "REDUCE_MIN": "reduces over"}
_FUSED_ACT_FREE = ("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION")
_EIGHT_BIT = ("INT8", "UINT8")
_FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")
_NUMPY = {"FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64, "INT32": np.int32,
          "UINT8": np.uint8, "INT64": np.int64, "INT16": np.int16, "INT8": np.int8, "BOOL": np.bool_,
          "UINT32": np.uint32, "UINT16": np.uint16, "UINT64": np.uint64}


# ------------------------------------------------------------------ schema bindings

@functools.lru_cache(maxsize=1)
def _schema() -> Any:
    """The TFLite flatbuffer schema module of the lightest runtime installed."""
    try:
        from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415
        return schema
    except ImportError:
        pass
    try:  # last resort: TensorFlow ships the same generated module
        from tensorflow.lite.python import schema_py_generated as schema  # noqa: PLC0415
        return schema
    except ImportError:
        raise RuntimeUnavailableError(
            "reading .tflite files needs the TFLite schema bindings: pip install ai-edge-litert") from None


@functools.lru_cache(maxsize=1)
def _enum_names() -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
    s = _schema()

    def names(cls) -> dict[int, str]:
        return {v: k for k, v in vars(cls).items() if k.isupper() and isinstance(v, int)}

    return names(s.BuiltinOperator), names(s.TensorType), names(s.ActivationFunctionType)


# ------------------------------------------------------------------ the parsed graph

class _Graph:
    """Main subgraph of a .tflite flatbuffer: tensors, operators, constants."""

    def __init__(self, data: bytes, path: Path):
        s = _schema()
        self.schema = s
        self.path = path
        op_names, self.type_names, self.act_names = _enum_names()
        try:
            model = s.Model.GetRootAs(data, 0)
            if model.SubgraphsLength() < 1:
                raise ModelError(f"{path} is a TFLite file with no subgraph")
            self.subgraph_count = model.SubgraphsLength()
            sg = model.Subgraphs(0)
            self.codes = []
            for i in range(model.OperatorCodesLength()):
                oc = model.OperatorCodes(i)
                code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
                name = op_names.get(code, f"BUILTIN_{code}")
                if name == "CUSTOM":
                    custom = oc.CustomCode()
                    name = custom.decode("utf-8", "replace") if custom else "CUSTOM"
                self.codes.append(name)
            self.buffers = [model.Buffers(i) for i in range(model.BuffersLength())]
            self.data = data
            self.tensors = [sg.Tensors(i) for i in range(sg.TensorsLength())]
            self.inputs = [int(i) for i in sg.InputsAsNumpy()] if sg.InputsLength() else []
            self.outputs = [int(i) for i in sg.OutputsAsNumpy()] if sg.OutputsLength() else []
            self.ops = [sg.Operators(i) for i in range(sg.OperatorsLength())]
            self.op_names = [self.codes[op.OpcodeIndex()] for op in self.ops]
            self.op_inputs = [[int(t) for t in op.InputsAsNumpy()] if op.InputsLength() else []
                              for op in self.ops]
            self.op_outputs = [[int(t) for t in op.OutputsAsNumpy()] if op.OutputsLength() else []
                               for op in self.ops]
            self.all_subgraph_tensors = [model.Subgraphs(g).Tensors(i)
                                         for g in range(model.SubgraphsLength())
                                         for i in range(model.Subgraphs(g).TensorsLength())]
        except ModelError:
            raise
        except Exception as exc:  # flatbuffers raises IndexError/struct.error/TypeError on garbage
            raise ModelError(f"{path} is a corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from None

    # tensors ------------------------------------------------------------
    def name(self, t: int) -> str:
        raw = self.tensors[t].Name()
        return raw.decode("utf-8", "replace") if raw else f"tensor {t}"

    def dtype(self, t: int) -> str:
        return self.type_names.get(self.tensors[t].Type(), f"TYPE_{self.tensors[t].Type()}")

    def shape(self, t: int) -> list[int]:
        tensor = self.tensors[t]
        return [int(v) for v in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []

    def signature(self, t: int) -> list[int]:
        tensor = self.tensors[t]
        if tensor.ShapeSignatureLength():
            return [int(v) for v in tensor.ShapeSignatureAsNumpy()]
        return self.shape(t)

    def buffer_bytes(self, tensor) -> int:
        b = tensor.Buffer()
        if b <= 0 or b >= len(self.buffers):
            return 0
        buf = self.buffers[b]
        if buf.DataLength():
            return int(buf.DataLength())
        if buf.Offset() > 1:  # large models keep constants after the flatbuffer
            return int(buf.Size())
        return 0

    def is_const(self, t: int) -> bool:
        return self.buffer_bytes(self.tensors[t]) > 0

    def const_value(self, t: int) -> np.ndarray | None:
        """The value of a constant tensor, or None if it is computed at run time."""
        if t < 0 or not self.is_const(t):
            return None
        tensor = self.tensors[t]
        buf = self.buffers[tensor.Buffer()]
        dtype = _NUMPY.get(self.dtype(t))
        if dtype is None:
            return None
        if buf.DataLength():
            raw = buf.DataAsNumpy().tobytes()
        else:
            raw = self.data[buf.Offset():buf.Offset() + buf.Size()]
        arr = np.frombuffer(raw, dtype=dtype)
        shape = self.shape(t)
        return arr.reshape(shape) if shape and int(np.prod(shape)) == arr.size else arr

    def zero_point(self, t: int) -> np.ndarray:
        q = self.tensors[t].Quantization()
        if q is None or not q.ZeroPointLength():
            return np.zeros(1, dtype=np.int64)
        return q.ZeroPointAsNumpy().astype(np.int64)

    # operators ------------------------------------------------------------
    def options(self, i: int, cls_name: str):
        table = self.ops[i].BuiltinOptions()
        if table is None:
            return None
        opts = getattr(self.schema, cls_name)()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def fused_activation(self, i: int, cls_name: str) -> str:
        opts = self.options(i, cls_name)
        code = opts.FusedActivationFunction() if opts is not None else 0
        return self.act_names.get(code, str(code))


# ------------------------------------------------------------------ checks

def _read(path: str | Path) -> tuple[Path, bytes]:
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file {p} does not exist")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {p}: {exc.strerror or exc}") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"{p} is not a TFLite model (no 'TFL3' flatbuffer identifier)")
    return p, data


def _axes(g: _Graph, t: int, rank: int) -> list[int] | None:
    value = g.const_value(t)
    if value is None:
        return None
    return sorted({int(a) % rank if rank else int(a) for a in np.atleast_1d(value).ravel()})


def _big_dims(shape: list[int]) -> int:
    return sum(1 for d in shape if d > 1)


def _op_constraints(g: _Graph, i: int, name: str) -> str | None:
    """The first documented limitation op ``i`` violates, or None."""
    ins, outs = g.op_inputs[i], g.op_outputs[i]
    in0 = ins[0] if ins else -1
    in_shape = g.shape(in0) if in0 >= 0 else []
    rank = len(in_shape)

    if name in _FUSED_ACT_FREE:
        cls = "ConcatenationOptions" if name == "CONCATENATION" else "Pool2DOptions"
        act = g.fused_activation(i, cls)
        if act != "NONE":
            return f"fused activation {act} is not allowed on {name} (the Edge TPU needs none)"
    if name == "CONCATENATION":
        consts = [t for t in ins if t >= 0 and g.is_const(t)]
        if consts:
            if len(ins) != 2:
                return (f"concatenates a constant with {len(ins) - 1} other inputs "
                        f"(a constant input is allowed only as one of exactly 2 inputs)")
            value = g.const_value(consts[0])
            zero = g.zero_point(consts[0])
            if value is None or not np.all(value.astype(np.int64) == (zero if zero.size == 1 else 0)):
                return "concatenates a constant that is not all zeros (only zero-padding is allowed)"
    elif name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        opts = g.options(i, "Conv2DOptions" if name == "CONV_2D" else "DepthwiseConv2DOptions")
        if opts is not None and opts.DilationHFactor() != opts.DilationWFactor():
            return (f"dilation differs in y ({opts.DilationHFactor()}) and x ({opts.DilationWFactor()}); "
                    f"the Edge TPU needs the same dilation in both")
    elif name == "FULLY_CONNECTED":
        opts = g.options(i, "FullyConnectedOptions")
        if opts is not None and opts.WeightsFormat() != 0:
            return "weights are not in the default format (shuffled weights are not supported)"
        out_shape = g.shape(outs[0]) if outs else []
        if _big_dims(out_shape) > 1:
            return f"output {_fmt_shape(out_shape)} is not one-dimensional"
    elif name in _BATCH_AXIS_OPS:
        axes = _axes(g, ins[1], rank) if len(ins) > 1 else None
        if axes is None:
            return "reduction axes are not a compile-time constant"
        if rank >= 2 and 0 in axes:
            return f"{_BATCH_AXIS_OPS[name]} the batch dimension (axes {_fmt_shape(axes)} of a {rank}-D input)"
        if name == "MEAN" and rank >= 2 and (rank - 1) in axes and in_shape[-1] % 4:
            return (f"reduces over the innermost (z) dimension of size {in_shape[-1]}, "
                    f"which must be a multiple of 4")
    elif name == "PACK":
        opts = g.options(i, "PackOptions")
        if opts is not None and opts.Axis() == 0:
            return "packs along the batch dimension (axis 0)"
    elif name == "PAD":
        pads = g.const_value(ins[1]) if len(ins) > 1 else None
        if pads is None:
            return "paddings are not a compile-time constant"
        pads = np.asarray(pads).reshape(-1, 2)
        if rank >= 2 and np.any(pads[0] != 0):
            return f"pads the batch dimension (paddings {_fmt_shape(pads[0].tolist())} on axis 0)"
    elif name == "PRELU":
        alpha = g.shape(ins[1]) if len(ins) > 1 else []
        if any(d > 1 for d in alpha[:-1]):
            return (f"alpha has shape {_fmt_shape(alpha)}: only its innermost dimension may be > 1 "
                    f"(use keras PReLU(shared_axes=[1, 2]))")
    elif name in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        if rank > 4 or any(d > 1 for d in in_shape[:-3]):
            return f"input {_fmt_shape(in_shape)} is not a 3-dimensional (single-image) tensor"
    elif name == "SOFTMAX":
        n = int(np.prod(in_shape)) if in_shape else 0
        if _big_dims(in_shape) > 1:
            return f"input {_fmt_shape(in_shape)} is not 1-D (the Edge TPU's softmax takes a 1-D input)"
        if n > SOFTMAX_MAX_ELEMENTS:
            return f"input has {n:,} elements (at most {SOFTMAX_MAX_ELEMENTS:,})"
    elif name == "SPLIT":
        axis = g.const_value(ins[0]) if ins else None  # SPLIT's inputs are (axis, value)
        value_rank = len(g.shape(ins[1])) if len(ins) > 1 else 0
        if axis is None:
            return "split axis is not a compile-time constant"
        if value_rank >= 2 and int(np.ravel(axis)[0]) % value_rank == 0:
            return "splits along the batch dimension (axis 0)"
    elif name == "STRIDED_SLICE":
        strides = g.const_value(ins[3]) if len(ins) > 3 else None
        if strides is None:
            return "strides are not a compile-time constant"
        if np.any(np.ravel(strides) != 1):
            return f"strides {_fmt_shape(np.ravel(strides).tolist())} are not all 1"
        opts = g.options(i, "StridedSliceOptions")
        if opts is not None and opts.EllipsisMask():
            return f"ellipsis_mask is {opts.EllipsisMask()} (must be 0)"
        if opts is not None and opts.NewAxisMask():
            return f"new_axis_mask is {opts.NewAxisMask()} (must be 0)"
    return None


def _dtype_problem(g: _Graph, i: int) -> str | None:
    """Why op ``i`` is not 8-bit: float or wide run-time tensors, or None."""
    for t in g.op_inputs[i] + g.op_outputs[i]:
        if t < 0:
            continue
        dt = g.dtype(t)
        if dt in _EIGHT_BIT:
            continue
        const = g.is_const(t)
        if dt in ("INT32",) and const:
            continue  # biases, shapes, axes, paddings, begin/end/strides
        if dt in _FLOAT_TYPES:
            kind = "weights" if const else "tensor"
            return f"computes in float: {dt.lower()} {kind} '{g.name(t)}' (not quantized)"
        return (f"uses {dt.lower()} tensor '{g.name(t)}'"
                f"{'' if const else ' computed at run time'} (the Edge TPU works on 8-bit tensors)")
    return None


def _boundary_reason(g: _Graph, i: int, name: str) -> str | None:
    """Float<->int conversion on a model input/output: CPU work that does not split the graph."""
    ins, outs = g.op_inputs[i], g.op_outputs[i]
    if not ins or not outs:
        return None
    if (name == "QUANTIZE" and ins[0] in g.inputs and g.dtype(ins[0]) in _FLOAT_TYPES
            and g.dtype(outs[0]) in _EIGHT_BIT):
        return "input boundary: quantizes the float model input on the CPU (does not split the graph)"
    if (name == "DEQUANTIZE" and outs[0] in g.outputs and g.dtype(outs[0]) in _FLOAT_TYPES
            and g.dtype(ins[0]) in _EIGHT_BIT):
        return "output boundary: dequantizes the model output on the CPU (does not split the graph)"
    return None


def _unsupported_reason(g: _Graph, i: int) -> str | None:
    name = g.op_names[i]
    if name == "edgetpu-custom-op":
        return "already compiled for the Edge TPU (edgetpu-custom-op); check the uncompiled model"
    if name not in SUPPORTED_OPS:
        hint = _HINTS.get(name)
        return "not on the Edge TPU supported-op list" + (f" ({hint})" if hint else "")
    return _dtype_problem(g, i) or _op_constraints(g, i, name)


def _fmt_shape(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def check_model(path: str | Path, max_tensor_bytes: int = ON_CHIP_BYTES) -> dict:
    """Check a ``.tflite`` file against the Edge TPU's published requirements, without the compiler.

    Returns a dict with ``path``, ``ops_total``, ``ops_mappable`` (ops before the first unsupported
    one, which the compiler maps), ``first_unsupported`` ({index, op, reason} or None),
    ``cpu_ops`` (every op that runs on the CPU: from the first unsupported op on, plus float
    quantize/dequantize at the model boundary, flagged ``boundary``), ``errors`` (model-level
    problems), ``warnings``, ``parameter_bytes`` and ``compatible``.
    """
    p, data = _read(path)
    g = _Graph(data, p)
    errors: list[str] = []
    warnings: list[str] = []

    # Ops, in graph (execution) order: the compiler maps up to the first unsupported one.
    first: dict | None = None
    cpu_ops: list[dict] = []
    mappable = 0
    float_ops = 0
    wide_ops: set[str] = set()
    for i, name in enumerate(g.op_names):
        boundary = _boundary_reason(g, i, name)
        if boundary is None:
            problem = _dtype_problem(g, i)
            if problem and problem.startswith("computes in float"):
                float_ops += 1
            elif problem:
                wide_ops.add(problem.split()[1])
        if boundary is not None:
            cpu_ops.append({"index": i, "op": name, "reason": boundary, "boundary": True})
            continue
        reason = _unsupported_reason(g, i)
        if first is None and reason is None:
            mappable += 1
            continue
        if first is None:
            first = {"index": i, "op": name, "reason": reason}
        else:
            reason = reason or (f"follows the first unsupported op #{first['index']} {first['op']}: "
                                f"the compiler splits the graph only once")
        cpu_ops.append({"index": i, "op": name, "reason": reason, "boundary": False})

    # Model-level requirements.
    if float_ops:
        errors.append(f"not fully quantized: {float_ops} of {len(g.ops)} ops compute in float; "
                      f"the Edge TPU needs full-integer int8/uint8 quantization "
                      f"(post-training quantization with a representative dataset and "
                      f"TFLITE_BUILTINS_INT8, or quantization-aware training)")
    wide = sorted(wide_ops - {"int32", "bool", "string", "resource", "variant"})
    if wide:
        errors.append(f"not fully 8-bit quantized: ops use {', '.join(wide)} tensors; "
                      f"the Edge TPU needs int8/uint8 activations and weights")
    dynamic = [t for t in range(len(g.tensors)) if any(d < 0 for d in g.signature(t))]
    if dynamic:
        t = next((t for t in dynamic if t in g.inputs), dynamic[0])
        sig = g.signature(t)
        hint = ""
        if sig and sig[0] < 0 and all(d > 0 for d in sig[1:]):
            hint = (f": the batch dimension is dynamic, convert with a fixed batch of 1, e.g. "
                    f"keras.Input(shape={tuple(sig[1:])}, batch_size=1)")
        errors.append(f"dynamic shapes: {len(dynamic)} tensors have an unknown (-1) dimension, e.g. "
                      f"'{g.name(t)}' {_fmt_shape(sig)}; the Edge TPU needs static shapes{hint}")
    big = []
    for t in range(len(g.tensors)):
        if g.is_const(t):
            continue  # weights may be 4-D; the rule is about activations
        shape = g.shape(t)
        if any(d > 1 for d in shape[:-3]):
            big.append(t)
    if big:
        t = next((t for t in big if t in g.inputs), big[0])
        shape = g.shape(t)
        if len(shape) == 4 and shape[0] > 1:
            what = f"batch {shape[0]} > 1"
        else:
            what = f"{len(shape)}-D tensor with more than 3 dimensions larger than 1"
        errors.append(f"{what}: '{g.name(t)}' has shape {_fmt_shape(shape)} ({len(big)} tensors affected); "
                      f"only the 3 innermost dimensions may be larger than 1, so run with batch 1")

    # Warnings.
    if g.subgraph_count > 1:
        warnings.append(f"the model has {g.subgraph_count} subgraphs; the compiler maps only the first "
                        f"(control-flow subgraphs run on the CPU)")
    param_bytes = 0
    seen: set[int] = set()
    for tensor in g.all_subgraph_tensors:
        b = tensor.Buffer()
        if b in seen:
            continue
        n = g.buffer_bytes(tensor)
        if n:
            seen.add(b)
            param_bytes += n
    if max_tensor_bytes and param_bytes > max_tensor_bytes:
        warnings.append(f"parameters take {_human(param_bytes)}, more than the {_human(max_tensor_bytes)} "
                        f"on-chip cache: the rest streams from host memory on every inference (slower)")
    boundary = [c for c in cpu_ops if c["boundary"]]
    if boundary:
        names = ", ".join(f"#{c['index']} {c['op']}" for c in boundary)
        warnings.append(f"float model I/O: {names} convert between float and int8 on the CPU; "
                        f"uint8/int8 model I/O avoids that")
    limit = mappable if first is not None else len(g.ops)
    for i in range(limit):
        if g.op_names[i] in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
            warnings.append(f"#{i} {g.op_names[i]}: depending on input/output size the compiler may "
                            f"leave it on the CPU to avoid loss of precision")
    if any(n == "edgetpu-custom-op" for n in g.op_names):
        warnings.append("the model is already compiled for the Edge TPU (contains edgetpu-custom-op)")

    return {
        "path": str(p),
        "ops_total": len(g.ops),
        "ops_mappable": mappable,
        "first_unsupported": first,
        "cpu_ops": cpu_ops,
        "errors": errors,
        "warnings": warnings,
        "parameter_bytes": param_bytes,
        "compatible": not errors and first is None,
    }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"  # pragma: no cover


def format_check(result: dict) -> str:
    """A readable multi-line summary of :func:`check_model`'s result."""
    lines = [f"Edge TPU check: {result['path']}"]
    total, mappable = result["ops_total"], result["ops_mappable"]
    first = result["first_unsupported"]
    boundary = [c for c in result["cpu_ops"] if c.get("boundary")]
    if first is None:
        lines.append(f"{mappable} of {total} ops would map to the Edge TPU"
                     + (f" ({len(boundary)} float I/O conversion op(s) run on the CPU)" if boundary else ""))
    else:
        after = total - first["index"] - 1
        lines.append(
            f"{mappable} of {total} ops would map to the Edge TPU; the first op that runs on the CPU is "
            f"#{first['index']} {first['op']} ({first['reason']}), which splits the graph: everything "
            f"after it ({after} more op{'s' if after != 1 else ''}) runs on the CPU")
    lines.append(f"parameters: {_human(result['parameter_bytes'])}")
    others = [c for c in result["cpu_ops"]
              if not c.get("boundary") and (first is None or c["index"] != first["index"])
              and not c["reason"].startswith("follows the first")]
    for c in others:
        lines.append(f"  also unsupported: #{c['index']} {c['op']} ({c['reason']})")
    for c in boundary:
        lines.append(f"  boundary: #{c['index']} {c['op']} ({c['reason']})")
    for e in result["errors"]:
        lines.append(f"ERROR: {e}")
    for w in result["warnings"]:
        lines.append(f"warning: {w}")
    lines.append("compatible: yes" if result["compatible"] else
                 f"compatible: no (requirements: {DOCS_URL})")
    return "\n".join(lines)


# ------------------------------------------------------------------ the real compiler

_SIZE_RE = r"([0-9.]+)\s*(B|KiB|MiB|GiB)"
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_LOG_FIELDS = {
    "version": re.compile(r"^Edge TPU Compiler version\s+(\S+)"),
    "input_model": re.compile(r"^Input model:\s*(.+)$"),
    "output_model": re.compile(r"^Output model:\s*(.+)$"),
    "on_chip_bytes": re.compile(r"^On-chip memory used for caching model parameters:\s*" + _SIZE_RE),
    "on_chip_remaining_bytes": re.compile(
        r"^On-chip memory remaining for caching model parameters:\s*" + _SIZE_RE),
    "off_chip_bytes": re.compile(r"^Off-chip memory used for streaming uncached model parameters:\s*" + _SIZE_RE),
    "subgraphs": re.compile(r"^Number of Edge TPU subgraphs:\s*(\d+)"),
    "ops_total": re.compile(r"^Total number of operations:\s*(\d+)"),
    "ops_on_tpu": re.compile(r"^Number of operations that will run on Edge TPU:\s*(\d+)"),
    "ops_on_cpu": re.compile(r"^Number of operations that will run on CPU:\s*(\d+)"),
}
_TABLE_HEAD = re.compile(r"^Operator\s+Count\s+Status\s*$")
_TABLE_ROW = re.compile(r"^([A-Za-z0-9_\-]+)\s+(\d+)\s+(\S.*?)\s*$")
_NOISE = ("Compilation child process completed within timeout period.",
          "Started a compilation timeout timer", "Compilation succeeded!")


def parse_compiler_log(text: str) -> dict:
    """Parse what ``edgetpu_compiler -s`` prints (and its ``*_edgetpu.log``).

    Returns {version, input_model, output_model, on_chip_bytes, on_chip_remaining_bytes,
    off_chip_bytes, subgraphs, ops_total, ops_on_tpu, ops_on_cpu, op_table: [{op, count, status,
    mapped}]}; fields the log does not have are None.  The op counts fall back on the table.
    """
    out: dict[str, Any] = {k: None for k in _LOG_FIELDS}
    table: list[dict] = []
    in_table = False
    for raw in text.splitlines():
        line = raw.strip()
        if _TABLE_HEAD.match(line):
            in_table = True
            continue
        if in_table:
            m = _TABLE_ROW.match(line)
            if m and not line.startswith(_NOISE):
                status = m.group(3)
                table.append({"op": m.group(1), "count": int(m.group(2)), "status": status,
                              "mapped": status == "Mapped to Edge TPU"})
                continue
            if line and table:
                in_table = False  # a non-row line after the rows ends the table
        for key, rx in _LOG_FIELDS.items():
            m = rx.match(line)
            if not m:
                continue
            if key.endswith("_bytes"):
                out[key] = int(round(float(m.group(1)) * _UNITS[m.group(2)]))
            elif key in ("subgraphs", "ops_total", "ops_on_tpu", "ops_on_cpu"):
                out[key] = int(m.group(1))
            else:
                out[key] = m.group(1).strip()
    out["op_table"] = table
    if table:
        if out["ops_on_tpu"] is None:
            out["ops_on_tpu"] = sum(r["count"] for r in table if r["mapped"])
        if out["ops_on_cpu"] is None:
            out["ops_on_cpu"] = sum(r["count"] for r in table if not r["mapped"])
    if out["ops_total"] is None and out["ops_on_tpu"] is not None and out["ops_on_cpu"] is not None:
        out["ops_total"] = out["ops_on_tpu"] + out["ops_on_cpu"]
    if out["ops_on_cpu"] is None and out["ops_total"] is not None and out["ops_on_tpu"] is not None:
        out["ops_on_cpu"] = out["ops_total"] - out["ops_on_tpu"]
    return out


def _compiler_missing_message() -> str:
    arch = platform.machine().lower()
    where = "" if arch in ("x86_64", "amd64") else f" and this machine is {arch}, so compile on another host"
    return ("edgetpu_compiler is not installed (it runs only on x86-64 Debian/Ubuntu Linux"
            f"{where}): add the Coral apt repository "
            "'deb https://packages.cloud.google.com/apt coral-edgetpu-stable main', then "
            f"'sudo apt-get update && sudo apt-get install edgetpu-compiler' (see {COMPILER_URL})")


def _last_meaningful_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(_NOISE)]
    for ln in reversed(lines):
        if re.search(r"error|fail|invalid|unsupported|abort", ln, re.IGNORECASE):
            return ln
    return lines[-1] if lines else "no output"


def compile_model(path: str | Path, out_dir: str | Path, timeout: float = COMPILE_TIMEOUT_S) -> dict:
    """Compile a ``.tflite`` for the Edge TPU with ``edgetpu_compiler -s -o OUT_DIR PATH``.

    Returns {compiled_path, ops_on_tpu, ops_on_cpu, on_chip_bytes, off_chip_bytes, op_table, log,
    ...} (see :func:`parse_compiler_log`).  Raises RuntimeUnavailableError when the compiler is not
    installed and ConversionError when it fails.
    """
    exe = shutil.which("edgetpu_compiler")
    if exe is None:
        raise RuntimeUnavailableError(_compiler_missing_message())
    p, _ = _read(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run([exe, "-s", "-o", str(out), str(p)], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"edgetpu_compiler did not finish {p.name} within {timeout:.0f} s") from None
    except OSError as exc:
        raise RuntimeUnavailableError(f"cannot run {exe}: {exc.strerror or exc}") from None
    log = (proc.stdout or "") + (("\n" + proc.stderr) if proc.stderr else "")
    if proc.returncode != 0:
        raise ConversionError(f"edgetpu_compiler failed on {p.name} (exit {proc.returncode}): "
                              f"{_last_meaningful_line(log)}")
    parsed = parse_compiler_log(log)
    compiled = out / f"{p.stem}_edgetpu.tflite"
    if not compiled.is_file() and parsed.get("output_model"):
        cand = Path(parsed["output_model"])
        compiled = cand if cand.is_absolute() else out / cand.name
    if not compiled.is_file():
        raise ConversionError(f"edgetpu_compiler wrote no {compiled.name}: {_last_meaningful_line(log)}")
    op_log = out / f"{p.stem}_edgetpu.log"
    if not parsed["op_table"] and op_log.is_file():  # older compilers put the table only in the log file
        parsed["op_table"] = parse_compiler_log(op_log.read_text(errors="replace"))["op_table"]
    return {"compiled_path": str(compiled), **parsed, "log": log}
