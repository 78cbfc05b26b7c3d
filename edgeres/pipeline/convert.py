"""``edgeres convert``: load -> calibrate -> convert -> validate -> bench -> report.

Each stage is a plain function over typed inputs; this module only wires them
together, times them, and writes the run folder atomically.  TensorFlow is
imported only inside the stages that need it (load and convert).
"""

from __future__ import annotations

import logging
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgeres import __version__
from edgeres.core.data import Dataset, Preprocess, open_dataset
from edgeres.core.errors import BudgetExceededError, DataError, UsageError
from edgeres.core.fs import (check_output_dir, sha256_file, staged_dir, write_bytes_atomic, write_json_atomic,
                            write_text_atomic)
from edgeres.core.machine import machine_info, tool_versions
from edgeres.core.metrics import COLLAPSE_AGREEMENT, Tally, collapsed, dash
from edgeres.core.quiet import quiet
from edgeres.quant.recipes import Recipe, resolve_recipe
from edgeres.devices.targets import Target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertConfig:
    model: str
    calib: str
    data: str | None
    output_dir: Path
    target: Target
    preprocess: Preprocess = field(default_factory=Preprocess)
    int8: bool = True
    io_dtype: str | None = None  # None: the target's
    input_size: int | None = None
    num_classes: int | None = None
    weights: str | None = None
    calib_size: int = 300
    val_size: int | None = None
    seed: int = 0
    threads: int | None = None  # None: the target's
    runs: int = 50
    warmup: int = 10
    max_drop: float | None = None
    force: bool = False
    on_error: str = "warn"
    batch_size: int = 32
    default_note: str = ""
    recipe: Recipe = field(default_factory=lambda: resolve_recipe(None))
    metric: str = "top1"  # what --max-drop budgets: top1 drop, or agreement lost
    select_fraction: float = 0.5  # of --data, used only to choose a configuration with --max-drop

    @property
    def searching(self) -> bool:
        return self.int8 and self.max_drop is not None and self.data is not None

    @property
    def tflite_io(self) -> str:
        return self.io_dtype or self.recipe.io_dtype or self.target.tflite.io_dtype  # CLI > recipe > target

    @property
    def n_threads(self) -> int:
        return self.threads or self.target.threads


@dataclass
class Artifact:
    name: str  # e.g. tflite_int8
    format: str
    precision: str
    filename: str
    metrics: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class Stages:
    """Times each stage; the report lists them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


Progress = Callable[[str, int], "ProgressBar"]


class ProgressBar:  # minimal protocol; the CLI passes click progress bars
    def update(self, n: int) -> None: ...
    def __enter__(self): return self
    def __exit__(self, *exc): return False


def _no_progress(label: str, length: int) -> ProgressBar:
    return ProgressBar()


def run_convert(cfg: ConvertConfig, progress: Progress = _no_progress) -> dict:
    """Run the whole pipeline; returns the report dict.  Raises EdgeresError on bad input.

    When ``cfg.max_drop`` is exceeded the run folder is still written (marked
    ``passed: false``) and BudgetExceededError is raised afterwards.
    """
    from edgeres.backends import keras_io

    stages = Stages()
    # Cheap checks first, so bad input fails before anything slow happens.
    calib_ds = open_dataset(cfg.calib, "calibration")
    val_ds = open_dataset(cfg.data, "validation") if cfg.data else None
    if val_ds is not None and not val_ds.labelled:
        raise DataError(f"validation data {cfg.data} has no labels: use class subfolders or an .npz with 'y'")
    check_output_dir(cfg.output_dir, cfg.force)

    with stages("load"), quiet():
        loaded = keras_io.load_model(cfg.model, input_size=cfg.input_size,
                                     num_classes=cfg.num_classes, weights=cfg.weights)
        hwc = loaded.hwc
        n_out = loaded.num_outputs
        model_info = keras_io.describe(loaded)
    calib_ds.check_classes(n_out, "calibration")
    select = None
    calib_size = cfg.recipe.calib_size or cfg.calib_size
    if val_ds is not None:
        val_ds.check_classes(n_out, "validation")
        if cfg.val_size:
            val_ds = val_ds.sample(cfg.val_size, cfg.seed)
        if cfg.searching:
            from edgeres.quant.search import check_sizes

            n_select = int(round(len(val_ds) * cfg.select_fraction))
            check_sizes(min(calib_size, len(calib_ds)), n_select, len(val_ds) - n_select)
            select_ds, val_ds = val_ds.split(n_select, cfg.seed + 1)
            with stages("selection_data"):
                from edgeres.quant.search import Split

                sx, sy = select_ds.load(hwc, cfg.preprocess, cfg.on_error)
                select = (select_ds, Split(sx, sy, keras_io.predict(loaded.model, sx)))

    with stages("calibration_data"):
        calib_sample = calib_ds.sample(min(calib_size, len(calib_ds)), cfg.seed)
        with progress("calibration images", len(calib_sample)) as bar:
            parts = []
            for x, _ in calib_sample.batches(hwc, cfg.batch_size, cfg.preprocess, cfg.on_error):
                parts.append(x)
                bar.update(len(x))
        calib = np.concatenate(parts).astype(np.float32)

    artifacts: list[Artifact] = []
    report: dict = {}
    with staged_dir(cfg.output_dir, cfg.force) as stage:
        searches: dict = {}  # back end -> search result, with a budget
        backends: dict = {}  # back end -> the Backend that built its int8 model
        artifacts = _convert_all(cfg, loaded.model, hwc, calib, stage, stages, select and select[1], searches,
                                 backends)
        edgetpu = _edgetpu(cfg, artifacts, stage, stages) if cfg.target.tflite.delegate == "edgetpu" else None
        runners = _open_runners(cfg, artifacts, stage)
        if val_ds is not None:
            with stages("validate"):
                ref = _validate(cfg, loaded.model, val_ds, hwc, n_out, artifacts, runners, progress)
        else:
            ref = None
        with stages("bench"):
            sample = calib[:1]
            _bench(cfg, artifacts, runners, sample, progress)
        report = _report(cfg, model_info, calib_sample, val_ds, artifacts, stages, ref, stage)
        _attach_search(report, cfg, searches, select and select[0])
        _attach_collapse_diagnosis(report, artifacts, backends, loaded.model, calib, cfg.recipe)
        if edgetpu is not None:
            report["edgetpu"] = edgetpu
            report["notes"].extend(edgetpu["notes"])
        write_json_atomic(stage / "report.json", report)
        write_text_atomic(stage / "report.md", render_markdown(report))
    if not report["passed"]:
        raise BudgetExceededError("; ".join(report["failures"]) + f" (report in {cfg.output_dir})")
    return report


def _layer_types(model) -> dict[str, str]:
    return {layer.name: type(layer).__name__ for layer in model.layers}


def _convert_all(cfg: ConvertConfig, model, hwc, calib, stage: Path, stages: Stages, select=None,
                 searches: dict | None = None, backends: dict | None = None) -> list[Artifact]:
    """Write every artifact.  Int8 models follow ``cfg.recipe``; with a ``select`` Split (and a budget)
    each back end's configuration is chosen by :func:`edgeres.quant.search.search` instead.  Fills
    ``searches`` and ``backends`` (both keyed by back end name) for the report."""
    from edgeres.backends import keras_io
    from edgeres.backends import onnx as onnx_conv
    from edgeres.backends import tflite as tflite_conv
    from edgeres.quant.search import Backend

    out: list[Artifact] = []
    searches = {} if searches is None else searches
    backends = {} if backends is None else backends

    def emit(name, fmt, precision, filename, data: bytes, info: dict | None = None):
        write_bytes_atomic(stage / filename, data)
        out.append(Artifact(name, fmt, precision, filename, info=info or {}))

    def int8(backend: Backend, name: str, filename: str, extra: dict):
        recipe = cfg.recipe.for_backend(backend.name)
        if select is None:
            data, details = backend.build(cfg.recipe)
        else:
            from edgeres.quant.search import search

            def report_trial(t) -> None:  # progress: one line per configuration tried
                r = t.result
                log.info(f"{backend.name} search: {t.step}: loss {r.loss(cfg.metric):+.2f} ({cfg.metric}), "
                         f"agreement {r.agreement:.2f}%" + (f", p50 {r.p50_ms:.3f} ms" if r.p50_ms else "")
                         + (" - meets the budget" if t.meets else ""))

            def ranking(r) -> list[str]:
                log.info(f"{backend.name} search: ranking {len(backend.layers)} layers by sensitivity "
                         "(one conversion each)")
                return _ranking(backend, r, select)

            trials, winner, met = search(backend, cfg.recipe, cfg.max_drop, cfg.metric, select, ranking=ranking,
                                         on_trial=report_trial)
            searches[backend.name] = {"trials": trials, "winner": winner, "met": met}
            data, details = winner.data, winner.details
        details = {**extra, **details, "recipe": cfg.recipe.name, "recipe_summary": recipe.summary(),
                   "activations": recipe.activations}
        emit(name, backend.name, "int8", filename, data, details)
        backends[backend.name] = backend

    layer_types = _layer_types(model)
    with stages("tflite_fp32"), quiet():
        emit("tflite_fp32", "tflite", "float32", "model_fp32.tflite", tflite_conv.to_float32(model))
    if cfg.int8:
        static = cfg.target.constraints.static_shapes or cfg.target.constraints.batch_one
        with stages("tflite_int8"):
            with quiet():
                q = tflite_conv.TFLiteQuantizer(keras_io.with_fixed_batch(model, hwc) if static else model, calib,
                                                layer_types)
            backend = Backend("tflite", ".tflite", q, lambda r, k: q.quantize(r, cfg.tflite_io, k),
                              cfg.n_threads, "xnnpack" if cfg.target.tflite.delegate == "edgetpu"
                              else cfg.target.tflite.delegate)
            int8(backend, "tflite_int8", "model_int8.tflite",
                 {"io_dtype": cfg.tflite_io, "static_batch": 1 if static else None})
    with stages("onnx_fp32"), quiet():
        fp32_onnx = onnx_conv.to_float32(model, hwc)
        emit("onnx_fp32", "onnx", "float32", "model_fp32.onnx", fp32_onnx, {"opset": onnx_conv.OPSET})
    if cfg.int8:
        t = cfg.target
        with stages("onnx_int8"):
            with quiet():
                oq = onnx_conv.OnnxQuantizer(fp32_onnx, calib, layer_types)
            backend = Backend("onnx", ".onnx", oq, lambda r, k: oq.quantize(r, t.onnx.activation_type, k),
                              cfg.n_threads, None)
            int8(backend, "onnx_int8", "model_int8.onnx",
                 {"scheme": t.onnx_scheme, "format": "QDQ", "per_channel": cfg.recipe.weights == "per-channel"})
    return out


def _ranking(backend, recipe, split) -> list[str]:
    from edgeres.quant.search import diagnose, rank_layers

    total, done = len(backend.layers), [0]

    def tick(n: int) -> None:  # one conversion per layer: say where we are every 10
        done[0] += n
        if done[0] % 10 == 0 or done[0] == total:
            log.info(f"{backend.name} search: ranked {done[0]}/{total} layers")

    return rank_layers(diagnose(backend, recipe, split, progress=tick, only_quantized=False))


def _attach_search(report: dict, cfg: ConvertConfig, searches: dict, select_ds: Dataset | None) -> None:
    if select_ds is None:
        return
    report["search"] = {
        "budget": cfg.max_drop, "metric": cfg.metric,
        "selection": {**select_ds.describe(), "note": "images used only to choose each configuration; the "
                      "figures above are measured on the other, disjoint validation images"},
        "backends": {}}
    for name, s in searches.items():
        w = s["winner"]
        report["search"]["backends"][name] = {"met": s["met"], "winner": w.to_dict(),
                                              "trials": [t.to_dict() for t in s["trials"]]}
        if not s["met"]:
            report["passed"] = False
            report["failures"].append(
                f"{name}: no configuration met --max-drop {cfg.max_drop:g} ({cfg.metric}) on the selection images; "
                f"wrote the best found ({w.step}), which FAILS the budget")
    report["notes"].append(f"--max-drop search chose each int8 configuration on {len(select_ds)} selection images; "
                           f"accuracy above is measured on {report['validation']['count']} other images")


def _attach_collapse_diagnosis(report: dict, artifacts: list[Artifact], backends: dict, model, calib,
                               recipe: Recipe) -> None:
    """A collapsed int8 model fails with the diagnosis attached (per-layer error and causes)."""
    from edgeres.backends import keras_io
    from edgeres.quant.search import Split, diagnose

    for a in artifacts:
        if a.precision != "int8" or not _collapsed(a) or a.format not in backends:
            continue
        x = calib[:200]
        d = diagnose(backends[a.format], recipe, Split(x, None, keras_io.predict(model, x)), sensitivity=False)
        report.setdefault("diagnosis", {})[a.format] = d
        causes = "; ".join(f"{c['kind']} in {c['layer']}" for c in d["causes"][:3]) or "no single cause found"
        report["failures"].append(f"{a.name} diagnosis: {causes} (see report.json 'diagnosis')")


def _collapsed(a: Artifact) -> bool:
    """One class for (nearly) every image, or agreement with float32 below COLLAPSE_AGREEMENT."""
    return bool(a.metrics.get("collapsed")) or a.metrics.get("agreement", 100.0) < COLLAPSE_AGREEMENT


def _edgetpu(cfg: ConvertConfig, artifacts: list[Artifact], stage: Path, stages: Stages) -> dict | None:
    """Check the int8 model against the Edge TPU's rules and compile it when edgetpu_compiler is installed."""
    from edgeres.devices.edgetpu import check_model, compile_model
    from edgeres.core.errors import RuntimeUnavailableError

    int8 = next((a for a in artifacts if a.name == "tflite_int8"), None)
    if int8 is None:
        return None
    with stages("edgetpu"):
        result = {"check": check_model(stage / int8.filename,
                                       cfg.target.constraints.max_tensor_bytes or 8 * 2**20), "notes": []}
        chk = result["check"]
        if not chk["compatible"]:
            first = chk["first_unsupported"]
            result["notes"].append("Edge TPU: " + (chk["errors"][0] if chk["errors"] else
                                   f"op #{first['index']} {first['op']} runs on the CPU and splits the graph "
                                   f"({first['reason']})"))
        try:
            with quiet():
                result["compiler"] = compile_model(stage / int8.filename, stage)
            result["notes"].append(f"Edge TPU compiler: {result['compiler'].get('ops_on_tpu')} ops on the TPU, "
                                   f"{result['compiler'].get('ops_on_cpu')} on the CPU")
        except RuntimeUnavailableError as exc:
            result["compiler"] = None
            result["notes"].append(f"not compiled for the Edge TPU: {exc}")
    return result


def _open_runners(cfg: ConvertConfig, artifacts: list[Artifact], stage: Path) -> dict:
    from edgeres.core.runtime import open_runner

    runners = {}
    for a in artifacts:
        delegate = cfg.target.tflite.delegate if a.format == "tflite" else None
        if delegate == "edgetpu":  # the Edge TPU compiles separately; validate on the CPU here
            delegate = "xnnpack"
        with quiet():
            r = open_runner(stage / a.filename, threads=cfg.n_threads, delegate=delegate)
        a.info.update(r.describe())
        a.info["input_quant"] = r.input_quant
        a.info["output_quant"] = r.output_quant
        runners[a.name] = r
    return runners


def _validate(cfg, model, val_ds: Dataset, hwc, n_out, artifacts, runners, progress) -> dict:
    topk = 5 if n_out > 10 else 1
    ref_tally = Tally(topk=topk)
    tallies = {a.name: Tally(topk=topk) for a in artifacts}
    with progress("validating", len(val_ds)) as bar:
        for x, y in val_ds.batches(hwc, cfg.batch_size, cfg.preprocess, cfg.on_error):
            ref = np.asarray(model(x, training=False))
            ref_tally.update(ref, y)
            for a in artifacts:
                tallies[a.name].update(runners[a.name].predict(x), y, ref)
            bar.update(len(x))
    ref_metrics = ref_tally.result()
    for a in artifacts:
        a.metrics = tallies[a.name].result()
        a.metrics["top1_drop"] = ref_metrics["top1"] - a.metrics["top1"]
        a.metrics["collapsed"] = collapsed(tallies[a.name].predictions) and not collapsed(
            ref_tally.predictions)
    return ref_metrics


def _bench(cfg, artifacts, runners, sample, progress) -> None:
    from edgeres.core.timing import measure_interleaved

    fns = {a.name: runners[a.name].timed_invoke(runners[a.name].quantize_input(sample)) for a in artifacts}
    with progress("benchmarking", cfg.runs * len(fns)) as bar:
        results = measure_interleaved(fns, runs=cfg.runs, warmup=cfg.warmup, progress=bar.update)
    for a in artifacts:
        stats, samples = results[a.name]
        a.latency = stats.to_dict(samples)


def _report(cfg, model_info, calib_ds, val_ds, artifacts, stages, ref, stage: Path) -> dict:
    p50 = {a.name: a.latency.get("p50") for a in artifacts}
    rows = []
    failures: list[str] = []
    for a in artifacts:
        path = stage / a.filename
        fp32 = f"{a.format}_fp32"
        row = {
            "name": a.name, "format": a.format, "precision": a.precision, "path": a.filename,
            "size_bytes": path.stat().st_size, "sha256": sha256_file(path),
            "input_dtype": a.info.get("input_dtype"), "output_dtype": a.info.get("output_dtype"),
            "input_quant": a.info.get("input_quant"), "output_quant": a.info.get("output_quant"),
            "runtime": a.info.get("runtime"), "runtime_version": a.info.get("runtime_version"),
            "delegate": a.info.get("delegate"), "threads": a.info.get("threads"),
            "top1": a.metrics.get("top1"), "top5": a.metrics.get("top5"),
            "top1_drop": a.metrics.get("top1_drop"), "agreement": a.metrics.get("agreement"),
            "sqnr_db": a.metrics.get("sqnr_db"), "max_abs_diff": a.metrics.get("max_abs_diff"),
            "latency_ms": {k: a.latency[k] for k in ("min", "p50", "p90", "p99", "mean", "stdev",
                                                     "first", "runs", "warmup", "unstable")},
            "latency_samples_ms": a.latency.get("samples_ms"),
            "speedup_vs_fp32": (p50[fp32] / p50[a.name]) if p50.get(fp32) and p50.get(a.name) else None,
            "details": {k: v for k, v in a.info.items() if k in (
                "io_dtype", "full_integer", "scheme", "format", "per_channel", "calibration", "opset", "float_nodes",
                "static_batch", "recipe", "recipe_summary", "engine", "output_range", "float_layers",
                "bias_corrected_layers", "activations")},
        }
        rows.append(row)
        if a.precision != "int8" or not a.metrics:
            continue
        if _collapsed(a):
            failures.append(f"{a.name} collapsed: agreement with float32 is {a.metrics.get('agreement', 0):.1f}%")
        if cfg.max_drop is not None and a.metrics["top1_drop"] > cfg.max_drop:
            failures.append(f"{a.name} drops {a.metrics['top1_drop']:.2f} points of top-1 "
                            f"(budget {cfg.max_drop:g})")
    notes = []
    if cfg.default_note:
        notes.append(cfg.default_note)
    if val_ds is None:
        notes.append("no --data given: accuracy was not measured")
    host = platform.machine()
    if cfg.target.arch != host:
        notes.append(f"accuracy and latency were measured on {host}; the target is {cfg.target.arch}. "
                     "With XNNPACK (ai-edge-litert) int8 results were bit-identical on x86 and aarch64, but "
                     "tflite-runtime 2.14's built-in kernels round differently per architecture (docs/arm.md): "
                     "run 'edgeres validate' on the device")
    unstable = [a.name for a in artifacts if a.latency.get("unstable")]
    if unstable:
        notes.append(f"latency unstable (stdev > 10% of mean) for: {', '.join(unstable)}")
    return {
        "edgeres_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {k: model_info[k] for k in ("name", "source", "kind", "params", "trainable_params", "macs",
                                             "input_shape", "output_shape", "layers")},
        "preprocess": cfg.preprocess.to_dict(),
        "target": {"name": cfg.target.name, "arch": cfg.target.arch, "threads": cfg.n_threads,
                   "tflite_delegate": cfg.target.tflite.delegate, "tflite_io_dtype": cfg.tflite_io,
                   "onnx_scheme": cfg.target.onnx_scheme},
        "calibration": {**calib_ds.describe(), "seed": cfg.seed},
        "validation": val_ds.describe() if val_ds is not None else None,
        "reference": {"name": "keras_fp32", **(ref or {})},
        "artifacts": rows,
        "stages_seconds": stages.seconds,
        "conversion_seconds": sum(v for k, v in stages.seconds.items() if k not in ("validate", "bench")),
        "max_drop": cfg.max_drop,
        "passed": not failures,
        "failures": failures,
        "notes": notes,
        "machine": machine_info(),
        "tools": tool_versions(),
    }


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


TABLE_HEADER = ("artifact", "format", "precision", "size", "top-1 %", "drop pp", "agree %", "p50 ms",
                "speedup")


def table_rows(report: dict) -> list[tuple[str, ...]]:
    ref = report.get("reference") or {}
    rows = [("keras (reference)", "keras", "float32", "-", dash(ref.get("top1"), ".2f"), "-", "-", "-", "-")]
    for a in report["artifacts"]:
        precision = "int16x8" if a["details"].get("activations") == "int16" else a["precision"]
        scheme = a["details"].get("scheme") if precision == "int8" else None
        rows.append((a["name"], a["format"], precision + (f" ({scheme})" if scheme else ""),
                     human_size(a["size_bytes"]), dash(a["top1"], ".2f"), dash(a["top1_drop"], "+.2f"),
                     dash(a["agreement"], ".2f"), dash(a["latency_ms"]["p50"], ".3f"),
                     dash(a["speedup_vs_fp32"], ".2f", "x")))
    return rows


def render_markdown(report: dict) -> str:
    m = report["model"]
    lines = [f"# edgeres report: {m['name']}", "",
             f"Model: `{m['source']}`, {m['params']:,} parameters, {m['macs']:,} MACs, input "
             f"{m['input_shape']}.  Target: `{report['target']['name']}` "
             f"({report['target']['threads']} threads).", ""]
    cal, val = report["calibration"], report["validation"]
    lines.append(f"Calibration: {cal['count']} images from `{cal['source']}`.  "
                 + (f"Validation: {val['count']} held-out images from `{val['source']}`." if val else
                    "No validation data."))
    recipes = [f"{a['name']}: recipe `{a['details']['recipe']}` ({a['details'].get('recipe_summary', '')}"
               + (f"; float layers: {', '.join(a['details']['float_layers'])}" if a['details'].get('float_layers')
                  else "; full-integer" if a['details'].get('full_integer') else "") + ")"
               for a in report["artifacts"] if a["details"].get("recipe")]
    if recipes:
        lines += ["", "Int8: " + ".  ".join(recipes) + "."]
    lines += ["", "| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    lines += ["", "Drop: top-1 percentage points lost against Keras float32.  Agree: top-1 agreement with "
              "Keras float32.  Latency: batch 1, median of "
              f"{report['artifacts'][0]['latency_ms']['runs']} runs after warm-up; speedup over float32 on the "
              "same runtime.", "", "Stage times (s): " + ", ".join(
                  f"{k} {v:.2f}" for k, v in report["stages_seconds"].items()), ""]
    search = report.get("search")
    if search:
        lines += [f"## --max-drop search: budget {search['budget']:g} ({search['metric']}), chosen on "
                  f"{search['selection']['count']} selection images", ""]
        for backend, s in search["backends"].items():
            lines += [f"{backend}: chose **{s['winner']['step']}**" + ("" if s["met"] else " (FAILS the budget)"),
                      "", "| step | top-1 drop | agree % | p50 ms | float layers | meets |", "|---|---|---|---|---|---|"]
            lines += [f"| {t['step']} | {dash(t['top1_drop'], '+.2f')} | {dash(t['agreement'], '.2f')} | "
                      f"{dash(t['p50_ms'], '.3f')} | {', '.join(t['keep_float']) or '-'} | "
                      f"{'yes' if t['meets_budget'] else 'no'} |" for t in s["trials"]]
            lines.append("")
    if report["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in report["notes"]] + [""]
    lines.append(f"Result: {'PASSED' if report['passed'] else 'FAILED: ' + '; '.join(report['failures'])}")
    return "\n".join(lines) + "\n"


def parse_usage(value: float | None, name: str) -> None:
    if value is not None and value < 0:
        raise UsageError(f"{name} must be 0 or more, got {value:g}")
