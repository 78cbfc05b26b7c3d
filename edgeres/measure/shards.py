"""``edgeres validate`` cut into shards for an :class:`~edgeres.core.executor.Executor` (``--ray``).

The driver cuts the (sampled) dataset into consecutive shards whose bounds
fall on whole batches, so every batch is the one a sequential run would
feed.  Each shard's task, on whatever worker runs it, opens the models from
their bytes (sent once, as the executor's ``shared``) and reads only its own
images from the data path; it returns its tallies, which the driver merges
in dataset order into the figures of one sequential pass, bit for bit
(:func:`edgeres.core.metrics.merge_tallies`).

LIGHT layer: the executor is given; nothing here imports Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeres.core.data import Dataset, Preprocess, Shard, effective_batch_size, judge_skipped, preprocessed
from edgeres.core.executor import Executor
from edgeres.core.metrics import Tally, default_topk, merge_tallies, tally_batches
from edgeres.core.quiet import quiet
from edgeres.core.runtime import Runner, open_runner
from edgeres.core.stop import temp_dir

SHARDS_PER_WORKER = 4  # a few per worker, so a slow worker or a retried shard does not hold up the end
MIN_SHARD_BATCHES = 4  # but none smaller than this: each shard loads the models again


def feeds(model_fn: Callable, ref_fn: Callable | None, pre: Preprocess, ref_pre: Preprocess | None):
    """``(stream, model_fn, ref_fn)``: the preprocessing to read the images with, and the two functions to call
    on each batch.  When the reference takes other preprocessing (another run's), the images are read raw
    (resized only) and each function applies its own; the resize must agree (the caller checks)."""
    if ref_fn is None or ref_pre is None or ref_pre == pre:
        return pre, model_fn, ref_fn
    return (Preprocess(resize=pre.resize), lambda x: model_fn(preprocessed(pre, x)),
            lambda x: ref_fn(preprocessed(ref_pre, x)))


def shard_bounds(n: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive shards covering ``n`` items: about SHARDS_PER_WORKER per worker, each
    of at least MIN_SHARD_BATCHES batches (one shard when there are too few), every bound but the last on a
    multiple of ``batch_size``."""
    batches = -(-n // batch_size)
    count = max(1, min(SHARDS_PER_WORKER * workers, batches // MIN_SHARD_BATCHES))
    cuts = [min(n, (i * batches // count) * batch_size) for i in range(count + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


@dataclass(frozen=True)
class ModelBytes:
    """A model file's name and content, to run where the file is not."""

    name: str
    content: bytes = field(repr=False)
    host_activation: str | None = None

    @classmethod
    def of(cls, runner: Runner) -> ModelBytes:
        return cls(runner.path.name, runner.path.read_bytes(), runner.host_activation)

    def open(self, folder: Path, threads: int, delegate: str | None, shape: tuple[int, ...] | None = None) -> Runner:
        """A runner on a copy written into ``folder`` (which must outlive it)."""
        folder.mkdir()
        path = folder / self.name
        path.write_bytes(self.content)
        with quiet():
            runner = open_runner(path, threads=threads, delegate=delegate, shape=shape)
        runner.host_activation = self.host_activation
        return runner


@dataclass(frozen=True)
class ShardJob:
    """What every shard shares: the models and how to feed them."""

    model: ModelBytes
    reference: ModelBytes | None
    threads: int
    delegate: str | None
    hwc: tuple[int, ...]
    batch_size: int
    preprocess: Preprocess
    on_error: str
    topk: int
    ref_preprocess: Preprocess | None = None
    shape: tuple[int, ...] | None = None


@dataclass
class ShardResult:
    """One shard's tallies (the model's, and the reference's labels-only one) and its skipped images."""

    tally: Tally
    ref_tally: Tally
    skipped: list[str]


def run_shard(job: ShardJob, shard: Shard) -> ShardResult:
    """The task: tally one shard, reading its images and opening the models here."""
    ds = shard.open("validation")
    skipped: list[str] = []
    with temp_dir("edgeres-shard-") as tmp:
        runner = job.model.open(Path(tmp) / "model", job.threads, job.delegate, job.shape)
        ref = job.reference.open(Path(tmp) / "reference", job.threads, None, job.shape) if job.reference else None
        stream, model_fn, ref_fn = feeds(runner.predict, ref.predict if ref is not None else None, job.preprocess,
                                         job.ref_preprocess)
        ref_tally, tallies = tally_batches(
            ds.batches(job.hwc, job.batch_size, stream, job.on_error, skipped=skipped),
            {"model": model_fn}, reference=ref_fn, topk=job.topk)
        del runner, ref  # before their files go
    return ShardResult(tallies["model"], ref_tally, skipped)


def output_width(runner: Runner) -> int:
    """How many values the model outputs per image (one inference on a blank image)."""
    out = runner.predict(np.zeros((1, *runner.hwc), np.float32))
    return int(out.reshape(len(out), -1).shape[1])


def tally_shards(executor: Executor, ds: Dataset, runner: Runner, ref_runner: Runner | None, *, threads: int,
                 delegate: str | None, batch_size: int, preprocess: Preprocess, on_error: str,
                 progress: Callable[[int], None] | None = None, ref_preprocess: Preprocess | None = None,
                 shape: tuple[int, ...] | None = None) -> tuple[Tally, Tally, int]:
    """Tally ``ds`` with ``runner`` (and ``ref_runner``) in shards on ``executor``: the reference's tally, the
    model's, and the number of shards; the same figures as :func:`tally_batches` over ``ds.batches``.

    The runners here give the model files and their output width (checked
    against the data's classes before anything is sent); the workers open
    their own copies.
    """
    width = output_width(runner)
    ds.check_classes(width, "validation")
    batch_size = effective_batch_size(runner.hwc, batch_size)
    job = ShardJob(ModelBytes.of(runner), ModelBytes.of(ref_runner) if ref_runner is not None else None,
                   threads, delegate, runner.hwc, batch_size, preprocess, on_error, default_topk(width),
                   ref_preprocess, shape)
    shards = [ds.shard(a, b) for a, b in shard_bounds(len(ds), batch_size, executor.workers)]
    results = executor.map(run_shard, shards, shared=job,
                           progress=(lambda i, r: progress(r.tally.n)) if progress else None)
    tally = merge_tallies([r.tally for r in results])
    judge_skipped(ds.source, len(ds), tally.n, [s for r in results for s in r.skipped])
    return merge_tallies([r.ref_tally for r in results]), tally, len(shards)
