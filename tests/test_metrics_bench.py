"""Tests for edgeres.core.metrics (accuracy/fidelity tallies) and edgeres.core.timing (timing stats).

No timing assertions: only counts, ordering and arithmetic on known samples.
"""

import math
import statistics

import numpy as np
import pytest

from edgeres.core.metrics import Tally, collapsed, sqnr_db
from edgeres.core.timing import (
    UNSTABLE_CV,
    LatencyStats,
    measure,
    measure_interleaved,
    summarize,
    time_callable,
)

# --------------------------------------------------------------------------- metrics

# Two batches, three classes.  Hand-computed expectations below.
OUT1 = np.array([[0.1, 0.7, 0.2],    # pred 1, top2 {1,2}
                 [0.5, 0.3, 0.2]])   # pred 0, top2 {0,1}
Y1 = np.array([1, 1])
REF1 = np.array([[0.0, 1.0, 0.0],    # ref argmax 1
                 [0.4, 0.6, 0.0]])   # ref argmax 1
OUT2 = np.array([[0.2, 0.3, 0.5]])   # pred 2, top2 {2,1}
Y2 = np.array([0])
REF2 = np.array([[0.2, 0.3, 0.5]])   # identical to OUT2


def test_tally_across_two_updates():
    t = Tally(topk=2)
    t.update(OUT1, Y1, REF1)
    t.update(OUT2, Y2, REF2)
    r = t.result()
    assert r["count"] == 3
    # top1: row0 right (1==1), row1 wrong (0!=1), row2 wrong (2!=0)
    assert r["top1"] == pytest.approx(100 / 3)
    # top2: row0 {1,2}∋1, row1 {0,1}∋1, row2 {1,2}∌0
    assert r["top2"] == pytest.approx(200 / 3)
    # agreement with the reference argmax: rows 0 and 2 agree, row 1 does not
    assert r["agreement"] == pytest.approx(200 / 3)
    # signal = sum(ref^2) = 1 + (0.16 + 0.36) + (0.04 + 0.09 + 0.25) = 1.9
    # noise  = (0.01 + 0.09 + 0.04) * 2 rows + 0 = 0.28
    assert t.signal == pytest.approx(1.9)
    assert t.noise == pytest.approx(0.28)
    assert r["sqnr_db"] == pytest.approx(10 * math.log10(1.9 / 0.28))
    assert r["max_abs_diff"] == pytest.approx(0.3)
    np.testing.assert_array_equal(t.predictions, [1, 0, 2])


def test_tally_matches_numpy_on_random_batches():
    rng = np.random.default_rng(0)
    outs = [rng.normal(size=(n, 10)) for n in (7, 13)]
    refs = [o + rng.normal(scale=0.1, size=o.shape) for o in outs]
    ys = [rng.integers(0, 10, len(o)) for o in outs]
    t = Tally(topk=5)
    for o, y, ref in zip(outs, ys, refs):
        t.update(o.astype(np.float32), y, ref.astype(np.float32))
    out, ref, y = np.concatenate(outs), np.concatenate(refs), np.concatenate(ys)
    out32, ref32 = out.astype(np.float32).astype(np.float64), ref.astype(np.float32).astype(np.float64)
    r = t.result()
    assert r["count"] == 20
    assert r["top1"] == pytest.approx(100 * np.mean(out.argmax(1) == y))
    top5 = np.argsort(-out, axis=1)[:, :5]
    assert r["top5"] == pytest.approx(100 * np.mean((top5 == y[:, None]).any(1)))
    assert r["agreement"] == pytest.approx(100 * np.mean(out32.argmax(1) == ref32.argmax(1)))
    noise = ((out32 - ref32) ** 2).sum()
    assert r["sqnr_db"] == pytest.approx(10 * np.log10((ref32 ** 2).sum() / noise))
    assert r["max_abs_diff"] == pytest.approx(np.abs(out32 - ref32).max())


def test_tally_topk_larger_than_classes_counts_everything():
    t = Tally(topk=5)
    t.update(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([1, 1]))
    r = t.result()
    assert r["top1"] == pytest.approx(50.0)
    assert r["top5"] == pytest.approx(100.0)


def test_tally_flattens_extra_dimensions():
    t = Tally()
    t.update(np.array([[[0.0, 1.0, 0.0]], [[2.0, 0.0, 0.0]]]), np.array([1, 0]))
    assert t.result()["top1"] == pytest.approx(100.0)


def test_tally_without_labels_or_reference():
    t = Tally(topk=5)
    t.update(OUT1)
    r = t.result()
    assert r == {"count": 2}
    np.testing.assert_array_equal(t.predictions, [1, 0])


def test_tally_reference_only():
    t = Tally()
    t.update(OUT2, None, REF2)
    r = t.result()
    assert "top1" not in r
    assert r["agreement"] == 100.0
    assert r["sqnr_db"] == math.inf
    assert r["max_abs_diff"] == 0.0


def test_tally_topk_1_has_no_topk_key():
    t = Tally()
    t.update(OUT1, Y1)
    assert set(t.result()) == {"count", "top1"}


def test_empty_tally():
    t = Tally()
    assert t.result() == {"count": 0}
    assert t.predictions.shape == (0,)


def test_sqnr_db():
    assert sqnr_db(5.0, 0.0) == math.inf
    assert sqnr_db(0.0, 0.0) == math.inf
    assert sqnr_db(0.0, 1.0) == -math.inf
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(1.0, 10.0) == pytest.approx(-10.0)


def test_identical_outputs_give_infinite_sqnr():
    out = np.random.default_rng(1).normal(size=(4, 6))
    t = Tally()
    t.update(out, None, out.copy())
    assert t.result()["sqnr_db"] == math.inf


def test_collapsed():
    assert not collapsed(np.zeros(0, np.int64))
    assert not collapsed(np.full(19, 3))          # too few to judge
    assert collapsed(np.full(20, 3))
    assert collapsed(np.array([7] * 49 + [1]))    # 98% the same class
    assert not collapsed(np.array([7] * 48 + [1, 2]))  # 96%
    assert not collapsed(np.arange(100) % 10)


# --------------------------------------------------------------------------- bench: statistics


def test_summarize_known_samples():
    samples = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0, 5.5, 3.5]
    s = summarize(samples, first_ms=42.0, warmup=7)
    a = np.array(samples)
    assert isinstance(s, LatencyStats)
    assert s.runs == 10
    assert s.min == 1.0
    assert s.p50 == pytest.approx(np.percentile(a, 50))
    assert s.p50 == pytest.approx(statistics.median(samples))
    assert s.p90 == pytest.approx(np.percentile(a, 90))
    assert s.p99 == pytest.approx(np.percentile(a, 99))
    assert s.mean == pytest.approx(statistics.mean(samples))
    assert s.stdev == pytest.approx(statistics.stdev(samples))  # sample (n-1) stdev
    assert s.first == 42.0 and s.warmup == 7
    assert s.unstable  # stdev ~2.4 on a mean of 4.05


def test_summarize_hand_computed_percentiles():
    s = summarize([float(v) for v in range(1, 11)], 1.0, 0)
    assert s.p50 == pytest.approx(5.5)
    assert s.p90 == pytest.approx(9.1)
    assert s.p99 == pytest.approx(9.91)
    assert s.mean == pytest.approx(5.5)


def test_unstable_flag_threshold():
    assert pytest.approx(0.10) == UNSTABLE_CV
    steady = [10.0, 10.1, 9.9, 10.05, 9.95, 10.0]
    assert not summarize(steady, 10.0, 1).unstable
    noisy = [10.0, 13.0, 7.0, 12.0, 8.0]
    s = summarize(noisy, 10.0, 1)
    assert s.stdev > 0.1 * s.mean and s.unstable
    # Just under and just over 10%: mean 10, stdev = |d| * sqrt(2) for [10-d, 10, 10+d].
    under = summarize([10 - 0.7, 10.0, 10 + 0.7], 0, 0)   # stdev 0.7
    over = summarize([10 - 1.1, 10.0, 10 + 1.1], 0, 0)    # stdev 1.1
    assert under.stdev == pytest.approx(0.7) and not under.unstable
    assert over.stdev == pytest.approx(1.1) and over.unstable


def test_summarize_single_sample():
    s = summarize([2.5], 3.0, 0)
    assert s.runs == 1 and s.stdev == 0.0 and not s.unstable
    assert s.min == s.p50 == s.p99 == s.mean == 2.5


def test_to_dict_keeps_samples():
    s = summarize([10.0, 10.5], 1.0, 0)
    d = s.to_dict([10.0, 10.5])
    assert d["samples_ms"] == [10.0, 10.5]
    assert d["runs"] == 2 and d["unstable"] is False
    assert "samples_ms" not in s.to_dict()


# --------------------------------------------------------------------------- bench: timing counts


class Counter:
    def __init__(self, log=None, name=""):
        self.calls = 0
        self.log = log
        self.name = name

    def __call__(self):
        self.calls += 1
        if self.log is not None:
            self.log.append(self.name)


@pytest.mark.parametrize("runs, warmup", [(5, 0), (7, 3), (1, 10)])
def test_time_callable_counts(runs, warmup):
    fn = Counter()
    first, samples = time_callable(fn, runs=runs, warmup=warmup)
    assert fn.calls == 1 + warmup + runs
    assert len(samples) == runs
    assert first >= 0 and all(s >= 0 for s in samples)


def test_time_callable_zero_runs_only_cold_and_warmup():
    fn = Counter()
    _, samples = time_callable(fn, runs=0, warmup=4)
    assert samples == [] and fn.calls == 5


def test_measure_returns_stats_over_the_samples():
    fn = Counter()
    stats, samples = measure(fn, runs=6, warmup=2)
    assert fn.calls == 9
    assert stats.runs == 6 == len(samples)
    assert stats.warmup == 2
    assert stats.min == min(samples)
    assert stats.mean == pytest.approx(statistics.mean(samples))


def test_measure_interleaved_counts_and_order():
    log = []
    a, b = Counter(log, "a"), Counter(log, "b")
    progress = []
    res = measure_interleaved({"a": a, "b": b}, runs=5, warmup=2, block=2, progress=progress.append)
    assert set(res) == {"a", "b"}
    for name, fn in (("a", a), ("b", b)):
        stats, samples = res[name]
        assert len(samples) == 5
        assert stats.runs == 5 and stats.warmup == 2
        assert fn.calls == 1 + 2 + 5 + 2 * 3  # cold, warm-up, timed, and 2 settling runs per block
    # cold + warm-up for each model first, then alternating blocks of 2 (last block short),
    # each block preceded by 2 untimed settling runs
    assert log == ["a"] * 3 + ["b"] * 3 + ["a"] * 4 + ["b"] * 4 + ["a"] * 4 + ["b"] * 4 + ["a"] * 3 + ["b"] * 3
    assert progress == [2, 2, 2, 2, 1, 1]
    assert sum(progress) == 5 * 2


def test_measure_interleaved_without_settling():
    log = []
    a, b = Counter(log, "a"), Counter(log, "b")
    measure_interleaved({"a": a, "b": b}, runs=5, warmup=2, block=2, settle=0)
    assert log == ["a"] * 3 + ["b"] * 3 + ["a", "a", "b", "b", "a", "a", "b", "b", "a", "b"]


def test_measure_interleaved_block_larger_than_runs():
    fns = {name: Counter() for name in ("x", "y", "z")}
    res = measure_interleaved(fns, runs=3, warmup=0, block=10)
    for name, fn in fns.items():
        assert len(res[name][1]) == 3
        assert fn.calls == 1 + 2 + 3  # cold, one block's 2 settling runs, 3 timed


def test_chunks_give_the_same_tallies_and_run_each_model_over_the_whole_chunk():
    """tally_batches over chunks (lists of batches, as the validate stage feeds it) equals the flat pass, and each
    model finishes a chunk before the next model starts (its runtime's threads stay warm)."""
    from edgeres.core.metrics import tally_batches

    rng = np.random.default_rng(3)
    batches = [(rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 5, 8), rng.normal(size=(8, 5)))
               for _ in range(6)]
    calls = []

    def model(name, w):
        def fn(x):
            calls.append(name)
            return x @ w
        return fn

    w = rng.normal(size=(4, 5))
    models = {"a": model("a", w), "b": model("b", w + 0.1)}
    flat_ref, flat = tally_batches(batches, models)
    calls.clear()
    chunk_ref, chunked = tally_batches([batches[:4], batches[4:]], models)
    assert calls == ["a"] * 4 + ["b"] * 4 + ["a"] * 2 + ["b"] * 2
    for name in models:
        assert chunked[name].result() == flat[name].result()
        assert np.array_equal(chunked[name].predictions, flat[name].predictions)
    assert chunk_ref.result() == flat_ref.result()
