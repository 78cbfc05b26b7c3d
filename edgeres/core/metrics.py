"""Streaming accuracy and fidelity metrics.  LIGHT layer: numpy only."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Tally:
    """Accumulates one artifact's results batch by batch.

    Accuracy needs labels; agreement, SQNR and max-abs-diff need the reference
    outputs (Keras float32, or another artifact) for the same batch.  With
    both, ``lost`` and ``gained`` count the images the reference gets right
    and this model wrong, and the reverse: the paired counts the confidence
    bounds of :mod:`edgeres.quant.confidence` need.

    The figures do not depend on how the images were split: the squared
    sums behind SQNR are kept per image (an array per batch) and added by
    :func:`math.fsum`, exactly rounded whatever the order, so merging the
    tallies of a dataset's parts in order (:meth:`merge`) gives the figures
    of one pass over the whole, bit for bit.
    """

    topk: int = 1
    n: int = 0
    correct1: int = 0
    correctk: int = 0
    labelled: int = 0
    agree: int = 0
    compared: int = 0
    max_abs: float = 0.0
    lost: int = 0      # labelled images the reference gets right and this model wrong
    gained: int = 0    # ... and the reverse
    nonfinite: int = 0  # images with a NaN or infinite output: never "the same as the reference"
    _top1: list = field(default_factory=list, repr=False, compare=False)
    _signal: list = field(default_factory=list, repr=False, compare=False)  # per image: sum(ref^2), per batch
    _noise: list = field(default_factory=list, repr=False, compare=False)   # per image: sum((out - ref)^2)

    def update(self, out: np.ndarray, y: np.ndarray | None = None, ref: np.ndarray | None = None) -> None:
        out = out.reshape(len(out), -1)
        bad = ~np.isfinite(out).all(axis=1)
        self.nonfinite += int(bad.sum())
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
            ref_pred = ref.argmax(1)
            self.agree += int((pred == ref_pred).sum())
            if y is not None:
                hit, ref_hit = pred == y, ref_pred == y
                self.lost += int((ref_hit & ~hit).sum())
                self.gained += int((hit & ~ref_hit).sum())
            diff = out.astype(np.float64) - ref
            self._signal.append((ref ** 2).sum(axis=1))  # row by row: the same whatever else is in the batch
            self._noise.append((diff ** 2).sum(axis=1))
            worst = np.abs(diff).max()
            self.max_abs = max(self.max_abs, float(worst) if np.isfinite(worst) else math.inf)  # NaN: not 0

    @property
    def signal(self) -> float:
        """Sum of the squared reference outputs, exactly rounded."""
        return math.fsum(np.concatenate(self._signal)) if self._signal else 0.0

    @property
    def noise(self) -> float:
        """Sum of the squared differences from the reference outputs, exactly rounded."""
        return math.fsum(np.concatenate(self._noise)) if self._noise else 0.0

    def merge(self, others: Iterable[Tally]) -> Tally:
        """A new tally of this one's images followed by ``others``' (see :func:`merge_tallies`)."""
        return merge_tallies([self, *others])

    @property
    def disagree(self) -> int:
        """Compared images whose top-1 class differs from the reference's."""
        return self.compared - self.agree

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
        if self.nonfinite:
            r["nonfinite_outputs"] = self.nonfinite
        return r


_COUNTS = ("n", "correct1", "correctk", "labelled", "agree", "compared", "lost", "gained", "nonfinite")


def merge_tallies(tallies: Sequence[Tally]) -> Tally:
    """One tally of the images of ``tallies``, in their order (shards in dataset order).

    Counts add, predictions concatenate in order, ``max_abs`` is the largest,
    and the per-image squared sums concatenate: the result equals, figure for
    figure, one tally updated with all the batches in turn.  Every tally must
    have the same ``topk``; no tally gives an empty one.
    """
    if not tallies:
        return Tally()
    topks = {t.topk for t in tallies}
    if len(topks) > 1:
        raise ValueError(f"cannot merge tallies of different top-k: {sorted(topks)}")
    merged = Tally(topk=tallies[0].topk, max_abs=max(t.max_abs for t in tallies))
    for t in tallies:
        for name in _COUNTS:
            setattr(merged, name, getattr(merged, name) + getattr(t, name))
        merged._top1.extend(t._top1)
        merged._signal.extend(t._signal)
        merged._noise.extend(t._noise)
    return merged


def sqnr_db(signal: float, noise: float) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when outputs are identical)."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


COLLAPSE_AGREEMENT = 50.0  # below this an int8 model has collapsed, whatever its budget
#: one-sided confidence with which --max-drop judges a configuration within budget (edgeres.quant.confidence)
DECISION_LEVEL = 0.90
#: two-sided confidence of the intervals a report gives (top1_drop_ci, agreement_ci)
REPORT_LEVEL = 0.95


def dash(v, spec: str, suffix: str = "") -> str:
    """``v`` formatted for a table, or "-" when it was not measured."""
    return "-" if v is None else f"{v:{spec}}{suffix}"


COLLAPSE_SHARE = 0.98     # of the inputs given one class: the model no longer tells them apart
REFERENCE_SHARE = 0.90    # ... unless the reference itself gives that class this often (then it is the data)


def collapsed(predictions: np.ndarray, reference: np.ndarray | None = None) -> bool:
    """True when a model gives (nearly) the same top-1 class for every input, and, given the ``reference``
    model's top-1 on the same inputs, that model does not, or the model lost most of the few inputs the
    reference tells apart: a degenerate float model that already calls 96% of the images one class has not
    been broken by an int8 model that calls 98% of them so and agrees on the rest."""
    if len(predictions) < 20:
        return False
    counts = np.bincount(predictions)
    if counts.max() < COLLAPSE_SHARE * len(predictions):
        return False
    if reference is None:
        return True
    minority = reference != counts.argmax()
    if minority.mean() > 1 - REFERENCE_SHARE:
        return True
    return bool(minority.any()) and float((predictions[minority] == reference[minority]).mean()) < 0.5


def default_topk(n_outputs: int) -> int:
    """Top-5 is reported for more than 10 classes, top-1 only otherwise."""
    return 5 if n_outputs > 10 else 1


def tally_batches(batches: Iterable[tuple], models: dict[str, Callable[[np.ndarray], np.ndarray]], *,
                  reference: Callable[[np.ndarray], np.ndarray] | None = None, topk: int | None = None,
                  first_output: Callable[[int], None] | None = None,
                  progress: Callable[[int], None] | None = None) -> tuple[Tally, dict[str, Tally]]:
    """Run every model over the batches and tally each one: the one "run and tally" loop.

    A batch is ``(x, y)`` or ``(x, y, ref)``: ``y`` the labels (or None),
    ``ref`` the reference outputs, else computed by ``reference(x)`` (or
    none).  An item may also be a list of batches, a chunk: each model then
    runs over the whole chunk before the next model starts, so each runtime's
    thread pool stays warm instead of handing the cores back and forth every
    batch (the tallies are the same).  ``topk`` None picks it from the first
    output's width, which ``first_output`` also receives (to check class
    counts before the rest runs).  Returns the reference's tally (labels only)
    and one per model.
    """
    ref_tally, tallies = Tally(topk=topk or 1), {name: Tally(topk=topk or 1) for name in models}
    first = True
    for item in batches:
        chunk = item if isinstance(item, list) else [item]
        outs = {name: [fn(batch[0]) for batch in chunk] for name, fn in models.items()}
        for i, batch in enumerate(chunk):
            x, y = batch[0], batch[1]
            ref = batch[2] if len(batch) > 2 else (np.asarray(reference(x)) if reference is not None else None)
            if first:
                width = next((o[i] for o in outs.values()), ref if ref is not None else np.zeros((1, 1)))
                width = width.reshape(len(width), -1).shape[1]
                if first_output is not None:
                    first_output(width)
                if topk is None:
                    ref_tally.topk = default_topk(width)
                    for t in tallies.values():
                        t.topk = ref_tally.topk
                first = False
            if ref is not None:
                ref_tally.update(ref, y)
            for name, out in outs.items():
                tallies[name].update(out[i], y, ref)
            if progress:
                progress(len(x))
    return ref_tally, tallies
