"""ONNX graph utilities: the checker, and exact rewrites of tf2onnx and ORT QDQ output.  HEAVY layer (onnx).

Each rewrite changes how ONNX Runtime runs a graph, never what it computes
(tests/test_onnx_passes.py checks identical outputs): the input
normalisation moved behind the layout Transpose and its scale folded into the
first convolution, zero padding folded into MaxPool, and the final Q/DQ pair dropped so the
classifier's integer accumulator is dequantized straight to float.  The
rewrites of the quantized graph for ORT's int8 kernels are in
:mod:`.onnx_int8_graph`.
"""

from __future__ import annotations

import re

import numpy as np

from edgeres.core.errors import ConversionError, first_line

_NCHW = [0, 3, 1, 2]


def _index(g) -> tuple[dict, dict]:
    """Initializers by name, and the nodes that read each tensor."""
    from collections import defaultdict

    consumers = defaultdict(list)
    for node in g.node:
        for name in node.input:
            consumers[name].append(node)
    return {i.name: i for i in g.initializer}, consumers


def _affine_chain(consumers, inits, start: str):
    """(node, constant initializer) along the chain that starts at tensor ``start``, for as long as the tensor's
    only reader is a Mul/Add/Sub/Div whose other input is an initializer (either side).  The callers add
    their own conditions and stop where they fail."""
    cur = start
    while len(consumers[cur]) == 1:
        node = consumers[cur][0]
        if node.op_type not in _AFFINE_OPS or len(node.input) != 2:
            return
        const = inits.get(node.input[1] if node.input[0] == cur else node.input[0])
        if const is None:
            return
        yield node, const
        cur = node.output[0]


def _drop_unused_initializers(g) -> None:
    used = {name for n in g.node for name in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)


def _drop_value_info(g, names) -> None:
    """Forget the recorded shapes of ``names``: a rewrite changed those tensors' layout."""
    keep = [v for v in g.value_info if v.name not in names]
    del g.value_info[:]
    g.value_info.extend(keep)


def _input_dims(g) -> list[int]:
    """The graph input's dimensions, 0 where not static."""
    return [d.dim_value if d.HasField("dim_value") else 0 for d in g.input[0].type.tensor_type.shape.dim]


def hoist_input_transpose(proto) -> bool:
    """Move the model's input normalization after tf2onnx's NHWC->NCHW Transpose.

    tf2onnx emits ``input -> Mul -> Add -> Transpose(0,3,1,2) -> Conv``.  ONNX
    Runtime broadcasts a 3-value constant over the last NHWC axis slowly
    (0.59 ms for Mul+Add at 224x224 on 2 threads, against 0.05 ms for the
    same ops on NCHW with (C,1,1) constants).  In QDQ int8 graphs ORT's own
    NHWC layout pass moves the ops back in front of the Transpose, so there
    the gain comes from the fold this rewrite enables
    (:func:`fold_input_scale_into_conv`).  The rewrite is exact: the same
    per-channel constants, reshaped.  Returns True when the graph changed.
    """
    from onnx import numpy_helper

    g = proto.graph
    inits, consumers = _index(g)
    chain: list = []
    cur = g.input[0].name
    for node, const in _affine_chain(consumers, inits, cur):
        if node.input[1] != const.name:
            return False  # the data must come first (c - x is no longer x's chain when moved)
        arr = numpy_helper.to_array(const)
        if arr.size > 1 and arr.shape[-1] != arr.size:
            return False  # only per-channel (last-axis) or scalar constants are layout-free
        chain.append(node)
        cur = node.output[0]
    users = consumers[cur]  # what ends the chain must be the layout Transpose
    if not chain or len(users) != 1 or users[0].op_type != "Transpose" \
            or next((list(a.ints) for a in users[0].attribute if a.name == "perm"), None) != _NCHW:
        return False
    transpose = users[0]
    nchw = transpose.output[0]
    last = chain[-1].output[0]
    for node in g.node:  # the Transpose's former consumers now read the chain's output
        for i, name in enumerate(node.input):
            if name == nchw:
                node.input[i] = last
    transpose.input[0] = g.input[0].name
    chain[0].input[0] = nchw
    for node in chain:
        arr = numpy_helper.to_array(inits[node.input[1]])
        if arr.size > 1:
            new = numpy_helper.from_array(arr.reshape(arr.size, 1, 1), f"{node.input[1]}__nchw")
            g.initializer.append(new)
            node.input[1] = new.name
    _drop_unused_initializers(g)
    _drop_value_info(g, {n.output[0] for n in chain})
    nodes = [n for n in g.node if n is not transpose]
    at = next(i for i, n in enumerate(nodes) if n is chain[0])
    nodes.insert(at, transpose)
    del g.node[:]
    g.node.extend(nodes)
    return True


def fold_input_scale_into_conv(proto) -> bool:
    """Fold ``Transpose -> Mul(s) -> Add(b) -> Conv(W)`` into ``Transpose -> Add(b/s) -> Conv(W*s)``.

    Exact, including the convolution's zero padding:
    ``pad0(x*s + b) = s * pad0(x + b/s)`` for a per-channel s with no zero.
    ONNX Runtime's NHWC layout pass moves the input Transpose back behind the
    elementwise ops, where each costs ~0.4 ms on ResNet-50; this removes one.
    """
    from onnx import numpy_helper

    g = proto.graph
    inits, consumers = _index(g)

    def only_user(name, op):
        users = consumers[name]
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    transpose = only_user(g.input[0].name, "Transpose")
    mul = transpose and only_user(transpose.output[0], "Mul")
    add = mul and only_user(mul.output[0], "Add")
    conv = add and only_user(add.output[0], "Conv")
    if not conv or any(a.name == "group" and a.i != 1 for a in conv.attribute):
        return False
    if mul.input[1] not in inits or add.input[1] not in inits or conv.input[1] not in inits:
        return False
    if len(consumers[conv.input[1]]) != 1:
        return False
    scale = numpy_helper.to_array(inits[mul.input[1]]).astype(np.float64)
    bias = numpy_helper.to_array(inits[add.input[1]]).astype(np.float64)
    weight = numpy_helper.to_array(inits[conv.input[1]])
    channels = weight.shape[1]
    if scale.size not in (1, channels) or bias.size not in (1, channels) or np.any(scale == 0):
        return False
    s = np.broadcast_to(scale.reshape(-1), (channels,))
    b = np.broadcast_to(bias.reshape(-1), (channels,))
    new_w = (weight * s.reshape(1, channels, 1, 1)).astype(weight.dtype)
    new_b = (b / s).reshape(channels, 1, 1).astype(np.float32)
    w_name, b_name = f"{conv.input[1]}__scaled", f"{add.input[1]}__unscaled"
    g.initializer.append(numpy_helper.from_array(new_w, w_name))
    g.initializer.append(numpy_helper.from_array(new_b, b_name))
    conv.input[1] = w_name
    add.input[0], add.input[1] = transpose.output[0], b_name
    g.node.remove(mul)
    _drop_unused_initializers(g)
    return True


def fold_pad_into_maxpool(proto) -> int:
    """Fold ``Relu -> Pad(0) -> MaxPool`` into ``Relu -> MaxPool(pads=...)``.

    Exact: after a ReLU every value is >= 0, so a zero border never wins a
    max that also sees at least one real value (true whenever pad < kernel),
    which is what MaxPool's own padding computes.  keras.applications ResNets
    have this pattern (pool1_pad); ORT spends ~0.2 ms on the separate Pad.
    Returns the number of folds.
    """
    from onnx import helper, numpy_helper

    g = proto.graph
    inits, consumers = _index(g)
    producer = {o: n for n in g.node for o in n.output}
    folded = 0
    for pad in [n for n in g.node if n.op_type == "Pad"]:
        src = producer.get(pad.input[0])
        users = consumers[pad.output[0]]
        if src is None or src.op_type != "Relu" or len(users) != 1 or users[0].op_type != "MaxPool":
            continue
        pool = users[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
        mode = next((helper.get_attribute_value(a) for a in pad.attribute if a.name == "mode"), b"constant")
        if mode not in (b"constant", "constant") or len(pad.input) < 2 or pad.input[1] not in inits:
            continue
        if len(pad.input) > 2 and pad.input[2]:
            value = inits.get(pad.input[2])
            if value is None or np.any(numpy_helper.to_array(value) != 0):
                continue
        pads = numpy_helper.to_array(inits[pad.input[1]]).astype(np.int64).reshape(-1)
        rank = pads.size // 2
        if rank != 4 or pads[0] or pads[1] or pads[4] or pads[5]:
            continue  # only spatial padding of an NCHW tensor
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or any(attrs.get("pads", [0])):
            continue
        kernel = attrs.get("kernel_shape", [])
        spatial = [int(pads[2]), int(pads[3]), int(pads[6]), int(pads[7])]
        if len(kernel) != 2 or max(spatial) >= min(kernel):
            continue
        for a in list(pool.attribute):
            if a.name == "pads":
                pool.attribute.remove(a)
        pool.attribute.append(helper.make_attribute("pads", spatial))
        pool.input[0] = pad.input[0]
        g.node.remove(pad)
        folded += 1
    if folded:
        _drop_unused_initializers(g)
    return folded


_AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


_COUNTED = re.compile(r"^(?P<base>.*?__)(?P<n>\d+)(?P<port>:\d+)?$")  # tf2onnx's made names: Squeeze__203:0
_INNER_COUNT = re.compile(r"__\d+(?=_)")  # a counter inside such a name, from the node it was made for


def canonical_names(proto) -> int:
    """Renumber the names tf2onnx makes up (``const_fold_opt__193``, ``Mean_Squeeze__203:0``) by where they first
    appear in the graph, and order the initializers by first use; returns how many names were renumbered.

    tf2onnx numbers them from one process-wide counter, in an order that changed from run to run (a pre-activation
    ResNet's folded BatchNorm constants came out in another order each time, and one extra name shifted every
    later number by one), so the same model exported to different bytes, and every artifact after it.  The
    nodes, their order and the values were the same: renumbered, the export is the same bytes each time
    (``tests/test_onnx_passes.py``).  The symbolic dimensions it makes up (``unk__104``) are renumbered the same
    way, and so are the numbers inside the last part of such a name (``Transpose__609_shape__189``, named after
    a node whose number changed too).  A name that does not end in ``__<number>`` is left as it is, so a new
    name can only meet another renumbered one, and those are numbered apart.

    tf2onnx also merges equal constants (two ``Cast/x`` zeros of a ResNet's padded shortcuts) and keeps the name
    of whichever it met first, which changed between two conversions in one process.  So a constant that more
    than one node reads is named ``shared_const__<first use>`` instead."""
    g = proto.graph
    _name_shared_constants(g)
    new: dict[str, str] = {}

    def canon(name: str) -> str:
        m = _COUNTED.match(name)
        if not m:
            return name
        key = m["base"] + m["n"]
        if key not in new:  # and the numbers inside its last part: Transpose__609_shape__189
            head, sep, tail = m["base"].rpartition("/")
            new[key] = f"{head}{sep}{_INNER_COUNT.sub('', tail)}{len(new)}"
        return new[key] + (m["port"] or "")

    first: dict[str, int] = {}
    for node in g.node:
        for name in node.input:
            first.setdefault(name, len(first))
        node.input[:] = [canon(n) for n in node.input]
        node.name = canon(node.name)
        node.output[:] = [canon(n) for n in node.output]
    order = sorted(g.initializer, key=lambda i: (first.get(i.name, len(first)), i.name))
    ordered = [type(i)() for i in order]
    for dst, src in zip(ordered, order):
        dst.CopyFrom(src)
        dst.name = canon(dst.name)
    del g.initializer[:]
    g.initializer.extend(ordered)
    for info in (*g.input, *g.output, *g.value_info):
        info.name = canon(info.name)
        if info.type.HasField("tensor_type"):  # and its unnamed dimensions: unk__104
            for dim in info.type.tensor_type.shape.dim:
                if dim.HasField("dim_param"):
                    dim.dim_param = canon(dim.dim_param)
    return len(new)


def _name_shared_constants(g) -> None:
    """Rename each initializer that two or more nodes read (see :func:`canonical_names`)."""
    readers: dict[str, set[int]] = {}
    for i, node in enumerate(g.node):
        for name in node.input:
            readers.setdefault(name, set()).add(i)
    graph_inputs = {v.name for v in g.input}
    shared = {i.name for i in g.initializer if len(readers.get(i.name, ())) > 1 and i.name not in graph_inputs}
    rename: dict[str, str] = {}
    for node in g.node:  # numbered by first use: the nodes' order is the same each time, the names are not
        for name in node.input:
            if name in shared and name not in rename:
                rename[name] = f"shared_const__{len(rename)}"
    if not rename:
        return
    for node in g.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
    for init in g.initializer:
        init.name = rename.get(init.name, init.name)
    for info in g.value_info:
        info.name = rename.get(info.name, info.name)


def input_normalization_nodes(proto) -> list[str]:
    """Nodes of the model's own input normalization: the zoo's ``preprocess_*`` layers, and the chain of
    Mul/Add/Sub/Div by constants that the graph input (after tf2onnx's layout Transpose) goes through first
    (a Keras Rescaling and Normalization: the shared ResNet-20, EfficientNet).

    They are a per-channel affine map on the raw input.  Kept in float they
    cost about 0.9 ms on ResNet-50 at 224x224; quantized, ORT runs them as
    QLinearMul/QLinearAdd at full resolution for about 3 ms, and each adds a
    rounding step before the first convolution.  So they stay float, and the
    QuantizeLinear before the first Conv quantizes the normalized input.
    """
    g = proto.graph
    names = [n.name for n in g.node if n.op_type in _AFFINE_OPS and "preprocess_" in n.name]
    inits, consumers = _index(g)
    cur = g.input[0].name if g.input else ""
    if len(consumers[cur]) == 1 and consumers[cur][0].op_type == "Transpose":
        cur = consumers[cur][0].output[0]
    names += [node.name for node, _ in _affine_chain(consumers, inits, cur) if node.name not in names]
    return names


_FLOAT_OUTPUT_OPS = {"Gemm", "MatMul"}  # ORT has integer kernels with float output for these


def dequantize_output(qproto) -> bool:
    """Drop the Q/DQ pair between the last Gemm/MatMul and the graph output.

    ORT then runs the layer as QGemm / MatMulIntegerToFloat: int8 inputs and
    weights, the int32 accumulator scaled straight to float.  The logits are
    never rounded to an 8-bit grid (which on ResNet-20 alone cost 0.35
    points of agreement).  Returns True when the graph changed.
    """
    g = qproto.graph
    producer = {o: n for n in g.node for o in n.output}
    changed = False
    for out in g.output:
        dq = producer.get(out.name)
        q = dq is not None and dq.op_type == "DequantizeLinear" and producer.get(dq.input[0])
        last = q and q.op_type == "QuantizeLinear" and producer.get(q.input[0])
        if not last or last.op_type not in _FLOAT_OUTPUT_OPS:
            continue
        users = [n for n in g.node if q.input[0] in n.input]
        if len(users) != 1:
            continue
        last.output[0] = out.name
        g.node.remove(q)
        g.node.remove(dq)
        changed = True
    if changed:
        _drop_unused_initializers(g)
    return changed


def check(proto_or_bytes) -> None:
    import onnx

    proto = proto_or_bytes
    if isinstance(proto_or_bytes, (bytes, bytearray)):
        proto = onnx.load_from_string(bytes(proto_or_bytes))
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"ONNX model fails onnx.checker: {first_line(exc)}") from None


