"""The ``--max-drop`` search: the fastest int8 configuration within an accuracy budget.  LIGHT layer.

Format-agnostic: it drives a :class:`~edgeres.quant.backend.Backend` and
measures with :func:`~edgeres.quant.evaluate.evaluate`.  What it may try is a
:class:`SearchPlan` (the calibration ladder, the float-layer limit), so a
target that needs a full-integer model, or a test, can narrow it.

A configuration meets the budget when the one-sided upper confidence bound
of its loss on the selection images is within it, not its point estimate
(:mod:`edgeres.quant.confidence`), and :func:`check_budget` refuses, before
anything is built, a budget the selection images cannot resolve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeres.core.errors import ConversionError, DataError, UsageError
from edgeres.core.executor import Executor
from edgeres.core.metrics import COLLAPSE_AGREEMENT
from edgeres.quant import confidence
from edgeres.quant.backend import Backend
from edgeres.quant.evaluate import Evaluation, Split, evaluate
from edgeres.quant.recipes import Recipe

MIN_CALIBRATION = 32   # images: fewer leave most histogram bins empty
MIN_SELECTION = 100    # images the search chooses on (0.01 agreement per image)
MIN_FINAL = 100        # images the final figures are measured on
MAX_SELECT_FRACTION = 0.95  # the largest --select-fraction
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
    #: the upper confidence bound of the loss on the selection images, what ``meets`` compares with the budget
    loss_upper: float = math.inf

    def to_dict(self) -> dict:
        return {"step": self.step, "recipe": self.recipe.summary(), "keep_float": self.keep_float,
                **self.result.to_dict(), "loss_upper": _rounded(self.loss_upper), "meets_budget": self.meets,
                "full_integer": self.details.get("full_integer")}


def _rounded(v: float) -> float | None:
    return round(v, 4) if math.isfinite(v) else None  # None: nothing was measured (a failed build)


def loss_upper(res: Evaluation, metric: str, level: float = confidence.DECISION_LEVEL) -> float:
    """The one-sided upper confidence bound of ``res.loss(metric)`` (inf when nothing was measured)."""
    n = res.labelled if metric == "top1" else res.compared
    if n == 0 or (metric == "top1" and res.top1_drop is None):
        return math.inf
    return confidence.loss_upper(metric, n, lost=res.lost, gained=res.gained, disagree=res.disagree, level=level)


def search(backend: Backend, base: Recipe, budget: float, metric: str, select: Split,
           ranking: Callable[[Recipe], list[str]] | None = None, plan: SearchPlan = SearchPlan(),
           on_trial: Callable[[Trial], None] | None = None,
           executor: Executor | None = None) -> tuple[list[Trial], Trial, bool]:
    """Find the fastest configuration whose loss on ``select`` is within ``budget``.

    Within budget means that the one-sided upper confidence bound of the
    loss (:data:`~edgeres.quant.confidence.DECISION_LEVEL`, recorded as each
    trial's ``loss_upper``) is at most ``budget``; a budget ``select`` cannot
    resolve is a UsageError before anything is built (:func:`check_budget`).
    With ``metric="top1"`` another calibration method or bias setting must
    also agree with float32 at least as often as the recipe does (a lucky
    top-1 gain on a small split is not a reason to ship a less faithful
    model); keeping layers in float only ever moves towards float32.
    First every full-integer configuration, all equally fast: the given recipe, the other calibration
    methods, bias correction flipped on the most faithful of them, GPTQ weight rounding on the most
    faithful so far; the most faithful of those within budget (agreement, then SQNR) wins.  Only if none
    is, the most sensitive layers are kept in float one at a time on the most faithful full-integer
    configuration, stopping at the first that holds (ranked by :func:`diagnose`).  Returns (trials, winner, met).  When
    nothing meets the budget the winner is the trial with the smallest loss (point estimate).

    With an ``executor`` of several workers (``--ray``), the configurations
    of a step are built and measured side by side, ahead of need, and then
    judged in the same order as here: the trials, the choice and the figures
    are those of the sequential search (only the latencies, measured on
    busy workers, differ); configurations after the winner are dropped.
    """
    if budget < 0:
        raise UsageError(f"--max-drop must be 0 or more, got {budget:g}")
    if metric not in ("top1", "agreement"):
        raise UsageError(f"--metric must be top1 or agreement, got {metric!r}")
    if metric == "top1" and select.y is None:
        raise DataError("--metric top1 needs labelled validation data")
    check_budget(budget, metric, len(select))
    trials: list[Trial] = []
    floor = [0.0]  # agreement of the recipe itself; see below
    ahead = executor.workers if executor is not None and executor.workers > 1 else 1

    def judge(step: str, recipe: Recipe, keep: list[str], measured) -> Trial:
        data, details, res = measured
        if res is None:
            t = Trial(step, recipe, keep, Evaluation(None, None, 0.0, -math.inf, True), False, details)
        else:
            # Within budget with confidence: the upper bound of the loss, not the point estimate.
            # A top-1 budget is judged on a few hundred images, where a less faithful model can gain
            # top-1 by chance.  So a configuration less faithful to float32 than the recipe itself
            # never wins on top-1 alone.
            upper = loss_upper(res, metric)
            ok = (not res.collapsed and res.agreement >= COLLAPSE_AGREEMENT
                  and upper <= budget + confidence.TOLERANCE
                  and (metric == "agreement" or keep or res.agreement >= floor[0] - 1e-9))
            t = Trial(step, recipe, keep, res, ok, details, data, upper)
        trials.append(t)
        if on_trial:
            on_trial(t)
        return t

    def attempt_all(jobs: list[tuple[str, Recipe, list[str]]], stop: bool = True) -> Trial | None:
        """Judge ``jobs`` in order, measuring ``ahead`` at a time; the first that meets the budget, if any
        (with ``stop=False``, every job is judged and nothing is returned)."""
        for at in range(0, len(jobs), ahead):
            chunk = jobs[at:at + ahead]
            shared = (backend, select, plan.latency_runs)
            measured = (executor.map(measure, [(r, k) for _, r, k in chunk], shared=shared) if ahead > 1
                         else [measure(shared, (r, k)) for _, r, k in chunk])
            for (step, recipe, keep), m in zip(chunk, measured):
                t = judge(step, recipe, keep, m)
                if step == "recipe":
                    floor[0] = t.result.agreement
                if stop and t.meets:
                    return t
        return None

    # Every full-integer configuration runs at the same speed: the recipe, the other calibration methods,
    # bias correction flipped on the most faithful of them, GPTQ rounding on the most faithful so far.  So all
    # are built, and the most faithful of those within budget wins: a configuration that meets the budget on
    # the selection images by a lucky gain is no reason to ship a less faithful one than the search has in
    # hand (what the report images show then depends less on the split; docs/quantization.md).
    own = base.for_backend(backend.name)
    jobs = [("recipe", base, [])]
    tried = {(own.calibration, own.percentile if own.calibration == "percentile" else None)}
    for method, pct in plan.ladder:
        if (method, pct) in tried:
            continue
        tried.add((method, pct))
        r = base.replace(calibration=method, percentile=pct or base.percentile,
                         tflite=type(base.tflite)(), onnx=type(base.onnx)(),
                         bias_correction=own.bias_correction)
        jobs.append((f"calibration {method}" + (f" {pct:g}" if pct else ""), r, []))
    attempt_all(jobs, stop=False)
    if not any(t.data for t in trials):  # nothing converted: there is no model to write
        raise ConversionError(f"{backend.name}: every configuration the search tried failed to convert; the first: "
                              f"{trials[0].details.get('error', 'no model')}")
    lead = most_faithful(trials).recipe.for_backend(backend.name)  # its [tflite]/[onnx] table applied
    r = lead.replace(bias_correction=not lead.bias_correction)
    attempt_all([("bias correction " + ("on" if r.bias_correction else "off"), r, [])], stop=False)
    lead = most_faithful(trials)
    if lead.recipe.for_backend(backend.name).weight_rounding == "nearest":
        attempt_all([("gptq rounding", lead.recipe.replace(weight_rounding="gptq"), [])], stop=False)
    within = [t for t in trials if t.meets]
    if within:
        return trials, max(within, key=lambda t: (t.result.agreement, t.result.sqnr_db)), True
    lead = most_faithful(trials)
    limit = plan.max_float_layers if backend.float_layers_allowed else 0
    order = (ranking(lead.recipe) if ranking else backend.layers) if limit > 0 else []
    jobs = [(f"keep {layer} in float", lead.recipe, order[:i + 1]) for i, layer in enumerate(order[:limit])]
    if (won := attempt_all(jobs)) is not None:
        return trials, won, True
    return trials, min(trials, key=lambda t: (t.result.loss(metric), -t.result.agreement)), False  # least loss


def measure(shared, job) -> tuple[bytes, dict, Evaluation | None]:
    """Build one configuration and measure it on the selection images: (model, details, evaluation), or
    no model and no evaluation when it fails to convert.  A task an executor may run anywhere:
    ``shared`` is (back end, selection images, latency runs), ``job`` is (recipe, layers kept float)."""
    backend, select, latency_runs = shared
    recipe, keep = job
    try:
        data, details = backend.build(recipe, keep)
    except ConversionError as exc:
        return b"", {"error": str(exc)}, None
    if not data:
        return b"", details, None
    return data, details, evaluate(backend, data, select, latency_runs)


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


def check_budget(budget: float, metric: str, n_select: int, select_fraction: float | None = None,
                 n_data: int | None = None) -> None:
    """Refuse, in one line, a budget that ``n_select`` selection images cannot resolve
    (:func:`~edgeres.quant.confidence.resolvable`): name the selection images it needs and, given the
    ``--select-fraction`` and the ``n_data`` labelled images it splits, the data or fraction that gives them."""
    if confidence.resolvable(budget, metric, n_select):
        return
    level = f"{100 * confidence.DECISION_LEVEL:g}% one-sided"
    one = confidence.loss_upper(metric, max(n_select, 1), lost=1, disagree=1)
    smallest = math.ceil(one * 100 - 1e-6) / 100  # the smallest budget these images resolve, rounded up
    what = f"--max-drop {budget:g} ({metric})"
    if budget <= 0:
        raise UsageError(f"{what} can never be met with confidence, on any number of images: the smallest budget "
                         f"these {n_select} selection images can resolve is {smallest:.2f} points ({level})")
    need = confidence.images_needed(budget, metric)
    how = ""
    if select_fraction:
        n = math.ceil(need / select_fraction)
        while round((n - 1) * select_fraction) >= need:
            n -= 1
        how = f" (--data of {n} at --select-fraction {select_fraction:g}"
        frac = math.ceil(100 * need / n_data) / 100 if n_data else 1.0
        if frac <= MAX_SELECT_FRACTION and n_data - round(n_data * frac) >= MIN_FINAL:
            how += f", or --select-fraction {frac:g} of these {n_data}"
        how += ")"
    raise UsageError(f"{what} is finer than {n_select} selection images resolve (1 image lost bounds the loss at "
                     f"{smallest:.2f} points, {level}): it needs {need} selection images{how}, or a budget of "
                     f"{smallest:.2f} or more")
