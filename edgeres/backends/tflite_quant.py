"""The TFLite back end's quantizer: calibrate once, quantize many recipes.  HEAVY layer (TensorFlow).

TFLiteConverter records min/max of every activation in a *calibrated* float model; edgeres replaces each
range by its own (:mod:`edgeres.quant.stats`), lets ``mlir_quantize`` write the int8 model, then corrects biases.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from edgeres.backends.tflite_convert import (
    _explain,
    _io_type,
    _quantizing_converter,
    _run,
    float_compute_ops,
)
from edgeres.core import tflite_edit, tflite_schema
from edgeres.core.errors import ConversionError
from edgeres.quant.stats import LAYER_BY_LAYER, bias_correction_passes

MIN_INSIDE = 0.05  # a channel's output inside its clamps less often than this: no empirical bias correction

_LAYER_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "SUB", "MEAN",
              "AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION", "TRANSPOSE_CONV", "BATCH_MATMUL"}
CONVERTER_IMAGES = 1  # images TFLiteConverter calibrates on itself: its ranges are all replaced
_WEIGHT_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}


def _dequantized(value: np.ndarray, detail: dict) -> np.ndarray:
    """A tensor read from an interpreter, in float (int8/uint8/int16 through its scale and zero point)."""
    if value.dtype == np.float32:
        return value
    scale, zero = detail["quantization"]
    return (value.astype(np.float64) - zero) * scale


def _shift_bias(model_t, bias, shift: np.ndarray, bias_scale: np.ndarray) -> None:
    """Subtract a float per-channel ``shift`` from an int32 bias tensor, in place.

    The converter stores equal constants once: layers whose biases are all zero (no bias, or an untrained
    one) share one buffer, so a shared bias first gets a buffer of its own."""
    q = tflite_edit.constant(model_t, bias, np.int32).astype(np.int64)
    new = np.clip(q - np.round(shift / bias_scale), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
    tflite_edit.set_constant(model_t, bias, new)


class TFLiteQuantizer:
    """The TFLite back end of a :class:`~edgeres.quant.recipes.Recipe`.

    TFLiteConverter records min/max of every activation in a *calibrated*
    float model (``_experimental_calibrate_only``) and ``mlir_quantize``
    turns that into int8.  In between, edgeres replaces each min/max by the
    range the recipe's calibration method picks from its own histograms of
    the same tensors (:mod:`edgeres.quant.stats`), so one calibration pass
    serves every recipe the search tries.
    """

    def __init__(self, model: Any, calib: np.ndarray, layer_types: dict[str, str], io_dtype: str = "int8",
                 batch: int = 32, batchnorm_as_depthwise: list[str] | None = None, allow_float_ops: bool = False):
        self.keras_model, self.calib, self.io_dtype = model, calib, io_dtype
        self.layer_types = layer_types
        # an op with no int8 kernel (LayerNormalization's NEG) may stay in float, between a DEQUANTIZE and a
        # QUANTIZE, as TFLiteConverter leaves it; False when the target needs a full-integer model
        self.allow_float_ops = allow_float_ops
        #: output tensors kept float in every build: the ops with no int8 kernel and the arithmetic after them
        #: (:func:`edgeres.backends.tflite_islands.float_chain`); None until the first build has shown them
        self.float_chain: list[str] | None = None
        # the layers edgeres.backends.keras_rewrite built as depthwise convolutions in ``model``, for the report
        self.batchnorm_as_depthwise = list(batchnorm_as_depthwise or [])
        # The converter's own min/max only need to exist: edgeres replaces every one of them
        # from its histograms (the models are byte-identical with 16 images here), so one image keeps
        # this pass cheap.
        _, conv = _quantizing_converter(model, calib, images=CONVERTER_IMAGES)
        conv._experimental_calibrate_only = True
        self.calibrated = _run(conv, "int8")
        schema = tflite_schema.schema()
        self._opnames = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        model_t = schema.ModelT.InitFromPackedBuf(self.calibrated, 0)
        g = model_t.subgraphs[0]
        self.ranged = [i for i, t in enumerate(g.tensors)
                       if t.quantization is not None and t.quantization.min is not None
                       and len(t.quantization.min)]
        self.inputs, self.outputs = list(g.inputs), list(g.outputs)
        self.layers: dict[str, list[str]] = {}  # layer -> output tensor names (mlir_quantize's node names)
        self.layer_ops: dict[str, list[str]] = {}
        #: layer -> every op computing in it: what keeping the layer float keeps float (a SELU inside a
        #: Conv2D is GREATER, EXP, SUB, MUL and SELECT_V2 after the CONV_2D, none of them a layer op)
        self.layer_all: dict[str, list[str]] = {}
        from edgeres.core.layers import resolve_layer

        for op in g.operators:
            kind = tflite_edit.op_kind(model_t, op, self._opnames)
            if kind in ("QUANTIZE", "DEQUANTIZE") or not len(op.outputs):
                continue
            out = g.tensors[op.outputs[0]].name.decode()
            names = [out] + [g.tensors[i].name.decode() for i in op.inputs[1:] if i >= 0
                             and kind in _WEIGHT_OPS]
            layer = resolve_layer(names, layer_types)
            if layer is None:
                continue
            self.layer_all.setdefault(layer, []).append(out)
            if kind in _LAYER_OPS:
                self.layers.setdefault(layer, []).append(out)
                self.layer_ops.setdefault(layer, []).append(kind)
        from edgeres.quant.stats import tap_batch

        per_image = sum(4 * int(np.prod(g.tensors[i].shape[1:])) for i in self.ranged)
        # twice: the interpreter keeps every tensor of the batch, and get_tensor hands back a copy of each
        self.batch = tap_batch(2 * per_image, batch)
        self.stats = self.collect_stats(calib, histograms=True)

    def __getstate__(self) -> dict:
        """What a Ray worker gets (edgeres.cluster): the calibrated model and the statistics, not the Keras model
        (only the 16x8 mode needs it, and converts it in the driver)."""
        return {**self.__dict__, "keras_model": None}

    def collect_stats(self, x: np.ndarray, histograms: bool = False):
        """Statistics of every ranged activation on ``x`` (keys: tensor indices as strings)."""
        from edgeres.quant.stats import collect

        def batches():
            for values in self._run_all(self.calibrated, x, self.ranged):
                yield {str(i): v for i, v in values.items()}

        return collect(batches, channel_axis=-1, histograms=histograms)

    def _run_all(self, model: bytes, x: np.ndarray, tensors: list[int], keep_all: bool = True):
        """Batches of {tensor index: value}, every intermediate tensor kept (unless ``keep_all`` is False: the
        tensors are outputs)."""
        from edgeres.core.runtime import tflite_module

        mod, _ = tflite_module()
        with warnings.catch_warnings():  # "intended for debugging purposes only": reading them is the point
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
            interp = mod.Interpreter(model_content=model, experimental_preserve_all_tensors=keep_all, num_threads=2)
        detail = interp.get_input_details()[0]
        for s in range(0, len(x), self.batch):
            xb = x[s:s + self.batch]
            if detail["dtype"] != np.float32:
                scale, zero = detail["quantization"]
                info = np.iinfo(detail["dtype"])
                xb = np.clip(np.round(xb / scale + zero), info.min, info.max).astype(detail["dtype"])
            interp.resize_tensor_input(detail["index"], list(xb.shape))
            interp.allocate_tensors()
            interp.set_tensor(detail["index"], xb)
            interp.invoke()
            yield {i: interp.get_tensor(i) for i in tensors}

    def stat_layers(self) -> dict[str, str]:
        """Statistics key (tensor index) -> layer."""
        schema = tflite_schema.schema()
        g = schema.ModelT.InitFromPackedBuf(self.calibrated, 0).subgraphs[0]
        by_name = {t.name.decode(): str(i) for i, t in enumerate(g.tensors)}
        return {by_name[t]: layer for t, layer in self.tensor_layer().items() if t in by_name}

    def layer_outputs(self, data: bytes | None, x: np.ndarray) -> dict[str, np.ndarray]:
        """Each layer's (last) output on ``x``, dequantized; ``data=None`` runs the float model."""
        from edgeres.core.runtime import tflite_module

        model = self.calibrated if data is None else data
        mod, _ = tflite_module()
        interp = mod.Interpreter(model_content=model)
        details = {d["name"]: d for d in interp.get_tensor_details()}
        # Model outputs may be renamed when the I/O (de)quantize ops are stripped: match them by position.
        schema = tflite_schema.schema()
        g = schema.ModelT.InitFromPackedBuf(self.calibrated, 0).subgraphs[0]
        by_index = {d["index"]: d for d in details.values()}
        for pos, i in enumerate(self.outputs):
            name = g.tensors[i].name.decode()
            if name not in details and pos < len(interp.get_output_details()):
                details[name] = by_index[interp.get_output_details()[pos]["index"]]
        wanted = {layer: details[names[-1]] for layer, names in self.layers.items() if names[-1] in details}
        parts: dict[str, list] = {layer: [] for layer in wanted}
        for values in self._run_all(model, x, [d["index"] for d in wanted.values()]):
            for layer, d in wanted.items():
                parts[layer].append(_dequantized(values[d["index"]], d).astype(np.float32))
        return {layer: np.concatenate(p) for layer, p in parts.items() if p}

    def tensor_layer(self) -> dict[str, str]:
        """Output tensor name -> layer."""
        return {t: layer for layer, ts in self.layers.items() for t in ts}

    def quantize(self, recipe, keep_float: list[str] | None = None) -> tuple[bytes, dict]:
        """Quantize per ``recipe``; ``keep_float`` are resolved layer names.  Returns (model, details)."""
        import tensorflow as tf

        io_dtype = self.io_dtype
        io = _io_type(tf, io_dtype)
        keep_float = list(keep_float or [])
        if recipe.activations == "int16":
            return self._int16(recipe, io_dtype, keep_float)
        from tensorflow.lite.python import convert as tf_convert

        schema = tflite_schema.schema()
        model_t = schema.ModelT.InitFromPackedBuf(self.calibrated, 0)
        g = model_t.subgraphs[0]
        for i in self.ranged:
            method = recipe.calibration if (i not in self.outputs or recipe.output == "calibrated") else "minmax"
            if i in self.inputs:
                method = "minmax"  # the input range is the data's: never clip a pixel
            a, b = self.stats.range(str(i), method, recipe.percentile)
            q = g.tensors[i].quantization
            q.min, q.max = [float(a)], [float(b)]
        deny = [t for layer in keep_float for t in self.layer_all[layer]]
        packed = tflite_edit.pack(model_t)

        def quantized(deny: list[str]) -> bytes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    return tf_convert.mlir_quantize(packed, disable_per_channel=recipe.weights == "per-tensor",
                                                    input_data_type=tf.float32, output_data_type=tf.float32,
                                                    denylisted_nodes=deny or None)
                except Exception as exc:
                    raise ConversionError(_explain(exc, "int8")) from None

        if self.float_chain is None:  # the first build, nothing kept float, shows the ops with no int8 kernel
            from edgeres.backends.tflite_islands import float_chain

            data = quantized([])
            self.float_chain = float_chain(self, data) if self.allow_float_ops else []
            if deny or self.float_chain:
                data = quantized(deny + self.float_chain)
        else:
            data = quantized(deny + self.float_chain)
        details = {"engine": "TFLiteConverter calibrate-only + mlir_quantize, edgeres ranges",
                   "calibration": recipe.calibration, "output_range": "minmax" if recipe.output != "calibrated"
                   else recipe.calibration}
        if self.batchnorm_as_depthwise:
            details["batchnorm_as_depthwise"] = list(self.batchnorm_as_depthwise)
        rounded: set[str] = set()
        if recipe.weight_rounding == "gptq":
            from edgeres.backends.tflite_rounding import round_weights

            data, details["weight_rounding"], rounded = round_weights(self, data)
        if recipe.bias_correction:
            data, details["bias_corrected_layers"] = self._bias_correct(data, skip=rounded)
            data, empirical, how = self._empirical_bias_correct(data)
            details["bias_correction"] = f"analytic (weights) on all, empirical on {len(empirical)} layers' " \
                                         f"outputs, through their clamps ({how})"
        if io != tf.float32:  # as TFLiteConverter does: strip the boundary (de)quantize ops
            from tensorflow.lite.python.util import modify_model_io_type

            try:
                data = modify_model_io_type(data, io, io)
            except ValueError:  # a float layer sits at the model's edge: its I/O stays float
                details["io_dtype"] = "float32"
                details["io_note"] = f"{io_dtype} I/O needs an int8 layer at the model's input and output; " \
                                     "a layer kept in float is there, so the I/O stays float32"
        return self._checked(data, keep_float, details)

    def _int16(self, recipe, io_dtype: str, keep_float: list[str]) -> tuple[bytes, dict]:
        if recipe.calibration != "minmax" or keep_float or recipe.bias_correction:
            raise ConversionError("TFLite 16x8 mode calibrates with min-max inside the converter: use "
                                  "calibration = \"minmax\", no keep_float and no bias_correction with "
                                  "activations = \"int16\"")
        if io_dtype not in ("float32",):
            io_dtype = "float32"  # 16x8 models take int16 or float I/O; float keeps the runners simple
        if self.keras_model is None:
            raise ConversionError("TFLite 16x8 mode converts the Keras model, which stays with the driver: "
                                  "build int16 recipes without --ray")
        _, conv = _quantizing_converter(self.keras_model, self.calib, ops="int16x8")
        conv._experimental_disable_per_channel = recipe.weights == "per-tensor"
        data = _run(conv, "int16x8")
        return self._checked(data, [], {"engine": "TFLiteConverter 16x8", "calibration": "minmax",
                                        "io_dtype": io_dtype})

    def _checked(self, data: bytes, keep_float: list[str], details: dict) -> tuple[bytes, dict]:
        from edgeres.backends.tflite_islands import record_float_ops

        float_ops = float_compute_ops(data) if keep_float else record_float_ops(self, data, details)
        details.update({"full_integer": not float_ops, "float_layers": keep_float})
        return data, details

    def _bias_correct(self, data: bytes, skip: set[str] = frozenset()) -> tuple[bytes, list[str]]:
        """Cancel the mean output shift that weight rounding adds to each conv/dense layer, analytically (Nagel et
        al., 2019): ``E[(W_q - W) x]`` from the float input's per-channel means (TFLite fuses the ReLU into the
        convolution, so the pre-activation mean is not observable in the int8 model).  ``skip``: layers GPTQ
        rounded (their weight error is deliberate)."""
        schema = tflite_schema.schema()
        fm = schema.ModelT.InitFromPackedBuf(self.calibrated, 0)
        qm = schema.ModelT.InitFromPackedBuf(data, 0)
        fg, qg = fm.subgraphs[0], qm.subgraphs[0]
        f_by_out = {fg.tensors[op.outputs[0]].name: op for op in fg.operators}
        tensor_layer = self.tensor_layer()
        fixed: list[str] = []
        for op in qg.operators:
            kind = tflite_edit.op_kind(qm, op, self._opnames)
            if kind not in ("CONV_2D", "FULLY_CONNECTED") or len(op.inputs) < 3 or op.inputs[2] < 0:
                continue
            name = qg.tensors[op.outputs[0]].name
            fop = f_by_out.get(name)
            if name.decode() in skip:  # GPTQ rounded it: its weight error is what cancels the error before it
                continue
            xq, wq, bq = (qg.tensors[i] for i in op.inputs[:3])
            if fop is None or xq.type != schema.TensorType.INT8 or bq.type != schema.TensorType.INT32:
                continue
            x_name = str(fop.inputs[0])
            if x_name not in self.stats.tensors:
                continue
            w_float = tflite_edit.constant(fm, fg.tensors[fop.inputs[1]], np.float32)
            w_int = tflite_edit.constant(qm, wq, np.int8).astype(np.float64)
            if w_float is None or w_int is None or w_float.shape != w_int.shape:
                continue
            w_scale = np.asarray(wq.quantization.scale, np.float64)
            w_scale = w_scale.reshape(-1, *([1] * (w_int.ndim - 1))) if w_scale.size > 1 else w_scale
            err = w_int * w_scale - w_float.astype(np.float64)  # (O, ..., I)
            mean_in = self.stats.channel_mean(x_name, err.shape[-1])
            if mean_in is None:
                continue
            shift = (err.reshape(err.shape[0], -1, err.shape[-1]).sum(1) * mean_in).sum(1)
            _shift_bias(qm, bq, shift, float(xq.quantization.scale[0]) * np.asarray(wq.quantization.scale,
                                                                                    np.float64))
            fixed.append(tensor_layer.get(name.decode(), name.decode()))
        return tflite_edit.pack(qm), fixed

    def _empirical_bias_correct(self, data: bytes) -> tuple[bytes, list[str], str]:
        """Cancel the mean output shift that remains after the analytic pass, measured on calibration images.

        The analytic pass sees only weight rounding; input rounding and range clipping add their own shift.
        What the next layers see is each layer's int8 *output*, clamped by its fused ReLU/ReLU6 and by its
        int8 range, so that is what is matched to the float model's output, per channel.  Moving a bias by
        ``d`` moves the output mean by about ``d`` times the share of outputs inside the clamps (the slope
        of the clamp), so the shift is the mean difference divided by that share: one Newton step, exact
        for a layer nothing clamps.  A channel almost always clamped (a share under
        :data:`MIN_INSIDE`) is left alone: its slope is too flat to tell the shift.
        """
        schema = tflite_schema.schema()
        qm = schema.ModelT.InitFromPackedBuf(data, 0)
        qg = qm.subgraphs[0]
        fg = schema.ModelT.InitFromPackedBuf(self.calibrated, 0).subgraphs[0]
        f_index = {t.name: i for i, t in enumerate(fg.tensors)}
        dequantized = tflite_edit.dequantized_names(qm, self._opnames)
        targets, clamps = [], {}
        for op in qg.operators:
            kind = tflite_edit.op_kind(qm, op, self._opnames)
            if kind not in ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D") or len(op.inputs) < 3 \
                    or op.inputs[2] < 0:
                continue
            out, bias, x, w = (qg.tensors[i] for i in (op.outputs[0], op.inputs[2], op.inputs[0], op.inputs[1]))
            fi = f_index.get(out.name, f_index.get(dequantized.get(op.outputs[0])))
            if fi is None or str(fi) not in self.stats.tensors or bias.type != schema.TensorType.INT32 \
                    or out.type != schema.TensorType.INT8:
                continue
            targets.append((op.outputs[0], fi, bias, x, w, out.name.decode()))
            clamps[op.outputs[0]] = tflite_edit.int8_clamps(op, out)
        if not targets:
            return data, [], "no layer to measure"
        # Layer by layer, each measured with the ones before it corrected (see the ONNX back end: corrected
        # at once, a shift that flows on through a linear path is cancelled twice); one pass of the whole
        # model per layer, so over the budget all at once.
        from edgeres.core.runtime import tflite_module
        from edgeres.core.tensors import interpreter_macs

        macs = interpreter_macs(tflite_module()[0].Interpreter(model_content=data))
        passes, how = bias_correction_passes(targets, len(self.calib), [macs] * len(targets))
        tensor_layer = self.tensor_layer()
        fixed = []
        for batch in passes:  # layer by layer: only the ops that feed the layer, with the ones before corrected
            model = tflite_edit.prefix(qm, batch[0][0]) if how == LAYER_BY_LAYER else data
            q_means, inside = self._means(model, self.calib, {t[0]: clamps[t[0]] for t in batch},
                                          keep_all=how != LAYER_BY_LAYER)
            for qi, fi, bias, x, w, name in batch:
                # the float side was measured on the same calibration images when the ranges were
                diff = q_means[qi] - self.stats.channel_mean(str(fi))
                shift = np.where(inside[qi] >= MIN_INSIDE, diff / np.maximum(inside[qi], MIN_INSIDE), 0.0)
                _shift_bias(qm, bias, shift, float(x.quantization.scale[0]) * np.asarray(w.quantization.scale,
                                                                                         np.float64))
                fixed.append(tensor_layer.get(name, name))
        return tflite_edit.pack(qm), fixed, how

    def _means(self, model: bytes, x: np.ndarray, tensors: dict[int, tuple[int, int]],
               keep_all: bool = True) -> tuple[dict, dict]:
        """Per-channel (last axis) means of the given int8 tensors, dequantized, and the share of their values
        strictly between the given int8 clamps (the fused activation's and the int8 range's); ``keep_all=False``
        when they are the model's outputs."""
        from edgeres.core.runtime import tflite_module

        mod, _ = tflite_module()
        details = {d["index"]: d for d in mod.Interpreter(model_content=model).get_tensor_details()}
        sums: dict[int, np.ndarray] = {}
        inside: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        for values in self._run_all(model, x, list(tensors), keep_all):
            for i, v in values.items():
                flat = v.reshape(-1, v.shape[-1])
                lo, hi = tensors[i]
                inside[i] = inside.get(i, 0) + ((flat > lo) & (flat < hi)).sum(0)
                sums[i] = sums.get(i, 0) + _dequantized(flat, details[i]).sum(0)
                counts[i] = counts.get(i, 0) + flat.shape[0]
        return {i: s / counts[i] for i, s in sums.items()}, {i: n / counts[i] for i, n in inside.items()}
