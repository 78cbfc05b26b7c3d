"""Latency timing and statistics.  LIGHT layer: numpy and the standard library.

Timing (``time_callable``) is kept apart from statistics (``summarize``) and
from formatting (``report``), as pyperf does.  Raw samples are returned so
that reports can keep them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

UNSTABLE_CV = 0.10  # stdev above 10% of the mean marks a run as unstable


@dataclass(frozen=True)
class LatencyStats:
    runs: int
    min: float
    p50: float
    p90: float
    p99: float
    mean: float
    stdev: float
    first: float  # the first (cold) inference, not part of the statistics
    warmup: int
    unstable: bool

    def to_dict(self, samples_ms: list[float] | None = None) -> dict:
        d = asdict(self)
        if samples_ms is not None:
            d["samples_ms"] = samples_ms
        return d


def time_callable(fn: Callable[[], object], runs: int = 50, warmup: int = 10,
                  min_time: float = 0.0) -> tuple[float, list[float]]:
    """Run ``fn`` once cold, ``warmup`` times untimed, then at least ``runs``
    timed times (and until ``min_time`` seconds have passed).  Returns the cold
    latency and the timed samples, in milliseconds."""
    t0 = time.perf_counter_ns()
    fn()
    first = (time.perf_counter_ns() - t0) / 1e6
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(min_time * 1e9)
    while len(samples) < runs or clock() < deadline:
        t = clock()
        fn()
        samples.append((clock() - t) / 1e6)
    return first, samples


def summarize(samples_ms: list[float], first_ms: float, warmup: int) -> LatencyStats:
    a = np.asarray(samples_ms, np.float64)
    mean = float(a.mean())
    stdev = float(statistics.stdev(samples_ms)) if len(a) > 1 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return LatencyStats(runs=len(a), min=float(a.min()), p50=p50, p90=p90, p99=p99, mean=mean,
                        stdev=stdev, first=first_ms, warmup=warmup,
                        unstable=bool(mean > 0 and stdev > UNSTABLE_CV * mean))


def measure(fn: Callable[[], object], runs: int = 50, warmup: int = 10,
            min_time: float = 0.0) -> tuple[LatencyStats, list[float]]:
    first, samples = time_callable(fn, runs, warmup, min_time)
    return summarize(samples, first, warmup), samples


def measure_interleaved(fns: dict[str, Callable[[], object]], runs: int = 50, warmup: int = 10,
                        block: int = 10, progress: Callable[[int], None] | None = None,
                        settle: int = 2) -> dict[str, tuple[LatencyStats, list[float]]]:
    """Time several models in alternating blocks of ``block`` runs.

    On a noisy machine a slow drift (another process, thermal throttling)
    then hits every model alike, so their ratios stay honest.  Each block
    starts with ``settle`` untimed runs: the previous model's runtime may
    still have worker threads spinning (ONNX Runtime's and XNNPACK's thread
    pools both spin-wait after a run), and its data has left the caches.
    """
    firsts: dict[str, float] = {}
    for name, fn in fns.items():
        firsts[name], _ = time_callable(fn, runs=0, warmup=warmup)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    while any(len(s) < runs for s in samples.values()):
        for name, fn in fns.items():
            n = min(block, runs - len(samples[name]))
            if n <= 0:
                continue
            for _ in range(settle):
                fn()
            clock = time.perf_counter_ns
            for _ in range(n):
                t = clock()
                fn()
                samples[name].append((clock() - t) / 1e6)
            if progress:
                progress(n)
    return {name: (summarize(samples[name], firsts[name], warmup), samples[name]) for name in fns}


class Stages:
    """Times each stage; the report lists them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
