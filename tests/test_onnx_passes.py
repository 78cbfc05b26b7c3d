"""The exact ONNX graph rewrites edgeres applies after tf2onnx, checked on real zoo models."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
import tf2onnx

from edgeres.backends import onnx as onnx_conv
from edgeres.backends import onnx_graph, onnx_int8_graph
from edgeres.zoo import create_model


@functools.cache  # resnet50 is converted once for both tests
def _raw_and_edgeres(name: str, size: int):
    import keras

    keras.utils.set_random_seed(1)
    model = create_model(name, input_size=size, num_classes=7)
    # Make BN statistics and biases non-trivial so a wrong fold would show.
    for layer in model.layers:
        if layer.weights and not layer.name.startswith("preprocess_"):
            layer.set_weights([w + np.random.default_rng(2).normal(0, 0.05, w.shape).astype(w.dtype)
                               if w.ndim == 1 else w for w in layer.get_weights()])
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="input"),)
    raw, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=onnx_conv.OPSET)
    ours = onnx.load_from_string(onnx_conv.to_float32(model, (size, size, 3)))
    return model, raw, ours


def _run(proto, x):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]


@pytest.mark.parametrize("name", ["resnet50", "resnet18", "resnet8"])
def test_rewrites_keep_outputs_identical(name):
    size = 32 if name == "resnet8" else 64
    _, raw, ours = _raw_and_edgeres(name, size)
    x = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype(np.float32)
    want, got = _run(raw, x), _run(ours, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_resnet50_graph_is_rewritten():
    _, raw, ours = _raw_and_edgeres("resnet50", 64)
    raw_ops = [n.op_type for n in raw.graph.node]
    ops = [n.op_type for n in ours.graph.node]
    assert raw_ops[:3] == ["Mul", "Add", "Transpose"]  # what tf2onnx emits
    assert ops[:3] == ["Transpose", "Add", "Conv"]  # normalization after the layout change, scale folded
    assert raw_ops.count("Pad") == 1 and ops.count("Pad") == 0  # pool1_pad folded into MaxPool
    pool = next(n for n in ours.graph.node if n.op_type == "MaxPool")
    assert list(next(a.ints for a in pool.attribute if a.name == "pads")) == [1, 1, 1, 1]
    onnx.checker.check_model(ours)


def test_rewrites_leave_unmatched_graphs_alone():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["input"], ["r"]),
             helper.make_node("Pad", ["r", "p"], ["q"], mode="reflect"),
             helper.make_node("MaxPool", ["q"], ["y"], kernel_shape=[3, 3])]
    pads = onnx.numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "p")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[pads])
    proto = helper.make_model(graph)
    assert onnx_graph.hoist_input_transpose(proto) is False
    assert onnx_graph.fold_input_scale_into_conv(proto) is False
    assert onnx_graph.fold_pad_into_maxpool(proto) == 0  # reflect padding is not a zero border
    assert [n.op_type for n in proto.graph.node] == ["Relu", "Pad", "MaxPool"]


class _Images:
    def __init__(self, size: int, channels: int = 3):
        rng = np.random.default_rng(4)
        self._it = iter([{"input": rng.uniform(0, 255, (1, size, size, channels)).astype(np.float32)}
                         for _ in range(3)])

    def get_next(self):
        return next(self._it, None)


def _quantized(proto, size: int, channels: int = 3, exclude: list[str] | None = None) -> bytes:
    """``proto`` quantized by ORT's ``quantize_static`` as edgeres asks for it (QDQ U8S8 per-channel, the input
    normalization kept float unless ``exclude`` says otherwise)."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(proto, Path(tmp, "f.onnx"))
        quantize_static(str(Path(tmp, "f.onnx")), str(Path(tmp, "q.onnx")), _Images(size, channels),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        nodes_to_exclude=onnx_graph.input_normalization_nodes(proto) if exclude is None else exclude)
        return Path(tmp, "q.onnx").read_bytes()


@functools.cache
def _quantized_zoo(name: str, size: int) -> bytes:
    return _quantized(_raw_and_edgeres(name, size)[2], size)


def test_int8_input_normalization_runs_on_nhwc_rows_with_identical_outputs():
    """The int8 graph's float normalization moves in front of the input Transpose with (W, C) constants:
    the same bits out, and ORT no longer broadcasts 3 values at a time."""
    size = 64
    before = onnx.load_from_string(_quantized_zoo("resnet18", size))
    after = onnx.load_from_string(_quantized_zoo("resnet18", size))
    assert onnx_int8_graph.widen_input_constants(after) is True
    onnx.checker.check_model(after)
    first = [n for n in after.graph.node if n.op_type != "DequantizeLinear"][:3]
    assert [n.op_type for n in first] == ["Add", "Transpose", "QuantizeLinear"]
    assert first[0].input[0] == "input"
    row = next(i for i in after.graph.initializer if i.name == first[0].input[1])
    assert list(row.dims) == [size, 3]
    x = np.random.default_rng(5).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(after, x), _run(before, x))
    assert onnx_int8_graph.widen_input_constants(after) is False  # nothing left to move


def test_a_models_own_rescaling_and_normalization_stay_float_in_the_int8_graph():
    """A Keras Rescaling and Normalization inside the model (the shared ResNet-20, EfficientNet) become
    Mul, Add, Mul on the input: kept float like the zoo's preprocess layers, the first QuantizeLinear
    quantizes the normalized input, and what the first convolution reads is rounded once instead of three
    times.  (On the shared ResNet-20 the output SQNR went from 30.8 to 31.6 dB; this toy's output error
    is the convolution's, so the test measures the convolution's input.)"""
    import keras
    from keras import layers

    keras.utils.set_random_seed(6)
    size = 16
    i = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 255.0, name="rescale")(i)
    x = layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.052, 0.050, 0.051], name="normalize")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
    model = keras.Model(i, layers.Dense(5, name="logits")(layers.GlobalAveragePooling2D()(x)))
    proto = onnx.load_from_string(onnx_conv.to_float32(model, (size, size, 3)))
    chain = onnx_graph.input_normalization_nodes(proto)
    by_name = {n.name: n for n in proto.graph.node}
    assert [by_name[n].op_type for n in chain] == ["Mul", "Add", "Mul"]
    assert all("rescale" in n or "normalize" in n for n in chain)
    kept, quantized = (onnx.load_from_string(_quantized(proto, size, exclude=e)) for e in (None, []))
    first_q = next(n for n in kept.graph.node if n.op_type == "QuantizeLinear")
    assert first_q.input[0] == by_name[chain[-1]].output[0]  # the normalized input is what is quantized
    x = np.random.default_rng(7).uniform(0, 255, (32, size, size, 3)).astype(np.float32)
    want = _conv_input(proto, x).astype(np.float64)

    def sqnr(m):
        return 10 * np.log10(np.sum(want ** 2) / np.sum((_conv_input(m, x) - want) ** 2))

    assert sqnr(kept) >= sqnr(quantized) + 3.0, (sqnr(kept), sqnr(quantized))


def _conv_input(proto, x):
    """What the first Conv of ``proto`` reads, on ``x``."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    name = next(n for n in m.graph.node if n.op_type == "Conv").input[0]
    m.graph.output.insert(0, onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return _run(m, x)


def test_widening_needs_a_static_width():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Transpose", ["input"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Add", ["t", "c"], ["y"])]
    c = onnx.numpy_helper.from_array(np.ones((3, 1, 1), np.float32), "c")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          [1, "h", "w", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[c])
    proto = helper.make_model(graph)
    assert onnx_int8_graph.widen_input_constants(proto) is False
    assert [n.op_type for n in proto.graph.node] == ["Transpose", "Add"]


def _stem(proto):
    return next(n for n in proto.graph.node if n.op_type == "Conv")


def _attr(node, name):
    return next(list(a.ints) for a in node.attribute if a.name == name)


def test_resnet_stem_runs_as_a_stride_1_convolution_on_space_to_depth_blocks():
    """ResNet's 7x7 stride-2 stem on 3 channels becomes 4x4 stride 1 on 12: bit-identical outputs, batch 1 and 2."""
    size = 96
    before = onnx.load_from_string(_quantized_zoo("resnet18", size))
    after = onnx.load_from_string(_quantized_zoo("resnet18", size))
    assert onnx_int8_graph.apply_all(after) == ["widen_input_constants", "space_to_depth_stem"]
    onnx.checker.check_model(after)
    stem = _stem(after)
    assert _attr(stem, "kernel_shape") == [4, 4] and _attr(stem, "strides") == [1, 1]
    assert _attr(stem, "pads") == [2, 2, 1, 1]  # 3 pixels + one leading zero tap = 2 blocks; 1 block after
    ops = [n.op_type for n in after.graph.node if n.op_type not in ("DequantizeLinear", "Conv")]
    assert ops[:8] == ["Add", "QuantizeLinear", "Slice", "Reshape", "Slice", "Reshape", "Concat", "Transpose"]
    assert _attr(_stem(before), "kernel_shape") == [7, 7]
    for batch in (1, 2):
        x = np.random.default_rng(batch).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
        np.testing.assert_array_equal(_run(after, x), _run(before, x))
    assert onnx_int8_graph.space_to_depth_stem(after) is False  # the stem is stride 1 now


@pytest.mark.parametrize("size, kernel, pads", [
    (129, 3, [1, 1, 1, 1]), (128, 5, [2, 1, 2, 1]), (130, 4, [0, 0, 0, 0]), (128, 7, [3, 3, 3, 3]),
    (127, 4, [1, 2, 2, 1]), (33, 1, [0, 0, 0, 0]), (34, 2, [0, 1, 1, 0]), (31, 6, [3, 0, 0, 3]),
    (32, 3, [0, 0, 0, 0]), (33, 7, [2, 3, 4, 3])])
def test_space_to_depth_on_odd_sizes_kernels_and_pads(size, kernel, pads, monkeypatch):
    """Grayscale, odd and even sizes, odd and even kernels, odd, even and asymmetric padding: the padding
    becomes whole blocks (a leading zero tap where it was odd), an odd size gets zeros that quantize to the
    zero point as the convolution's own padding does, so every output is the same."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(kernel)
    w = rng.normal(0, 0.3, (16, 1, kernel, kernel)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["input"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w", "b"], ["c"], strides=[2, 2], pads=pads),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          ["n", size, size, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(w, "w"),
                               onnx.numpy_helper.from_array(rng.normal(0, 1, 16).astype(np.float32), "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    q = _quantized(proto, size, channels=1)
    before, after = onnx.load_from_string(q), onnx.load_from_string(q)
    monkeypatch.setattr(onnx_int8_graph, "MIN_STEM_MACS", 0)  # a small test model
    assert onnx_int8_graph.space_to_depth_stem(after) is True
    onnx.checker.check_model(after)
    assert _attr(_stem(after), "kernel_shape") == [-(-(kernel + pads[0] % 2) // 2), -(-(kernel + pads[1] % 2) // 2)]
    assert ("Pad" in [n.op_type for n in after.graph.node]) == (size % 2 == 1)
    x = np.random.default_rng(9).uniform(0, 255, (2, size, size, 1)).astype(np.float32)
    want = _run(before, x)
    assert want.shape[0] == 2 and want.any()
    np.testing.assert_array_equal(_run(after, x), want)


def test_small_stems_are_left_alone():
    q = _quantized_zoo("resnet18", 64)  # 64x64 input: a 32x32 stem output, under MIN_STEM_MACS
    proto = onnx.load_from_string(q)
    assert onnx_int8_graph.space_to_depth_stem(proto) is False


def test_stem_with_nonzero_weight_zero_points_is_left_alone():
    """The grown kernel is zero-filled: with another weight zero point those zeros would not dequantize to 0."""
    from edgeres.backends.onnx_kernels import as_gemm

    shifted = as_gemm(onnx.load_from_string(_quantized_zoo("resnet18", 96)))  # every weight zero point -1
    assert onnx_int8_graph.space_to_depth_stem(shifted) is False
    assert _attr(_stem(shifted), "kernel_shape") == [7, 7]


def test_block_plan_reads_the_same_pixels_for_every_size_kernel_and_pad():
    """Over every small case: each output's grown window, in blocks, covers exactly the original taps (the
    extra taps are the zero-filled ones), and the output count is the same; or the plan declines."""
    declined = 0
    for n in range(2, 14):
        for k in range(1, 8):
            for before in range(0, 4):
                for after in range(0, 4):
                    if n + before + after < k:
                        continue
                    plan = onnx_int8_graph._block_plan((n, n), (k, k), [before, before, after, after])
                    out = (n + before + after - k) // 2 + 1
                    if plan is None:
                        declined += 1
                        assert n % 2 == 1  # only an odd size can leave a block that no output reads
                        continue
                    lead, kb, first, last = plan["lead"][0], plan["kernel"][0], plan["pads"][0], plan["pads"][2]
                    assert plan["sizes"][0] % 2 == 0 and plan["sizes"][0] - n in (0, 1)
                    assert plan["sizes"][0] // 2 + first + last - kb + 1 == out
                    for i in range(out):
                        real = {2 * (i - first) + t for t in range(lead, lead + k)}  # the grown kernel's taps
                        assert real == {2 * i - before + t for t in range(k)}
    assert declined  # the odd sizes whose last block no output reads


def _structure(proto):
    """A graph without its names (tf2onnx numbers them from a process-wide counter): each node's op and
    attributes in order, and every constant's bytes."""
    nodes = [(n.op_type, [(a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute if a.name != "value"])
             for n in proto.graph.node]
    consts = sorted((i.data_type, tuple(i.dims), onnx.numpy_helper.to_array(i).tobytes())
                    for i in proto.graph.initializer)
    return nodes, consts


def test_lean_freezing_exports_the_same_graph():
    """``_lean_freezing`` frees tf2onnx's intermediate copies earlier; the exported graph must not change."""
    import keras

    keras.utils.set_random_seed(3)
    model = create_model("resnet8", input_size=32, num_classes=7)
    spec = (tf.TensorSpec((None, 32, 32, 3), tf.float32, name="input"),)
    plain, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=onnx_conv.OPSET)
    from tf2onnx import tf_loader

    original = tf_loader.from_function
    with onnx_conv._lean_freezing():
        assert tf_loader.from_function is not original  # this tf2onnx has every part it calls
        lean, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=onnx_conv.OPSET)
    assert tf_loader.from_function is original
    assert _structure(lean) == _structure(plain)
    x = np.random.default_rng(4).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(lean, x), _run(plain, x))


def test_made_up_names_are_numbered_and_ordered_by_first_use():
    """tf2onnx numbers the names it makes up (folded constants, added nodes) in an order that changes from run
    to run; the export renumbers them by where the graph first uses them, so a model exports to the same
    bytes: here a copy with its folded constants renumbered and its initializers shuffled comes back."""
    import random

    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same")(i)
    for _ in range(3):  # pre-activation blocks: BN on a tensor the skip also reads, which no conv absorbs
        y = layers.Conv2D(8, 3, padding="same")(layers.ReLU()(layers.BatchNormalization()(x)))
        x = layers.Add()([x, y])
    model = keras.Model(i, layers.Dense(4)(layers.GlobalAveragePooling2D()(x)))
    rng = np.random.default_rng(0)
    for layer in model.layers:  # trained statistics: a fresh BN (scale 1, shift 0) folds away entirely
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 2, 8).astype("float32") for _ in layer.get_weights()])
    data = onnx_conv.to_float32(model, (8, 8, 3))
    proto = onnx.load_model_from_string(data)
    folded = [t.name for t in proto.graph.initializer if t.name.startswith("const_fold_opt__")]
    assert len(folded) >= 2
    first_use = [n for node in proto.graph.node for n in node.input if n in folded]
    numbers = [int(n.rsplit("__", 1)[1]) for n in sorted(folded, key=first_use.index)]
    assert numbers == sorted(numbers) and numbers[0] < 10, numbers  # numbered by first use, from the start

    shuffled = onnx.load_model_from_string(data)  # another run's numbering and order
    names = [f"const_fold_opt__{k + 500}" for k in range(len(folded))]
    random.Random(1).shuffle(names)
    rename = dict(zip(folded, names))
    for t in shuffled.graph.initializer:
        t.name = rename.get(t.name, t.name)
    for node in shuffled.graph.node:
        for k, n in enumerate(node.input):
            node.input[k] = rename.get(n, n)
    inits = list(shuffled.graph.initializer)
    random.Random(2).shuffle(inits)
    copies = [onnx.TensorProto() for _ in inits]
    for c, t in zip(copies, inits):
        c.CopyFrom(t)
    del shuffled.graph.initializer[:]
    shuffled.graph.initializer.extend(copies)
    assert shuffled.SerializeToString() != data
    assert onnx_graph.canonical_names(shuffled) >= len(folded)
    assert shuffled.SerializeToString() == data


def test_a_constant_two_nodes_read_gets_the_same_name_whichever_tf2onnx_kept():
    """tf2onnx merges equal constants and keeps the first one's name, which changed between two conversions
    in one process: the name is canonical, so the bytes are the same whichever survived."""
    from onnx import TensorProto, helper

    def graph(kept: str):
        zero = helper.make_tensor(kept, TensorProto.FLOAT, [], [0.0])
        nodes = [helper.make_node("Mul", ["x", kept], ["y"], name="block3/mul"),
                 helper.make_node("Mul", ["y", kept], ["z"], name="block4/mul")]
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "z")]
        return helper.make_model(helper.make_graph(nodes, "g", [io[0]], [io[1]], [zero]))

    a, b = graph("block3/zeros/Cast/x:0"), graph("block4/zeros/Cast/x:0")
    assert a.SerializeToString() != b.SerializeToString()
    onnx_graph.canonical_names(a)
    onnx_graph.canonical_names(b)
    assert a.SerializeToString() == b.SerializeToString()
    assert [i.name for i in a.graph.initializer] == ["shared_const__0"]
    assert list(a.graph.node[1].input) == ["y", "shared_const__0"]
    onnx.checker.check_model(a)
