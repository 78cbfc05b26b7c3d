"""The report stage: one typed :class:`~edgeres.report.Report` from everything the run measured."""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path

from edgeres import __version__
from edgeres.backends.base import Settings
from edgeres.core.fs import sha256_file
from edgeres.core.machine import machine_info, tool_versions
from edgeres.core.metrics import DECISION_LEVEL, REPORT_LEVEL
from edgeres.quant.confidence import z_two_sided
from edgeres.quant.search import MIN_CALIBRATION
from edgeres.report.model import BackendSearch, Report, SearchReport

#: the quantization details report.json keeps for each artifact
DETAIL_KEYS = ("io_dtype", "full_integer", "scheme", "format", "per_channel", "calibration", "opset", "float_nodes",
               "static_batch", "recipe", "recipe_summary", "engine", "output_range", "float_layers",
               "bias_corrected_layers", "bias_correction", "activations", "float_share", "adaptive", "head",
               "kernels",
               "int8_graph_rewrites", "batchnorm_as_depthwise", "weight_rounding", "float_ops", "float_ops_note")
BUDGET_TOLERANCE = 1e-9  # points: float rounding of a loss that equals the budget
MODEL_KEYS = ("name", "source", "kind", "params", "trainable_params", "macs", "input_shape", "output_shape", "layers")


def assemble(cfg, settings: Settings, inputs, built, stages, ref: dict | None, collapsed: set[str], stage: Path,
             device: dict | None) -> Report:
    artifacts = built.artifacts
    p50 = {a.name: a.latency_ms.get("p50") for a in artifacts}
    for a in artifacts:
        a.size_bytes, a.sha256 = (stage / a.path).stat().st_size, sha256_file(stage / a.path)
        fp32 = f"{a.format}_fp32"
        a.speedup_vs_fp32 = (p50[fp32] / p50[a.name]) if p50.get(fp32) and p50.get(a.name) else None
        a.details = {k: v for k, v in a.details.items() if k in DETAIL_KEYS}
    t = settings.target
    report = Report(
        edgeres_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        model={k: inputs.model_info[k] for k in MODEL_KEYS}, preprocess=cfg.preprocess.to_dict(),
        target={"name": t.name, "arch": t.arch, "threads": settings.threads, "tflite_delegate": t.tflite.delegate,
                "tflite_io_dtype": settings.io_dtype, "onnx_scheme": t.onnx_scheme},
        calibration=_calibration(cfg, inputs),
        validation=_validation(cfg, inputs, ref),
        reference={"name": "keras_fp32", **(ref or {})}, artifacts=artifacts,
        stages_seconds=stages.seconds,
        conversion_seconds=sum(v for k, v in stages.seconds.items() if k not in ("validate", "bench")),
        max_drop=cfg.max_drop, passed=True, failures=[], notes=_notes(cfg, settings, inputs, artifacts),
        machine=machine_info(), tools=tool_versions(), resources=_resources(built))
    for a in artifacts:
        if a.precision != "int8" or a.agreement is None:
            continue
        if a.name in collapsed:
            report.fail(f"{a.name} collapsed: agreement with float32 is {a.agreement:.1f}%")
        if cfg.max_drop is not None:
            _judge_budget(report, a, cfg.max_drop, cfg.metric)
    _attach_search(report, cfg, built, inputs)
    _attach_collapse_diagnosis(report, built, inputs, collapsed, cfg)
    if device is not None:
        report.edgetpu = device
        report.notes.extend(device["notes"])
    return report


def _judge_budget(report: Report, a, budget: float, metric: str) -> None:
    """Pass or fail on the report images' point estimate of the budgeted loss: the search chose with confidence on
    the selection images, and a PASSED run never shows a loss above the budget on the report images.

    When the interval still holds the budget, the line says so, with about how many report images would tell
    this loss from the budget (two-sided, at the report level): ``z^2 v / (loss - budget)^2``, with ``v`` the
    per-image variance at this agreement (the disagreeing share bounds it for the top-1 drop; ``p (1 - p)``
    for agreement lost).  A few hundred report images cannot resolve a budget of a few tenths of a point for
    a model that disagrees on 1-2% of them (docs/quantization.md)."""
    if metric == "agreement":
        loss, ci = 100.0 - a.agreement, a.agreement_ci and [100.0 - a.agreement_ci[1], 100.0 - a.agreement_ci[0]]
        text = f"{a.name} loses {loss:.2f} points of agreement with float32"
    else:
        loss, ci = a.top1_drop, a.top1_drop_ci
        text = f"{a.name} drops {loss:.2f} points of top-1"
    if loss > budget + BUDGET_TOLERANCE:
        interval = f"; {100 * REPORT_LEVEL:g}% CI {ci[0]:+.2f}..{ci[1]:+.2f}" if ci else ""
        if ci and ci[0] <= budget + BUDGET_TOLERANCE:
            p = (100.0 - a.agreement) / 100.0
            v = p * (1.0 - p) if metric == "agreement" else p
            z = z_two_sided(REPORT_LEVEL)
            need = math.ceil(z * z * v / ((loss - budget) / 100.0) ** 2)
            interval += f", which holds the budget: telling {loss:.2f} from {budget:g} takes about {need:,} " \
                        "report images"
        report.fail(f"{text} (budget {budget:g}{interval})")


def _validation(cfg, inputs, ref: dict | None) -> dict | None:
    """The validation set, with the seed of its sample (``validate --val-size N --seed S`` measures the same
    images), how many images were measured and how many were skipped as unreadable."""
    if inputs.val_ds is None:
        return None
    d = {**inputs.val_ds.describe(), "seed": cfg.seed}
    if ref is not None:
        d["measured"] = ref.get("count", 0)
        d["skipped"] = d["count"] - d["measured"]
    return d


def _notes(cfg, settings: Settings, inputs, artifacts) -> list[str]:
    notes = [cfg.default_note] if cfg.default_note else []
    if inputs.val_ds is None:
        notes.append("no --data given: accuracy was not measured")
    host = platform.machine()
    if settings.target.arch != host:
        notes.append(f"accuracy and latency were measured on {host}; the target is {settings.target.arch}. "
                     "With XNNPACK (ai-edge-litert) int8 results were bit-identical on x86 and aarch64, but "
                     "tflite-runtime 2.14's built-in kernels round differently per architecture (docs/arm.md): "
                     "run 'edgeres validate' on the device")
    if len(inputs.calib) < MIN_CALIBRATION:
        notes.append(f"only {len(inputs.calib)} calibration images: ranges from fewer than {MIN_CALIBRATION} are "
                     "unreliable (most histogram bins stay empty); diagnose and --max-drop need at least that many")
    if inputs.val_ds is not None and len(inputs.calib) < len(inputs.calib_ds):
        notes.append(f"calibration used {len(inputs.calib)} of {len(inputs.calib_ds)} images (the rest were "
                     "unreadable)")
    if inputs.val_ds is not None and (shared := inputs.val_ds.shared_with(inputs.calib_ds)):
        notes.append(f"{shared} of the {len(inputs.val_ds)} validation images were also calibration images: "
                     "figures measured on images the int8 models were calibrated on flatter them; give --data "
                     "held-out images")
    if getattr(inputs, "adaptive_skipped", None):
        notes.append(inputs.adaptive_skipped)
    for a in artifacts:
        notes.extend(_adaptive_note(a))
        k = a.details.get("kernels") or {}
        if k.get("choice") == "measured":
            notes.append(f"{a.name}: {k['gemm_layers']} of {k['layers']} convolutions run on ONNX Runtime's GEMM "
                         f"kernels, which timed faster on this CPU ({k['timed_ms']['model_symmetric']:.2f} -> "
                         f"{k['timed_ms']['model_tuned']:.2f} ms a run; an exact rewrite, same outputs)")
        if a.details.get("float_ops_note"):
            notes.append(f"{a.name}: not full-integer: {a.details['float_ops_note']}")
    floaty = [f"{a.name} {100 * a.details['float_share']:.0f}%" for a in artifacts if a.details.get("float_share")]
    if floaty:
        notes.append("layers kept in float (share of quantizable layers): " + ", ".join(floaty))
    unstable = [a.name for a in artifacts if a.latency_ms.get("unstable")]
    if unstable:
        notes.append(f"latency unstable (stdev > 10% of mean) for: {', '.join(unstable)}")
    return notes


def _calibration(cfg, inputs) -> dict:
    """The calibration sample; a holdout carved out of it for the adaptive default counts (the chosen
    configuration was built again from both)."""
    extra = len(inputs.holdout) if getattr(inputs, "holdout_carved", False) else 0
    d = {**inputs.calib_ds.describe(), "seed": cfg.seed, "used": len(inputs.calib) + extra}
    d["count"] += extra
    return d


def _adaptive_note(a) -> list[str]:
    """One line per int8 artifact the adaptive default chose: what, of how many, and against stock."""
    ad = a.details.get("adaptive")
    if not ad:
        return []
    rows = {c["name"]: c for c in ad["candidates"] if "sqnr_db" in c}
    chosen, stock = rows.get(ad["chosen"], {}), rows.get("stock", {})
    against = (f"; stock: {stock['agreement']:.2f}%, {stock['sqnr_db']:.1f} dB" if stock and stock is not chosen
               else "")
    if ad.get("all_collapsed"):  # no conversion error: the model is written, and the validation fails it
        return [f"{a.name}: every configuration the adaptive default built collapsed on {ad['holdout_images']} "
                f"held-out calibration images (one class for nearly every image); it kept '{ad['chosen']}' "
                f"(agreement {chosen.get('agreement', 0):.2f}% with float32): 'edgeres diagnose' names the layers"]
    return [f"{a.name}: the adaptive default chose '{ad['chosen']}' of {len(ad['candidates'])} configurations on "
            f"{ad['holdout_images']} held-out calibration images (agreement {chosen.get('agreement', 0):.2f}%, "
            f"SQNR {chosen.get('sqnr_db', 0):.1f} dB{against}); --recipe NAME builds one configuration"]


def _resources(built) -> dict:
    """Peak memory (resident set) of this process and of each format's own process, if it had one."""
    import resource

    main = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return {"formats_built": built.plan, "peak_rss_mb": {"main": main, **{name: p["peak_rss_mb"]
                                                               for name, p in built.processes.items()}},
            "processes": built.processes}


def _attach_search(report: Report, cfg, built, inputs) -> None:
    if inputs.select_ds is None:
        return
    report.search = SearchReport(
        budget=cfg.max_drop, metric=cfg.metric,
        selection={**inputs.select_ds.describe(), "note": "images used only to choose each configuration; the "
                   "figures above are measured on the other, disjoint validation images"})
    for name, s in built.searches.items():
        report.search.backends[name] = BackendSearch(s.met, s.winner.to_dict(), [t.to_dict() for t in s.trials])
        if not s.met:
            report.fail(f"{name}: no configuration met --max-drop {cfg.max_drop:g} ({cfg.metric}) with "
                        f"{100 * DECISION_LEVEL:g}% confidence on the selection images; wrote the best found "
                        f"({s.winner.step}), which FAILS the budget")
    report.notes.append(f"--max-drop search chose each int8 configuration on {len(inputs.select_ds)} selection "
                        f"images; accuracy above is measured on {report.validation['count']} other images")


def _backend_again(name: str, cfg, inputs):
    """The calibrated back end of a format that was built in its own process (which took its back end with it)."""
    from edgeres.backends.base import create_backend
    from edgeres.backends.heads import split_head

    head = split_head(inputs.model)
    model = head.logits if head is not None else inputs.model
    return create_backend(name, model, inputs.hwc, inputs.calib, cfg.settings(), head=head)


def _attach_collapse_diagnosis(report: Report, built, inputs, collapsed: set[str], cfg) -> None:
    """A collapsed int8 model fails with the diagnosis attached (per-layer error and causes)."""
    from edgeres.backends.keras_io import predict
    from edgeres.quant.diagnosis import diagnose
    from edgeres.quant.evaluate import Split

    for a in report.artifacts:
        if a.precision != "int8" or a.name not in collapsed:
            continue
        backend = built.backends.get(a.format) or _backend_again(a.format, cfg, inputs)
        x = inputs.calib[:200]
        d = diagnose(backend, cfg.recipe, Split(x, None, predict(inputs.model, x)), sensitivity=False)
        report.diagnosis = {**(report.diagnosis or {}), a.format: d}
        causes = "; ".join(f"{c['kind']} in {c['layer']}" for c in d["causes"][:3]) or "no single cause found"
        report.failures.append(f"{a.name} diagnosis: {causes} (see report.json 'diagnosis')")
