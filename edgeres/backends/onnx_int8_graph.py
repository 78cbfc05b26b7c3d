"""Exact rewrites of edgeres' quantized (QDQ) ONNX graph for ONNX Runtime's int8 kernels.  HEAVY layer (onnx).

Each one changes which kernel ORT runs, never a value: the outputs are
bit-identical (``tests/test_onnx_passes.py``).  ``OnnxQuantizer`` applies them
to every int8 model after quantization and bias correction.
"""

from __future__ import annotations

import numpy as np

from edgeres.backends.onnx_graph import (
    _AFFINE_OPS,
    _NCHW,
    _drop_unused_initializers,
    _drop_value_info,
    _index,
    _input_dims,
)


def apply_all(qproto) -> list[str]:
    """Every rewrite that matches, in order; the names of those applied."""
    return [f.__name__ for f in (widen_input_constants, space_to_depth_stem) if f(qproto)]


def widen_input_constants(qproto) -> bool:
    """Run the int8 graph's float input normalization on NHWC with row-wide constants.

    In a QDQ graph ORT's NHWC layout pass moves the input Transpose behind the
    per-channel ``Add``/``Mul`` that :func:`hoist_input_transpose` put after it,
    and its constant becomes 3 values broadcast over the last NHWC axis: ORT's
    slow broadcast, 3 elements at a time (0.21 ms for one Add at 224x224 on 2
    threads, ~5% of ResNet-50 int8).  This writes the chain in front of the
    Transpose with each constant tiled to a full image row, shape (W, C): the
    same values added to the same elements, so the outputs are bit-identical,
    and ORT's broadcast runs W*C elements at a time (0.014 ms).  Needs a static
    input width.  Returns True when the graph changed.
    """
    from onnx import numpy_helper

    g = qproto.graph
    inits, consumers = _index(g)
    dims = _input_dims(g)
    users = consumers[g.input[0].name]
    if len(dims) != 4 or not dims[2] or not dims[3] or len(users) != 1 or users[0].op_type != "Transpose":
        return False
    transpose = users[0]
    if next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None) != _NCHW:
        return False
    width, channels = dims[2], dims[3]
    chain, cur = [], transpose.output[0]
    while len(consumers[cur]) == 1:
        node = consumers[cur][0]
        const = inits.get(node.input[1]) if len(node.input) == 2 and node.input[0] == cur else None
        if node.op_type not in _AFFINE_OPS or const is None or len(consumers[const.name]) != 1:
            break
        arr = numpy_helper.to_array(const)
        if arr.size not in (1, channels) or (arr.size == channels and arr.shape[-3:] != (channels, 1, 1)):
            break
        chain.append(node)
        cur = node.output[0]
    if not chain or cur in {o.name for o in g.output}:
        return False
    for node in chain:
        arr = numpy_helper.to_array(inits[node.input[1]])
        row = np.ascontiguousarray(np.broadcast_to(arr.reshape(-1), (width, channels)))
        new = numpy_helper.from_array(row.astype(arr.dtype), f"{node.input[1]}__nhwc_row")
        g.initializer.append(new)
        node.input[1] = new.name
    last = chain[-1].output[0]
    for node in g.node:  # what read the chain's output now reads the Transpose's
        for i, name in enumerate(node.input):
            if name == last:
                node.input[i] = transpose.output[0]
    chain[0].input[0] = g.input[0].name
    transpose.input[0] = last
    _drop_unused_initializers(g)
    _drop_value_info(g, {n.output[0] for n in chain} | {transpose.output[0]})
    nodes = [n for n in g.node if n is not transpose]
    at = next(i for i, n in enumerate(nodes) if n is chain[-1]) + 1
    nodes.insert(at, transpose)
    del g.node[:]
    g.node.extend(nodes)
    return True


MIN_STEM_MACS = 10_000_000  # below this the three added data-movement ops cost more than the denser kernel saves


def _reaches_input(node, producer, inits, input_name: str) -> bool:
    """Whether ``node`` reads the graph input through per-channel constant ops only."""
    name = node.input[0]
    while name != input_name:
        feed = producer.get(name)
        if feed is None or feed.op_type not in _AFFINE_OPS or feed.input[1] not in inits:
            return False
        name = feed.input[0]
    return True


def space_to_depth_stem(qproto, max_channels: int = 16) -> bool:
    """Run a stride-2 stem convolution on few input channels as a stride-1 one on 4x as many (exact).

    ``Transpose -> QuantizeLinear -> DequantizeLinear -> Conv(k x k, stride 2, C in)`` on the model's
    NHWC input becomes ``Pad(0) -> Reshape -> Transpose -> Reshape -> Q -> DQ -> Conv(ceil(k/2), stride
    1, 4C in)``, with the int8 weights rearranged and zero where the kernel grew: ResNet's 7x7 stem on 3
    channels runs in ORT's direct kernels at about half the time (0.47 -> 0.24 ms at 224 on 2 threads;
    ``benchmarks/onnx_profile.py``).  The padded border quantizes to the zero point, as the convolution's
    own padding does, and every product is the same integer: the outputs are bit-identical.
    """
    from onnx import helper, numpy_helper

    g = qproto.graph
    inits, consumers = _index(g)
    producer = {o: n for n in g.node for o in n.output}
    dims = _input_dims(g)
    if len(dims) != 4 or not all(dims[1:]) or 4 * dims[3] > max_channels:
        return False
    height, width, channels = dims[1:]
    for transpose in [n for n in g.node if n.op_type == "Transpose"]:
        if not _reaches_input(transpose, producer, inits, g.input[0].name):
            continue  # only the model's input, or its float normalization, has the input's shape
        attrs = {a.name: helper.get_attribute_value(a) for a in transpose.attribute}
        q = consumers[transpose.output[0]]
        dq = len(q) == 1 and q[0].op_type == "QuantizeLinear" and consumers[q[0].output[0]]
        conv = dq and len(dq) == 1 and dq[0].op_type == "DequantizeLinear" and consumers[dq[0].output[0]]
        if attrs.get("perm") != _NCHW or not conv or len(conv) != 1 or conv[0].op_type != "Conv":
            continue
        q, conv = q[0], conv[0]
        wdq = producer.get(conv.input[1])
        w = wdq is not None and wdq.op_type == "DequantizeLinear" and inits.get(wdq.input[0])
        c = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        wzp = inits.get(wdq.input[2]) if w and len(wdq.input) > 2 else None
        if wzp is not None and np.any(numpy_helper.to_array(wzp) != 0):
            continue  # the grown kernel's zeros must dequantize to zero
        if (not w or len(consumers[w.name]) != 1 or c.get("strides") != [2, 2] or c.get("group", 1) != 1
                or any(d != 1 for d in c.get("dilations", [1, 1])) or c.get("auto_pad", b"NOTSET") != b"NOTSET"):
            continue
        weight = numpy_helper.to_array(w)
        k = weight.shape[2:]
        top, left, bottom, right = c.get("pads", [0, 0, 0, 0])
        out = [(size + a + b - kk) // 2 + 1 for size, a, b, kk in zip((height, width), (top, left), (bottom, right), k)]
        padded = [2 * -(-(2 * (o - 1) + kk) // 2) for o, kk in zip(out, k)]  # even, and covers every window
        pad_end = [p - size - a for p, size, a in zip(padded, (height, width), (top, left))]
        if min(pad_end) < 0 or weight.shape[1] != channels or out[0] * out[1] * weight.size < MIN_STEM_MACS:
            continue
        kh, kw = (-(-kk // 2) for kk in k)
        grown = np.zeros((weight.shape[0], 2, 2, channels, kh, kw), weight.dtype)
        for p in range(2):
            for r in range(2):
                part = weight[:, :, p::2, r::2]
                grown[:, p, r, :, :part.shape[2], :part.shape[3]] = part
        name = conv.name or conv.output[0]
        consts = {f"{name}__s2d_pads": np.array([0, top, left, 0, 0, pad_end[0], pad_end[1], 0], np.int64),
                  f"{name}__s2d_blocks": np.array([-1, padded[0] // 2, 2, padded[1] // 2, 2, channels], np.int64),
                  f"{name}__s2d_nhwc": np.array([-1, padded[0] // 2, padded[1] // 2, 4 * channels], np.int64),
                  f"{w.name}__s2d": grown.reshape(weight.shape[0], 4 * channels, kh, kw)}
        g.initializer.extend(numpy_helper.from_array(v, n) for n, v in consts.items())
        src, t = transpose.input[0], f"{name}__s2d_t"
        chain = [helper.make_node("Pad", [src, f"{name}__s2d_pads"], [f"{t}_padded"], name=f"{t}_pad"),
                 helper.make_node("Reshape", [f"{t}_padded", f"{name}__s2d_blocks"], [f"{t}_blocks"], name=f"{t}_r1"),
                 helper.make_node("Transpose", [f"{t}_blocks"], [f"{t}_moved"], perm=[0, 1, 3, 2, 4, 5],
                                  name=f"{t}_move"),
                 helper.make_node("Reshape", [f"{t}_moved", f"{name}__s2d_nhwc"], [f"{t}_nhwc"], name=f"{t}_r2"),
                 helper.make_node("Transpose", [f"{t}_nhwc"], [f"{t}_nchw"], perm=_NCHW, name=f"{t}_layout")]
        q.input[0] = f"{t}_nchw"
        wdq.input[0] = f"{w.name}__s2d"
        del conv.attribute[:]
        conv.attribute.extend([helper.make_attribute("kernel_shape", [kh, kw]),
                               helper.make_attribute("strides", [1, 1]), helper.make_attribute("pads", [0, 0, 0, 0])])
        at = list(g.node).index(transpose)
        g.node.remove(transpose)
        for i, node in enumerate(chain):
            g.node.insert(at + i, node)
        _drop_unused_initializers(g)
        _drop_value_info(g, {transpose.output[0], conv.output[0], *q.output, *dq[0].output})
        return True
    return False
