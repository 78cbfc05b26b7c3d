"""The ``--max-drop`` search: the fastest int8 configuration within an accuracy budget.  LIGHT layer.

Format-agnostic: it drives a :class:`~edgeres.quant.backend.Backend` and
measures with :func:`~edgeres.quant.evaluate.evaluate`.  What it may try is a
:class:`SearchPlan` (the calibration ladder, the float-layer limit), so a
target that needs a full-integer model, or a test, can narrow it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeres.core.errors import ConversionError, DataError, UsageError
from edgeres.core.metrics import COLLAPSE_AGREEMENT
from edgeres.quant.backend import Backend
from edgeres.quant.evaluate import Evaluation, Split, evaluate
from edgeres.quant.recipes import Recipe

MIN_CALIBRATION = 32   # images: fewer leave most histogram bins empty
MIN_SELECTION = 100    # images the search chooses on (0.01 agreement per image)
MIN_FINAL = 100        # images the final figures are measured on
CALIBRATION_LADDER = (("mse", None), ("percentile", 99.999), ("percentile", 99.99), ("entropy", None),
                      ("minmax", None))
MAX_FLOAT_LAYERS = 64  # in practice the search stops long before: each kept layer costs latency


@dataclass(frozen=True)
class SearchPlan:
    """What the search may try, cheapest first."""

    #: calibration methods tried after the recipe: (method, percentile or None)
    ladder: tuple[tuple[str, float | None], ...] = CALIBRATION_LADDER
    #: at most this many layers kept in float (0: full-integer models only)
    max_float_layers: int = MAX_FLOAT_LAYERS
    #: timed batch-1 runs per trial (0: no latency)
    latency_runs: int = 30


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
           ranking: Callable[[Recipe], list[str]] | None = None, plan: SearchPlan = SearchPlan(),
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
            res = evaluate(backend, data, select, plan.latency_runs)
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
    for method, pct in plan.ladder:
        if (method, pct) in tried:
            continue
        tried.add((method, pct))
        r = base.replace(calibration=method, percentile=pct or base.percentile,
                         tflite=type(base.tflite)(), onnx=type(base.onnx)(),
                         bias_correction=own.bias_correction)
        if attempt(f"calibration {method}" + (f" {pct:g}" if pct else ""), r, []).meets:
            return trials, trials[-1], True
    if not any(t.data for t in trials):  # nothing converted: there is no model to write
        raise ConversionError(f"{backend.name}: every configuration the search tried failed to convert; the first: "
                              f"{trials[0].details.get('error', 'no model')}")
    lead = most_faithful(trials)
    lead_recipe = lead.recipe.for_backend(backend.name)
    r = lead_recipe.replace(bias_correction=not lead_recipe.bias_correction)
    if attempt("bias correction " + ("on" if r.bias_correction else "off"), r, []).meets:
        return trials, trials[-1], True
    lead = most_faithful(trials)
    limit = plan.max_float_layers if backend.float_layers_allowed else 0
    order = (ranking(lead.recipe) if ranking else backend.layers) if limit > 0 else []
    keep: list[str] = []
    for layer in order[:limit]:
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
