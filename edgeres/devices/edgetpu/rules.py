"""The Coral Edge TPU's supported ops and their limitations, as data: one table of small rules.

From "TensorFlow models on the Edge TPU" (:data:`DOCS_URL`, "Supported
operations", Edge TPU compiler 16 / runtime 14 and later).  :data:`OP_RULES`
maps an op name to its rules, each ``(graph, op_index) -> message | None``;
:func:`op_constraints` walks them, :func:`unlisted_reason` rejects ops off the list.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeres.devices.edgetpu.graph import Graph, big_dims, const_axes, fmt_shape

DOCS_URL = "https://coral.ai/docs/edgetpu/models-intro/"
SOFTMAX_MAX_ELEMENTS = 16_000

# The supported-operations table of DOCS_URL (compiler 16, runtime 14: the
# latest), by TFLite builtin op name, with its "known limitations" column; ""
# means none.  Rows for runtime <= 12 only (the old Squeeze limitation) are
# left out.  The limitations that the flatbuffer can show are checked by the
# rules of OP_RULES; "might not be mapped" ones become warnings.  Not on the
# list, so CPU-only: HARD_SWISH, LEAKY_RELU, GELU, DEQUANTIZE, SPLIT_V, PADV2,
# ... (see also google-coral/edgetpu issues #272 and #597).
SUPPORTED_OPS: dict[str, str] = {
    "ADD": "",
    "AVERAGE_POOL_2D": "No fused activation function.",
    "CONCATENATION": ("No fused activation function. If any input is a compile-time constant tensor, "
                      "there must be only 2 inputs, and this constant tensor must be all zeros."),
    "CONV_2D": "Must use the same dilation in x and y dimensions.",
    "DEPTHWISE_CONV_2D": "Must use the same dilation in x and y dimensions.",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": ("Only the default format is supported for fully-connected weights. "
                        "Output tensor is one-dimensional."),
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "Unidirectional LSTM only.",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "Unidirectional LSTM only.",
    "MAXIMUM": "",
    "MAX_POOL_2D": "No fused activation function.",
    "MEAN": "No reduction in batch dimension. If a z-reduction, the z-dimension must be multiple of 4.",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "No packing in batch dimension.",
    "PAD": "No padding in batch dimension.",
    "PRELU": "Alpha must be 1-dimensional (only the innermost dimension can be >1 size).",
    "QUANTIZE": "",
    "REDUCE_MAX": "Cannot operate on the batch dimension.",
    "REDUCE_MIN": "Cannot operate on the batch dimension.",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "Certain reshapes might not be mapped for large tensor sizes.",
    "RESIZE_BILINEAR": ("Input/output is a 3-dimensional tensor. Depending on input/output size, "
                        "this operation might not be mapped to the Edge TPU to avoid loss in precision."),
    "RESIZE_NEAREST_NEIGHBOR": ("Input/output is a 3-dimensional tensor. Depending on input/output size, "
                                "this operation might not be mapped to the Edge TPU to avoid loss in precision."),
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "Supports only 1-D input tensor with a max of 16,000 elements.",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "No splitting in batch dimension.",
    "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "",
    "STRIDED_SLICE": ("Supported only when all strides are equal to 1 (that is, effectively a Stride op), "
                      "and with ellipsis-axis-mask == 0, and new-axis-mask == 0."),
    "SUB": "",
    "SUM": "Cannot operate on the batch dimension.",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}

# Common ops that are not on the list, with the usual Edge TPU-friendly replacement.
_HINTS = {
    "HARD_SWISH": "replace hard-swish with ReLU/ReLU6",
    "LEAKY_RELU": "replace LeakyReLU with ReLU, or PReLU with shared_axes=[1, 2]",
    "GELU": "replace GELU with ReLU/ReLU6",
    "ELU": "replace ELU with ReLU/ReLU6",
    "DEQUANTIZE": "only an int-to-float DEQUANTIZE on a model output is allowed",
    "SHAPE": "a run-time SHAPE comes from a dynamic shape: convert with a fixed batch of 1",
    "RESIZE_BICUBIC": "use bilinear or nearest-neighbour resizing",
    "PADV2": "pad with zeros (PAD)",
    "MIRROR_PAD": "pad with zeros (PAD)",
    "SPLIT_V": "split into equal parts (SPLIT)",
}

Rule = Callable[[Graph, int], "str | None"]


def _input_shape(g: Graph, i: int) -> list[int]:
    ins = g.op_inputs[i]
    return g.shape(ins[0]) if ins and ins[0] >= 0 else []


# ------------------------------------------------------------------ the rules

def _no_fused_activation(options: str) -> Rule:
    def rule(g: Graph, i: int) -> str | None:
        act = g.fused_activation(i, options)
        if act != "NONE":
            return f"fused activation {act} is not allowed on {g.op_names[i]} (the Edge TPU needs none)"
        return None
    return rule


def _same_dilation(options: str) -> Rule:
    def rule(g: Graph, i: int) -> str | None:
        opts = g.options(i, options)
        if opts is not None and opts.DilationHFactor() != opts.DilationWFactor():
            return (f"dilation differs in y ({opts.DilationHFactor()}) and x ({opts.DilationWFactor()}); "
                    f"the Edge TPU needs the same dilation in both")
        return None
    return rule


def _constant_is_zero_padding(g: Graph, i: int) -> str | None:
    ins = g.op_inputs[i]
    consts = [t for t in ins if t >= 0 and g.is_const(t)]
    if not consts:
        return None
    if len(ins) != 2:
        return (f"concatenates a constant with {len(ins) - 1} other inputs "
                f"(a constant input is allowed only as one of exactly 2 inputs)")
    value = g.const_value(consts[0])
    zero = g.zero_point(consts[0])
    if value is None or not np.all(value.astype(np.int64) == (zero if zero.size == 1 else 0)):
        return "concatenates a constant that is not all zeros (only zero-padding is allowed)"
    return None


def _default_weights_format(g: Graph, i: int) -> str | None:
    opts = g.options(i, "FullyConnectedOptions")
    if opts is not None and opts.WeightsFormat() != 0:
        return "weights are not in the default format (shuffled weights are not supported)"
    return None


def _one_dimensional_output(g: Graph, i: int) -> str | None:
    outs = g.op_outputs[i]
    out_shape = g.shape(outs[0]) if outs else []
    if big_dims(out_shape) > 1:
        return f"output {fmt_shape(out_shape)} is not one-dimensional"
    return None


def _reduction_axes(g: Graph, i: int) -> list[int] | None:
    ins = g.op_inputs[i]
    return const_axes(g, ins[1], len(_input_shape(g, i))) if len(ins) > 1 else None


def _no_batch_reduction(g: Graph, i: int) -> str | None:
    axes = _reduction_axes(g, i)
    if axes is None:
        return "reduction axes are not a compile-time constant"
    rank = len(_input_shape(g, i))
    if rank >= 2 and 0 in axes:
        return f"reduces over the batch dimension (axes {fmt_shape(axes)} of a {rank}-D input)"
    return None


def _z_reduction_multiple_of_4(g: Graph, i: int) -> str | None:
    axes, in_shape = _reduction_axes(g, i), _input_shape(g, i)
    rank = len(in_shape)
    if axes is not None and rank >= 2 and (rank - 1) in axes and in_shape[-1] % 4:
        return (f"reduces over the innermost (z) dimension of size {in_shape[-1]}, "
                f"which must be a multiple of 4")
    return None


def _no_batch_packing(g: Graph, i: int) -> str | None:
    opts = g.options(i, "PackOptions")
    if opts is not None and opts.Axis() == 0:
        return "packs along the batch dimension (axis 0)"
    return None


def _no_batch_padding(g: Graph, i: int) -> str | None:
    ins = g.op_inputs[i]
    pads = g.const_value(ins[1]) if len(ins) > 1 else None
    if pads is None:
        return "paddings are not a compile-time constant"
    pads = np.asarray(pads).reshape(-1, 2)
    if len(_input_shape(g, i)) >= 2 and np.any(pads[0] != 0):
        return f"pads the batch dimension (paddings {fmt_shape(pads[0].tolist())} on axis 0)"
    return None


def _one_dimensional_alpha(g: Graph, i: int) -> str | None:
    ins = g.op_inputs[i]
    alpha = g.shape(ins[1]) if len(ins) > 1 else []
    if any(d > 1 for d in alpha[:-1]):
        return (f"alpha has shape {fmt_shape(alpha)}: only its innermost dimension may be > 1 "
                f"(use keras PReLU(shared_axes=[1, 2]))")
    return None


def _single_image_input(g: Graph, i: int) -> str | None:
    in_shape = _input_shape(g, i)
    if len(in_shape) > 4 or any(d > 1 for d in in_shape[:-3]):
        return f"input {fmt_shape(in_shape)} is not a 3-dimensional (single-image) tensor"
    return None


def _one_dimensional_input(g: Graph, i: int) -> str | None:
    in_shape = _input_shape(g, i)
    if big_dims(in_shape) > 1:
        return f"input {fmt_shape(in_shape)} is not 1-D (the Edge TPU's softmax takes a 1-D input)"
    return None


def _softmax_size(g: Graph, i: int) -> str | None:
    in_shape = _input_shape(g, i)
    n = int(np.prod(in_shape)) if in_shape else 0
    if n > SOFTMAX_MAX_ELEMENTS:
        return f"input has {n:,} elements (at most {SOFTMAX_MAX_ELEMENTS:,})"
    return None


def _no_batch_split(g: Graph, i: int) -> str | None:
    ins = g.op_inputs[i]
    axis = g.const_value(ins[0]) if ins else None  # SPLIT's inputs are (axis, value)
    value_rank = len(g.shape(ins[1])) if len(ins) > 1 else 0
    if axis is None:
        return "split axis is not a compile-time constant"
    if value_rank >= 2 and int(np.ravel(axis)[0]) % value_rank == 0:
        return "splits along the batch dimension (axis 0)"
    return None


def _unit_strides(g: Graph, i: int) -> str | None:
    ins = g.op_inputs[i]
    strides = g.const_value(ins[3]) if len(ins) > 3 else None
    if strides is None:
        return "strides are not a compile-time constant"
    if np.any(np.ravel(strides) != 1):
        return f"strides {fmt_shape(np.ravel(strides).tolist())} are not all 1"
    return None


def _no_slice_masks(g: Graph, i: int) -> str | None:
    opts = g.options(i, "StridedSliceOptions")
    if opts is not None and opts.EllipsisMask():
        return f"ellipsis_mask is {opts.EllipsisMask()} (must be 0)"
    if opts is not None and opts.NewAxisMask():
        return f"new_axis_mask is {opts.NewAxisMask()} (must be 0)"
    return None


# Op name -> its rules, checked in order; the first message found is the op's problem.
OP_RULES: dict[str, tuple[Rule, ...]] = {
    "AVERAGE_POOL_2D": (_no_fused_activation("Pool2DOptions"),),
    "MAX_POOL_2D": (_no_fused_activation("Pool2DOptions"),),
    "CONCATENATION": (_no_fused_activation("ConcatenationOptions"), _constant_is_zero_padding),
    "CONV_2D": (_same_dilation("Conv2DOptions"),),
    "DEPTHWISE_CONV_2D": (_same_dilation("DepthwiseConv2DOptions"),),
    "FULLY_CONNECTED": (_default_weights_format, _one_dimensional_output),
    "MEAN": (_no_batch_reduction, _z_reduction_multiple_of_4),
    "SUM": (_no_batch_reduction,),
    "REDUCE_MAX": (_no_batch_reduction,),
    "REDUCE_MIN": (_no_batch_reduction,),
    "PACK": (_no_batch_packing,),
    "PAD": (_no_batch_padding,),
    "PRELU": (_one_dimensional_alpha,),
    "RESIZE_BILINEAR": (_single_image_input,),
    "RESIZE_NEAREST_NEIGHBOR": (_single_image_input,),
    "SOFTMAX": (_one_dimensional_input, _softmax_size),
    "SPLIT": (_no_batch_split,),
    "STRIDED_SLICE": (_unit_strides, _no_slice_masks),
}


def op_constraints(g: Graph, i: int, name: str) -> str | None:
    """The first documented limitation op ``i`` (named ``name``) violates, or None."""
    for rule in OP_RULES.get(name, ()):
        problem = rule(g, i)
        if problem is not None:
            return problem
    return None


def unlisted_reason(name: str) -> str | None:
    """Why an op named ``name`` cannot map at all (already compiled, or not on the list), or None."""
    if name == "edgetpu-custom-op":
        return "already compiled for the Edge TPU (edgetpu-custom-op); check the uncompiled model"
    if name not in SUPPORTED_OPS:
        hint = _HINTS.get(name)
        return "not on the Edge TPU supported-op list" + (f" ({hint})" if hint else "")
    return None
