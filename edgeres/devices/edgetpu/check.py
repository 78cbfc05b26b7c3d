"""The static Edge TPU compatibility check: :func:`check_model` and its report, :func:`format_check`.

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
"""

from __future__ import annotations

from pathlib import Path

from edgeres.devices.edgetpu.graph import Graph, fmt_shape, read_tflite
from edgeres.devices.edgetpu.rules import DOCS_URL, op_constraints, unlisted_reason

ON_CHIP_BYTES = 8 * 2**20  # the Edge TPU's on-chip parameter cache (8 MiB)

_EIGHT_BIT = ("INT8", "UINT8")
_FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")


def _dtype_problem(g: Graph, i: int) -> str | None:
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


def _boundary_reason(g: Graph, i: int, name: str) -> str | None:
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


def _unsupported_reason(g: Graph, i: int) -> str | None:
    name = g.op_names[i]
    return unlisted_reason(name) or _dtype_problem(g, i) or op_constraints(g, i, name)


def check_model(path: str | Path, max_tensor_bytes: int = ON_CHIP_BYTES) -> dict:
    """Check a ``.tflite`` file against the Edge TPU's published requirements, without the compiler.

    Returns a dict with ``path``, ``ops_total``, ``ops_mappable`` (ops before the first unsupported
    one, which the compiler maps), ``first_unsupported`` ({index, op, reason} or None),
    ``cpu_ops`` (every op that runs on the CPU: from the first unsupported op on, plus float
    quantize/dequantize at the model boundary, flagged ``boundary``), ``errors`` (model-level
    problems), ``warnings``, ``parameter_bytes`` and ``compatible``.
    """
    p, data = read_tflite(path)
    g = Graph(data, p)
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
                      f"'{g.name(t)}' {fmt_shape(sig)}; the Edge TPU needs static shapes{hint}")
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
        errors.append(f"{what}: '{g.name(t)}' has shape {fmt_shape(shape)} ({len(big)} tensors affected); "
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
