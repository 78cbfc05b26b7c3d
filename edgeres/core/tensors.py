"""How a runner's inputs and outputs are laid out and scaled: int8 (de)quantization, the activations the host
applies after a model, the input's layout and dimensions, and a TFLite interpreter's multiply-accumulates.
LIGHT layer: numpy only."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeres.core.errors import ShapeError


def quantize(x: np.ndarray, quant: tuple[float, int] | None, dtype: np.dtype) -> np.ndarray:
    """``x`` as the runtime's input: ``round(x / scale) + zero_point``, clipped to an integer ``dtype``
    (a float ``dtype``, or no ``quant``, only casts).  The one quantizer of model inputs: the runners use it,
    and so does the bundle's folded preprocessing, which must match them bit for bit."""
    if quant is None or not np.issubdtype(dtype, np.integer):
        return x.astype(dtype, copy=False)
    scale, zero = quant
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _softmax(y: np.ndarray) -> np.ndarray:
    e = np.exp(y - y.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _sigmoid(y: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-y.astype(np.float64)))).astype(np.float32)


#: activations applied on the host after a model whose head was left out of it (edgeres.backends.heads)
HOST_ACTIVATIONS = {"softmax": _softmax, "sigmoid": _sigmoid}


def input_layout(dims) -> str:
    """``"NCHW"`` for a rank-4 input whose dimension 1 holds 1, 3 or 4 channels while its last does not (a
    PyTorch export, e.g. [1, 3, 224, 224] or [N, 3, H, W]), else ``"NHWC"`` (TFLite's and Keras' order)."""
    dims = list(dims)
    if len(dims) == 4 and dims[1] in (1, 3, 4) and dims[3] not in (1, 3, 4):
        return "NCHW"
    return "NHWC"


def resolve_dims(name: str, dims, shape: tuple[int, ...] | None, layout: str) -> list[int]:
    """The model's input ``dims`` (its own order, -1 for dynamic) with ``shape`` (N,H,W,C, whatever the model's
    layout; -1 for "any") filling the dynamic ones.

    A ``shape`` value that contradicts a fixed dimension is a ShapeError: ignoring it would time or measure
    another input than the one asked for.
    """
    dims = [int(d) for d in dims]
    if shape is None:
        return dims
    if len(dims) != 4:
        raise ShapeError(f"--shape gives N,H,W,C but {name} takes a {len(dims)}-dimensional input "
                         f"{_dims_text(dims)}")
    n, h, w, c = shape
    given, labels = ((n, c, h, w), "NCHW") if layout == "NCHW" else ((n, h, w, c), "NHWC")
    for d, g, label in zip(dims, given, labels):
        if g != -1 and d != -1 and d != g:
            raise ShapeError(f"--shape {','.join('?' if v < 0 else str(v) for v in shape)} (N,H,W,C) conflicts "
                             f"with {name}'s fixed input {_dims_text(dims)} ({layout}): {label} is {d}, not {g}")
    return [g if d == -1 and g != -1 else d for d, g in zip(dims, given)]


def _dims_text(dims) -> str:
    return "[" + ",".join("?" if (v is None or v < 0) else str(v) for v in dims) + "]"


def interpreter_macs(interp: Any) -> int:
    """Multiply-accumulates per inference at batch 1 of a TFLite interpreter's convolutions and fully connected
    layers (the shapes are static: no tensors need allocating)."""
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    total = 0
    for op in interp._get_ops_details():
        name = op["op_name"]
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"):
            continue
        ins = [i for i in op["inputs"] if i >= 0]
        out = tensors[op["outputs"][0]]["shape"]
        weight_idx = ins[0] if name == "TRANSPOSE_CONV" else ins[1]
        w = tensors[weight_idx]["shape"]
        batch = max(int(out[0]), 1)
        if name == "CONV_2D":  # w: (O, kh, kw, I)
            total += int(np.prod(out[1:])) * int(np.prod(w[1:]))
        elif name == "DEPTHWISE_CONV_2D":  # w: (1, kh, kw, O)
            total += int(np.prod(out[1:])) * int(w[1]) * int(w[2])
        elif name == "FULLY_CONNECTED":  # w: (O, I)
            rows = int(np.prod(out[:-1])) // batch
            total += rows * int(w[0]) * int(w[1])
        else:  # TRANSPOSE_CONV, w: (O, kh, kw, I): every input pixel scatters a kh*kw*O patch
            x = tensors[ins[2]]["shape"]
            total += int(np.prod(x[1:3])) * int(np.prod(w))
    return total


def detail_quant(detail: dict) -> tuple[float, int] | None:
    """(scale, zero point) of a TFLite interpreter's tensor detail, None for a float tensor."""
    scale, zero = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero)) if scale else None
