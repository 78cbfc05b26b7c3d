"""The validate and bench stages of ``convert``: every artifact against Keras float32, then timed.  LIGHT."""

from __future__ import annotations

from pathlib import Path

from edgeres.backends.base import Settings, get_format
from edgeres.core.errors import ModelError, unloadable_build
from edgeres.core.metrics import COLLAPSE_AGREEMENT, collapsed, default_topk, tally_batches
from edgeres.core.quiet import quiet
from edgeres.core.runtime import Runner, open_runner
from edgeres.pipeline.reference import with_reference
from edgeres.quant.confidence import agreement_interval, drop_interval
from edgeres.report.model import ArtifactReport


def open_runners(settings: Settings, artifacts: list[ArtifactReport], stage: Path) -> dict[str, Runner]:
    runners = {}
    for a in artifacts:
        try:
            with quiet():
                r = open_runner(stage / a.path, threads=settings.threads,
                                delegate=get_format(a.format).run_delegate(settings))
        except ModelError as exc:
            raise unloadable_build(exc, f"{a.name}, as converted,") from None
        d = r.describe()
        a.runtime, a.runtime_version, a.delegate, a.threads = (d["runtime"], d["runtime_version"], d["delegate"],
                                                               d["threads"])
        a.input_dtype, a.output_dtype = d["input_dtype"], d["output_dtype"]
        a.input_quant, a.output_quant = r.input_quant, r.output_quant
        r.host_activation = (a.details.get("head") or {}).get("host_activation")
        runners[a.name] = r
    return runners


def validate(cfg, inputs, artifacts: list[ArtifactReport], runners: dict[str, Runner],
             progress, executor=None) -> tuple[dict, set[str]]:
    """Accuracy of every artifact on the validation images.

    Each artifact's top-1 drop and agreement also get 95% confidence
    intervals on these images (``top1_drop_ci``, ``agreement_ci``).  Returns
    the Keras reference's figures, and the artifacts that collapsed: one
    class for (nearly) every image where the reference does not, or
    agreement with it below COLLAPSE_AGREEMENT.
    """
    if executor is not None and executor.workers > 1:  # --ray: in shards, with the same figures
        from edgeres.pipeline.shards import validate_in_shards

        ref_tally, tallies = validate_in_shards(executor, cfg, inputs, artifacts, runners, progress)
    else:
        with progress("validating", len(inputs.val_ds)) as bar:
            ref_tally, tallies = tally_batches(
                with_reference(inputs.val_ds.batches(inputs.hwc, cfg.batch_size, cfg.preprocess, cfg.on_error),
                               inputs.model, inputs.hwc),
                {a.name: runners[a.name].predict for a in artifacts}, topk=default_topk(inputs.n_out),
                progress=bar.update)
    ref = ref_tally.result()
    for a in artifacts:
        t = tallies[a.name]
        m = t.result()
        a.top1, a.top5, a.agreement = m.get("top1"), m.get("top5"), m.get("agreement")
        a.sqnr_db, a.max_abs_diff = m.get("sqnr_db"), m.get("max_abs_diff")
        a.top1_drop = ref["top1"] - m["top1"]
        # REPORT_LEVEL (95%) intervals on these (the report's) images, from the paired counts (edgeres.quant.confidence)
        a.top1_drop_ci = _rounded(drop_interval(t.lost, t.gained, t.labelled))
        a.agreement_ci = _rounded(agreement_interval(t.disagree, t.compared))
    return ref, {a.name for a in artifacts if collapsed(tallies[a.name].predictions, ref_tally.predictions)
                 or a.agreement < COLLAPSE_AGREEMENT}


def _rounded(interval: tuple[float, float]) -> list[float]:
    return [round(v, 4) for v in interval]


def bench(cfg, artifacts: list[ArtifactReport], runners: dict[str, Runner], sample, progress) -> None:
    from edgeres.core.timing import measure_interleaved

    fns = {a.name: runners[a.name].timed_invoke(runners[a.name].quantize_input(sample)) for a in artifacts}
    with progress("benchmarking", cfg.runs * len(fns)) as bar:
        results = measure_interleaved(fns, runs=cfg.runs, warmup=cfg.warmup, progress=bar.update)
    for a in artifacts:
        stats, samples = results[a.name]
        lat = stats.to_dict(samples)
        a.latency_samples_ms = lat.pop("samples_ms")
        a.latency_ms = lat
