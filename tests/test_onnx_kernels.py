"""ONNX Runtime kernel choice per convolution: the rewrite is exact, undoable, and only applied where timed."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeres.backends import onnx_kernels
from edgeres.backends.onnx import OnnxFormat
from edgeres.devices.targets import host_arch, load_target


def _float_convnet(size: int, width: int, depth: int) -> onnx.ModelProto:
    """A real float ConvNet (3x3 conv + ReLU, ``depth`` times, then global pooling): enough convolution
    work to time when ``size``/``width`` are large, a few microseconds when small."""
    rng = np.random.default_rng(0)
    nodes, inits, prev, ch = [], [], "input", 3
    for i in range(depth):
        w = rng.normal(0, (2.0 / (9 * ch)) ** 0.5, (width, ch, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.1, width).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, ch = f"r{i}", width
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["output"]))
    graph = helper.make_graph(nodes, "convnet",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, width, 1, 1])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class _Reader:
    def __init__(self, size: int):
        rng = np.random.default_rng(1)
        self.batches = iter([{"input": rng.uniform(0, 1, (1, 3, size, size)).astype(np.float32)}
                             for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


@functools.cache
def _qdq(size: int, width: int, depth: int) -> bytes:
    """The same net quantized by ORT's own ``quantize_static`` (QDQ, U8S8, per-channel symmetric weights)."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "f.onnx"), Path(tmp, "q.onnx")
        onnx.save(_float_convnet(size, width, depth), src)
        quantize_static(str(src), str(dst), _Reader(size), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return dst.read_bytes()


def _outputs(data: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _weights(proto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def test_gemm_rewrite_gives_bit_identical_outputs_and_undoes():
    data = _qdq(16, 16, 3)
    proto = onnx.load_from_string(data)
    assert len(onnx_kernels._conv_weights(proto)) == 3
    gemm = onnx_kernels.as_gemm(proto)
    before, after = _weights(proto), _weights(gemm)
    moved = [n for n in before if not np.array_equal(before[n], after[n])]
    assert moved and all(after[n].dtype == np.int8 for n in moved)  # weights and their zero points changed
    zps = [after[n] for n in moved if after[n].ndim == 1 and np.all(after[n] == -1)]
    assert len(zps) == 3  # each convolution's weight zero points are now -1
    x = np.random.default_rng(2).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(_outputs(gemm.SerializeToString(), x), _outputs(data, x))
    back = _weights(onnx_kernels.canonical(gemm))
    assert all(np.array_equal(back[n], before[n]) for n in before)


def test_rewrite_of_some_layers_only():
    proto = onnx.load_from_string(_qdq(16, 16, 3))
    first = sorted(onnx_kernels._conv_weights(proto))[0]
    after = _weights(onnx_kernels.as_gemm(proto, {first}))
    before = _weights(proto)
    assert not np.array_equal(after[first], before[first])
    assert sum(not np.array_equal(after[n], before[n]) for n in before) == 2  # the weight and its zero point


def test_weights_that_would_overflow_are_left_alone():
    """A weight already at -128 (not symmetric int8) cannot move down by one: that layer stays as it is."""
    proto = onnx.load_from_string(_qdq(16, 16, 2))
    name, (w, _) = sorted(onnx_kernels._conv_weights(proto).items())[0]
    q = numpy_helper.to_array(w).copy()
    q.flat[0] = -128
    w.CopyFrom(numpy_helper.from_array(q, name))
    after = _weights(onnx_kernels.as_gemm(proto))
    assert np.array_equal(after[name], q)
    assert sum(np.array_equal(after[n], v) for n, v in _weights(proto).items()) == len(after) - 2


def test_conv_times_name_every_convolution():
    data = _qdq(16, 16, 3)
    times = onnx_kernels.conv_times(data, threads=1, runs=3)
    assert set(times) == set(onnx_kernels._conv_weights(onnx.load_from_string(data)))
    assert all(t >= 0 for t in times.values())


def test_tiny_model_is_not_timed():
    data, details = onnx_kernels.tune(_qdq(8, 8, 2), threads=1)
    assert data == _qdq(8, 8, 2)
    assert details["choice"] == "symmetric" and "too little to time" in details["why"]
    assert details["onnxruntime"] == ort.__version__ and details["threads"] == 1


def test_model_without_int8_convolutions():
    data = _float_convnet(8, 8, 1).SerializeToString()
    out, details = onnx_kernels.tune(data, threads=1)
    assert out == data and details["why"] == "no int8 convolutions"


def test_tune_keeps_outputs_identical_whatever_it_chooses():
    """Enough convolution work to time; whichever kernels win on this CPU, the outputs are the same bits,
    and the choice can be undone to the model ORT's quantizer wrote."""
    data = _qdq(56, 128, 4)
    tuned, details = onnx_kernels.tune(data, threads=2)
    assert details["choice"] in ("measured", "symmetric")
    timed = details["timed_ms"]
    assert details["layers"] == 4 and timed["conv_symmetric"] >= onnx_kernels.MIN_CONV_MS
    assert timed["conv_best"] <= min(timed["conv_symmetric"], timed["conv_gemm"]) + 1e-3
    if details["choice"] == "measured":
        assert tuned != data and 1 <= details["gemm_layers"] <= 4
        assert timed["model_tuned"] <= onnx_kernels.WHOLE_FASTER * timed["model_symmetric"]
    else:
        assert tuned == data
    x = np.random.default_rng(3).uniform(0, 1, (1, 3, 56, 56)).astype(np.float32)
    np.testing.assert_array_equal(_outputs(tuned, x), _outputs(data, x))
    assert _weights(onnx_kernels.canonical(onnx.load_from_string(tuned))).keys() == _weights(
        onnx.load_from_string(data)).keys()
    back, orig = _weights(onnx_kernels.canonical(onnx.load_from_string(tuned))), _weights(onnx.load_from_string(data))
    assert all(np.array_equal(back[n], orig[n]) for n in orig)


class _Settings:
    def __init__(self, target, threads=1):
        self.target, self.threads = target, threads


def _target(tmp_path, text: str):
    p = tmp_path / "t.toml"
    p.write_text(text)
    return load_target(p)


@pytest.mark.parametrize("text, why", [
    (f'arch = "{host_arch()}"\n[onnx]\nkernels = "symmetric"\n', "asks for ORT's default kernels"),
    (f'arch = "{host_arch()}"\n[onnx]\nproviders = ["CoreMLExecutionProvider", "CPUExecutionProvider"]\n',
     "CPU provider only"),
    ('arch = "riscv64"\n', "kernels are timed on the target's CPU"),
])
def test_targets_that_are_not_timed_here(tmp_path, text, why):
    data = _qdq(56, 128, 4)
    out, details = OnnxFormat().tune_int8(data, _Settings(_target(tmp_path, text)))
    assert out == data and details["choice"] == "symmetric" and why in details["why"]


def test_host_target_is_timed(tmp_path):
    out, details = OnnxFormat().tune_int8(_qdq(8, 8, 2), _Settings(_target(tmp_path, f'arch = "{host_arch()}"\n')))
    assert "too little to time" in details["why"]  # it got as far as timing


def test_whole_times_times_each_model_and_refuses_changed_outputs():
    data = _qdq(16, 16, 3)
    gemm = onnx_kernels.as_gemm(onnx.load_from_string(data)).SerializeToString()
    times = onnx_kernels.whole_times([data, gemm], threads=1, rounds=2, per_round=3)
    assert len(times) == 2 and all(t > 0 for t in times)
    other = _qdq(16, 16, 2)  # another network: other outputs
    with pytest.raises(AssertionError, match="changed the outputs"):
        onnx_kernels.whole_times([data, other], threads=1, rounds=1, per_round=1)
