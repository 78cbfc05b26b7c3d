"""Per-layer int8 diagnosis: error and sensitivity of each layer, failure causes, table and plot.

LIGHT layer: numpy, a runtime, and the back end it is handed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgeres.core.executor import Executor, LocalExecutor
from edgeres.core.metrics import dash, sqnr_db
from edgeres.quant.backend import Backend
from edgeres.quant.evaluate import Split, evaluate
from edgeres.quant.recipes import Recipe
from edgeres.quant.stats import ActivationStats

OUTLIER_RATIO = 8.0       # max|x| over the 99.99th percentile range: one value stretches the grid
DEAD_FRACTION = 0.25      # share of a layer's channels constant over the calibration set
COVERAGE_OUTSIDE = 0.001  # share of validation values outside the calibrated range
SHIFT_SIGMAS = 0.5        # validation mean this many calibration stdevs away


def find_causes(calib: ActivationStats, val: ActivationStats, layers: dict[str, str]) -> list[dict]:
    """Classic int8 failure causes, each naming the layer and the evidence.

    - ``outliers``: a few activations stretch the range so the rest share few levels;
    - ``dead_channels``: channels constant over the calibration images;
    - ``calibration_coverage``: the validation images drive a tensor outside, or far
      from, what the calibration images showed (calibration set unrepresentative).
    """
    causes: list[dict] = []
    for key, layer in layers.items():
        s = calib.tensors.get(key)
        if s is None or s.count == 0:
            continue
        if s.hist is not None and s.hist.sum() > 0:
            a, b = calib.range(key, "percentile", 99.99)
            span, full = b - a, s.hi - min(s.lo, 0.0)
            if span > 0 and full / span >= OUTLIER_RATIO:
                causes.append({"kind": "outliers", "layer": layer, "tensor": key,
                               "detail": f"max |x| {max(abs(s.lo), abs(s.hi)):.3g} is {full / span:.0f}x the "
                                         f"99.99th-percentile range {span:.3g}: try calibration = \"percentile\" "
                                         "or \"mse\""})
        if s.ch_lo is not None and len(s.ch_lo) > 1:
            const = int(((s.ch_hi - s.ch_lo) <= 1e-6 * max(abs(s.hi), abs(s.lo), 1e-12)).sum())
            if const and const >= DEAD_FRACTION * len(s.ch_lo):
                causes.append({"kind": "dead_channels", "layer": layer, "tensor": key,
                               "detail": f"{const} of {len(s.ch_lo)} channels are constant on the calibration "
                                         "images"})
        v = val.tensors.get(key)
        if v is None or v.count == 0:
            continue
        outside = 0.0
        if v.hi > s.hi or v.lo < s.lo:
            outside = max(v.hi - s.hi, s.lo - v.lo, 0.0) / max(s.hi - s.lo, 1e-12)
        if s.std <= 1e-12 and v.std <= 1e-12 and abs(v.mean - s.mean) <= 1e-12:
            continue  # constant on both sets (zero padding channels)
        shift = abs(v.mean - s.mean) / max(s.std, 1e-12)
        ratio = v.std / max(s.std, 1e-12)
        if shift > SHIFT_SIGMAS or not 0.5 <= ratio <= 2.0 or outside > 0.5:
            causes.append({"kind": "calibration_coverage", "layer": layer, "tensor": key,
                           "detail": f"validation mean {v.mean:.3g} / std {v.std:.3g} against calibration "
                                     f"{s.mean:.3g} / {s.std:.3g}; range exceeded by {100 * outside:.0f}%: "
                                     "calibrate on images like the deployment data"})
    # one line per (kind, layer)
    seen, unique = set(), []
    for c in causes:
        if (c["kind"], c["layer"]) not in seen:
            seen.add((c["kind"], c["layer"]))
            unique.append(c)
    return unique


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


def diagnose(backend: Backend, recipe: Recipe, split: Split, sensitivity: bool = True,
             progress: Callable[[int], None] | None = None, only_quantized: bool = True,
             executor: Executor | None = None) -> dict:
    """Per-layer error and sensitivity of ``recipe`` on ``backend``, and the failure causes found.

    Sensitivity needs two conversions per layer: all other layers float
    (``only_quantized``; the search skips it), and only this layer float.
    Each layer's is independent of the others': an ``executor`` (``--ray``)
    measures them side by side, with the same figures.
    """
    data, _ = backend.build(recipe)
    base = evaluate(backend, data, split)
    errors = layer_errors(backend, data, split)
    layers = backend.layers
    reports = {name: LayerReport(name, backend.quantizer.layer_ops.get(name, [])) for name in layers}
    for name, (sqnr, rmse) in errors.items():
        reports[name].sqnr_db, reports[name].rmse_rel = sqnr, rmse
    if sensitivity:
        shared = (backend, recipe, split, base.agreement, base.sqnr_db, only_quantized)
        tick = (lambda i, result: progress(1)) if progress else None
        results = (executor or LocalExecutor()).map(layer_sensitivity, layers, shared=shared, progress=tick)
        for name, (only_q, gain, sqnr_gain) in zip(layers, results):
            r = reports[name]
            r.only_quantized_loss, r.only_float_gain, r.only_float_sqnr_gain = only_q, gain, sqnr_gain
    val_stats = backend.quantizer.collect_stats(split.x)
    causes = find_causes(backend.quantizer.stats, val_stats, backend.quantizer.stat_layers())
    for c in causes:
        if c["layer"] in reports:
            reports[c["layer"]].causes.append(c["kind"])
    return {"backend": backend.name, "recipe": recipe.for_backend(backend.name).to_dict(),
            "model": base.to_dict(), "layers": [r.to_dict() for r in reports.values()], "causes": causes,
            "images": len(split)}


def layer_sensitivity(shared, name: str) -> tuple[float | None, float, float]:
    """One layer's sensitivity: (agreement lost with only it int8, or None; agreement and SQNR regained with
    only it float).  A task an executor may run anywhere."""
    backend, recipe, split, base_agreement, base_sqnr, only_quantized = shared
    only_q_loss = None
    if only_quantized:
        only_q, _ = backend.build(recipe, [n for n in backend.layers if n != name])
        only_q_loss = 100.0 - evaluate(backend, only_q, split).agreement
    only_f, _ = backend.build(recipe, [name])
    res = evaluate(backend, only_f, split)
    return only_q_loss, res.agreement - base_agreement, res.sqnr_db - base_sqnr


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


HEADER = ("layer", "ops", "SQNR dB", "RMSE/range", "only-int8 loss", "only-float gain", "float dB gain", "causes")


def table_rows(diagnosis: dict) -> list[tuple[str, ...]]:
    return [(r["layer"], "+".join(dict.fromkeys(r["ops"])), dash(r["sqnr_db"], ".1f"), dash(r["rmse_rel"], ".4f"),
             dash(r["only_quantized_loss"], "+.2f"), dash(r["only_float_gain"], "+.2f"),
             dash(r.get("only_float_sqnr_gain"), "+.2f"), ", ".join(r["causes"]) or "-")
            for r in diagnosis["layers"]]


def plot(diagnosis: dict, path) -> None:
    """Bar chart: per-layer SQNR and the agreement regained by keeping each layer in float."""
    from edgeres.core.plots import pyplot, save_figure

    plt = pyplot()

    rows = diagnosis["layers"]
    names = [r["layer"] for r in rows]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.35 * len(rows)), 7), sharex=True)
    sqnr = [r["sqnr_db"] if r["sqnr_db"] is not None and np.isfinite(r["sqnr_db"]) else np.nan for r in rows]
    axes[0].bar(names, sqnr, color="#4c72b0")  # an exact layer (infinite SQNR) shows as a gap
    axes[0].set_ylabel("output SQNR vs float (dB)")
    axes[1].bar(names, [r.get("only_float_sqnr_gain") if r.get("only_float_sqnr_gain") is not None else np.nan
                        for r in rows], color="#dd8452")
    axes[1].set_ylabel("output SQNR regained\nwith only it float (dB)")
    axes[1].tick_params(axis="x", rotation=90)
    fig.suptitle(f"edgeres diagnose: {diagnosis['backend']}, {diagnosis['images']} images")
    fig.tight_layout()
    save_figure(fig, path)
