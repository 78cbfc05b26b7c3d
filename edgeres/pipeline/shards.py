"""``convert``'s validate stage cut into shards for an executor (``--ray``).  HEAVY (Keras, in the workers).

As :mod:`edgeres.measure.shards` does for ``edgeres validate``, with the
Keras float32 reference computed next to the artifacts: each shard's task
reads its own images from the data path, loads the Keras model (sent once as
``.keras`` bytes, loaded with ``safe_mode``) and every artifact, and returns
its tallies; the driver merges them in dataset order.  Shard bounds fall on
whole reference chunks (:func:`edgeres.pipeline.reference.reference_chunk`),
so every batch the runtimes see and every batch the Keras reference computes
is the sequential run's: the same figures, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeres.core.data import Preprocess, Shard, effective_batch_size, judge_skipped
from edgeres.core.executor import Executor
from edgeres.core.metrics import Tally, default_topk, merge_tallies, tally_batches
from edgeres.core.stop import temp_dir
from edgeres.measure.shards import SHARDS_PER_WORKER, ModelBytes
from edgeres.pipeline.reference import reference_chunk, with_reference


@dataclass(frozen=True)
class Artifact:
    name: str
    model: ModelBytes
    delegate: str | None


@dataclass(frozen=True)
class ConvertShardJob:
    """What every shard shares: the Keras model, the artifacts, and how to feed them."""

    keras: bytes
    artifacts: tuple[Artifact, ...]
    threads: int
    hwc: tuple[int, int, int]
    batch_size: int
    preprocess: Preprocess
    on_error: str
    topk: int


def run_convert_shard(job: ConvertShardJob, shard: Shard) -> tuple[Tally, dict[str, Tally], list[str]]:
    """The task: the reference's tally, each artifact's, and the unreadable images of one shard."""
    from edgeres.backends.keras_io import load_in_worker

    ds = shard.open("validation")
    skipped: list[str] = []
    with temp_dir("edgeres-shard-") as tmp:
        (Path(tmp) / "model.keras").write_bytes(job.keras)
        model = load_in_worker(Path(tmp) / "model.keras")
        runners = {a.name: a.model.open(Path(tmp) / a.name, job.threads, a.delegate) for a in job.artifacts}
        batches = ds.batches(job.hwc, job.batch_size, job.preprocess, job.on_error, skipped=skipped)
        ref_tally, tallies = tally_batches(with_reference(batches, model, job.hwc),
                                           {name: r.predict for name, r in runners.items()}, topk=job.topk)
        del runners
    return ref_tally, tallies, skipped


def validate_in_shards(executor: Executor, cfg, inputs, artifacts, runners, progress) -> tuple[Tally, dict]:
    """The reference's tally and each artifact's over ``inputs.val_ds``, in shards on ``executor``."""
    from edgeres.backends.base import get_format
    from edgeres.backends.keras_io import save_for_worker

    ds = inputs.val_ds
    with temp_dir("edgeres-keras-") as tmp:
        save_for_worker(inputs.model, Path(tmp) / "model.keras")
        keras_bytes = (Path(tmp) / "model.keras").read_bytes()
    batch = effective_batch_size(inputs.hwc, cfg.batch_size)
    settings = cfg.settings()
    job = ConvertShardJob(
        keras_bytes, tuple(Artifact(a.name, ModelBytes.of(runners[a.name]),
                                    get_format(a.format).run_delegate(settings)) for a in artifacts),
        settings.threads, inputs.hwc, batch, cfg.preprocess, cfg.on_error, default_topk(inputs.n_out))
    unit = reference_chunk(inputs.hwc, batch)  # images: every shard bound is a multiple
    units = -(-len(ds) // unit)
    count = max(1, min(SHARDS_PER_WORKER * executor.workers, units))
    cuts = [min(len(ds), (i * units // count) * unit) for i in range(count + 1)]
    shards = [ds.shard(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
    with progress("validating", len(ds)) as bar:
        results = executor.map(run_convert_shard, shards, shared=job,
                               progress=lambda i, r: bar.update(r[0].n))
    judge_skipped(ds.source, len(ds), sum(r[0].n for r in results), [s for r in results for s in r[2]])
    tallies = {a.name: merge_tallies([r[1][a.name] for r in results]) for a in artifacts}
    return merge_tallies([r[0] for r in results]), tallies
