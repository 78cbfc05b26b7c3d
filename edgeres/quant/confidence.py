"""Confidence bounds for the ``--max-drop`` budget.  LIGHT layer: standard library only.

An int8 model and its float32 reference see the same images, so their
results are *paired*.  Two losses are budgeted, both in percentage points:

- **top-1 drop**, ``--metric top1``: from the per-image correctness of
  float32 and of int8 on ``n`` labelled images, ``b`` = images float32 gets
  right and int8 gets wrong, ``c`` = the reverse.  The drop is
  ``100 * (b - c) / n``; the images both get right (or both wrong) carry no
  information about it.
- **agreement lost**, ``--metric agreement``: ``k`` of ``n`` images where
  int8's top-1 class differs from float32's; the loss is ``100 * k / n``.

The bounds:

- the top-1 drop uses **Tango's asymptotic score interval** for the difference
  of paired proportions (Tango 1998, Stat Med 17:891-908; one of the intervals
  Fagerland, Lydersen and Laake recommend in "Recommended tests and confidence
  intervals for paired binomial proportions", Stat Med 2014).  The bound is
  the drop ``d`` at which the score
  statistic ``(b - c - n d) / sqrt(n (2 q + d (1 - d)))``, with ``q`` the
  maximum-likelihood estimate of P(int8 right, float32 wrong) under that
  ``d``, reaches the normal quantile.  It stays honest where quantization
  lives: a handful of discordant images, almost all of them losses.  (The
  simpler Agresti-Min adjusted Wald interval, tried first, accepted a model
  whose true drop equals the budget up to twice as often as its level says
  when ``c`` is near 0; Tango's stays at or below it.)
- agreement lost uses the **Wilson score interval** for ``k`` of ``n``.  With
  ``c = 0`` Tango's statistic is exactly Wilson's, so one image lost costs the
  same on both metrics, and both need the same number of images.

Levels: the search decides at :data:`DECISION_LEVEL` (0.90) one-sided: a
configuration meets a budget only when the upper bound of its loss is
within it, so one that truly loses the budget is accepted about 10% of the
time at most (simulated: 5-11%).  0.95 would need about 1.35x the selection
images for the same budget.  The report gives :data:`REPORT_LEVEL` (0.95)
two-sided intervals.

A budget is *resolvable* on ``n`` images when a model that loses exactly one
image net (``b = 1, c = 0``; or ``k = 1``) can still be judged within it: below
that, only a model that loses no image at all could meet it, and the search
would spend its time on noise.  A budget of 0 is never resolvable.
"""

from __future__ import annotations

import math
from statistics import NormalDist

# The levels live in the core layer, where the report's renderer reads them too: one-sided 0.90 for the
# search's decisions, two-sided 0.95 for the report's intervals.
from edgeres.core.metrics import DECISION_LEVEL, REPORT_LEVEL

#: added to a budget before comparing (the search's float tolerance)
TOLERANCE = 1e-9
METRICS = ("top1", "agreement")
__all__ = ["DECISION_LEVEL", "REPORT_LEVEL", "TOLERANCE", "METRICS", "z_one_sided", "z_two_sided",
           "tango_statistic", "drop_upper", "drop_interval", "wilson_upper", "wilson_interval", "agreement_interval",
           "loss_upper", "resolvable", "images_needed"]


def z_one_sided(level: float) -> float:
    """The normal quantile of a one-sided bound at ``level`` (0.90: 1.2816)."""
    return NormalDist().inv_cdf(level)


def z_two_sided(level: float) -> float:
    """The normal quantile of a two-sided interval at ``level`` (0.95: 1.9600)."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def _check_counts(n: int, *counts: int) -> None:
    if n < 0 or any(k < 0 for k in counts) or sum(counts) > n:
        raise ValueError(f"counts {counts} do not fit {n} images")


# ------------------------------------------------------------------ top-1 drop: Tango's score interval

def tango_statistic(b: int, c: int, n: int, d0: float) -> float:
    """Tango's score statistic for H0: drop = ``d0`` (a fraction in [-1, 1]), decreasing in ``d0``."""
    a_, b_ = 2.0 * n, -b - c + (2.0 * n - b + c) * d0
    c_ = -c * d0 * (1.0 - d0)
    root = math.sqrt(max(b_ * b_ - 4.0 * a_ * c_, 0.0))
    # q: the constrained ML estimate of P(int8 right, float32 wrong); the stable form of the quadratic's root
    q = (root - b_) / (2.0 * a_) if b_ <= 0 else -2.0 * c_ / (b_ + root)
    num = b - c - n * d0
    var = n * (2.0 * q + d0 * (1.0 - d0))
    if var <= 0.0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def _tango_root(b: int, c: int, n: int, target: float, lo: float, hi: float) -> float:
    """The ``d0`` in [lo, hi] where the (decreasing) statistic equals ``target``, by bisection."""
    for _ in range(100):
        mid = (lo + hi) / 2
        if tango_statistic(b, c, n, mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return (lo + hi) / 2


def drop_upper(b: int, c: int, n: int, level: float = DECISION_LEVEL) -> float:
    """One-sided upper confidence bound on the top-1 drop, in points (Tango's score bound)."""
    _check_counts(n, b, c)
    if n == 0:
        return 100.0
    est = (b - c) / n
    if est >= 1.0:
        return 100.0
    return 100.0 * _tango_root(b, c, n, -z_one_sided(level), est, 1.0)


def drop_interval(b: int, c: int, n: int, level: float = REPORT_LEVEL) -> tuple[float, float]:
    """Two-sided confidence interval on the top-1 drop, in points (Tango's score interval)."""
    _check_counts(n, b, c)
    if n == 0:
        return -100.0, 100.0
    est, z = (b - c) / n, z_two_sided(level)
    lo = -1.0 if est <= -1.0 else _tango_root(b, c, n, z, -1.0, est)
    hi = 1.0 if est >= 1.0 else _tango_root(b, c, n, -z, est, 1.0)
    return 100.0 * lo, 100.0 * hi


# ------------------------------------------------------------------ agreement lost: Wilson's score interval

def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def wilson_upper(k: int, n: int, level: float = DECISION_LEVEL) -> float:
    """One-sided upper confidence bound on ``100 * k / n`` points (Wilson's score bound)."""
    _check_counts(n, k)
    return 100.0 if n == 0 else 100.0 * _wilson(k, n, z_one_sided(level))[1]


def wilson_interval(k: int, n: int, level: float = REPORT_LEVEL) -> tuple[float, float]:
    """Two-sided confidence interval on ``100 * k / n`` points (Wilson's score interval)."""
    _check_counts(n, k)
    if n == 0:
        return 0.0, 100.0
    lo, hi = _wilson(k, n, z_two_sided(level))
    return 100.0 * lo, 100.0 * hi


def agreement_interval(disagree: int, n: int, level: float = REPORT_LEVEL) -> tuple[float, float]:
    """Two-sided confidence interval on the agreement with float32, in percent: Wilson's on ``disagree`` of ``n``."""
    lo, hi = wilson_interval(disagree, n, level)
    return 100.0 - hi, 100.0 - lo


# ------------------------------------------------------------------ the budget

def loss_upper(metric: str, n: int, *, lost: int = 0, gained: int = 0, disagree: int = 0,
               level: float = DECISION_LEVEL) -> float:
    """The upper bound the search compares with the budget: on the top-1 drop (``lost`` = b,
    ``gained`` = c of ``n`` labelled images), or on agreement lost (``disagree`` = k of ``n``)."""
    if metric == "top1":
        return drop_upper(lost, gained, n, level)
    if metric == "agreement":
        return wilson_upper(disagree, n, level)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def resolvable(budget: float, metric: str, n: int, level: float = DECISION_LEVEL) -> bool:
    """Whether a model losing exactly one image net (b=1, c=0; or k=1) can be judged within ``budget``
    points on ``n`` images.  A budget of 0 (or less) never is."""
    if budget <= 0 or n < 1:
        return False
    return loss_upper(metric, n, lost=1, disagree=1, level=level) <= budget + TOLERANCE


def images_needed(budget: float, metric: str, level: float = DECISION_LEVEL) -> int | None:
    """The fewest images on which ``budget`` is :func:`resolvable`; None for a budget of 0 or less."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if budget <= 0:
        return None
    hi = 1
    while not resolvable(budget, metric, hi, level):  # the bound falls as n grows: double, then bisect
        hi *= 2
    lo = hi // 2  # not resolvable (or 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if resolvable(budget, metric, mid, level):
            hi = mid
        else:
            lo = mid
    return hi
