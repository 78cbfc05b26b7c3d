"""Weight rounding that minimises each layer's output error, not each weight's (GPTQ).  LIGHT layer (numpy).

Rounding every weight to its nearest int8 step is best for the weight, not for the layer: on a small
network the rounding errors of one output channel add up.  On the suite's ResNet-8s (CIFAR-10) the int8
weights alone, with float activations, already give an output SQNR within 1-2 dB of the whole int8 model:
the weights, not the activations, are what limits them (docs/quantization.md).

For a layer ``y = W x`` with ``H = E[x x^T]`` over calibration inputs, a weight error ``dW`` costs
``E|dW x|^2 = tr(dW H dW^T)``.  GPTQ (Frantar et al., 2023, "GPTQ: Accurate post-training quantization for
generative pre-trained transformers", after Optimal Brain Quantization) rounds one input column at a
time and moves the columns not yet rounded to cancel, under ``H``, the error of the ones that are.
The grid stays the converter's (its per-channel scales): only the int8 values change.  ``H`` is measured
on the quantized model's own inputs to the layer (the layers before it already rounded this way), so each
layer is fitted to what it will see.

Everything here is numpy on arrays; the back ends find the layers, read their inputs and write the
integers back (``edgeres.backends.tflite_quant``, ``edgeres.backends.onnx_quant``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

DAMP = 0.01        # of the mean diagonal of H, added to it: keeps the inverse well-conditioned
BLOCK = 128        # columns rounded between two full updates of the rest (the same result, faster)
#: rows (input patches) a layer's H is estimated from at most; a random sample of them beyond that.
#: H is K x K: a few times K rows pin it down, and the cost is rows x K^2
MAX_ROWS = 32768
QMAX = 127         # symmetric int8 weights, as both converters write them: -127..127
#: calibration images a layer's H is measured on: each layer costs one pass of the model up to it over them,
#: and H needs a few rows per column, not every image (GPTQ itself calibrates on 128 samples)
IMAGES = 128


class Gram:
    """``H = sum x x^T`` over rows of layer input patches, from batches; ``keep``: the share of rows to sample
    so that about ``max_rows`` of ``total_rows`` are used."""

    def __init__(self, k: int, total_rows: int, max_rows: int = MAX_ROWS, seed: int = 0):
        self.h = np.zeros((k, k), np.float64)
        self.rows = 0
        self.keep = min(1.0, max_rows / max(total_rows, 1))
        self.rng = np.random.default_rng(seed)

    def add(self, rows: np.ndarray) -> None:
        p = rows.astype(np.float64, copy=False)
        self.h += p.T @ p
        self.rows += len(p)


def patches(x: np.ndarray, keep: float = 1.0, rng: np.random.Generator | None = None, *,
            kernel: tuple[int, int], strides: tuple[int, int], dilations: tuple[int, int],
            pads: tuple[int, int, int, int], channels_last: bool) -> np.ndarray:
    """The input patches of a 2-D convolution, one row per output pixel, in the order the kernel is
    flattened: (kh, kw, C) for channels-last (TFLite's OHWI), (C, kh, kw) for channels-first (ONNX's OIHW).
    ``pads`` is (top, left, bottom, right); zeros are what both runtimes pad with (in float).  ``keep`` < 1:
    a random share of the output pixels only (gathered directly: the whole patch matrix is never built)."""
    if not channels_last:
        x = x.transpose(0, 2, 3, 1)
    top, left, bottom, right = pads
    x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    n, h, w, c = x.shape
    oh, ow = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
    if keep < 1.0:
        pick = np.flatnonzero((rng or np.random.default_rng(0)).random(n * oh * ow) < keep)
        b, rest = np.divmod(pick, oh * ow)
        i, j = np.divmod(rest, ow)
        ki, kj = np.meshgrid(np.arange(kh) * dh, np.arange(kw) * dw, indexing="ij")
        rows = x[b[:, None, None], i[:, None, None] * sh + ki, j[:, None, None] * sw + kj]  # (R, kh, kw, c)
        return (rows if channels_last else rows.transpose(0, 3, 1, 2)).reshape(len(pick), -1)
    view = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    view = view[:, ::sh, ::sw][:, :oh, :ow, :, ::dh, ::dw]  # (n, oh, ow, c, kh, kw)
    order = (0, 1, 2, 4, 5, 3) if channels_last else (0, 1, 2, 3, 4, 5)
    return view.transpose(order).reshape(n * oh * ow, -1)


def same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding along one axis: (before, after), the odd one after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def nearest(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Each weight of ``w`` (O, K) rounded to its nearest step of the per-row grid ``scale`` (O,), as int8 (a
    zero scale counts as 1: such a row is all zeros)."""
    s = np.asarray(scale, np.float64).reshape(-1, 1)
    return np.clip(np.round(np.asarray(w, np.float64) / np.where(s > 0, s, 1.0)), -QMAX, QMAX).astype(np.int8)


def gptq(w: np.ndarray, scale: np.ndarray, h: np.ndarray, damp: float = DAMP, block: int = BLOCK) -> np.ndarray:
    """The int8 weights (O, K) for float weights ``w`` (O, K) on the per-row grid ``scale`` (O,) that GPTQ
    chooses under ``h`` (K, K), columns taken in descending order of their input energy.  Columns whose
    input is always zero on the calibration images are rounded to nearest (nothing to measure them on)."""
    w = np.asarray(w, np.float64)
    s = np.asarray(scale, np.float64).reshape(-1, 1)
    s = np.where(s > 0, s, 1.0)
    h = np.array(h, np.float64)
    k = w.shape[1]
    plain = nearest(w, scale)
    if not np.all(np.isfinite(h)):
        return plain  # degenerate statistics: plain rounding
    dead = np.diag(h) <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[dead, dead] = 1.0
    order = np.argsort(-np.diag(h), kind="stable")
    h = h[np.ix_(order, order)]
    work = w[:, order].copy()
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    try:
        u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: inv(h) = u^T u
    except np.linalg.LinAlgError:
        return plain
    q = np.empty_like(work)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        blk = work[:, b0:b1].copy()
        errs = np.empty_like(blk)
        for j in range(b1 - b0):
            col = blk[:, j]
            qc = np.clip(np.round(col / s[:, 0]), -QMAX, QMAX)
            q[:, b0 + j] = qc
            e = (col - qc * s[:, 0]) / u[b0 + j, b0 + j]
            blk[:, j:] -= np.outer(e, u[b0 + j, b0 + j:b1])
            errs[:, j] = e
        work[:, b1:] -= errs @ u[b0:b1, b1:]
    if not np.all(np.isfinite(q)):
        return plain
    out = np.empty_like(q)
    out[:, order] = q
    return out.astype(np.int8)


def output_error(w: np.ndarray, wq: np.ndarray, h: np.ndarray) -> float:
    """``tr(dW H dW^T)``: the summed squared output error of weights ``wq`` against ``w`` under ``h``."""
    d = np.asarray(wq, np.float64) - np.asarray(w, np.float64)
    return float(np.einsum("ok,kl,ol->", d, h, d))


@dataclass
class Layer:
    """One layer to round, as a back end hands it over."""

    name: str                                   # the layer, for the report
    source: Any                                 # its input tensor, in the back end's terms
    w: np.ndarray                               # float weights (O, K)
    scale: np.ndarray                           # the converter's grid, per output (O,)
    #: (a batch of the input tensor, share of rows to keep, rng) -> patch rows (R, K)
    rows: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
    #: output pixels per image (rows per image at keep 1)
    pixels: int
    write: Callable[[np.ndarray], None]         # int8 (O, K) -> into the model


def round_layers(layers: list[Layer], inputs: Callable[[Any], Iterable[np.ndarray]], images: int) -> dict:
    """GPTQ-round ``layers`` in order; ``inputs(source)`` yields the quantized model's value of ``source`` in
    batches over the ``images`` calibration images, with every layer before it already written back.  Layers
    that read the same tensor share one pass.  A layer whose GPTQ weights are not closer to its float
    output under its own H than nearest rounding keeps nearest rounding.  Returns the report's record."""
    grams: dict[int, Gram] = {}
    done, gains = [], []
    for at, layer in enumerate(layers):
        if at not in grams:  # one pass over the calibration images for every layer reading this input
            group = [i for i in range(at, len(layers)) if layers[i].source == layer.source]
            for i in group:
                grams[i] = Gram(layers[i].w.shape[1], layers[i].pixels * images, seed=i)
            for xb in inputs(layer.source):
                for i in group:
                    grams[i].add(layers[i].rows(xb, grams[i].keep, grams[i].rng))
        gram = grams.pop(at)
        if gram.rows == 0:
            continue
        scale = np.where(layer.scale > 0, layer.scale, 1.0)[:, None]
        q = gptq(layer.w, layer.scale, gram.h)
        before = output_error(layer.w, nearest(layer.w, layer.scale) * scale, gram.h)
        after = output_error(layer.w, q * scale, gram.h)
        if not after < before:
            continue
        layer.write(q)
        done.append(layer.name)
        gains.append(10 * np.log10(before / after) if after > 0 else 0.0)
    return {"method": "gptq", "layers": done,
            "output_error_db": round(float(np.mean(gains)), 2) if gains else 0.0,
            "how": f"layer by layer on {images} calibration images, each with the layers before it rounded"}
