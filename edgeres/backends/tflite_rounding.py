"""GPTQ weight rounding for the TFLite back end (:mod:`edgeres.quant.rounding`).  HEAVY layer (TensorFlow Lite)."""

from __future__ import annotations

from functools import partial

import numpy as np

from edgeres.core import tflite_edit, tflite_schema
from edgeres.quant.stats import LAYER_BY_LAYER, bias_correction_passes


def round_weights(q, data: bytes) -> tuple[bytes, dict, set[str]]:
    """GPTQ rounding (:mod:`edgeres.quant.rounding`) of every CONV_2D and FULLY_CONNECTED weight, layer by
    layer in graph order, each on its int8 input with the layers before it already rounded.  Returns the
    model, the report's record and the output tensor names of the layers it rounded."""
    from edgeres.core.runtime import tflite_module
    from edgeres.core.tensors import interpreter_macs
    from edgeres.quant import rounding

    schema = tflite_schema.schema()
    fm = schema.ModelT.InitFromPackedBuf(q.calibrated, 0)
    qm = schema.ModelT.InitFromPackedBuf(data, 0)
    fg, qg = fm.subgraphs[0], qm.subgraphs[0]
    f_by_out = {fg.tensors[op.outputs[0]].name: op for op in fg.operators}
    dequantized = tflite_edit.dequantized_names(qm, q._opnames)
    padding = schema.Padding
    tensor_layer = q.tensor_layer()
    layers, names = [], {}
    for op in qg.operators:
        kind = tflite_edit.op_kind(qm, op, q._opnames)
        if kind not in ("CONV_2D", "FULLY_CONNECTED") or len(op.inputs) < 2:
            continue
        out = qg.tensors[op.outputs[0]]
        fop = f_by_out.get(out.name, f_by_out.get(dequantized.get(op.outputs[0])))
        x, wq = qg.tensors[op.inputs[0]], qg.tensors[op.inputs[1]]
        if fop is None or x.type != schema.TensorType.INT8 or wq.type != schema.TensorType.INT8:
            continue
        w_float = tflite_edit.constant(fm, fg.tensors[fop.inputs[1]], np.float32)
        w_int = tflite_edit.constant(qm, wq, np.int8)
        scale = np.asarray(wq.quantization.scale, np.float64)
        if w_float is None or w_int is None or w_float.shape != w_int.shape or \
                scale.size not in (1, w_int.shape[0]) or (scale.size > 1 and wq.quantization.quantizedDimension):
            continue
        o = op.builtinOptions
        if kind == "CONV_2D":
            if w_int.ndim != 4 or len(x.shape) != 4 or w_int.shape[3] != x.shape[3]:
                continue  # a grouped convolution (its kernel sees a slice of the channels) keeps nearest rounding
            kernel, strides = tuple(w_int.shape[1:3]), (o.strideH, o.strideW)
            dilations = (o.dilationHFactor or 1, o.dilationWFactor or 1)
            if o.padding == padding.SAME:
                ph = rounding.same_pads(int(x.shape[1]), kernel[0], strides[0], dilations[0])
                pw = rounding.same_pads(int(x.shape[2]), kernel[1], strides[1], dilations[1])
                pads = (ph[0], pw[0], ph[1], pw[1])
            else:
                pads = (0, 0, 0, 0)
            rows = partial(rounding.patches, kernel=kernel, strides=strides, dilations=dilations, pads=pads,
                           channels_last=True)
            pixels = int(np.prod(list(out.shape)[1:3])) if len(out.shape) == 4 else 1
        else:
            rows, pixels = partial(_dense_rows, k=w_int.shape[-1]), 1
        name = tensor_layer.get(out.name.decode(), out.name.decode())
        names[name] = out.name.decode()
        source = (int(op.inputs[0]), int(x.quantization.zeroPoint[0]), float(x.quantization.scale[0]))
        layers.append(rounding.Layer(name, source, w_float.reshape(w_float.shape[0], -1).astype(np.float64),
                                     np.broadcast_to(scale.reshape(-1), (w_int.shape[0],)).copy(), rows, pixels,
                                     partial(_set_weights, qm, wq, w_int.shape)))
    if not layers:
        return data, {"method": "gptq", "layers": [], "note": "no layer to round"}, set()
    macs = interpreter_macs(tflite_module()[0].Interpreter(model_content=data))
    _, how = bias_correction_passes(layers, len(q.calib), [macs] * len(layers))
    if how != LAYER_BY_LAYER:
        return data, {"method": "nearest", "layers": [], "note": f"GPTQ skipped: {how}"}, set()

    images = q.calib[:rounding.IMAGES]

    def inputs(source):  # the layer's int8 input, dequantized
        index, zero, step = source
        for values in q._run_all(tflite_edit.prefix(qm, index), images, [index], keep_all=False):
            yield (values[index].astype(np.float32) - zero) * step

    record = rounding.round_layers(layers, inputs, len(images))
    return tflite_edit.pack(qm), record, {names[n] for n in record["layers"]}


def _dense_rows(x: np.ndarray, keep: float, rng, k: int) -> np.ndarray:
    """A fully connected layer's input rows (every one: a dense layer has one per image)."""
    return x.reshape(-1, k)


def _set_weights(model_t, tensor, shape: tuple, q: np.ndarray) -> None:
    tflite_edit.set_constant(model_t, tensor, q.reshape(shape).astype(np.int8))
