"""A read-only view of a ``.tflite`` flatbuffer's main subgraph, for the Edge TPU checks.

LIGHT layer: numpy plus the TFLite flatbuffer schema bindings
(:mod:`edgeres.core.tflite_schema`).  No model is loaded into an interpreter.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from edgeres.core.errors import ModelError, no_model_file
from edgeres.core.tflite_schema import schema

_NUMPY = {"FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64, "INT32": np.int32,
          "UINT8": np.uint8, "INT64": np.int64, "INT16": np.int16, "INT8": np.int8, "BOOL": np.bool_,
          "UINT32": np.uint32, "UINT16": np.uint16, "UINT64": np.uint64}


@functools.lru_cache(maxsize=1)
def _enum_names() -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
    s = schema()

    def names(cls) -> dict[int, str]:
        return {v: k for k, v in vars(cls).items() if k.isupper() and isinstance(v, int)}

    return names(s.BuiltinOperator), names(s.TensorType), names(s.ActivationFunctionType)


def read_tflite(path: str | Path) -> tuple[Path, bytes]:
    """The path and bytes of a ``.tflite`` file; ModelError if it is missing or not a TFLite model."""
    p = Path(path)
    if not p.is_file():
        raise no_model_file(p)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {p}: {exc.strerror or exc}") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"{p} is not a TFLite model (no 'TFL3' flatbuffer identifier)")
    return p, data


class Graph:
    """Main subgraph of a .tflite flatbuffer: tensors, operators, constants."""

    def __init__(self, data: bytes, path: Path):
        s = schema()
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
        except Exception as exc:  # noqa: BLE001 - flatbuffers raises IndexError/struct.error/TypeError on garbage
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


# ------------------------------------------------------------------ helpers for the rules

def const_axes(g: Graph, t: int, rank: int) -> list[int] | None:
    """The sorted, non-negative axes held by constant tensor ``t``, or None if it is not constant."""
    value = g.const_value(t)
    if value is None:
        return None
    return sorted({int(a) % rank if rank else int(a) for a in np.atleast_1d(value).ravel()})


def big_dims(shape: list[int]) -> int:
    """How many dimensions of ``shape`` are larger than 1."""
    return sum(1 for d in shape if d > 1)


def fmt_shape(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
