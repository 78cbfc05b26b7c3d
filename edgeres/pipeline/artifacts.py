"""The convert stage: every registered format's float32 and int8 artifacts.  HEAVY (through the back ends).

Int8 models follow the recipe; with ``--max-drop`` each back end's
configuration is chosen by :func:`edgeres.quant.search.search` on the
selection images instead.  Every back end comes from the one factory,
:func:`edgeres.backends.base.create_backend`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from edgeres.backends.base import Format, Settings, create_backend, formats, get_format
from edgeres.core.fs import write_bytes_atomic
from edgeres.core.machine import release_memory
from edgeres.core.quiet import quiet
from edgeres.quant.backend import Backend
from edgeres.quant.search import Trial
from edgeres.report.model import ArtifactReport

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    trials: list[Trial]
    winner: Trial
    met: bool


@dataclass
class Built:
    """What the convert stage made: the artifacts (filled in by later stages), and how."""

    artifacts: list[ArtifactReport] = field(default_factory=list)
    backends: dict[str, Backend] = field(default_factory=dict)        # format -> the back end of its int8 model
    searches: dict[str, SearchResult] = field(default_factory=dict)   # format -> its --max-drop search
    plan: str = "in one process"                                      # how the formats were built
    processes: dict[str, dict] = field(default_factory=dict)          # format -> its process's memory and times


def build_artifacts(cfg, settings: Settings, inputs, stage: Path, stages, executor=None) -> Built:
    """Every format's artifacts, in format order: in this process, or each format in its own process
    (:mod:`edgeres.pipeline.processes`) when ``cfg.jobs`` allows and the model is worth it.  With an
    ``executor`` (``--ray``) the formats are built here and the search fans out on it instead."""
    from edgeres.pipeline.processes import Plan, backend_plan, build_in_processes

    names = [fmt.name for fmt in formats()]
    plan = backend_plan(cfg, inputs, len(names)) if executor is None else Plan(False)
    if plan.processes:
        parts = build_in_processes(build_format, cfg, settings, inputs, stage, stages, names, plan.jobs)
    else:
        parts = [build_format(cfg, settings, inputs, stage, stages, name, executor) for name in names]
    built = Built(plan=plan.describe())
    for part in parts:
        built.artifacts += part.artifacts
        if part.backend is not None:
            built.backends[part.format] = part.backend
        if part.search is not None:
            built.searches[part.format] = part.search
        if part.process is not None:
            built.processes[part.format] = part.process
    return built


def tune_artifacts(settings: Settings, built: Built, stage: Path, stages) -> None:
    """Each int8 artifact whose format can, rewritten exactly for the target's speed (ONNX: each convolution
    on ORT's faster kernel here).  Runs after every format is built, so nothing else competes for the cores
    while it times; the choice and the figures go into the artifact's details under ``kernels``."""
    for art in built.artifacts:
        fmt = get_format(art.format)
        tune = getattr(fmt, "tune_int8", None)
        if art.precision != "int8" or tune is None:
            continue
        path = stage / art.path
        with stages(f"{fmt.name}_kernels"):
            data, details = tune(path.read_bytes(), settings, log=log.info)
            if details.get("choice") == "measured":
                write_bytes_atomic(path, data)
        art.details["kernels"] = details


@dataclass
class Part:
    """One format's share of the convert stage."""

    format: str
    artifacts: list[ArtifactReport] = field(default_factory=list)
    backend: Backend | None = None      # None when it was built in another process
    search: SearchResult | None = None
    process: dict | None = None         # built in its own process: its peak memory and stage times


def build_format(cfg, settings: Settings, inputs, stage: Path, stages, name: str, executor=None) -> Part:
    """The float32 and int8 artifacts of format ``name``, written into ``stage``."""
    from edgeres.backends.heads import split_head
    from edgeres.backends.keras_io import layer_types as types_of

    fmt = get_format(name)
    part = Part(name)
    head = split_head(inputs.model) if cfg.int8 else None  # see edgeres.backends.heads
    with stages(f"{fmt.name}_fp32"), quiet():
        float_model, details = fmt.export_float(inputs.model, inputs.hwc, settings)
    _emit(part, stage, fmt, "float32", float_model, details)
    release_memory()  # the exporter's garbage would count towards the statistics' peak
    if not cfg.int8:
        return part
    with stages(f"{fmt.name}_int8"):
        model, base = inputs.model, float_model
        if head is not None:  # quantize the logits; the activation follows in float32, or on the host
            with quiet():
                model, base = head.logits, fmt.export_float(head.logits, inputs.hwc, settings)[0]
        backend = create_backend(fmt, model, inputs.hwc, inputs.calib, settings, float_model=base, head=head)
        release_memory()  # and the statistics' batches towards the quantizer's
        data, details, part.search = _int8(cfg, backend, inputs, head.logits if head is not None else None,
                                           executor)
        if getattr(inputs, "holdout_carved", False) and "adaptive" in details:
            backend, data, details = _rebuild(cfg, fmt, model, base, head, settings, inputs, details)
        if head is not None:
            details = {**details, "head": head.describe(backend.host_activation is None)}
            if backend.host_activation is None:
                details["full_integer"] = False  # an int8 body, and the activation in float32 after it
        audit = getattr(fmt, "audit_int8", None)  # ops the runtime runs in float inside the int8 model
        found = audit(data, types_of(model), settings) if audit is not None else {}
        if found:
            details = {**details, "full_integer": False, **found}
    recipe = cfg.recipe.for_backend(fmt.name)
    n_float, n_layers = len(details.get("float_layers") or []), len(backend.layers)
    details = {**fmt.int8_details(settings, cfg.recipe), "recipe_summary": recipe.summary(), **details,
               "recipe": cfg.recipe.name, "activations": recipe.activations,
               "float_share": round(n_float / n_layers, 4) if n_layers else 0.0}
    _emit(part, stage, fmt, "int8", data, details)
    part.backend = backend
    return part


def _emit(part: Part, stage: Path, fmt: Format, precision: str, data: bytes, details: dict) -> None:
    tag = "fp32" if precision == "float32" else "int8"
    filename = f"model_{tag}{fmt.suffix}"
    write_bytes_atomic(stage / filename, data)
    part.artifacts.append(ArtifactReport(f"{fmt.name}_{tag}", fmt.name, precision, filename,
                                          details={**details, "format": fmt.name}))


def _int8(cfg, backend: Backend, inputs, logits_model=None, executor=None) -> tuple[bytes, dict, SearchResult | None]:
    """The recipe's model, the adaptive default's choice, or with a budget the configuration the search chose
    (and the search)."""
    if inputs.select is None:
        if getattr(inputs, "holdout", None) is not None:
            return (*_adaptive(cfg, backend, inputs.holdout, logits_model), None)
        return (*backend.build(cfg.recipe), None)
    from edgeres.quant.search import search

    def report_trial(t: Trial) -> None:  # progress: one line per configuration tried
        r = t.result
        log.info(f"{backend.name} search: {t.step}: loss {r.loss(cfg.metric):+.2f} ({cfg.metric}), "
                 f"agreement {r.agreement:.2f}%" + (f", p50 {r.p50_ms:.3f} ms" if r.p50_ms else "")
                 + (" - meets the budget" if t.meets else ""))

    trials, winner, met = search(backend, cfg.recipe, cfg.max_drop, cfg.metric, inputs.select,
                                 ranking=lambda recipe: _ranking(backend, recipe, inputs.select, executor),
                                 plan=cfg.plan, on_trial=report_trial, executor=executor)
    return winner.data, winner.details, SearchResult(trials, winner, met)


def _adaptive(cfg, backend: Backend, holdout, logits_model) -> tuple[bytes, dict]:
    """The adaptive default's choice.  With a float head the candidates are compared on their logits against
    the float32 logits: the body is what is quantized, and a softmax squeezes all but the top class out of
    the SQNR (so a softmax model gets the same body as the same network with its softmax removed)."""
    from dataclasses import replace

    from edgeres.quant.adaptive import choose

    if logits_model is None:
        return choose(backend, cfg.recipe, holdout, log=log.info)
    from edgeres.backends.keras_io import predict

    finish, host = backend.finish, backend.host_activation
    backend.finish = backend.host_activation = None
    try:
        data, details = choose(backend, cfg.recipe, replace(holdout, ref=predict(logits_model, holdout.x)),
                               log=log.info)
    finally:
        backend.finish, backend.host_activation = finish, host
    details["adaptive"]["compared_on"] = "logits (the activation follows in float32, or on the host)"
    return (finish(data) if finish else data), details


def _rebuild(cfg, fmt: Format, model, base: bytes, head, settings: Settings, inputs, details: dict):
    """The adaptive default's choice built again from calibration and holdout images together: when the
    holdout was carved out of a small calibration set, the shipped model still gets every image's statistics."""
    import numpy as np

    from edgeres.quant.adaptive import chosen_recipe

    images = np.concatenate([inputs.calib, inputs.holdout.x])
    chosen = details["adaptive"]["chosen"]
    recipe = chosen_recipe(cfg.recipe, fmt.name, details["adaptive"])
    log.info(f"{fmt.name} default: building '{chosen}' again from all {len(images)} calibration images")
    backend = create_backend(fmt, model, inputs.hwc, images, settings, float_model=base, head=head)
    data, rebuilt = backend.build(recipe)
    adaptive = {**details["adaptive"], "rebuilt_from_images": len(images)}
    return backend, data, {**rebuilt, "adaptive": adaptive, "recipe_summary": details["recipe_summary"]}


def _ranking(backend: Backend, recipe, split, executor=None) -> list[str]:
    from edgeres.quant.diagnosis import diagnose, rank_layers

    total, done = len(backend.layers), [0]
    log.info(f"{backend.name} search: ranking {total} layers by sensitivity (one conversion each)")

    def tick(n: int) -> None:  # one conversion per layer: say where we are every 10
        done[0] += n
        if done[0] % 10 == 0 or done[0] == total:
            log.info(f"{backend.name} search: ranked {done[0]}/{total} layers")

    return rank_layers(diagnose(backend, recipe, split, progress=tick, only_quantized=False, executor=executor))
