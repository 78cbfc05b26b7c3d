"""Confidence bounds for ``--max-drop`` (:mod:`edgeres.quant.confidence`) and the paired counts behind them.

Published values pin the formulas (Wilson: Newcombe 1998's worked examples;
Tango: the Bentur et al. 2009 table Fagerland, Lydersen and Laake use), an
independent maximum-likelihood computation checks Tango's score statistic,
closed forms check the edge cases, and hypothesis checks the properties the
search relies on: intervals contain the point estimate, bounds fall as
images are added and rise with every image lost, and ``images_needed`` is the
exact threshold of ``resolvable``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeres.core.metrics import DECISION_LEVEL, REPORT_LEVEL, Tally
from edgeres.quant import confidence as cf

Z90, Z95 = 1.2815515655446004, 1.959963984540054
PROPS = settings(max_examples=300, deadline=None, derandomize=True, database=None)


@st.composite
def paired(draw, max_n: int = 5000):
    """(b, c, n): discordant counts that fit n images."""
    n = draw(st.integers(1, max_n))
    b = draw(st.integers(0, n))
    c = draw(st.integers(0, n - b))
    return b, c, n


@st.composite
def counted(draw, max_n: int = 5000):
    n = draw(st.integers(1, max_n))
    return draw(st.integers(0, n)), n


# ------------------------------------------------------------------ hand-computed and published values

def test_levels_and_quantiles():
    assert (DECISION_LEVEL, REPORT_LEVEL) == (0.90, 0.95)
    assert cf.z_one_sided(0.90) == pytest.approx(Z90, abs=1e-9)
    assert cf.z_two_sided(0.95) == pytest.approx(Z95, abs=1e-9)


@pytest.mark.parametrize("k, n, lo, hi", [
    (0, 10, 0.0, 27.75), (1, 10, 1.79, 40.42),   # Newcombe 1998, Stat Med 17:857, Table II
    (81, 263, 25.53, 36.62), (15, 148, 6.24, 16.05),
])
def test_wilson_interval_matches_newcombe(k, n, lo, hi):
    got = cf.wilson_interval(k, n, 0.95)
    assert got == pytest.approx((lo, hi), abs=0.006)


def test_wilson_bounds_by_hand():
    # k = 0: the upper bound solves n u = z^2 (1 - u), so u = z^2 / (n + z^2)
    assert cf.wilson_upper(0, 250) == pytest.approx(100 * Z90**2 / (250 + Z90**2), rel=1e-12)
    assert cf.wilson_interval(0, 250)[0] == 0.0 and cf.wilson_interval(250, 250)[1] == 100.0
    # k = 1 of 250: u solves (k - n u)^2 = z^2 n u (1 - u), the larger root
    a, b, c = 250**2 + Z90**2 * 250, -(2 * 250 + Z90**2 * 250), 1.0
    u = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    assert cf.wilson_upper(1, 250) == pytest.approx(100 * u, rel=1e-12) == pytest.approx(1.3277, abs=1e-4)


def test_tango_interval_matches_the_published_example():
    # Airway hyper-responsiveness before/after stem cell transplantation (Bentur et al. 2009): n12 = 1,
    # n21 = 7 of 21 pairs; Tango's 95% interval for the difference is -0.5172 to -0.0260.
    lo, hi = cf.drop_interval(1, 7, 21, 0.95)
    assert (lo, hi) == pytest.approx((-51.72, -2.60), abs=0.01)


def _ml_statistic(b: int, c: int, n: int, d0: float) -> float:
    """Tango's statistic with the constrained maximum-likelihood estimate found by brute force, not the quadratic."""
    lo, hi = max(0.0, -d0), (1.0 - d0) / 2  # q = P(c), P(b) = q + d0, P(neither) = 1 - 2q - d0
    q = np.linspace(lo, hi, 400001)[1:-1]
    ll = b * np.log(q + d0) + c * np.log(q) + (n - b - c) * np.log(1 - 2 * q - d0)
    q_hat = q[np.argmax(ll)]
    return (b - c - n * d0) / math.sqrt(n * (2 * q_hat + d0 * (1 - d0)))


@pytest.mark.parametrize("b, c, n", [(12, 5, 1000), (3, 0, 250), (40, 38, 2000), (1, 7, 21), (30, 2, 300)])
def test_tango_bounds_solve_the_score_equation(b, c, n):
    lo, hi = cf.drop_interval(b, c, n, 0.95)
    assert _ml_statistic(b, c, n, hi / 100) == pytest.approx(-Z95, abs=2e-3)
    assert _ml_statistic(b, c, n, lo / 100) == pytest.approx(Z95, abs=2e-3)
    up = cf.drop_upper(b, c, n, 0.90)
    assert _ml_statistic(b, c, n, up / 100) == pytest.approx(-Z90, abs=2e-3)


def test_tango_without_gains_is_wilson():
    """c = 0: the constrained estimate of P(c) is 0 and Tango's statistic is Wilson's, exactly."""
    for b, n in [(0, 250), (1, 250), (1, 1000), (7, 3000), (50, 120)]:
        assert cf.drop_upper(b, 0, n) == pytest.approx(cf.wilson_upper(b, n), abs=1e-9)
        assert cf.drop_interval(b, 0, n)[1] == pytest.approx(cf.wilson_interval(b, n)[1], abs=1e-9)


def test_no_discordant_images():
    assert cf.drop_upper(0, 0, 1000) == pytest.approx(100 * Z90**2 / (1000 + Z90**2), rel=1e-9)
    lo, hi = cf.drop_interval(0, 0, 1000)
    assert lo == pytest.approx(-hi) and hi == pytest.approx(100 * Z95**2 / (1000 + Z95**2), rel=1e-9)


def test_extremes_and_bad_counts():
    lo, hi = cf.drop_interval(5, 0, 5)  # every image lost: the drop is 100 points at most
    assert hi == 100.0 and 0 < lo < 100 and _ml_statistic(5, 0, 5, lo / 100) == pytest.approx(Z95, abs=2e-3)
    assert cf.drop_interval(0, 5, 5)[0] == -100.0
    assert cf.drop_upper(4, 0, 4) == 100.0
    assert cf.drop_interval(0, 0, 0) == (-100.0, 100.0) and cf.wilson_upper(0, 0) == 100.0
    for bad in [(3, 2, 4), (-1, 0, 10), (0, 0, -1)]:
        with pytest.raises(ValueError):
            cf.drop_upper(*bad)
    with pytest.raises(ValueError):
        cf.wilson_interval(11, 10)
    with pytest.raises(ValueError):
        cf.loss_upper("top5", 100)


def test_agreement_interval_is_wilson_on_disagreements():
    lo, hi = cf.agreement_interval(3, 250)
    wlo, whi = cf.wilson_interval(3, 250)
    assert (lo, hi) == pytest.approx((100 - whi, 100 - wlo)) and lo < 100 * 247 / 250 < hi


def test_loss_upper_dispatches_on_the_metric():
    assert cf.loss_upper("top1", 500, lost=4, gained=1, disagree=9) == cf.drop_upper(4, 1, 500)
    assert cf.loss_upper("agreement", 500, lost=4, gained=1, disagree=9) == cf.wilson_upper(9, 500)


# ------------------------------------------------------------------ resolution

IMAGES_NEEDED = {0.05: 6685, 0.1: 3342, 0.3: 1113, 0.5: 667, 1.0: 333}  # docs/quantization.md


@pytest.mark.parametrize("metric", cf.METRICS)
@pytest.mark.parametrize("budget, need", sorted(IMAGES_NEEDED.items()))
def test_images_needed_table(budget, need, metric):
    assert cf.images_needed(budget, metric) == need
    assert cf.resolvable(budget, metric, need) and not cf.resolvable(budget, metric, need - 1)


def test_the_issue_example_is_refused():
    """--max-drop 0.05 on 4,000 selection images: one image is 0.025 points, but one image lost bounds the drop at
    0.084 points; the budget is below what those images resolve."""
    assert not cf.resolvable(0.05, "top1", 4000)
    assert cf.drop_upper(1, 0, 4000) == pytest.approx(0.0835, abs=1e-4)


@pytest.mark.parametrize("metric", cf.METRICS)
def test_a_budget_of_zero_is_never_resolvable(metric):
    assert cf.images_needed(0.0, metric) is None and cf.images_needed(-1.0, metric) is None
    assert not any(cf.resolvable(0.0, metric, n) for n in (1, 100, 10**6, 10**9))


@PROPS
@given(st.floats(0.01, 100.0), st.sampled_from(cf.METRICS))
def test_images_needed_is_the_threshold(budget, metric):
    need = cf.images_needed(budget, metric)
    assert cf.resolvable(budget, metric, need)
    assert need == 1 or not cf.resolvable(budget, metric, need - 1)
    assert cf.images_needed(budget, "top1") == cf.images_needed(budget, "agreement")


@PROPS
@given(st.floats(0.01, 50.0), st.floats(0.01, 50.0))
def test_smaller_budgets_need_more_images(b1, b2):
    lo, hi = sorted((b1, b2))
    assert cf.images_needed(lo, "top1") >= cf.images_needed(hi, "top1")


def test_images_needed_rejects_an_unknown_metric():
    with pytest.raises(ValueError):
        cf.images_needed(0.5, "top5")


# ------------------------------------------------------------------ properties

@PROPS
@given(paired())
def test_drop_interval_contains_the_point_estimate(bcn):
    b, c, n = bcn
    est = 100 * (b - c) / n
    lo, hi = cf.drop_interval(b, c, n)
    assert -100 <= lo <= est + 1e-9 and est - 1e-9 <= hi <= 100
    assert est - 1e-9 <= cf.drop_upper(b, c, n) <= hi + 1e-9  # one-sided 90% sits inside the two-sided 95%


@PROPS
@given(counted())
def test_wilson_interval_contains_the_point_estimate(kn):
    k, n = kn
    lo, hi = cf.wilson_interval(k, n)
    assert 0 <= lo <= 100 * k / n + 1e-9 and 100 * k / n - 1e-9 <= hi <= 100
    assert 100 * k / n - 1e-9 <= cf.wilson_upper(k, n) <= hi + 1e-9


@PROPS
@given(paired(max_n=3000), st.integers(1, 500))
def test_drop_upper_falls_as_images_are_added(bcn, more):
    """The same net loss among more images: a tighter bound (top-1 and agreement alike).  (A net gain's
    negative bound moves up towards 0 instead, as its point estimate does.)"""
    b, c, n = bcn
    b, c = max(b, c), min(b, c)
    assert cf.drop_upper(b, c, n + more) <= cf.drop_upper(b, c, n) + 1e-9
    assert cf.wilson_upper(b, n + more) <= cf.wilson_upper(b, n) + 1e-9


@PROPS
@given(paired(max_n=3000))
def test_every_image_lost_raises_the_bound_and_every_gain_lowers_it(bcn):
    b, c, n = bcn
    if b + c < n:
        assert cf.drop_upper(b + 1, c, n) >= cf.drop_upper(b, c, n) - 1e-9
        assert cf.drop_upper(b, c + 1, n) <= cf.drop_upper(b, c, n) + 1e-9
        assert cf.wilson_upper(b + 1, n) >= cf.wilson_upper(b, n) - 1e-9


@PROPS
@given(paired(max_n=3000))
def test_drop_interval_is_antisymmetric(bcn):
    b, c, n = bcn
    lo, hi = cf.drop_interval(b, c, n)
    rlo, rhi = cf.drop_interval(c, b, n)
    assert (lo, hi) == pytest.approx((-rhi, -rlo), abs=1e-8)


@PROPS
@given(paired(max_n=3000), st.floats(-0.999, 0.999))
def test_tango_statistic_decreases_in_the_drop(bcn, d0):
    b, c, n = bcn
    assert cf.tango_statistic(b, c, n, min(d0 + 0.001, 0.9999)) <= cf.tango_statistic(b, c, n, d0) + 1e-9


@pytest.mark.parametrize("p_lost, p_gained, n", [(0.004, 0.0, 1000), (0.005, 0.002, 1000), (0.02, 0.015, 1000),
                                                 (0.006, 0.0, 500)])
def test_a_model_that_truly_loses_the_budget_is_rarely_accepted(p_lost, p_gained, n):
    """The decision's error rate, simulated: true drop == budget, accepted at most ~10% of the time."""
    rng = np.random.default_rng(7)
    budget, reps = 100 * (p_lost - p_gained), 1500
    cells = rng.multinomial(n, [p_lost, p_gained, 1 - p_lost - p_gained], size=reps)
    accepted = sum(cf.drop_upper(int(b), int(c), n) <= budget for b, c, _ in cells) / reps
    assert accepted <= 1 - DECISION_LEVEL + 3 * math.sqrt(0.09 / reps)


# ------------------------------------------------------------------ the paired counts

def test_tally_counts_the_discordant_pairs():
    y = np.array([0, 1, 2, 3, 4, 5])
    ref_pred = np.array([0, 1, 2, 3, 9, 9])   # float32 right on the first 4
    pred = np.array([0, 1, 7, 3, 4, 8])       # int8 wrong on image 2 (lost), right on image 4 (gained)
    t = Tally()
    for s in (slice(0, 3), slice(3, 6)):  # two batches
        t.update(np.eye(10)[pred[s]], y[s], np.eye(10)[ref_pred[s]])
    assert (t.lost, t.gained, t.labelled) == (1, 1, 6)
    assert (t.disagree, t.compared) == (3, 6)  # images 2, 4 and 5 differ from float32
    unlabelled = Tally()
    unlabelled.update(np.eye(10)[pred], None, np.eye(10)[ref_pred])
    assert (unlabelled.lost, unlabelled.gained, unlabelled.disagree) == (0, 0, 3)
