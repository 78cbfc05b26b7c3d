"""Activation statistics and range selection.  LIGHT layer: numpy only.

Both back ends feed the float model's intermediate tensors through
:class:`ActivationStats` in two passes over the calibration images (min/max,
then a fixed-range histogram), then ask :func:`choose_range` for each tensor's
quantization range.  Keeping the range maths here, in one place, is what makes
"mse" mean the same thing for TFLite and ONNX.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

BINS = 2048
TAP_BYTES = 512 * 2**20  # memory for every intermediate tensor of one batch, when tapping a model
# Empirical bias correction measures each layer with the layers before it already corrected: one pass
# over the calibration images per layer.  Up to this many multiply-accumulates in all (images x the MACs
# each pass runs; ResNet-20 at 300 images is about 1.4e11, ResNet-50 at 224 with 100 images about 1e13),
# else every layer is measured in one pass and corrected at once.
SEQUENTIAL_BIAS_MACS = 2e12
LAYER_BY_LAYER = "layer by layer"


def bias_correction_passes(targets: list, images: int, pass_macs: Iterable[float]) -> tuple[list[list], str]:
    """The passes empirical bias correction makes over the calibration images, and how, in words.

    One pass per target (layer by layer) when ``images`` x the MACs of those passes (``pass_macs``, one per
    target, per image) fits :data:`SEQUENTIAL_BIAS_MACS`; else one pass for all of them.
    """
    if images * float(sum(pass_macs)) <= SEQUENTIAL_BIAS_MACS:
        return [[t] for t in targets], LAYER_BY_LAYER
    return [list(targets)], "all layers at once (over the budget)"


def tap_batch(per_image_bytes: int, largest: int = 32) -> int:
    """Images per batch when every intermediate tensor is kept (ResNet-50 at 224: ~4 images)."""
    return int(max(1, min(largest, TAP_BYTES // max(per_image_bytes, 1))))


@dataclass
class TensorStats:
    lo: float = np.inf
    hi: float = -np.inf
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    zeros: int = 0
    hist: np.ndarray | None = None
    ch_lo: np.ndarray | None = None  # per channel
    ch_hi: np.ndarray | None = None
    ch_sum: np.ndarray | None = None
    ch_count: int = 0
    #: the "channel" axis changed size between batches (a tensor that holds the batch there, after one of
    #: tf2onnx's transposes): no per-channel statistics for it
    ch_varies: bool = False

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return float(np.sqrt(max(self.total_sq / self.count - self.mean ** 2, 0.0))) if self.count else 0.0


@dataclass
class ActivationStats:
    """Streaming per-tensor statistics over batches of named float arrays.

    ``channel_axis`` is where channels live (-1 for NHWC TFLite, 1 for NCHW
    ONNX); tensors of rank < 2 have none.
    """

    channel_axis: int = -1
    tensors: dict[str, TensorStats] = field(default_factory=dict)
    histograms: bool = False

    def observe(self, name: str, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.dtype.kind != "f" or x.size == 0:
            return
        s = self.tensors.setdefault(name, TensorStats())
        if self.histograms:  # second pass: ranges are fixed
            if s.hist is not None:
                s.hist += np.histogram(x.astype(np.float32, copy=False), BINS, (s.lo, s.hi))[0]
            return
        x64 = x.astype(np.float64)
        s.lo, s.hi = min(s.lo, float(x.min())), max(s.hi, float(x.max()))
        s.count += x.size
        s.total += float(x64.sum())
        s.total_sq += float((x64 ** 2).sum())
        s.zeros += int((x == 0).sum())
        if x.ndim >= 2 and not s.ch_varies:
            axis = self.channel_axis % x.ndim
            if s.ch_lo is not None and len(s.ch_lo) != x.shape[axis]:
                s.ch_lo = s.ch_hi = s.ch_sum = None
                s.ch_count, s.ch_varies = 0, True
                return
            other = tuple(i for i in range(x.ndim) if i != axis)
            lo, hi = x.min(axis=other), x.max(axis=other)
            s.ch_lo = lo if s.ch_lo is None else np.minimum(s.ch_lo, lo)
            s.ch_hi = hi if s.ch_hi is None else np.maximum(s.ch_hi, hi)
            tot = x64.sum(axis=other)
            s.ch_sum = tot if s.ch_sum is None else s.ch_sum + tot
            s.ch_count += x.size // x.shape[axis]

    def start_histograms(self) -> None:
        """Switch to the second pass: histograms over each tensor's observed [lo, hi]."""
        self.histograms = True
        for s in self.tensors.values():
            # A tensor (almost) constant on the images, down to a range BINS float steps cannot split (an
            # untrained network's), gets no histogram: its range is its min and max (choose_range).
            s.hist = np.zeros(BINS, np.float64) if _splittable(s.lo, s.hi) else None

    def channel_mean(self, name: str, channels: int | None = None) -> np.ndarray | None:
        """Per-channel mean of a tensor (None when unseen, or not ``channels`` wide)."""
        s = self.tensors.get(name)
        if s is None or s.ch_sum is None or (channels is not None and len(s.ch_sum) != channels):
            return None
        return s.ch_sum / s.ch_count

    def range(self, name: str, method: str, percentile: float = 99.999, bits: int = 8) -> tuple[float, float]:
        s = self.tensors[name]
        return choose_range(s.hist, s.lo, s.hi, method, percentile, bits)


def _splittable(lo: float, hi: float) -> bool:
    """Whether [lo, hi] splits into BINS bins of positive width in float32, the precision numpy computes a
    float32 tensor's bin edges in (it refuses the histogram otherwise)."""
    return bool(hi > lo and np.all(np.diff(np.linspace(lo, hi, BINS + 1, dtype=np.float32)) > 0))


def collect(batches: Callable[[], Iterable[dict[str, np.ndarray]]], channel_axis: int,
            histograms: bool = False) -> ActivationStats:
    """Statistics of the named tensors that each call of ``batches()`` yields, batch by batch.

    With ``histograms`` the data is walked twice: min/max first, then
    histograms over those ranges.
    """
    stats = ActivationStats(channel_axis=channel_axis)
    for second in ((False, True) if histograms else (False,)):
        if second:
            stats.start_histograms()
        for values in batches():
            for name, value in values.items():
                stats.observe(name, value)
    return stats


def choose_range(hist: np.ndarray | None, lo: float, hi: float, method: str, percentile: float = 99.999,
                 bits: int = 8) -> tuple[float, float]:
    """A quantization range [a, b] (always containing 0) for one tensor's histogram over [lo, hi]."""
    lo, hi = float(lo), float(hi)  # the histogram's own geometry
    if method == "minmax" or hist is None or hi <= lo or hist.sum() == 0:
        return min(lo, 0.0), max(hi, 0.0)
    if method == "percentile":
        a, b = _percentile_range(hist, lo, hi, percentile)
    elif method == "mse":
        a, b = _mse_range(hist, lo, hi, bits)
    elif method == "entropy":
        a, b = _entropy_range(hist, lo, hi, bits)
    else:
        raise ValueError(f"unknown calibration method {method!r}")
    return min(float(a), 0.0), max(float(b), 0.0)  # the int8 grid always represents 0 exactly


def _centers(lo: float, hi: float, n: int) -> np.ndarray:
    edges = np.linspace(lo, hi, n + 1)
    return (edges[:-1] + edges[1:]) / 2


def _percentile_range(hist, lo, hi, percentile):
    edges = np.linspace(lo, hi, len(hist) + 1)
    cdf = np.cumsum(hist) / hist.sum()
    tail = (100.0 - percentile) / 100.0
    a = edges[min(np.searchsorted(cdf, tail), len(hist) - 1)] if lo < 0 else lo
    b = edges[min(np.searchsorted(cdf, 1.0 - tail) + 1, len(hist))] if hi > 0 else hi
    return min(float(a), 0.0), max(float(b), 0.0)


def _mse_range(hist, lo, hi, bits):
    """Scale [lo, hi] by the factor in [0.2, 1] that minimises expected squared error.

    Error per histogram bin: clipping error outside the range, uniform
    rounding noise step^2/12 inside.  Scaling both ends together measured
    better than fitting them independently (0.45 points of agreement on
    ResNet-20), which overfits the rare negative tail.
    """
    c = _centers(lo, hi, len(hist))
    lo0, hi0 = min(lo, 0.0), max(hi, 0.0)  # the grid spans 0
    factors = np.linspace(0.2, 1.0, 81)
    best, best_err = (lo0, hi0), np.inf
    levels = 2 ** bits - 1
    for f in factors:
        a, b = lo0 * f, hi0 * f
        step2 = ((b - a) / levels) ** 2
        clipped = np.clip(c, a, b)
        err = float((hist * ((c - clipped) ** 2 + step2 / 12.0 * ((c >= a) & (c <= b)))).sum())
        if err < best_err:
            best, best_err = (a, b), err
    return float(best[0]), float(best[1])


def _entropy_range(hist, lo, hi, bits):
    """TensorRT-style KL calibration on |x|: the threshold whose quantized histogram diverges least."""
    m = max(abs(lo), abs(hi))
    c = _centers(lo, hi, len(hist))
    ahist = np.histogram(np.abs(c), len(hist), (0.0, m), weights=hist)[0]
    if lo >= 0:  # exact zeros (ReLU) are representable at any range; they are not part of the fit
        ahist[0] = 0.0
    levels = 2 ** (bits - 1) if lo < 0 else 2 ** bits
    lo = min(lo, 0.0)
    levels = min(levels, len(ahist) // 2)
    best_i, best_kl = len(ahist), np.inf
    for i in range(levels, len(ahist) + 1, max(1, len(ahist) // 64)):
        kept = ahist[:i].astype(np.float64)
        p = kept.copy()
        p[-1] += ahist[i:].sum()  # the reference folds the clipped tail into the last bin...
        nz = kept > 0
        q = np.zeros(i)
        for idx in np.array_split(np.arange(i), levels):  # ...the candidate is the kept part, requantized
            mass, used = kept[idx].sum(), nz[idx].sum()
            if used:
                q[idx] = np.where(nz[idx], mass / used, 0.0)
        ps, qs = p / p.sum(), q / max(q.sum(), 1e-30)
        qs = np.where((ps > 0) & (qs == 0), 1e-4 / i, qs)  # smoothing, as TensorRT's reference does
        ok = ps > 0
        kl = float((ps[ok] * np.log(ps[ok] / qs[ok])).sum())
        if kl < best_kl:
            best_i, best_kl = i, kl
    t = m * best_i / len(ahist)
    return (max(lo, -t) if lo < 0 else lo), min(hi, t)
