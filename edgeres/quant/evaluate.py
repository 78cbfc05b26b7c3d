"""Run a built model over labelled images against the float32 reference.  LIGHT layer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeres.core.metrics import collapsed, tally_batches
from edgeres.core.stop import temp_dir
from edgeres.quant.backend import Backend


@dataclass
class Evaluation:
    top1: float | None
    top1_drop: float | None
    agreement: float
    sqnr_db: float
    collapsed: bool
    p50_ms: float | None = None
    size_bytes: int = 0
    #: the paired counts behind the figures (edgeres.quant.confidence): labelled images, those float32 gets
    #: right and this model wrong (lost) and the reverse (gained); compared images, those whose top-1 differs
    labelled: int = 0
    lost: int = 0
    gained: int = 0
    compared: int = 0
    disagree: int = 0

    def loss(self, metric: str) -> float:
        """The budgeted quantity: top-1 points lost, or points of agreement lost."""
        if metric == "top1":  # no top-1 on labelled data means the model was never built
            return math.inf if self.top1_drop is None else self.top1_drop
        return 100.0 - self.agreement

    def to_dict(self) -> dict:
        return {"top1": self.top1, "top1_drop": self.top1_drop, "agreement": self.agreement,
                "sqnr_db": self.sqnr_db, "collapsed": self.collapsed, "p50_ms": self.p50_ms,
                "size_bytes": self.size_bytes}


@dataclass
class Split:
    """Images with labels (or None) and the float32 reference outputs."""

    x: np.ndarray
    y: np.ndarray | None
    ref: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, size: int = 64):
        for s in range(0, len(self), size):
            yield self.x[s:s + size], None if self.y is None else self.y[s:s + size], self.ref[s:s + size]


def evaluate(backend: Backend, data: bytes, split: Split, latency_runs: int = 0) -> Evaluation:
    """Run ``data`` on ``split``; with ``latency_runs`` also time batch-1 inference."""
    from edgeres.core.timing import measure

    with temp_dir("edgeres-eval-") as tmp:
        runner = backend.runner(data, Path(tmp))
        ref_tally, tallies = tally_batches(split.batches(), {"model": runner.predict}, topk=1)
        p50 = None
        if latency_runs:
            fn = runner.timed_invoke(runner.quantize_input(split.x[:1]))
            stats, _ = measure(fn, runs=latency_runs, warmup=max(3, latency_runs // 5))
            p50 = stats.p50
    tally = tallies["model"]
    r, ref = tally.result(), ref_tally.result()
    top1 = r.get("top1")
    drop = (ref["top1"] - top1) if top1 is not None else None
    return Evaluation(top1, drop, r["agreement"], r["sqnr_db"],
                      collapsed(tally.predictions, ref_tally.predictions), p50, len(data),
                      tally.labelled, tally.lost, tally.gained, tally.compared, tally.disagree)
