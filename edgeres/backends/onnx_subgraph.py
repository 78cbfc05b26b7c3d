"""Parts of an ONNX graph, run on their own: a tensor's feeding subgraph, a session that taps intermediate tensors,
shapes and MACs per node.  HEAVY layer (onnx, onnxruntime).  Shared by the ONNX quantizer's bias correction
and weight rounding."""

from __future__ import annotations

import numpy as np

from edgeres.core.stop import temp_dir


def tap(proto, names: list[str], optimized: bool = False):
    """A session over ``proto`` that also returns the named intermediate tensors.

    ``optimized``: ORT's full graph optimisation, so the QDQ groups before the tapped tensors run as the
    deployed model runs them (int8 kernels, several times faster than the DQ -> float op -> Q emulation);
    only for a graph whose one output is the tapped tensor (a prefix), where nothing else must stay visible.
    """
    import onnx
    import onnxruntime as ort

    tapped = onnx.ModelProto()
    tapped.CopyFrom(proto)
    have = {o.name for o in tapped.graph.output}
    for name in names:
        if name not in have:
            tapped.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized else \
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False  # every tensor is an output here: give each batch's memory back
    # no spin-waiting between runs: the other format converts in a process beside this one, on the same cores
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(tapped.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, [o.name for o in sess.get_outputs()]


def constant_inputs(qproto, slot: int):
    """(node, DequantizeLinear) for each Conv and Gemm of a QDQ graph whose input ``slot`` (1: weights, 2: bias)
    is a DequantizeLinear of an initializer."""
    inits = {i.name for i in qproto.graph.initializer}
    producer = {o: n for n in qproto.graph.node for o in n.output}
    for node in qproto.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) <= slot:
            continue
        dq = producer.get(node.input[slot])
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            yield node, dq


def shapes(proto) -> dict[str, list[int]]:
    """Every tensor's inferred shape (0 where unknown)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - an unknown size only makes the budgets conservative
        inferred = proto
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}


def output_pixels(proto, shape: dict[str, list[int]] | None = None) -> dict[str, int]:
    """Output pixels per image of each Conv node (1 for other nodes), by node name; ``shape``: :func:`shapes`
    of ``proto``, when the caller has them."""
    shape = shapes(proto) if shape is None else shape
    return {n.name: int(np.prod(shape.get(n.output[0], [0, 0, 1, 1])[2:]) or 1) for n in proto.graph.node
            if n.op_type == "Conv"}


def node_macs(proto, shape: dict[str, list[int]] | None = None) -> dict[str, float]:
    """Multiply-accumulates per image of each Conv, ConvTranspose, Gemm and MatMul node, by node name;
    ``shape``: :func:`shapes` of ``proto``, when the caller has them."""
    shape = shapes(proto) if shape is None else shape
    weights = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    macs = {}
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        w, out = weights.get(node.input[1]), shape.get(node.output[0])
        if not w or not out or not all(out[1:]):
            macs[node.name] = float("inf")  # unknown: assume too big for layer-by-layer
            continue
        spatial = out[2:] if node.op_type.startswith("Conv") else out[1:-1]
        if node.op_type == "ConvTranspose":  # every input pixel scatters the whole kernel
            spatial = (shape.get(node.input[0]) or [0, 0, 0])[2:]
        macs[node.name] = float(np.prod(spatial or [1])) * float(np.prod(w))
    return macs


def feeding(proto, output: str) -> list:
    """The nodes of ``proto`` that ``output`` depends on, in graph order."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    needed, seen, todo = set(), set(), [output]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is not None:
            needed.add(id(node))
            todo.extend(i for i in node.input if i)
    return [n for n in proto.graph.node if id(n) in needed]


def prefix(proto, output: str, nodes: list):
    """The part of ``proto`` that computes ``output`` (its ``nodes``, from :func:`feeding`), with ``output`` as
    its only output; the initializers are read now, so earlier corrections are in it."""
    import onnx

    names = {i for n in nodes for i in n.input} | {output}
    graph = onnx.helper.make_graph(
        nodes, proto.graph.name, [i for i in proto.graph.input if i.name in names],
        [onnx.ValueInfoProto(name=output)], [t for t in proto.graph.initializer if t.name in names])
    return onnx.helper.make_model(graph, opset_imports=proto.opset_import, ir_version=proto.ir_version)


#: ops that move or reshape values without arithmetic: a float one costs a copy, not precision
MOVEMENT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Expand", "Slice",
                "Pad", "Split", "Concat", "Gather", "ReorderInput", "ReorderOutput"}


def float_islands(data: bytes) -> list[tuple[str, str]]:
    """(op type, node name) of every op that ONNX Runtime runs in float *inside* an int8 model: after a
    DequantizeLinear, with its result quantized again further on.  Measured, not assumed: the graph is the one
    ORT optimises for this CPU (its QDQ fusions), where a QDQ group with an int8 kernel became one QLinear/integer
    node and an op without one (LayerNormalization's Sqrt, Erf, GlobalMaxPool) is left between a
    DequantizeLinear and a QuantizeLinear.  Float ops at the model's edges (input normalization, an output
    activation) are not islands; data movement ops (Reshape, Transpose, ...) are not counted."""
    import os

    import onnx
    import onnxruntime as ort

    with temp_dir("edgeres-ort-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.optimized_model_filepath = path
        ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(path).graph
    floating: set[str] = set()  # tensors in float downstream of a DequantizeLinear
    compute: list = []
    for node in graph.node:  # topological order
        if node.op_type == "DequantizeLinear":
            floating.update(node.output)
        elif node.op_type in ("QuantizeLinear", "Shape", "Size") or node.domain not in ("", "ai.onnx"):
            continue  # integer values: quantized, a shape, or one of ORT's fused (integer) kernels
        elif node.op_type in MOVEMENT_OPS:
            if node.input and node.input[0] in floating:  # the data; a Reshape's shape is not
                floating.update(node.output)
        elif any(i in floating for i in node.input):
            floating.update(node.output)
            compute.append(node)
    consumers: dict[str, list[int]] = {}
    for k, node in enumerate(graph.node):
        for i in node.input:
            consumers.setdefault(i, []).append(k)
    leads_to_int8 = [False] * len(graph.node)  # the node's result is quantized again, further on
    for k in range(len(graph.node) - 1, -1, -1):  # consumers come after their producer: one reverse pass
        node = graph.node[k]
        leads_to_int8[k] = node.op_type == "QuantizeLinear" or any(
            leads_to_int8[c] for o in node.output for c in consumers.get(o, []))
    return [(n.op_type, n.name) for n in compute
            if any(leads_to_int8[c] for o in n.output for c in consumers.get(o, []))]
