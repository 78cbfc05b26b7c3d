"""GPTQ weight rounding for the ONNX back end (:mod:`edgeres.quant.rounding`).  HEAVY layer (onnx, onnxruntime)."""

from __future__ import annotations

from functools import partial

import numpy as np

from edgeres.backends.onnx_subgraph import constant_inputs, feeding, prefix, tap
from edgeres.quant.stats import LAYER_BY_LAYER, bias_correction_passes


def round_weights(q, qproto) -> dict:
    """GPTQ rounding (:mod:`edgeres.quant.rounding`) of every Conv (one group) and Gemm weight, layer by layer
    in graph order, each on its input in ``qproto`` with the layers before it already rounded."""
    import onnx
    from onnx import numpy_helper

    from edgeres.quant import rounding

    inits = {i.name: i for i in qproto.graph.initializer}
    float_inits = {i.name: i for i in q.proto.graph.initializer}
    targets = []
    pixels = q.pixels
    for node, dq in constant_inputs(qproto, 1):
        src = float_inits.get(dq.input[0].removesuffix("_quantized"))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        wq = numpy_helper.to_array(inits[dq.input[0]])
        zero = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in inits else 0
        if src is None or wq.dtype != np.int8 or np.any(zero != 0) or tuple(src.dims) != wq.shape:
            continue
        w = numpy_helper.to_array(src).astype(np.float64)
        if node.op_type == "Conv":
            if wq.ndim != 4 or attrs.get("group", 1) != 1 or attrs.get("auto_pad", b"NOTSET") != b"NOTSET":
                continue  # grouped/depthwise and auto-padded convolutions keep nearest rounding
            pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
            if len(pads) != 4:
                continue
            geometry = (tuple(wq.shape[2:]), tuple(attrs.get("strides", (1, 1))),
                        tuple(attrs.get("dilations", (1, 1))), (pads[0], pads[1], pads[2], pads[3]))
            w2 = w.reshape(w.shape[0], -1)
            axis = 0
        else:
            if attrs.get("transA", 0) or wq.ndim != 2:
                continue
            geometry = None
            w2 = w if attrs.get("transB", 0) else w.T
            axis = 0 if attrs.get("transB", 0) else 1
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        dq_axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        if scale.size > 1 and dq_axis % wq.ndim != axis:
            continue
        scale = np.broadcast_to(scale.reshape(-1), (w2.shape[0],)) if scale.size in (1, w2.shape[0]) else None
        if scale is None:
            continue
        targets.append((node, inits[dq.input[0]], w2, scale, geometry, axis, pixels.get(node.name, 1)))
    if not targets:
        return {"method": "gptq", "layers": [], "note": "no layer to round"}
    macs = q.macs
    _, how = bias_correction_passes(targets, len(q.calib), (sum(
        macs.get(n.name, 0) for n in feeding(qproto, t[0].input[0])) for t in targets))
    if how != LAYER_BY_LAYER:
        return {"method": "nearest", "layers": [], "note": f"GPTQ skipped: {how}"}
    tensor_layer = {n: layer for layer, nodes in q.layers.items() for n in nodes}

    def writer(init, shape, axis):
        def write(q):
            shaped = q.reshape(shape) if axis == 0 else q.T
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(shaped).astype(np.int8), init.name))
        return write

    def rows_of(geometry):
        if geometry is None:
            return lambda xb, keep, rng: xb.reshape(len(xb), -1)
        kernel, strides, dilations, pads = geometry
        return partial(rounding.patches, kernel=kernel, strides=strides, dilations=dilations, pads=pads,
                       channels_last=False)

    images = q.calib[:rounding.IMAGES]

    def inputs(name):
        if name == q.input_name:
            yield from (images[s:s + q.batch] for s in range(0, len(images), q.batch))
            return
        sess, _ = tap(prefix(qproto, name, feeding(qproto, name)), [name], optimized=True)
        for s in range(0, len(images), q.batch):
            yield sess.run(None, {q.input_name: images[s:s + q.batch]})[0]

    layers = [rounding.Layer(tensor_layer.get(node.name, node.name), node.input[0], w2, scale, rows_of(geometry),
                             pixels, writer(init, tuple(init.dims), axis))
              for node, init, w2, scale, geometry, axis, pixels in targets]
    return rounding.round_layers(layers, inputs, len(images))
