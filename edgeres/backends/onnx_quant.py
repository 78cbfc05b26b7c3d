"""The ONNX back end's quantizer: calibrate once, quantize many recipes.  HEAVY layer (onnx, onnxruntime).

ONNX Runtime's ``quantize_static`` writes the QDQ graph; edgeres supplies the
activation ranges from its own histograms and corrects biases afterwards.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from edgeres.backends.onnx_graph import check, dequantize_output, input_normalization_nodes
from edgeres.backends.onnx_int8_graph import apply_all
from edgeres.backends.onnx_subgraph import MOVEMENT_OPS, constant_inputs, node_macs, output_pixels, shapes
from edgeres.backends.onnx_subgraph import feeding as _feeding
from edgeres.backends.onnx_subgraph import prefix as _prefix
from edgeres.backends.onnx_subgraph import tap as _tap
from edgeres.core.errors import ConversionError, first_line
from edgeres.core.stop import temp_dir
from edgeres.quant.stats import LAYER_BY_LAYER, bias_correction_passes


class _Reader:
    """The one-method data reader ONNX Runtime's calibrators expect."""

    def __init__(self, name: str, calib: np.ndarray, batch: int = 16):
        self._batches = iter([{name: calib[i:i + batch]} for i in range(0, len(calib), batch)])

    def get_next(self):
        return next(self._batches, None)


# --------------------------------------------------------------------------
# Recipe-driven quantization: calibrate once, quantize many ways.

_LAYER_OPS = {"Conv", "Gemm", "MatMul", "Add", "Mul", "Sub", "GlobalAveragePool", "AveragePool", "MaxPool",
              "Concat", "ConvTranspose"}
#: where a float chain ends and is quantized again: a convolution or matrix product (its int8 kernel is the
#: point), or an op that only moves data (exact in int8: a Reshape before a MatMul keeps the MatMul integer)
_STOPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"} | MOVEMENT_OPS
#: op types ORT's CPU QDQ fusions run in integer (or that only move data), seen so in every int8 model of the
#: development suite and in keras.applications' MobileNets and EfficientNet: a float graph of only these is not
#: probed for float islands (:meth:`OnnxQuantizer._no_int8_kernel`); the final model is audited either way
_INTEGER_OPS = {"Conv", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
                "Sigmoid", "Softmax", "LeakyRelu", "Concat", "Reshape", "Flatten", "Transpose", "Squeeze",
                "Unsqueeze", "Identity", "Pad"}


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

    def __init__(self, float_model: bytes, calib: np.ndarray, layer_types: dict[str, str],
                 activation_type: str = "uint8", batch: int = 32, float_chains: bool = True):
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from edgeres.core.layers import resolve_layer

        self.calib, self.activation_type = calib, activation_type
        with temp_dir("edgeres-ort-") as tmp:
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
        self.no_int8_kernel: list[str] = []  # found once the statistics are in (below)
        self.layers: dict[str, list[str]] = {}  # layer -> node names
        self.layer_ops: dict[str, list[str]] = {}
        self.layer_all: dict[str, list[str]] = {}  # layer -> every node computing in it (see the TFLite one)
        for node in g.node:
            if node.name in self.keep_float_always or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                continue
            names = [node.name] + [i for i in node.input if i in inits] + list(node.output)
            layer = resolve_layer(names, layer_types)
            if layer is None:
                continue
            self.layer_all.setdefault(layer, []).append(node.name)
            if node.op_type in _LAYER_OPS:
                self.layers.setdefault(layer, []).append(node.name)
                self.layer_ops.setdefault(layer, []).append(node.op_type)
        self.tensors = [o for n in g.node for o in n.output]
        from edgeres.quant.stats import tap_batch

        self._tapped = _tap(self.proto, self.tensors)  # one session for every statistics pass
        sess = self._tapped[0]  # one image, to size the batches that keep every tensor
        per_image = sum(v.nbytes for v in sess.run(None, {self.input_name: calib[:1]}))
        self.batch = tap_batch(per_image, batch)
        self.stats = self.collect_stats(calib, histograms=True)
        # ops ORT has no int8 kernel for run in float anyway: quantizing their inputs and outputs only adds
        # rounding inside the float chain (LayerNormalization's ReduceMean -> Pow -> Sqrt, each to 8 bits)
        self.no_int8_kernel = self._no_int8_kernel() if float_chains else []

    def _no_int8_kernel(self) -> list[str]:
        """The nodes to leave out of quantization (:func:`edgeres.core.graphs.float_chain`): the ops ONNX Runtime
        would run in float inside the int8 model (:func:`onnx_subgraph.float_islands`, found by quantizing once)
        and the arithmetic after them up to the next convolution, matrix product or data move.  Not probed when
        every op type is one ORT's CPU QDQ fusions run in integer."""
        from edgeres.backends.onnx_subgraph import float_islands
        from edgeres.core.graphs import float_chain
        from edgeres.quant.recipes import resolve_recipe

        g = self.proto.graph
        if {n.op_type for n in g.node if n.name not in self.keep_float_always} <= _INTEGER_OPS:
            return []
        plain = resolve_recipe("default").replace(bias_correction=False, weight_rounding="nearest")
        try:  # the way every recipe is built, without the corrections (they move no node)
            data, _ = self.quantize(plain)
        except ConversionError:  # the real build reports it, with its recipe
            return []
        producer = {o: n.name for n in g.node for o in n.output}
        users: dict[str, list[str]] = {}
        for node in g.node:
            for i in node.input:
                if i in producer:
                    users.setdefault(producer[i], []).append(node.name)
        return float_chain([n.name for n in g.node], {n.name: n.op_type for n in g.node}, users,
                           [name for _, name in float_islands(data)], _STOPS, never=self.keep_float_always)

    def __getstate__(self) -> dict:
        """What a Ray worker gets (edgeres.cluster): everything but the open ONNX Runtime session."""
        return {**self.__dict__, "_tapped": None}

    @cached_property
    def _shapes(self) -> dict[str, list[int]]:
        """The float model's inferred tensor shapes: one shape inference for every recipe built."""
        return shapes(self.proto)

    @cached_property
    def macs(self) -> dict[str, float]:
        """Multiply-accumulates per image of each node of the float model (:func:`onnx_subgraph.node_macs`)."""
        return node_macs(self.proto, self._shapes)

    @cached_property
    def pixels(self) -> dict[str, int]:
        """Output pixels per image of each Conv of the float model (:func:`onnx_subgraph.output_pixels`)."""
        return output_pixels(self.proto, self._shapes)

    def collect_stats(self, x: np.ndarray, histograms: bool = False):
        """Statistics of every float tensor on ``x`` (keys: tensor names)."""
        from edgeres.quant.stats import collect

        if self._tapped is None:  # unpickled in a worker: open the session again
            self._tapped = _tap(self.proto, self.tensors)
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

    def quantize(self, recipe, keep_float: list[str] | None = None) -> tuple[bytes, dict]:
        activation_type = self.activation_type
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
        exclude = [*self.keep_float_always, *self.no_int8_kernel,
                   *(n for layer in keep_float for n in self.layer_all[layer])]
        # ORT still runs its own calibrator; every range is overridden, so a few images suffice.
        reader = _Reader(self.input_name, self.calib[:8], 8)
        with temp_dir("edgeres-ort-") as tmp:
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
            if dequantize_output(qproto):
                details["output_range"] = "float (integer kernel, dequantized accumulator)"
        if recipe.weight_rounding == "gptq":
            from edgeres.backends.onnx_rounding import round_weights

            details["weight_rounding"] = round_weights(self, qproto)
        if recipe.bias_correction:
            details["bias_corrected_layers"], how = self._bias_correct(qproto)
            details["bias_correction"] = f"empirical, {how}"
        details["int8_graph_rewrites"] = apply_all(qproto)  # exact; after bias correction, which runs the graph
        data = qproto.SerializeToString()
        check(data)
        # ORT's CPU provider has no int16 kernels: int16 QDQ runs as DequantizeLinear -> float op.
        details["full_integer"] = not keep_float and bits == 8 and not self.no_int8_kernel
        return data, details

    def _bias_correct(self, qproto) -> tuple[list[str], str]:
        inits = {i.name: i for i in qproto.graph.initializer}
        float_producer = {o: n for n in self.proto.graph.node for o in n.output}
        targets = []
        for node, dq in constant_inputs(qproto, 2):
            out = node.output[0]
            ref = out.removesuffix("_QuantizeLinear_Input")
            src = float_producer.get(ref)
            if src is not None and src.op_type in _FOLDED_ACTIVATIONS:  # ORT folded it into the Q's range
                ref = src.input[0]
                src = float_producer.get(ref)
            # The int8 side measures the layer's own (pre-activation) output: compare it with the float
            # layer's own output, never with a tensor after another op (a ReLU6 clips its mean).
            if src is None or src.op_type != node.op_type or self.stats.channel_mean(ref) is None:
                continue
            targets.append((node, dq, out, ref))
        if not targets:
            return [], "no layer to correct"
        tensor_layer = {n: layer for layer, nodes in self.layers.items() for n in nodes}
        macs = self.macs
        feeding = {t[2]: _feeding(qproto, t[2]) for t in targets}
        passes, how = bias_correction_passes(targets, len(self.calib),
                                             (sum(macs.get(n.name, 0) for n in feeding[t[2]]) for t in targets))
        sequential = how == LAYER_BY_LAYER
        # One layer at a time, in graph order, each measured with the layers before it already corrected,
        # on only the part of the graph that feeds it.  Corrected all at once, a shift that flows on
        # through a linear path (MobileNet's bottlenecks, a residual Add) is cancelled twice: MobileNetV2's
        # agreement fell from 93% to 71%.  Over the budget (big models), one pass and all at once.
        fixed = []
        for batch in passes:
            # All calibration images: with 256 of 1,000, ResNet-20's agreement fell from 99.25% to 98.70%.
            # The float side was measured on them when the ranges were.
            proto = _prefix(qproto, batch[0][2], feeding[batch[0][2]]) if sequential else qproto
            quant_means = _channel_means(proto, [t[2] for t in batch], self.calib, self.input_name, self.batch,
                                         optimized=sequential)
            for node, dq, out, ref in batch:
                _shift(inits[dq.input[0]], quant_means[out] - self.stats.channel_mean(ref), inits[dq.input[1]])
                fixed.append(tensor_layer.get(node.name, node.name))
        return fixed, how


# Activations that ORT's QDQ quantizer removes when the Q after them clamps the same range: ReLU, and
# ReLU6 (tf2onnx writes it as Clip(0, 6)).
_FOLDED_ACTIVATIONS = ("Relu", "Clip")


def _shift(bias, diff: np.ndarray, scale) -> None:
    """Subtract the float mean shift ``diff`` from an int32 bias initializer, in its own scale."""
    from onnx import numpy_helper

    step = numpy_helper.to_array(scale).astype(np.float64)
    q = numpy_helper.to_array(bias).astype(np.int64)
    new = np.clip(q - np.round(diff / step).astype(np.int64), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
    bias.CopyFrom(numpy_helper.from_array(new, bias.name))


def _channel_means(proto, names: list[str], calib: np.ndarray, input_name: str, batch: int,
                   optimized: bool = False) -> dict:
    """Per-channel means of the named tensors over ``calib``, ``batch`` images at a time (the tap batch:
    every Conv output of ResNet-50 at 224 is ~40 MB an image)."""
    sess, outs = _tap(proto, names, optimized)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for s in range(0, len(calib), batch):
        values = dict(zip(outs, sess.run(None, {input_name: calib[s:s + batch]})))
        for name in names:
            v = values[name].astype(np.float64)
            sums[name] = sums.get(name, 0) + v.sum(axis=tuple(i for i in range(v.ndim) if i != 1))
            counts[name] = counts.get(name, 0) + v.size // v.shape[1]
    return {k: sums[k] / counts[k] for k in sums}


