"""Accuracy-first int8: evaluate recipes, diagnose layers, search under a budget.

HEAVY only through the back ends it is handed (:class:`TFLiteQuantizer`,
:class:`OnnxQuantizer`); this module itself needs numpy and a runtime.  A
:class:`Backend` couples one quantizer with how its models are run, so the
search and the diagnosis are written once for both formats.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgeres.core.errors import ConversionError, DataError, UsageError
from edgeres.core.metrics import COLLAPSE_AGREEMENT, Tally, collapsed, sqnr_db
from edgeres.quant.recipes import Recipe, match_layers

MIN_CALIBRATION = 32   # images: fewer leave most histogram bins empty
MIN_SELECTION = 100    # images the search chooses on (0.01 agreement per image)
MIN_FINAL = 100        # images the final figures are measured on
CALIBRATION_LADDER = (("mse", None), ("percentile", 99.999), ("percentile", 99.99), ("entropy", None),
                      ("minmax", None))
MAX_FLOAT_LAYERS = 64  # in practice the search stops long before: each kept layer costs latency


@dataclass
class Backend:
    """One output format: how to build a model from a recipe and how to run it."""

    name: str                       # "tflite" | "onnx"
    suffix: str
    quantizer: object               # TFLiteQuantizer | OnnxQuantizer
    build_fn: Callable[[Recipe, list[str]], tuple[bytes, dict]]
    threads: int = 2
    delegate: str | None = None

    @property
    def layers(self) -> list[str]:
        return list(self.quantizer.layers)

    def build(self, recipe: Recipe, keep_float: list[str] | None = None) -> tuple[bytes, dict]:
        """Build ``recipe``; layers in ``keep_float`` stay float on top of the recipe's own patterns."""
        from edgeres.core.quiet import quiet

        recipe = recipe.for_backend(self.name)
        keep = match_layers(recipe.keep_float, self.layers, f"recipe {recipe.name}")
        keep += [name for name in keep_float or [] if name not in keep]
        with quiet():  # converter chatter, not ours
            return self.build_fn(recipe, keep)

    def runner(self, data: bytes, tmp: Path):
        from edgeres.core.quiet import quiet
        from edgeres.core.runtime import open_runner

        path = tmp / f"trial{self.suffix}"
        path.write_bytes(data)
        with quiet():
            return open_runner(path, threads=self.threads, delegate=self.delegate)


@dataclass
class Evaluation:
    top1: float | None
    top1_drop: float | None
    agreement: float
    sqnr_db: float
    collapsed: bool
    p50_ms: float | None = None
    size_bytes: int = 0

    def loss(self, metric: str) -> float:
        """The budgeted quantity: top-1 points lost, or points of agreement lost."""
        return (self.top1_drop or 0.0) if metric == "top1" else 100.0 - self.agreement

    def to_dict(self) -> dict:
        return {"top1": self.top1, "top1_drop": self.top1_drop, "agreement": self.agreement,
                "sqnr_db": self.sqnr_db, "collapsed": self.collapsed, "p50_ms": self.p50_ms,
                "size_bytes": self.size_bytes}


@dataclass
class Split:
    """Images with labels (or None) and the float32 reference outputs."""

    x: np.ndarray
    y: np.ndarray | None
    ref: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


def evaluate(backend: Backend, data: bytes, split: Split, latency_runs: int = 0,
             batch: int = 64) -> Evaluation:
    """Run ``data`` on ``split``; with ``latency_runs`` also time batch-1 inference."""
    from edgeres.core.timing import measure

    tally, ref_tally = Tally(), Tally()
    with tempfile.TemporaryDirectory(prefix="edgeres-eval-") as tmp:
        runner = backend.runner(data, Path(tmp))
        for s in range(0, len(split), batch):
            y = None if split.y is None else split.y[s:s + batch]
            tally.update(runner.predict(split.x[s:s + batch]), y, split.ref[s:s + batch])
            ref_tally.update(split.ref[s:s + batch], y)
        p50 = None
        if latency_runs:
            fn = runner.timed_invoke(runner.quantize_input(split.x[:1]))
            stats, _ = measure(fn, runs=latency_runs, warmup=max(3, latency_runs // 5))
            p50 = stats.p50
    r, ref = tally.result(), ref_tally.result()
    top1 = r.get("top1")
    drop = (ref["top1"] - top1) if top1 is not None else None
    return Evaluation(top1, drop, r["agreement"], r["sqnr_db"],
                      collapsed(tally.predictions) and not collapsed(ref_tally.predictions), p50, len(data))


# ---------------------------------------------------------------- diagnosis


@dataclass
class LayerReport:
    layer: str
    ops: list[str]
    sqnr_db: float | None = None
    rmse_rel: float | None = None     # RMSE / (output range)
    only_quantized_loss: float | None = None   # agreement points lost with only this layer int8
    only_float_gain: float | None = None       # agreement points regained with only this layer float
    only_float_sqnr_gain: float | None = None  # dB of output SQNR regained with only this layer float
    causes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def layer_errors(backend: Backend, data: bytes, split: Split, limit: int = 64) -> dict[str, tuple[float, float]]:
    """Per layer: SQNR (dB) and range-scaled RMSE of its output in the int8 model against float."""
    q = backend.quantizer
    x = split.x[:limit]
    quant = q.layer_outputs(data, x)
    ref = q.layer_outputs(None, x)
    out = {}
    for layer, value in quant.items():
        if layer not in ref or ref[layer].shape != value.shape:
            continue
        r = ref[layer].astype(np.float64)
        d = value.astype(np.float64) - r
        span = float(r.max() - r.min()) or 1.0
        out[layer] = (sqnr_db(float((r ** 2).sum()), float((d ** 2).sum())), math.sqrt(float((d ** 2).mean())) / span)
    return out


def diagnose(backend: Backend, recipe: Recipe, split: Split, sensitivity: bool = True, progress: Callable[[int], None] | None = None,
             only_quantized: bool = True) -> dict:
    """Per-layer error and sensitivity of ``recipe`` on ``backend``, and the failure causes found.

    Sensitivity needs two conversions per layer: all other layers float
    (``only_quantized``; the search skips it), and only this layer float.
    """
    from edgeres.quant.diagnosis import find_causes

    data, _ = backend.build(recipe)
    base = evaluate(backend, data, split)
    errors = layer_errors(backend, data, split)
    layers = backend.layers
    reports = {name: LayerReport(name, backend.quantizer.layer_ops.get(name, [])) for name in layers}
    for name, (sqnr, rmse) in errors.items():
        reports[name].sqnr_db, reports[name].rmse_rel = sqnr, rmse
    if sensitivity:
        for name in layers:
            if only_quantized:
                only_q, _ = backend.build(recipe, [n for n in layers if n != name])
                reports[name].only_quantized_loss = 100.0 - evaluate(backend, only_q, split).agreement
            only_f, _ = backend.build(recipe, [name])
            res = evaluate(backend, only_f, split)
            reports[name].only_float_gain = res.agreement - base.agreement
            reports[name].only_float_sqnr_gain = res.sqnr_db - base.sqnr_db
            if progress:
                progress(1)
    val_stats = backend.quantizer.collect_stats(split.x)
    causes = find_causes(backend.quantizer.stats, val_stats, backend.quantizer.stat_layers())
    for c in causes:
        if c["layer"] in reports:
            reports[c["layer"]].causes.append(c["kind"])
    return {"backend": backend.name, "recipe": recipe.for_backend(backend.name).to_dict(),
            "model": base.to_dict(), "layers": [r.to_dict() for r in reports.values()], "causes": causes,
            "images": len(split)}


def rank_layers(diagnosis: dict) -> list[str]:
    """Layers most worth keeping in float first.

    Ranked by the output SQNR regained when only that layer is float: a
    continuous measure, where the agreement regained by one layer is a
    count of a handful of images and mostly noise.  Then by lowest SQNR.
    """
    rows = diagnosis["layers"]

    def key(r):
        gain = r.get("only_float_sqnr_gain")
        sq = r.get("sqnr_db")
        return (-(gain if gain is not None else -math.inf), sq if sq is not None else math.inf)

    return [r["layer"] for r in sorted(rows, key=key)]


# ------------------------------------------------------------------ search


@dataclass
class Trial:
    step: str
    recipe: Recipe
    keep_float: list[str]
    result: Evaluation
    meets: bool
    details: dict = field(default_factory=dict)
    data: bytes = field(default=b"", repr=False)

    def to_dict(self) -> dict:
        return {"step": self.step, "recipe": self.recipe.summary(), "keep_float": self.keep_float,
                **self.result.to_dict(), "meets_budget": self.meets,
                "full_integer": self.details.get("full_integer")}


def search(backend: Backend, base: Recipe, budget: float, metric: str, select: Split,
           ranking: Callable[[Recipe], list[str]] | None = None, latency_runs: int = 30,
           on_trial: Callable[[Trial], None] | None = None) -> tuple[list[Trial], Trial, bool]:
    """Find the fastest configuration whose loss on ``select`` is within ``budget``.

    With ``metric="top1"`` another calibration method or bias setting must
    also agree with float32 at least as often as the recipe does (a lucky
    top-1 gain on a small split is not a reason to ship a less faithful
    model); keeping layers in float only ever moves towards float32.
    Order (cheapest and fastest first, stopping at the first that holds):
    the given recipe, other calibration methods, bias correction on the
    best of them, then the most sensitive layers kept in float one at a time
    (ranked by :func:`diagnose`).  Returns (trials, winner, met).  When
    nothing meets the budget the winner is the trial with the smallest loss.
    """
    if budget < 0:
        raise UsageError(f"--max-drop must be 0 or more, got {budget:g}")
    if metric not in ("top1", "agreement"):
        raise UsageError(f"--metric must be top1 or agreement, got {metric!r}")
    if metric == "top1" and select.y is None:
        raise DataError("--metric top1 needs labelled validation data")
    trials: list[Trial] = []
    floor = [0.0]  # agreement of the recipe itself; see below

    def attempt(step: str, recipe: Recipe, keep: list[str]) -> Trial:
        try:
            data, details = backend.build(recipe, keep)
        except ConversionError as exc:
            details, data = {"error": str(exc)}, b""
        if not data:
            t = Trial(step, recipe, keep, Evaluation(None, None, 0.0, -math.inf, True), False, details)
        else:
            res = evaluate(backend, data, select, latency_runs)
            # A top-1 budget is judged on a few hundred images, where a less faithful model can gain
            # top-1 by chance.  So a configuration less faithful to float32 than the recipe itself
            # never wins on top-1 alone.
            ok = (not res.collapsed and res.agreement >= COLLAPSE_AGREEMENT and res.loss(metric) <= budget + 1e-9
                  and (metric == "agreement" or keep or res.agreement >= floor[0] - 1e-9))
            t = Trial(step, recipe, keep, res, ok, details, data)
        trials.append(t)
        if on_trial:
            on_trial(t)
        return t

    t = attempt("recipe", base, [])
    floor[0] = t.result.agreement
    if t.meets:
        return trials, t, True
    # Calibration methods: all are equally fast, so try each and carry the most faithful one
    # forward (top-1 on a few hundred images moves by chance; agreement is the steadier signal).
    own = base.for_backend(backend.name)
    tried = {(own.calibration, own.percentile if own.calibration == "percentile" else None)}
    for method, pct in CALIBRATION_LADDER:
        if (method, pct) in tried:
            continue
        tried.add((method, pct))
        r = base.replace(calibration=method, percentile=pct or base.percentile,
                         tflite=type(base.tflite)(), onnx=type(base.onnx)(),
                         bias_correction=own.bias_correction)
        if attempt(f"calibration {method}" + (f" {pct:g}" if pct else ""), r, []).meets:
            return trials, trials[-1], True
    lead = most_faithful(trials)
    lead_recipe = lead.recipe.for_backend(backend.name)
    r = lead_recipe.replace(bias_correction=not lead_recipe.bias_correction)
    if attempt("bias correction " + ("on" if r.bias_correction else "off"), r, []).meets:
        return trials, trials[-1], True
    lead = most_faithful(trials)
    order = [n for n in (ranking(lead.recipe) if ranking else backend.layers)]
    keep: list[str] = []
    for layer in order[:MAX_FLOAT_LAYERS]:
        keep = keep + [layer]
        if attempt(f"keep {layer} in float", lead.recipe, keep).meets:
            return trials, trials[-1], True
    return trials, min(trials, key=lambda t: (t.result.loss(metric), -t.result.agreement)), False  # least loss


def most_faithful(trials: list[Trial]) -> Trial:
    """The full-integer trial closest to float32 (then the one with the least loss of SQNR)."""
    ok = [t for t in trials if t.data and not t.keep_float] or [t for t in trials if t.data]
    return max(ok, key=lambda t: (t.result.agreement, t.result.sqnr_db))


def check_sizes(n_calib: int, n_select: int, n_final: int) -> None:
    if n_calib < MIN_CALIBRATION:
        raise DataError(f"the search needs at least {MIN_CALIBRATION} calibration images, got {n_calib}")
    if n_select < MIN_SELECTION or n_final < MIN_FINAL:
        raise DataError(f"the search needs at least {MIN_SELECTION + MIN_FINAL} labelled validation images "
                        f"({MIN_SELECTION} to choose on, {MIN_FINAL} to report on), got {n_select + n_final}")
