"""Streaming accuracy and fidelity metrics.  LIGHT layer: numpy only."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Tally:
    """Accumulates one artifact's results batch by batch.

    Accuracy needs labels; agreement, SQNR and max-abs-diff need the reference
    outputs (Keras float32, or another artifact) for the same batch.
    """

    topk: int = 1
    n: int = 0
    correct1: int = 0
    correctk: int = 0
    labelled: int = 0
    agree: int = 0
    compared: int = 0
    signal: float = 0.0
    noise: float = 0.0
    max_abs: float = 0.0
    _top1: list = field(default_factory=list, repr=False)

    def update(self, out: np.ndarray, y: np.ndarray | None = None, ref: np.ndarray | None = None) -> None:
        out = out.reshape(len(out), -1)
        pred = out.argmax(1)
        self._top1.append(pred)
        self.n += len(out)
        if y is not None:
            self.labelled += len(y)
            self.correct1 += int((pred == y).sum())
            if self.topk > 1:
                k = min(self.topk, out.shape[1])
                top = np.argpartition(-out, k - 1, axis=1)[:, :k]
                self.correctk += int((top == y[:, None]).any(1).sum())
        if ref is not None:
            ref = ref.reshape(len(ref), -1).astype(np.float64)
            self.compared += len(ref)
            self.agree += int((pred == ref.argmax(1)).sum())
            diff = out.astype(np.float64) - ref
            self.signal += float((ref ** 2).sum())
            self.noise += float((diff ** 2).sum())
            self.max_abs = max(self.max_abs, float(np.abs(diff).max()))

    @property
    def predictions(self) -> np.ndarray:
        return np.concatenate(self._top1) if self._top1 else np.zeros(0, np.int64)

    def result(self) -> dict:
        r: dict = {"count": self.n}
        if self.labelled:
            r["top1"] = 100.0 * self.correct1 / self.labelled
            if self.topk > 1:
                r[f"top{self.topk}"] = 100.0 * self.correctk / self.labelled
        if self.compared:
            r["agreement"] = 100.0 * self.agree / self.compared
            r["sqnr_db"] = sqnr_db(self.signal, self.noise)
            r["max_abs_diff"] = self.max_abs
        return r


def sqnr_db(signal: float, noise: float) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when outputs are identical)."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


COLLAPSE_AGREEMENT = 50.0  # below this an int8 model has collapsed, whatever its budget


def dash(v, spec: str, suffix: str = "") -> str:
    """``v`` formatted for a table, or "-" when it was not measured."""
    return "-" if v is None else f"{v:{spec}}{suffix}"


def collapsed(predictions: np.ndarray) -> bool:
    """True when a model gives (nearly) the same top-1 class for every input."""
    return len(predictions) >= 20 and np.bincount(predictions).max() >= 0.98 * len(predictions)
