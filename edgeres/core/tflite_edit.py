"""Small, exact edits of a TFLite flatbuffer through the schema's object API (``ModelT``).  LIGHT layer.

Used to put a few ops in front of a model (the bundle's folded preprocessing) or after it (a float softmax
after int8 logits).  Every edit is checked by running the model (tests/test_bundle.py, tests/test_heads.py).
"""

from __future__ import annotations

import numpy as np

from edgeres.core.tflite_schema import schema


def load(model: bytes):
    """The model as a mutable ``ModelT`` (trailing bytes, such as a packed zip, are ignored)."""
    return schema().ModelT.InitFromPackedBuf(bytearray(model), 0)


def pack(m) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def type_name(code: int) -> str:
    """``TensorType`` code -> its name (``INT8``, ``FLOAT32``, ...)."""
    names = {v: k for k, v in vars(schema().TensorType).items() if not k.startswith("_")}
    return names.get(code, str(code))


def tensor(name, shape, dtype: int, quant: tuple[float, int] | None, signature=None, buffer: int = 0):
    s = schema()
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


def add_tensor(g, t) -> int:
    g.tensors.append(t)
    return len(g.tensors) - 1


def add_buffer(m, data: np.ndarray) -> int:
    b = schema().BufferT()
    b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
    m.buffers.append(b)
    return len(m.buffers) - 1


def opcode(m, code: int, version: int) -> int:
    """The index of an operator code for builtin ``code`` at ``version`` or later, added if missing."""
    s = schema()
    for i, oc in enumerate(m.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code and oc.version >= version and not oc.customCode:
            return i
    oc = s.OperatorCodeT()
    oc.builtinCode, oc.version = code, version
    oc.deprecatedBuiltinCode = min(code, s.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    m.operatorCodes.append(oc)
    return len(m.operatorCodes) - 1


def options(obj, **fields):
    for k, v in fields.items():
        setattr(obj, k, v)
    return obj


def insert(m, g, at: int, code: int, version: int, inputs, outputs, options_type: int = 0, opts=None) -> None:
    """Insert builtin op ``code`` at position ``at`` of subgraph ``g``'s operators."""
    op = schema().OperatorT()
    op.opcodeIndex = opcode(m, code, version)
    op.inputs = np.asarray(inputs, dtype=np.int32)
    op.outputs = np.asarray(outputs, dtype=np.int32)
    op.builtinOptionsType, op.builtinOptions = options_type, opts
    g.operators.insert(at, op)


def retarget(m, g, side: str, old: int, new: int) -> None:
    """Make tensor ``new`` the subgraph's (and signatures') input or output (``side``) that ``old`` was."""
    for sig in m.signatureDefs or []:
        for t in getattr(sig, side) or []:
            if t.tensorIndex == old:
                t.tensorIndex = new
    setattr(g, side, np.asarray([new if int(i) == old else int(i) for i in getattr(g, side)], dtype=np.int32))


def append_float_tail(m, g, code: int, version: int = 1, options_type: int = 0, opts=None,
                      suffix: str = "/quantized") -> None:
    """After the (only) output: DEQUANTIZE it to float32 if it is int8/uint8, then op ``code`` (float32) if
    given; the op's result becomes the output, with the old output's name."""
    s = schema()
    out_index = int(g.outputs[0])
    out = g.tensors[out_index]
    name = out.name.decode() if isinstance(out.name, bytes) else out.name
    shape, sig = [int(v) for v in out.shape], out.shapeSignature
    current = out_index
    kind = type_name(out.type)
    if kind in ("INT8", "UINT8"):
        out.name = f"{name}{suffix}"
        fl = add_tensor(g, tensor(name if code is None else f"{name}/dequantized", shape, s.TensorType.FLOAT32,
                                  None, sig))
        insert(m, g, len(g.operators), s.BuiltinOperator.DEQUANTIZE, 2 if kind == "INT8" else 1, [current], [fl])
        current = fl
    if code is not None:
        if current == out_index:
            out.name = f"{name}/logits"
        res = add_tensor(g, tensor(name, shape, s.TensorType.FLOAT32, None, sig))
        insert(m, g, len(g.operators), code, version, [current], [res], options_type, opts)
        current = res
    retarget(m, g, "outputs", out_index, current)


def prefix(m, output: int) -> bytes:
    """The part of (subgraph 0 of) ``m`` that computes tensor ``output``, packed, with ``output`` as its only
    output: the ops it depends on, in order, and no signatures.  ``m`` itself is left as it was; tensor
    indices are unchanged, so a tensor is read by the same index in the prefix."""
    g = m.subgraphs[0]
    producer = {int(o): op for op in g.operators for o in op.outputs}
    needed, todo = set(), [output]
    while todo:
        op = producer.get(todo.pop())
        if op is not None and id(op) not in needed:
            needed.add(id(op))
            todo.extend(int(i) for i in op.inputs if i >= 0)
    ops, outputs, sigs = g.operators, g.outputs, m.signatureDefs
    g.operators = [op for op in ops if id(op) in needed]
    g.outputs, m.signatureDefs = np.asarray([output], dtype=np.int32), []
    try:
        return pack(m)
    finally:
        g.operators, g.outputs, m.signatureDefs = ops, outputs, sigs


def op_kind(model_t, op, opnames: dict[int, str]) -> str:
    """The builtin operator name of ``op`` (``opnames``: code -> name), '?' when unknown."""
    code = model_t.operatorCodes[op.opcodeIndex]
    return opnames.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")


def dequantized_names(model_t, opnames: dict[int, str]) -> dict[int, bytes]:
    """Tensor index -> the name of the DEQUANTIZE output that reads it (subgraph 0).  ``mlir_quantize`` renames
    a model output when it puts a DEQUANTIZE after it, and the DEQUANTIZE keeps the float model's name."""
    g = model_t.subgraphs[0]
    return {op.inputs[0]: g.tensors[op.outputs[0]].name for op in g.operators
            if op_kind(model_t, op, opnames) == "DEQUANTIZE"}


def constant(model_t, tensor, dtype) -> np.ndarray | None:
    """A constant tensor's data as ``dtype`` in its shape; None when it has none."""
    buf = model_t.buffers[tensor.buffer].data if tensor.buffer < len(model_t.buffers) else None
    if buf is None or len(buf) == 0:
        return None
    return np.frombuffer(np.asarray(buf, np.uint8).tobytes(), dtype).reshape(tensor.shape)


def set_constant(model_t, tensor, value: np.ndarray) -> None:
    """Write a constant tensor's data, in place; a buffer other tensors share first becomes its own."""
    if sum(t.buffer == tensor.buffer for g in model_t.subgraphs for t in g.tensors) > 1:
        model_t.buffers.append(schema().BufferT())
        tensor.buffer = len(model_t.buffers) - 1
    model_t.buffers[tensor.buffer].data = np.frombuffer(np.ascontiguousarray(value).tobytes(), np.uint8)


def int8_clamps(op, out) -> tuple[int, int]:
    """The int8 values an op's output is clamped to: its fused activation's bounds, within -128..127."""
    acts = schema().ActivationFunctionType
    act = getattr(op.builtinOptions, "fusedActivationFunction", acts.NONE)
    bounds = {acts.RELU: (0.0, None), acts.RELU6: (0.0, 6.0), acts.RELU_N1_TO_1: (-1.0, 1.0)}.get(act)
    if bounds is None:
        return -128, 127
    scale, zero = float(out.quantization.scale[0]), int(out.quantization.zeroPoint[0])
    lo = max(-128, zero + round(bounds[0] / scale))
    hi = 127 if bounds[1] is None else min(127, zero + round(bounds[1] / scale))
    return lo, hi
