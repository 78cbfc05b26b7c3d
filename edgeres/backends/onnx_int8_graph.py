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
    _affine_chain,
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
    chain = []
    for node, const in _affine_chain(consumers, inits, transpose.output[0]):
        if node.input[1] != const.name or len(consumers[const.name]) != 1:
            break  # the data first, and a constant no other node reads (it is rewritten)
        arr = numpy_helper.to_array(const)
        if arr.size not in (1, channels) or (arr.size == channels and arr.shape[-3:] != (channels, 1, 1)):
            break
        chain.append(node)
    if not chain or chain[-1].output[0] in {o.name for o in g.output}:
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


MIN_STEM_MACS = 10_000_000  # below this the added data-movement ops cost more than the denser kernel saves


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
    NHWC input becomes ``QuantizeLinear -> Slice(even rows), Slice(odd rows) -> Reshape -> Concat ->
    Transpose -> DequantizeLinear -> Conv(stride 1, 4C in)`` on the input's 2x2 space-to-depth blocks.
    Quantizing first moves bytes, not floats (the scale is per tensor, so the layout does not matter), and
    a row of NHWC pixel pairs is already a row of (column offset, channel) blocks: the only interleaving
    left is the Concat of even and odd rows, ORT's cheapest way to move these bytes (0.07 ms at 224 on 2
    threads; a 6-D Transpose took 0.14, a Pad 0.06 more).  The padding stays the convolution's own, in
    whole blocks: an odd leading pad gets one leading zero tap in the grown kernel.  ResNet's 7x7 stem on 3
    channels runs in ORT's direct kernels at about half the time (0.47 -> 0.24 ms;
    ``benchmarks/onnx_profile.py``).  An odd height or width gets a float Pad of zeros at its end, which
    quantizes to the zero point as the convolution's padding does.  Every product is the same integer:
    the outputs are bit-identical.
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
        q, dq, conv = q[0], dq[0], conv[0]
        scale = inits.get(q.input[1])
        if scale is None or int(np.prod(scale.dims)) != 1:
            continue  # quantizing before the rearrangement needs one scale for the whole tensor
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
        if weight.shape[1] != channels:
            continue
        plan = _block_plan((height, width), weight.shape[2:], c.get("pads", [0, 0, 0, 0]))
        if plan is None or plan["macs_per_weight"] * weight.size < MIN_STEM_MACS:
            continue
        lead, (kh, kw), sizes = plan["lead"], plan["kernel"], plan["sizes"]
        shifted = np.zeros((*weight.shape[:2], 2 * kh, 2 * kw), weight.dtype)
        shifted[:, :, lead[0]:lead[0] + weight.shape[2], lead[1]:lead[1] + weight.shape[3]] = weight
        grown = np.stack([shifted[:, :, p::2, r::2] for p in range(2) for r in range(2)], axis=1)
        name = conv.name or conv.output[0]
        t = f"{name}__s2d"
        consts = {f"{t}_starts0": [0], f"{t}_starts1": [1], f"{t}_ends": [sizes[0]], f"{t}_axes": [1],
                  f"{t}_steps": [2], f"{t}_half": [-1, sizes[0] // 2, sizes[1] // 2, 2 * channels]}
        g.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), n) for n, v in consts.items())
        g.initializer.append(numpy_helper.from_array(grown.reshape(weight.shape[0], 4 * channels, kh, kw),
                                                     f"{w.name}__s2d"))
        src, chain = transpose.input[0], []
        if sizes != [height, width]:  # odd: zeros at the end, which quantize to the zero point
            g.initializer.append(numpy_helper.from_array(
                np.array([0, 0, 0, 0, 0, sizes[0] - height, sizes[1] - width, 0], np.int64), f"{t}_pads"))
            chain.append(helper.make_node("Pad", [src, f"{t}_pads"], [f"{t}_even"], name=f"{t}_pad"))
            src = f"{t}_even"
        q.input[0] = src
        chain.append(q)
        for p in range(2):
            chain += [helper.make_node("Slice", [q.output[0], f"{t}_starts{p}", f"{t}_ends", f"{t}_axes",
                                                 f"{t}_steps"], [f"{t}_rows{p}"], name=f"{t}_rows{p}"),
                      helper.make_node("Reshape", [f"{t}_rows{p}", f"{t}_half"], [f"{t}_half{p}"],
                                       name=f"{t}_half{p}")]
        chain += [helper.make_node("Concat", [f"{t}_half0", f"{t}_half1"], [f"{t}_nhwc"], axis=3,
                                   name=f"{t}_blocks"),
                  helper.make_node("Transpose", [f"{t}_nhwc"], [f"{t}_nchw"], perm=_NCHW, name=f"{t}_layout")]
        dq.input[0] = f"{t}_nchw"
        wdq.input[0] = f"{w.name}__s2d"
        del conv.attribute[:]
        conv.attribute.extend([helper.make_attribute("kernel_shape", [kh, kw]),
                               helper.make_attribute("strides", [1, 1]),
                               helper.make_attribute("pads", plan["pads"])])
        at = list(g.node).index(transpose)
        g.node.remove(transpose)
        g.node.remove(q)
        for i, node in enumerate(chain):
            g.node.insert(at + i, node)
        _drop_unused_initializers(g)
        _drop_value_info(g, {transpose.output[0], conv.output[0], *q.output, *dq.output})
        return True
    return False


def _block_plan(size, kernel, pads) -> dict | None:
    """How a stride-2 convolution reads 2x2 blocks: the even input size, the leading zero taps, the grown
    kernel and the pads (in blocks) that give the same output positions; None when it cannot."""
    top, left, bottom, right = pads
    plan = {"sizes": [s + s % 2 for s in size], "lead": [], "kernel": [], "pads": [0, 0, 0, 0]}
    outs = []
    for axis, (n, k, before, after) in enumerate(zip(size, kernel, (top, left), (bottom, right))):
        out = (n + before + after - k) // 2 + 1  # the original output size
        lead = before % 2                         # one zero tap in front makes the leading pad whole blocks
        kb = -(-(k + lead) // 2)
        first = (before + lead) // 2
        last = out - 1 + kb - plan["sizes"][axis] // 2 - first  # blocks of padding after the input
        if out < 1 or last < 0:
            return None
        plan["lead"].append(lead)
        plan["kernel"].append(kb)
        plan["pads"][axis], plan["pads"][axis + 2] = first, last
        outs.append(out)
    plan["macs_per_weight"] = outs[0] * outs[1]
    return plan
