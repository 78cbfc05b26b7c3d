"""Keras -> ONNX float32 (tf2onnx) -> ONNX int8 (ONNX Runtime static QDQ).

HEAVY layer.  The int8 scheme comes from the target: U8S8 (uint8 activations,
int8 per-channel weights) on x86, where ORT's VNNI/AVX2 kernels want unsigned
activations, and S8S8 on ARM.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.core.errors import ConversionError, first_line

OPSET = 17
INPUT_NAME = "input"


def to_float32(model: Any, hwc: tuple[int, int, int]) -> bytes:
    """tf2onnx conversion with an explicit (None, H, W, C) input signature (Keras 3 needs it)."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, *hwc), tf.float32, name=INPUT_NAME),)
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    except Exception as exc:
        raise ConversionError(f"ONNX conversion (tf2onnx) failed: {first_line(exc)}") from None
    if hoist_input_transpose(proto):
        fold_input_scale_into_conv(proto)
    fold_pad_into_maxpool(proto)
    check(proto)
    return proto.SerializeToString()


_NCHW = [0, 3, 1, 2]


def _index(g) -> tuple[dict, dict]:
    """Initializers by name, and the nodes that read each tensor."""
    from collections import defaultdict

    consumers = defaultdict(list)
    for node in g.node:
        for name in node.input:
            consumers[name].append(node)
    return {i.name: i for i in g.initializer}, consumers


def _drop_unused_initializers(g) -> None:
    used = {name for n in g.node for name in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)


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
    while True:
        users = consumers[cur]
        if len(users) != 1:
            return False
        node = users[0]
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if perm != _NCHW:
                return False
            transpose = node
            break
        if node.op_type not in _AFFINE_OPS or len(node.input) != 2 or node.input[0] != cur:
            return False
        const = inits.get(node.input[1])
        if const is None:
            return False
        arr = numpy_helper.to_array(const)
        if arr.size > 1 and arr.shape[-1] != arr.size:
            return False  # only per-channel (last-axis) or scalar constants are layout-free
        chain.append(node)
        cur = node.output[0]
    if not chain:
        return False
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
    stale = {n.output[0] for n in chain}
    keep = [v for v in g.value_info if v.name not in stale]
    del g.value_info[:]
    g.value_info.extend(keep)
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
    import numpy as np
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
    import numpy as np
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


def check(proto_or_bytes) -> None:
    import onnx

    proto = proto_or_bytes
    if isinstance(proto_or_bytes, (bytes, bytearray)):
        proto = onnx.load_from_string(bytes(proto_or_bytes))
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"ONNX model fails onnx.checker: {first_line(exc)}") from None


class _Reader:
    """The one-method data reader ONNX Runtime's calibrators expect."""

    def __init__(self, name: str, calib: np.ndarray, batch: int = 16):
        self._batches = iter([{name: calib[i:i + batch]} for i in range(0, len(calib), batch)])

    def get_next(self):
        return next(self._batches, None)


_AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


def input_normalization_nodes(proto) -> list[str]:
    """Nodes of the model's own input normalization (``preprocess_*`` layers).

    They are a per-channel affine map on the raw input.  Kept in float they
    cost about 0.9 ms on ResNet-50 at 224x224; quantized, ORT runs them as
    QLinearMul/QLinearAdd at full resolution for about 3 ms, and they add a
    rounding step before the first convolution.  So they stay float, and the
    QuantizeLinear before the first Conv quantizes the normalized input.
    """
    return [n.name for n in proto.graph.node if n.op_type in _AFFINE_OPS and "preprocess_" in n.name]


# --------------------------------------------------------------------------
# Recipe-driven quantization: calibrate once, quantize many ways.

_LAYER_OPS = {"Conv", "Gemm", "MatMul", "Add", "Mul", "Sub", "GlobalAveragePool", "AveragePool", "MaxPool",
              "Concat", "ConvTranspose"}
_FLOAT_OUTPUT_OPS = {"Gemm", "MatMul"}
BIAS_CORRECTION_IMAGES = 256  # per-channel means settle long before this  # ORT has integer kernels with float output for these


def _tap(proto, names: list[str]):
    """A session over ``proto`` that also returns the named intermediate tensors."""
    import onnx
    import onnxruntime as ort

    tapped = onnx.ModelProto()
    tapped.CopyFrom(proto)
    have = {o.name for o in tapped.graph.output}
    for name in names:
        if name not in have:
            tapped.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(tapped.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, [o.name for o in sess.get_outputs()]


class OnnxQuantizer:
    """The ONNX back end of a :class:`~edgeres.quant.recipes.Recipe`.

    ONNX Runtime's ``quantize_static`` writes the QDQ graph; the activation
    ranges come from edgeres' own histograms of the float model's tensors
    (:mod:`edgeres.quant.stats`) through ORT's documented ``TensorQuantOverrides``
    (``rmin``/``rmax``), so "mse" means the same as on TFLite.  Bias
    correction is empirical: the mean of every Conv/Gemm output in the QDQ
    model is compared with the float model's on the calibration images and
    the int32 bias moved by the difference.
    """

    def __init__(self, float_model: bytes, calib: np.ndarray, layer_types: dict[str, str], batch: int = 32):
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from edgeres.core.layers import resolve_layer

        self.calib = calib
        with tempfile.TemporaryDirectory(prefix="edgeres-ort-") as tmp:
            src, pre = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx")
            src.write_bytes(float_model)
            try:
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            except Exception:  # pre-processing is an optimisation; quantize the raw graph instead
                pre = src
            self.proto = onnx.load(str(pre))
        g = self.proto.graph
        self.input_name = g.input[0].name
        self.output_names = [o.name for o in g.output]
        inits = {i.name for i in g.initializer}
        self.keep_float_always = input_normalization_nodes(self.proto)
        self.layers: dict[str, list[str]] = {}  # layer -> node names
        self.layer_ops: dict[str, list[str]] = {}
        for node in g.node:
            if node.op_type not in _LAYER_OPS or node.name in self.keep_float_always:
                continue
            names = [node.name] + [i for i in node.input if i in inits] + list(node.output)
            layer = resolve_layer(names, layer_types)
            if layer is not None:
                self.layers.setdefault(layer, []).append(node.name)
                self.layer_ops.setdefault(layer, []).append(node.op_type)
        self.tensors = [o for n in g.node for o in n.output]
        from edgeres.quant.stats import tap_batch

        self._tapped = _tap(self.proto, self.tensors)  # one session for every statistics pass
        sess = self._tapped[0]  # one image, to size the batches that keep every tensor
        per_image = sum(v.nbytes for v in sess.run(None, {self.input_name: calib[:1]}))
        self.batch = tap_batch(per_image, batch)
        self.stats = self.collect_stats(calib, histograms=True)

    def collect_stats(self, x: np.ndarray, histograms: bool = False):
        """Statistics of every float tensor on ``x`` (keys: tensor names)."""
        from edgeres.quant.stats import collect

        sess, outs = self._tapped

        def batches():
            for s in range(0, len(x), self.batch):
                xb = x[s:s + self.batch]
                yield {self.input_name: xb, **dict(zip(outs, sess.run(None, {self.input_name: xb})))}

        return collect(batches, channel_axis=1, histograms=histograms)

    def stat_layers(self) -> dict[str, str]:
        node_layer = {n: layer for layer, nodes in self.layers.items() for n in nodes}
        return {o: node_layer[n.name] for n in self.proto.graph.node if n.name in node_layer for o in n.output}

    def layer_outputs(self, data: bytes | None, x: np.ndarray) -> dict[str, np.ndarray]:
        """Each layer's (last) output on ``x``; in a QDQ model, after its QuantizeLinear/DequantizeLinear."""
        import onnx

        proto = self.proto if data is None else onnx.load_from_string(data)
        nodes = {n.name: n for n in self.proto.graph.node}
        available = {o for n in proto.graph.node for o in n.output}
        wanted = {}
        for layer, names in self.layers.items():
            out = nodes[names[-1]].output[0]
            qdq = f"{out}_DequantizeLinear_Output"
            wanted[layer] = qdq if (data is not None and qdq in available) else out
        wanted = {k: v for k, v in wanted.items() if v in available}
        sess, outs = _tap(proto, list(wanted.values()))
        parts: dict[str, list] = {layer: [] for layer in wanted}
        for s in range(0, len(x), self.batch):
            values = dict(zip(outs, sess.run(None, {self.input_name: x[s:s + self.batch]})))
            for layer, name in wanted.items():
                parts[layer].append(values[name])
        return {layer: np.concatenate(p) for layer, p in parts.items() if p}

    def quantize(self, recipe, activation_type: str, keep_float: list[str] | None = None) -> tuple[bytes, dict]:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        keep_float = list(keep_float or [])
        bits = 16 if recipe.activations == "int16" else 8
        if bits == 16:
            act = QuantType.QUInt16 if activation_type == "uint8" else QuantType.QInt16
        else:
            act = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[activation_type]
        overrides = {}
        for name in self.stats.tensors:
            if name == self.input_name:
                continue
            method = recipe.calibration
            if name in self.output_names and recipe.output != "calibrated":
                method = "minmax"
            a, b = self.stats.range(name, method, recipe.percentile, bits)
            overrides[name] = [{"rmin": np.float32(a), "rmax": np.float32(b)}]
        extra = {"WeightSymmetric": True, "ActivationSymmetric": False, "TensorQuantOverrides": overrides}
        exclude = self.keep_float_always + [n for layer in keep_float for n in self.layers[layer]]
        # ORT still runs its own calibrator; every range is overridden, so a few images suffice.
        reader = _Reader(self.input_name, self.calib[:8], 8)
        with tempfile.TemporaryDirectory(prefix="edgeres-ort-") as tmp:
            src, dst = Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
            onnx.save(self.proto, str(src))
            try:
                quantize_static(str(src), str(dst), reader, nodes_to_exclude=exclude,
                                quant_format=QuantFormat.QDQ, per_channel=recipe.weights == "per-channel",
                                activation_type=act, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
            except Exception as exc:
                raise ConversionError(f"ONNX int8 quantization failed: {first_line(exc)}") from None
            qproto = onnx.load(str(dst))
        details = {"engine": "ONNX Runtime quantize_static (QDQ), edgeres ranges", "calibration": recipe.calibration,
                   "float_nodes": self.keep_float_always, "float_layers": keep_float}
        details["output_range"] = "minmax" if recipe.output != "calibrated" else recipe.calibration
        if recipe.output == "float":
            if _dequantize_output(qproto):
                details["output_range"] = "float (integer kernel, dequantized accumulator)"
        if recipe.bias_correction:
            details["bias_corrected_layers"] = self._bias_correct(qproto)
        data = qproto.SerializeToString()
        check(data)
        # ORT's CPU provider has no int16 kernels: int16 QDQ runs as DequantizeLinear -> float op.
        details["full_integer"] = not keep_float and bits == 8
        return data, details

    def _bias_correct(self, qproto) -> list[str]:
        from onnx import numpy_helper

        g = qproto.graph
        inits = {i.name: i for i in g.initializer}
        producer = {o: n for n in g.node for o in n.output}
        float_producer = {o: n for n in self.proto.graph.node for o in n.output}
        targets = []
        for node in g.node:
            if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
                continue
            dq = producer.get(node.input[2])
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            out = node.output[0]
            ref = out.removesuffix("_QuantizeLinear_Input")
            src = float_producer.get(ref)
            if src is None:
                continue
            if src.op_type == "Relu" and src.input[0] in float_producer:  # ORT folded the ReLU into the Q
                ref = src.input[0]
            targets.append((node, dq, out, ref))
        if not targets:
            return []
        # All calibration images: with 256 of 1,000, ResNet-20's agreement fell from 99.25% to 98.70%.
        # The float side was measured on them when the ranges were.
        quant_means = _channel_means(qproto, [t[2] for t in targets], self.calib, self.input_name)
        fixed = []
        tensor_layer = {n: layer for layer, nodes in self.layers.items() for n in nodes}
        for node, dq, out, ref in targets:
            diff = quant_means[out] - self.stats.channel_mean(ref)
            bias = inits[dq.input[0]]
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
            q = numpy_helper.to_array(bias).astype(np.int64)
            new = np.clip(q - np.round(diff / scale).astype(np.int64), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
            bias.CopyFrom(numpy_helper.from_array(new, bias.name))
            fixed.append(tensor_layer.get(node.name, node.name))
        return fixed


def _channel_means(proto, names: list[str], calib: np.ndarray, input_name: str, batch: int = 64) -> dict:
    sess, outs = _tap(proto, names)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for s in range(0, len(calib), batch):
        values = dict(zip(outs, sess.run(None, {input_name: calib[s:s + batch]})))
        for name in names:
            v = values[name].astype(np.float64)
            sums[name] = sums.get(name, 0) + v.sum(axis=tuple(i for i in range(v.ndim) if i != 1))
            counts[name] = counts.get(name, 0) + v.size // v.shape[1]
    return {k: sums[k] / counts[k] for k in sums}


def _dequantize_output(qproto) -> bool:
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
