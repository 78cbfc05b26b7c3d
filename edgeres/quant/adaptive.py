"""The model-adaptive default: try a few int8 configurations, keep the one most faithful to float32.  LIGHT.

One recipe chosen on one model does not carry over to the next (a small ResNet-8 with a softmax head wants
other ranges than a ResNet-20).  So when the user names no recipe, each back end builds a small set of
candidates from the calibration statistics it already holds (one calibration pass, so each candidate costs
one quantization, not one calibration) and measures them **without labels** on calibration images the
statistics never saw (the *holdout*), against the float32 model's own outputs:

1. top-1 agreement with float32 per image;
2. candidates whose agreement is not significantly below the best one's (an exact one-sided McNemar test
   on the images where the two differ, at ``TIE_ALPHA``) are tied: a few hundred images cannot tell them
   apart on agreement;
3. among the tied, output SQNR decides: a continuous measure of the same fidelity, steady on a few hundred
   images, and what predicted agreement on unseen images best in the development suite
   (benchmarks/int8_suite.py, docs/quantization.md).  But a few hundredths of a dB are noise too: the
   recipe itself is kept unless the highest SQNR beats it by ``MIN_GAIN_DB`` or more, so the choice does
   not flip between configurations that a different calibration sample would rank the other way.

The candidates are the recipe itself, the stock converter's configuration (min/max ranges, calibrated
output, no corrections: what TFLiteConverter and ``quantize_static`` do by default), and the other range
methods with bias correction on and off; then, in a second round, the first round's winner with its weights
rounded by GPTQ (:mod:`edgeres.quant.rounding`), judged with all of them by the same rule.  On the
development suite that rounding gains most where the weights limit a model (small ResNet-8s: up to 3.5 dB)
and little or nothing on deeper ones, so it is a candidate, not a rule.  The stock configuration is always
a candidate, so the chosen model is never less faithful on the holdout than stock by the rule above.
Everything tried is recorded.  When every candidate that converted collapsed (one class for nearly every
image), the most faithful of them by the same rule is kept all the same and ``all_collapsed`` recorded: the
run's validation then fails it with the diagnosis, as it would the recipe built alone.  Only when none
converted is it an error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeres.core.errors import ConversionError
from edgeres.core.metrics import Tally, collapsed
from edgeres.core.stop import temp_dir
from edgeres.quant.backend import Backend
from edgeres.quant.evaluate import Split
from edgeres.quant.recipes import BackendOverride, Recipe

HOLDOUT = 300       # calibration images held out to choose on (more when the calibration set has them)
MIN_HOLDOUT = 64    # fewer: the choice would be noise, so the recipe is used as it is
TIE_ALPHA = 0.05    # one-sided exact McNemar: below this, a candidate is worse than the best on agreement
#: an SQNR gain below this is no reason to leave the recipe: the same configuration built from another
#: calibration sample of the same size moves by 0.1-0.4 dB (benchmarks/calibration_spread.py), and
#: candidates with bias correction often sit within a few hundredths of a dB of each other
MIN_GAIN_DB = 0.1
BROKEN_GAP_DB = 20.0   # a layer's SQNR this far below every earlier layer's: 100x their error power
BROKEN_LAYER_DB = 5.0  # the first layer's floor (nothing before it to compare with)
MAX_RESCUED = 3
#: holdout images the per-layer error is measured on: a broken layer (a step of 20 dB) shows on a few, and every
#: intermediate tensor of a 224x224 ResNet-50 is about 40 MB an image, twice (int8 and float)
BROKEN_IMAGES = 16
#: entropy (KL) ranges are left out: ten times slower to compute than the others (3.5 s against 0.3 s on
#: ResNet-20), and on it the least faithful of all (SQNR 27.5 dB against 30.7); --recipe entropy builds them
METHODS = (("mse", None), ("percentile", 99.999), ("percentile", 99.99), ("minmax", None))


@dataclass(frozen=True)
class Candidate:
    name: str
    recipe: Recipe


@dataclass
class Scored:
    candidate: Candidate
    data: bytes = field(default=b"", repr=False)
    details: dict = field(default_factory=dict)
    agrees: np.ndarray | None = field(default=None, repr=False)  # per holdout image: top-1 == float32's
    sqnr_db: float = -math.inf
    collapsed: bool = False
    seconds: float = 0.0
    error: str | None = None
    tied: bool = False
    sqnr_tied: bool = False
    summary: str = ""  # the recipe as this back end builds it

    @property
    def agreement(self) -> float:
        return 100.0 * float(self.agrees.mean()) if self.agrees is not None and len(self.agrees) else 0.0

    def to_dict(self) -> dict:
        out = {"name": self.candidate.name, "recipe": self.summary, "seconds": round(self.seconds, 2)}
        if self.error:
            return {**out, "error": self.error}
        return {**out, "agreement": round(self.agreement, 3), "sqnr_db": round(self.sqnr_db, 3),
                "collapsed": self.collapsed, "tied_with_best": self.tied, "sqnr_tied_with_best": self.sqnr_tied}


def candidates(base: Recipe, backend: str) -> list[Candidate]:
    """The recipe, the stock configuration, and the range methods with bias correction on and off; each
    distinct configuration once (as this back end would build it)."""
    plain = {"tflite": BackendOverride(), "onnx": BackendOverride(), "keep_float": ()}
    out = [Candidate("recipe " + base.name, base),
           Candidate("stock", base.replace(calibration="minmax", bias_correction=False, output="calibrated",
                                           **plain))]
    for method, pct in METHODS:
        for bias in (True, False):
            name = method + (f" {pct:g}" if pct else "") + (", bias correction" if bias else "")
            out.append(Candidate(name, base.replace(calibration=method, percentile=pct or base.percentile,
                                                    bias_correction=bias, **plain)))
    seen, unique = set(), []
    for c in out:
        key = repr(sorted(c.recipe.for_backend(backend).to_dict().items()))
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def worse(a: np.ndarray, best: np.ndarray, alpha: float = TIE_ALPHA) -> bool:
    """Whether per-image agreement ``a`` is significantly below ``best`` (exact one-sided McNemar)."""
    lost = int(np.count_nonzero(best & ~a))   # images only the best agrees on
    won = int(np.count_nonzero(a & ~best))    # images only ``a`` agrees on
    n = lost + won
    if n == 0:
        return False
    p = sum(math.comb(n, k) for k in range(lost, n + 1)) / 2.0 ** n  # P(X >= lost), X ~ Bin(n, 1/2)
    return p < alpha


def refined(c: Candidate) -> Candidate:
    """``c`` with its weights rounded by GPTQ (:mod:`edgeres.quant.rounding`), tried on the first round's winner:
    the rounding changes no range and no kernel, only which int8 value each weight takes."""
    return Candidate(c.name + ", gptq rounding", c.recipe.replace(weight_rounding="gptq"))


def with_float_layers(recipe: Recipe, layers: list[str]) -> Recipe:
    """``recipe`` with ``layers`` (exact names, not patterns) kept in float on top of its own."""
    import glob

    return recipe.replace(keep_float=(*recipe.keep_float, *(glob.escape(name) for name in layers)))


def chosen_recipe(base: Recipe, backend: str, adaptive: dict) -> Recipe:
    """The recipe of the candidate :func:`choose` chose, from its ``details["adaptive"]`` record (to build it
    again from more images): a broken layer's candidate is its source candidate with those layers float."""
    if "kept_float" in adaptive:
        return with_float_layers(recipe_named(base, backend, adaptive["kept_float_of"]), adaptive["kept_float"])
    return recipe_named(base, backend, adaptive["chosen"])


def recipe_named(base: Recipe, backend: str, name: str) -> Recipe:
    """The recipe of the candidate ``name`` (as :func:`choose` records it)."""
    for c in candidates(base, backend):
        for option in (c, refined(c)):
            if option.name == name:
                return option.recipe
    raise KeyError(name)


def choose(backend: Backend, base: Recipe, holdout: Split,
           log: Callable[[str], None] = lambda msg: None) -> tuple[bytes, dict]:
    """Build every candidate, score it on ``holdout`` and return the winner's model and details.

    Two rounds: the range methods with bias correction on and off, then the first round's winner with its
    weights rounded by GPTQ, judged with all the others by the same rule (one more build, not one per
    candidate: the rounding is what costs, and it helps the same way whatever the ranges)."""
    ref_top1 = holdout.ref.reshape(len(holdout.ref), -1).argmax(1)
    scored: list[Scored] = []
    with temp_dir("edgeres-adaptive-") as tmp:
        def score(cand: Candidate) -> None:
            s = Scored(cand, summary=cand.recipe.for_backend(backend.name).summary())
            t0 = time.perf_counter()
            try:
                s.data, s.details = backend.build(cand.recipe)
                runner = backend.runner(s.data, Path(tmp))
                tally = Tally()
                for x, _, ref in holdout.batches(64):
                    tally.update(runner.predict(x), ref=ref)
                s.agrees = tally.predictions == ref_top1
                s.sqnr_db = tally.result()["sqnr_db"]
                s.collapsed = collapsed(tally.predictions, ref_top1)
            except ConversionError as exc:
                s.error = str(exc).splitlines()[0]
            s.seconds = time.perf_counter() - t0
            scored.append(s)
            if s.error is None:
                log(f"{backend.name} default: {cand.name}: agreement {s.agreement:.2f}%, SQNR {s.sqnr_db:.1f} dB "
                    f"on {len(holdout)} held-out calibration images")

        for cand in candidates(base, backend.name):
            score(cand)
        first = _pick(scored, scored[0])
        winner = first
        if first is not None and first.candidate.recipe.for_backend(backend.name).weight_rounding == "nearest":
            score(refined(first.candidate))
            winner = _pick(scored, first)
        all_collapsed = winner is None and any(s.error is None for s in scored)
        if all_collapsed:
            # A model to ship all the same: this is no conversion error.  The run's validation reports the
            # collapse (exit 10, with the diagnosis) as it does for --recipe default; no GPTQ round, as rounding
            # moves no range.
            winner = _pick(scored, scored[0], with_collapsed=True)
            log(f"{backend.name} default: every candidate collapsed on the held-out calibration images; keeping "
                f"'{winner.candidate.name}'")
        rescued: dict[str, list[str]] = {}
        rescued_from = winner.candidate.name if winner is not None else ""
        if winner is not None and backend.float_layers_allowed:
            rescued = _rescue(backend, winner, holdout, score, scored, log)
            if rescued:
                winner = _pick(scored, winner, with_collapsed=all_collapsed) or winner
                all_collapsed = all_collapsed and winner.collapsed
    if winner is None:
        raise ConversionError(f"{backend.name}: no int8 configuration converted to a working model; the first "
                              f"error: {next(s.error for s in scored if s.error)}")
    summary = {
        "holdout_images": len(holdout), "chosen": winner.candidate.name, "all_collapsed": all_collapsed,
        "rule": f"among the candidates whose top-1 agreement with float32 is not significantly below the best "
                f"(exact one-sided McNemar, alpha {TIE_ALPHA}), the recipe if its output SQNR is less than "
                f"{MIN_GAIN_DB} dB below the highest, else the highest SQNR; on calibration images held out from "
                f"calibration; no labels; then the winner with GPTQ weight rounding, judged again with all, the first "
                f"round's winner in the recipe's place",
        "candidates": [s.to_dict() for s in scored],
    }
    if rescued:
        summary["broken_layers"] = list(rescued.values())[-1]
    if winner.candidate.name in rescued:  # how _rebuild builds it again: that candidate, these layers float
        summary["kept_float"] = rescued[winner.candidate.name]
        summary["kept_float_of"] = rescued_from
    return winner.data, {**winner.details, "adaptive": summary, "recipe_summary": winner.summary}


def broken_layer(errors: dict[str, tuple[float, float]], order: list[str]) -> str | None:
    """The first layer (in graph order) whose int8 output is broken, not merely imprecise: its SQNR against
    float is ``BROKEN_GAP_DB`` below every layer's before it, or under ``BROKEN_LAYER_DB`` where no layer
    precedes it.  Error grows a few dB from layer to layer in a healthy model; a 20 dB step is one layer
    whose ranges do not fit its values (a SELU's EXP calibrated to 16,000 leaves its negative branch, all
    between -1 and 0, at zero)."""
    lowest = math.inf
    for layer in order:
        if layer not in errors or not math.isfinite(errors[layer][0]):
            continue
        sqnr = errors[layer][0]
        if sqnr < (lowest - BROKEN_GAP_DB if math.isfinite(lowest) else BROKEN_LAYER_DB):
            return layer
        lowest = min(lowest, sqnr)
    return None


def _rescue(backend: Backend, winner: Scored, holdout: Split, score: Callable[[Candidate], None],
            scored: list[Scored], log: Callable[[str], None]) -> dict[str, list[str]]:
    """A layer the converter breaks (its ranges do not fit its values, whatever the range method) makes every
    candidate unfaithful alike: find it in the winner (per-layer error on a few holdout images), build the
    winner with it in float as one more candidate, and repeat on that one while another layer breaks, up to
    ``MAX_RESCUED``.  On a healthy model this is one measurement and no build.  Returns {candidate name: its
    float layers}; the rule then judges those candidates with the others."""
    from edgeres.quant.diagnosis import layer_errors

    tried: dict[str, list[str]] = {}
    found: list[str] = []
    current = winner
    while len(found) < MAX_RESCUED and current.error is None:
        layer = broken_layer(layer_errors(backend, current.data, holdout, limit=BROKEN_IMAGES), backend.layers)
        if layer is None or layer in found:
            break
        found.append(layer)
        name = f"{winner.candidate.name}, {', '.join(found)} in float"
        recipe = with_float_layers(winner.candidate.recipe, found)
        log(f"{backend.name} default: layer {layer} is broken in int8 (its output SQNR falls more than "
            f"{BROKEN_GAP_DB:g} dB below the layers before it): trying it in float")
        score(Candidate(name, recipe))
        tried[name] = list(found)
        current = scored[-1]
    return tried


def _pick(scored: list[Scored], incumbent: Scored, with_collapsed: bool = False) -> Scored | None:
    """The winner by the module's rule, ``incumbent`` kept unless the highest SQNR among those tied on agreement
    beats it by ``MIN_GAIN_DB``: the recipe in the first round, the first round's winner in the second.  Marks
    each candidate's ties.  Collapsed candidates count only ``with_collapsed`` (when every one collapsed)."""
    valid = [s for s in scored if s.error is None and (with_collapsed or not s.collapsed)]
    if not valid:
        return None
    best = max(valid, key=lambda s: (s.agreement, s.sqnr_db))
    for s in valid:
        s.tied = not worse(s.agrees, best.agrees)
    top = max((s for s in valid if s.tied), key=lambda s: (s.sqnr_db, s.agreement))
    for s in valid:  # same images, same reference: the SQNR gap is the ratio of the error powers
        s.sqnr_tied = s.tied and (s.sqnr_db == top.sqnr_db or top.sqnr_db - s.sqnr_db < MIN_GAIN_DB)
    return incumbent if incumbent.sqnr_tied else top
