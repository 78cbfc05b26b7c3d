"""The ``--max-drop`` search (:func:`edgeres.quant.search.search`) driven by a fake back end.

No TensorFlow, no converter, no runtime: :class:`FakeQuantizer` "builds" a
configuration as JSON bytes, and :class:`FakeRunner` answers with the float32
reference logits where a known number of rows have their top-1 changed,
according to one small table (``WRONG``, ``BIAS_FIX``, ``LAYER_FIX``, set per
test).  So every trial's agreement and top-1 drop are known exactly, and the
tests pin down the order of the search: the recipe, the calibration ladder
(skipping the recipe's own method), bias correction on the most faithful
trial, layers kept in float in ranking order up to ``max_float_layers``; the
top-1 faithfulness floor; conversion errors as failed trials; the least-loss
winner when nothing meets; and the argument checks.

A configuration meets a budget when the 90% upper confidence bound of its
loss is within it (:mod:`edgeres.quant.confidence`), so the budgets here are
``ub(rows)``: the bound of a configuration that gets ``rows`` rows wrong and
none right that float32 gets wrong, met by exactly the configurations with at
most that many wrong rows.  ``ub(1)`` is the smallest budget 200 rows resolve.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgeres.core.errors import ConversionError, DataError, UsageError
from edgeres.quant import confidence
from edgeres.quant.backend import Backend
from edgeres.quant.evaluate import Split
from edgeres.quant.recipes import BackendOverride, Recipe
from edgeres.quant.search import (
    CALIBRATION_LADDER,
    MIN_CALIBRATION,
    MIN_FINAL,
    MIN_SELECTION,
    SearchPlan,
    check_budget,
    check_sizes,
    loss_upper,
    search,
)

N, CLASSES = 200, 10
FLOAT_WRONG = 20  # the last 20 rows: float32 itself gets them wrong (float top-1 is 90 %)

# The fake model: how many rows each configuration gets wrong that float32 gets right.
WRONG = {"mse": 10, "percentile 99.999": 8, "percentile 99.99": 7, "entropy": 4, "minmax": 12}
BIAS_FIX = 1  # bias correction on: this many fewer wrong rows
LAYER_FIX = {"conv1": 1, "block1": 1, "block2": 1, "dense": 1}  # each layer kept in float: this many fewer


def pts(rows: int) -> float:
    """``rows`` of the split in percentage points (1 row = 0.5 points)."""
    return 100.0 * rows / N


def ub(rows: int) -> float:
    """The budget met by at most ``rows`` wrong rows (and no lucky ones): their 90% upper bound, either metric."""
    return confidence.wilson_upper(rows, N)


def make_split(seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(N, CLASSES)).astype(np.float32)
    y = ref.argmax(1)
    y[-FLOAT_WRONG:] = (y[-FLOAT_WRONG:] + 1) % CLASSES
    x = np.arange(N, dtype=np.float32)[:, None]  # an "image" is its row number: the fake runner looks rows up
    return Split(x, y, ref)


SPLIT = make_split()
BASE = Recipe(name="test", calibration="mse", output="minmax")  # no bias correction, no overrides


def key(recipe: Recipe) -> str:
    return recipe.calibration + (f" {recipe.percentile:g}" if recipe.calibration == "percentile" else "")


class FakeQuantizer:
    """The Quantizer protocol, answering from tables; records every configuration it was asked for."""

    def __init__(self, wrong=None, lucky=None, bias_fix=BIAS_FIX, layer_fix=None, fail=(), collapse=(),
                 split=SPLIT, gptq_fix=0):
        self.wrong = {**WRONG, **(wrong or {})}
        self.gptq_fix = gptq_fix  # rows GPTQ weight rounding gets right
        self.lucky = lucky or {}  # rows float32 gets wrong that this gets right: top-1 up, agreement down
        self.bias_fix, self.layer_fix = bias_fix, layer_fix or LAYER_FIX
        self.fail, self.collapse, self.split = set(fail), set(collapse), split
        self.layers = {name: [f"node_{name}"] for name in self.layer_fix}
        self.layer_ops = {name: ["Conv"] for name in self.layer_fix}
        self.stats = None
        self.calls: list[dict] = []

    def quantize(self, recipe: Recipe, keep_float: list[str]) -> tuple[bytes, dict]:
        config = {"calibration": key(recipe), "percentile": recipe.percentile,
                  "bias_correction": recipe.bias_correction, "keep_float": list(keep_float),
                  "weight_rounding": recipe.weight_rounding}
        self.calls.append(config)
        if config["calibration"] in self.fail:
            raise ConversionError(f"no int8 kernel for {config['calibration']}")
        return json.dumps(config).encode(), {"full_integer": not keep_float}

    def outputs(self, config: dict) -> np.ndarray:
        """The whole split's logits for ``config``."""
        cal, ref, y = config["calibration"], self.split.ref, self.split.y
        out = ref.copy()
        top, pred = ref.max(1), ref.argmax(1)
        if cal in self.collapse:  # every image gets float32's most common class
            out[:, np.bincount(pred).argmax()] = top + 1
            return out
        wrong = self.wrong[cal] - (self.bias_fix if config["bias_correction"] else 0)
        wrong -= self.gptq_fix if config["weight_rounding"] == "gptq" else 0
        wrong = max(0, wrong - sum(self.layer_fix[name] for name in config["keep_float"]))
        for i in range(wrong):
            out[i, (pred[i] + 1) % CLASSES] = top[i] + 1
        for i in range(N - FLOAT_WRONG, N - FLOAT_WRONG + self.lucky.get(cal, 0)):
            out[i, y[i]] = top[i] + 1
        return out


class FakeRunner:
    def __init__(self, out: np.ndarray):
        self.out = out

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.out[x[:, 0].astype(int)]

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        return x

    def timed_invoke(self, x: np.ndarray):
        return lambda: None


class FakeBackend(Backend):
    def runner(self, data, tmp):
        return FakeRunner(self.quantizer.outputs(json.loads(data)))


def make_backend(q: FakeQuantizer, name: str = "onnx", allowed: bool = True) -> FakeBackend:
    # name must be "onnx" or "tflite": Recipe.for_backend reads the recipe's table of that name
    return FakeBackend(name=name, suffix=".bin", quantizer=q, threads=1, delegate=None,
                       float_layers_allowed=allowed)


def run(q: FakeQuantizer, budget: float, metric: str = "agreement", base: Recipe = BASE,
        ladder=(("entropy", None), ("minmax", None)), max_float: int = 0, ranking=None, **kw):
    return search(make_backend(q, **kw), base, budget, metric, q.split, ranking=ranking,
                  plan=SearchPlan(ladder=ladder, max_float_layers=max_float, latency_runs=0))


def steps(trials) -> list[str]:
    return [t.step for t in trials]


def never(recipe):
    raise AssertionError("ranking must not be called")


def test_fake_model_matches_its_table():
    q = FakeQuantizer(lucky={"entropy": 3})
    trials, _, _ = run(q, budget=ub(1), ladder=(("entropy", None),))
    recipe, entropy = trials[0].result, trials[1].result
    assert (recipe.agreement, recipe.top1_drop) == (100 - pts(10), pts(10))
    assert (entropy.agreement, entropy.top1_drop) == (100 - pts(4 + 3), pts(4 - 3))
    # the paired counts the bounds are computed from
    assert (recipe.lost, recipe.gained, recipe.labelled, recipe.disagree, recipe.compared) == (10, 0, N, 10, N)
    assert (entropy.lost, entropy.gained, entropy.disagree) == (4, 3, 7)


def test_a_recipe_within_budget_still_meets_every_full_integer_configuration_and_the_most_faithful_wins():
    """All full-integer configurations are equally fast: each is built, none is kept in float, and the most
    faithful within budget wins (here bias correction on the recipe's own method: 1 wrong row against 2)."""
    q = FakeQuantizer(wrong={"mse": 2})
    trials, winner, met = run(q, budget=ub(2), max_float=64, ranking=never)
    assert steps(trials) == ["recipe", "calibration entropy", "calibration minmax", "bias correction on",
                             "gptq rounding"]
    assert trials[0].meets and met and winner is trials[3] and winner.keep_float == []
    assert (winner.recipe.calibration, winner.recipe.bias_correction) == ("mse", True)
    assert winner.result.agreement == max(t.result.agreement for t in trials) and len(q.calls) == 5


def test_the_most_faithful_within_budget_wins_not_the_first():
    q = FakeQuantizer(wrong={"entropy": 2, "minmax": 0}, bias_fix=0)  # entropy meets first, minmax is better
    trials, winner, met = run(q, budget=ub(2), ladder=CALIBRATION_LADDER)
    assert steps(trials)[:5] == ["recipe", "calibration percentile 99.999", "calibration percentile 99.99",
                                 "calibration entropy", "calibration minmax"]
    assert [t.meets for t in trials[:5]] == [False, False, False, True, True]
    assert met and winner is trials[4] and winner.result.agreement == 100.0
    assert (winner.recipe.calibration, winner.recipe.bias_correction) == ("minmax", False)


def test_ladder_skips_the_recipes_own_method():
    q = FakeQuantizer()
    ladder = (("mse", None), ("entropy", None), ("mse", None), ("entropy", None))
    trials, _, met = run(q, budget=ub(1), ladder=ladder)
    assert not met
    assert steps(trials) == ["recipe", "calibration entropy", "bias correction on", "gptq rounding"]


def test_ladder_skips_the_backend_override_and_clears_it():
    # The recipe's [tflite] table makes its own method percentile 99.999 there, with bias correction.
    base = Recipe(name="t", calibration="mse", bias_correction=True,
                  tflite=BackendOverride(calibration="percentile", percentile=99.999))
    q = FakeQuantizer()
    trials, _, met = run(q, budget=ub(1), base=base, ladder=CALIBRATION_LADDER, name="tflite")
    assert not met
    assert steps(trials) == ["recipe", "calibration mse", "calibration percentile 99.99", "calibration entropy",
                             "calibration minmax", "bias correction off", "gptq rounding"]
    # what was built: the override applied to the recipe only, bias correction carried along the ladder
    assert [c["calibration"] for c in q.calls[:5]] == ["percentile 99.999", "mse", "percentile 99.99", "entropy",
                                                       "minmax"]
    assert all(c["bias_correction"] for c in q.calls[:5])


@pytest.mark.parametrize("base_bias", [False, True])
def test_bias_correction_flips_the_most_faithful_trial(base_bias):
    # On top-1, minmax loses least (a lucky 0.5 points) but entropy agrees with float32 most.
    q = FakeQuantizer(wrong={"mse": 10, "entropy": 4, "minmax": 7}, lucky={"minmax": 5})
    base = BASE.replace(bias_correction=base_bias)
    trials, _, met = run(q, budget=ub(1), metric="top1", base=base)
    assert not met
    assert steps(trials) == ["recipe", "calibration entropy", "calibration minmax",
                             "bias correction " + ("off" if base_bias else "on"), "gptq rounding"]
    assert trials[2].result.top1_drop < trials[1].result.top1_drop  # least loss is not most faithful
    bias = trials[-2]
    assert (bias.recipe.calibration, bias.recipe.bias_correction) == ("entropy", not base_bias)
    assert q.calls[-2] == {"calibration": "entropy", "percentile": BASE.percentile,
                           "bias_correction": not base_bias, "keep_float": [], "weight_rounding": "nearest"}
    # then the most faithful of all so far with its weights rounded by GPTQ
    assert q.calls[-1] == {**q.calls[-2], "bias_correction": trials[-1].recipe.bias_correction,
                           "calibration": "entropy", "weight_rounding": "gptq"}


def test_bias_correction_step_can_win():
    q = FakeQuantizer(wrong={"entropy": 3}, bias_fix=2)
    trials, winner, met = run(q, budget=ub(1), max_float=64, ranking=never)
    assert met and winner is trials[-2] and winner.step == "bias correction on"
    assert trials[-1].step == "gptq rounding"  # as faithful here, not more: the earlier one stays


def test_gptq_rounding_step_can_win_before_any_layer_is_kept_in_float():
    q = FakeQuantizer(wrong={"entropy": 5}, gptq_fix=3)
    trials, winner, met = run(q, budget=ub(1), max_float=64, ranking=never)
    assert met and winner is trials[-1] and winner.step == "gptq rounding" and winner.keep_float == []
    assert (winner.recipe.calibration, winner.recipe.bias_correction, winner.recipe.weight_rounding) == \
        ("entropy", True, "gptq")


def test_keep_float_follows_the_ranking_and_stops_at_first_that_meets():
    # lead: entropy with bias correction (4 wrong rows; 1 meets); block1 alone would do, but it ranks last
    q = FakeQuantizer(wrong={"entropy": 5}, layer_fix={"conv1": 1, "block1": 3, "block2": 1, "dense": 1})
    asked = []

    def ranking(recipe):
        asked.append(recipe)
        return ["dense", "conv1", "block2", "block1"]

    trials, winner, met = run(q, budget=ub(1), max_float=64, ranking=ranking)
    assert met and winner is trials[-1]
    assert steps(trials) == ["recipe", "calibration entropy", "calibration minmax", "bias correction on",
                             "gptq rounding", "keep dense in float", "keep conv1 in float", "keep block2 in float"]
    lead = trials[3].recipe  # GPTQ changed nothing here: the first of the equally faithful leads
    assert asked == [lead] and (lead.calibration, lead.bias_correction) == ("entropy", True)
    assert [t.keep_float for t in trials[5:]] == [["dense"], ["dense", "conv1"], ["dense", "conv1", "block2"]]
    assert all(t.recipe == lead for t in trials[5:])
    assert [c["keep_float"] for c in q.calls[5:]] == [t.keep_float for t in trials[5:]]


def test_keep_float_without_ranking_uses_the_backend_layer_order():
    q = FakeQuantizer(layer_fix={"conv1": 1, "block1": 3, "block2": 1, "dense": 1})
    trials, _, met = run(q, budget=ub(1), max_float=64)
    assert met and [t.keep_float for t in trials[5:]] == [["conv1"], ["conv1", "block1"]]


def test_max_float_layers_caps_the_keep_float_steps():
    q = FakeQuantizer(wrong={"entropy": 5})  # the lead (4 wrong rows) needs 3 layers kept in float
    trials, winner, met = run(q, budget=ub(1), max_float=2, ranking=lambda r: ["dense", "conv1", "block2"])
    assert not met
    keeps = [t for t in trials if t.keep_float]
    assert [t.step for t in keeps] == ["keep dense in float", "keep conv1 in float"]
    assert winner is keeps[-1]  # the least loss: 2 wrong rows
    # the same search with one more layer allowed meets
    _, _, met3 = run(FakeQuantizer(wrong={"entropy": 5}), budget=ub(1), max_float=3,
                     ranking=lambda r: ["dense", "conv1", "block2"])
    assert met3


def test_no_float_layers_means_no_ranking_and_least_loss_winner():
    q = FakeQuantizer(bias_fix=-2)  # bias correction hurts here: the best trial is not the last
    trials, winner, met = run(q, budget=ub(1), max_float=0, ranking=never)
    assert not met
    assert steps(trials) == ["recipe", "calibration entropy", "calibration minmax", "bias correction on",
                             "gptq rounding"]
    assert winner is trials[1] and winner.result.agreement == 100 - pts(4)


def test_least_loss_ties_go_to_the_more_faithful_trial():
    # top-1: entropy and minmax both lose 2 points; minmax agrees less (it is lucky on 2 rows)
    q = FakeQuantizer(wrong={"mse": 10, "minmax": 6, "entropy": 4}, lucky={"minmax": 2}, bias_fix=-2)
    trials, winner, met = run(q, budget=ub(1), metric="top1", ladder=(("minmax", None), ("entropy", None)))
    assert not met and trials[1].result.top1_drop == trials[2].result.top1_drop == pts(4)
    assert winner is trials[2]


def test_full_integer_target_means_no_keep_float_trials():
    q = FakeQuantizer()
    trials, _, met = run(q, budget=ub(1), max_float=64, ranking=never, allowed=False)
    assert not met and not any(t.keep_float for t in trials) and len(trials) == 5
    assert all(c["keep_float"] == [] for c in q.calls)


def test_top1_floor_rejects_a_lucky_less_faithful_configuration():
    # recipe: 2 wrong (drop 1 point, agreement 99 %).  entropy: drop 0 by luck, agreement 98 %.
    # percentile: drop 0, agreement 99 %, as faithful as the recipe: that one is accepted.
    q = FakeQuantizer(wrong={"mse": 2, "entropy": 2, "percentile 99.999": 1},
                      lucky={"entropy": 2, "percentile 99.999": 1}, bias_fix=0)
    ladder = (("entropy", None), ("percentile", 99.999))
    trials, winner, met = run(q, budget=ub(1), metric="top1", ladder=ladder)
    entropy = trials[1]
    assert entropy.result.top1_drop == 0.0 and entropy.result.agreement < trials[0].result.agreement
    assert entropy.loss_upper <= ub(1)  # within budget on top-1: only the floor rejects it
    assert not entropy.meets and trials[0].loss_upper > ub(1)
    assert met and winner is trials[2] and winner.step == "calibration percentile 99.999"
    assert winner.result.agreement == trials[0].result.agreement


def test_meets_on_the_upper_bound_not_the_point_estimate():
    # budget ub(1) = 1.66 points: the recipe's 2 wrong rows are 1.0 point, within it as a point estimate, but
    # their upper bound is not; entropy's single wrong row is.
    q = FakeQuantizer(wrong={"mse": 2, "entropy": 1}, bias_fix=0)
    trials, winner, met = run(q, budget=ub(1), ladder=(("entropy", None),))
    recipe = trials[0]
    assert recipe.result.loss("agreement") == pts(2) < ub(1) < recipe.loss_upper and not recipe.meets
    assert met and winner is trials[1] and winner.loss_upper == pytest.approx(ub(1))
    d = recipe.to_dict()
    assert d["loss_upper"] == pytest.approx(ub(2), abs=1e-4) and d["meets_budget"] is False
    assert recipe.loss_upper == loss_upper(recipe.result, "agreement")


def test_top1_bound_counts_every_discordant_image():
    # Both lose 1 row net (0.5 points).  entropy: 1 lost, 0 gained, meets ub(1).  minmax: 3 lost, 2 gained:
    # the same drop from more discordant rows, a wider bound, so it does not meet.  (The recipe, percentile
    # with 8 wrong rows, sets a low agreement floor: only the bound decides here.)
    q = FakeQuantizer(wrong={"mse": 10, "minmax": 3, "entropy": 1}, lucky={"minmax": 2}, bias_fix=0)
    trials, winner, met = run(q, budget=ub(1), metric="top1", ladder=(("minmax", None), ("entropy", None)),
                              base=BASE.replace(calibration="percentile"))
    minmax, entropy = trials[1], trials[2]
    assert minmax.result.top1_drop == entropy.result.top1_drop == pts(1)
    assert (minmax.result.lost, minmax.result.gained) == (3, 2)
    assert minmax.loss_upper == pytest.approx(confidence.drop_upper(3, 2, N)) and minmax.loss_upper > ub(1)
    assert not minmax.meets and met and winner is entropy


def imbalanced_split() -> Split:
    """195 of 200 float32 predictions are class 0: a model answering 0 everywhere collapses yet agrees 97.5 %."""
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(N, CLASSES)).astype(np.float32)
    ref[:195, 0], ref[195:, 0] = 10.0, -10.0
    return Split(np.arange(N, dtype=np.float32)[:, None], ref.argmax(1), ref)


@pytest.mark.parametrize("metric, meets", [("agreement", True), ("top1", False)])
def test_faithfulness_floor_is_for_top1_only(metric, meets):
    # The recipe collapses (fails) with 97.5 % agreement; entropy agrees 97 % and loses 3 points of
    # either metric, within the budget.  Only the top-1 floor (the recipe's agreement) rejects it.
    q = FakeQuantizer(wrong={"entropy": 6}, collapse={"mse"}, bias_fix=0, split=imbalanced_split())
    trials, _, met = run(q, budget=ub(6), metric=metric, ladder=(("entropy", None),))
    assert trials[0].result.collapsed and trials[0].result.agreement == 97.5
    assert trials[1].result.loss(metric) == 3.0 and trials[1].result.agreement == 97.0
    assert trials[1].meets is meets and met is meets


def test_conversion_error_is_a_failed_trial():
    q = FakeQuantizer(wrong={"minmax": 0}, fail={"entropy"})
    seen = []
    trials, winner, met = search(make_backend(q), BASE, ub(1), "agreement", SPLIT, on_trial=seen.append,
                                 plan=SearchPlan(ladder=(("entropy", None), ("minmax", None)), max_float_layers=0,
                                                 latency_runs=0))
    assert met and winner is trials[2] and seen == trials
    assert steps(trials) == ["recipe", "calibration entropy", "calibration minmax", "bias correction on",
                             "gptq rounding"]
    failed = trials[1]
    assert not failed.meets and failed.data == b"" and "no int8 kernel" in failed.details["error"]


def test_failed_conversion_is_never_the_most_faithful():
    q = FakeQuantizer(fail={"entropy"}, wrong={"minmax": 8})
    trials, _, _ = run(q, budget=ub(1), ladder=(("entropy", None), ("minmax", None)))
    assert trials[-2].step == "bias correction on" and trials[-2].recipe.calibration == "minmax"
    assert trials[-1].step == "gptq rounding" and trials[-1].recipe.calibration == "minmax"


def test_every_conversion_failing_is_a_conversion_error():
    q = FakeQuantizer(fail=set(WRONG))
    with pytest.raises(ConversionError, match="every configuration the search tried failed"):
        run(q, budget=ub(1))


def test_least_loss_winner_is_never_a_failed_build_on_top1():
    q = FakeQuantizer(fail={"entropy"})
    trials, winner, met = run(q, budget=ub(1), metric="top1")
    assert not met and winner.data
    failed = trials[1]
    assert failed.loss_upper == math.inf and failed.to_dict()["loss_upper"] is None


@pytest.mark.parametrize("budget, metric, split, error", [
    (-0.1, "agreement", SPLIT, UsageError),
    (1.0, "top5", SPLIT, UsageError),
    (1.0, "top1", Split(SPLIT.x, None, SPLIT.ref), DataError),
    (0.0, "agreement", SPLIT, UsageError),     # a budget of 0 is never resolvable
    (1.5, "top1", SPLIT, UsageError),          # nor 1.5 points on 200 images: one image lost bounds it at 1.66
])
def test_bad_arguments(budget, metric, split, error):
    q = FakeQuantizer()
    with pytest.raises(error):
        search(make_backend(q), BASE, budget, metric, split)
    assert q.calls == []  # refused before building anything


def test_unlabelled_split_is_fine_for_agreement():
    trials, _, met = run(FakeQuantizer(split=Split(SPLIT.x, None, SPLIT.ref)), budget=ub(10))
    assert met and trials[0].result.top1 is None


def test_check_budget_accepts_what_the_selection_images_resolve():
    check_budget(0.3, "top1", 1113, 0.5, 2226)
    check_budget(1.0, "agreement", 333)
    check_budget(ub(1), "agreement", N)


def test_check_budget_names_the_images_needed():
    with pytest.raises(UsageError) as err:
        check_budget(0.3, "top1", 1000, 0.5, 2000)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 300
    assert msg.startswith("--max-drop 0.3 (top1) is finer than 1000 selection images resolve")
    assert "it needs 1113 selection images" in msg
    assert "--data of 2226 at --select-fraction 0.5" in msg and "--select-fraction 0.56 of these 2000" in msg
    assert "a budget of 0.34 or more" in msg
    # no larger --select-fraction fits when the report half would fall under MIN_FINAL images
    with pytest.raises(UsageError) as err:
        check_budget(0.5, "agreement", 250, 0.5, 500)
    assert "--data of 1334 at --select-fraction 0.5)" in str(err.value)
    assert "of these 500" not in str(err.value)
    # without the split, the selection images alone
    with pytest.raises(UsageError, match=r"it needs 333 selection images, or a budget of 1\.33 or more$"):
        check_budget(1.0, "agreement", 250)


def test_check_budget_refuses_zero_on_any_data():
    with pytest.raises(UsageError, match=r"--max-drop 0 \(agreement\) can never be met with confidence.*1\.33 points"):
        check_budget(0.0, "agreement", 250, 0.5, 500)
    with pytest.raises(UsageError, match="can never be met"):
        check_budget(0.0, "top1", 10**6, 0.5, 2 * 10**6)


def test_check_sizes():
    check_sizes(MIN_CALIBRATION, MIN_SELECTION, MIN_FINAL)
    for sizes in [(MIN_CALIBRATION - 1, MIN_SELECTION, MIN_FINAL), (MIN_CALIBRATION, MIN_SELECTION - 1, MIN_FINAL),
                  (MIN_CALIBRATION, MIN_SELECTION, MIN_FINAL - 1)]:
        with pytest.raises(DataError):
            check_sizes(*sizes)
