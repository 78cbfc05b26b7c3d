"""``edgeres bench``: latency of .tflite/.onnx files, on the device itself.

LIGHT layer: numpy, the standard library and one runtime; never TensorFlow.
Timing and statistics live in :mod:`edgeres.core.timing`; this module builds the
configurations (model x threads), feeds them inputs, and collects what a user
needs to trust a number: load time, first inference, spread, peak memory,
which ops ran on the delegate, the machine, and stability warnings.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeres.bundle import manifest
from edgeres.core.data import Preprocess, open_dataset
from edgeres.core.errors import EdgeresError, ShapeError, UsageError
from edgeres.core.limits import MAX_CHANNELS, MAX_INPUT_SIZE, check_threads
from edgeres.core.machine import machine_info
from edgeres.core.quiet import quiet
from edgeres.core.runtime import Runner, TFLiteRunner, open_runner
from edgeres.core.timing import UNSTABLE_CV, measure

FREQ_PATH = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
THERMAL_PATH = Path("/sys/class/thermal/thermal_zone0/temp")


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...]
    threads: tuple[int, ...] = (2,)
    delegate: str | None = None
    runs: int = 100
    warmup: int = 10
    min_time: float = 0.0
    data: str | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    shape: tuple[int, ...] | None = None
    seed: int = 0


def parse_threads(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--threads takes comma-separated integers, got {text!r}") from None
    if not values:
        raise UsageError(f"--threads takes comma-separated integers, got {text!r}")
    return tuple(check_threads(v, "--threads") for v in values)


MAX_BENCH_BATCH = 1024  # images per timed inference: far above an edge model's batch


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """--shape as N,H,W,C (also NxHxWxC), whatever the models' own layout: the runner maps it onto NCHW
    models and refuses values that contradict a fixed dimension."""
    if text is None:
        return None
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"--shape takes N,H,W,C, got {text!r}") from None
    if any(d < 1 for d in dims):
        raise UsageError(f"--shape dims must be positive, got {text!r}")
    if len(dims) != 4 or dims[0] > MAX_BENCH_BATCH or max(dims[1:3]) > MAX_INPUT_SIZE or dims[3] > MAX_CHANNELS:
        raise UsageError(f"--shape takes N,H,W,C (N at most {MAX_BENCH_BATCH}, H and W at most {MAX_INPUT_SIZE}, "
                         f"C at most {MAX_CHANNELS}), got {text!r}")
    return dims


def make_input(runner: Runner, cfg: BenchConfig) -> np.ndarray:
    """One input of ``runner.batch`` images (1 unless the model has a fixed batch or --shape gives N), NHWC, in
    the model's own dtype: real images (the sample repeated to fill the batch) or random data."""
    batch = runner.batch
    if cfg.data:
        ds = open_dataset(cfg.data, "benchmark")
        ds = ds.sample(min(batch, len(ds)), cfg.seed)
        x = next(ds.batches(runner.hwc, batch, _preprocess(str(runner.path), cfg), "warn"))[0]
        x = x[np.arange(batch) % len(x)]
        if np.issubdtype(runner.input_dtype, np.integer) and runner.input_quant is None:
            if not np.allclose(x, np.round(x)) or x.min() < np.iinfo(runner.input_dtype).min or \
                    x.max() > np.iinfo(runner.input_dtype).max:
                raise ShapeError(f"{runner.path.name} takes {runner.input_dtype.name} input without quantization "
                                 f"parameters, but --data gives values outside it after preprocessing")
        return runner.quantize_input(x)
    rng = np.random.default_rng(cfg.seed)
    shape = (batch, *runner.hwc)
    if np.issubdtype(runner.input_dtype, np.integer):
        info = np.iinfo(runner.input_dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(runner.input_dtype)
    return rng.uniform(0, 255, size=shape).astype(runner.input_dtype)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def bench_one(path: str, threads: int, cfg: BenchConfig) -> dict:
    with quiet():
        runner = open_runner(path, threads=threads, delegate=cfg.delegate, shape=cfg.shape)
    x = make_input(runner, cfg)
    fn = runner.timed_invoke(x)
    freq0, temp0 = _read_int(FREQ_PATH), _read_int(THERMAL_PATH)
    stats, samples = measure(fn, runs=cfg.runs, warmup=cfg.warmup, min_time=cfg.min_time)
    freq1, temp1 = _read_int(FREQ_PATH), _read_int(THERMAL_PATH)
    warnings = []
    if stats.unstable:
        warnings.append(f"unstable: stdev {stats.stdev:.3f} ms is {100 * stats.stdev / stats.mean:.0f}% of the "
                        f"mean (over {100 * UNSTABLE_CV:.0f}%); close other programs or raise --runs")
    if freq0 and freq1 and abs(freq1 - freq0) > 0.1 * freq0:
        warnings.append(f"CPU frequency changed during the run: {freq0 // 1000} -> {freq1 // 1000} MHz")
    if temp0 and temp1 and temp1 - temp0 >= 5000:
        warnings.append(f"CPU temperature rose {temp0 / 1000:.0f} -> {temp1 / 1000:.0f} C (thermal throttling?)")
    result = {
        "model": str(path),
        "format": runner.format,
        "size_bytes": Path(path).stat().st_size,
        "threads": threads,
        "delegate": runner.delegate,
        "runtime": runner.runtime.name,
        "runtime_version": runner.runtime.version,
        "input_shape": [runner.batch, *runner.input_shape[1:]],
        "layout": runner.layout,
        "batch": runner.batch,
        "fixed_batch": runner.fixed_batch,
        "input_dtype": runner.input_dtype.name,
        "input": "data" if cfg.data else "random",
        "load_ms": runner.load_seconds * 1000.0,
        "latency_ms": stats.to_dict(),
        "per_image_p50_ms": stats.p50 / runner.batch,
        "samples_ms": samples,
        "peak_rss_mb": _peak_rss_mb(),
        "warnings": warnings,
    }
    if isinstance(runner, TFLiteRunner):
        result["ops"] = runner.delegate_coverage()
        result["throughput"] = throughput(runner.macs() * runner.batch, stats.p50, threads,
                                          runner.compute_precision(), runner.delegate)
    else:
        result["ops"] = {"delegate": runner.delegate, "providers": runner.sess.get_providers()}
    return result


def throughput(macs: int, p50_ms: float, threads: int, precision: str, delegate: str = "xnnpack") -> dict:
    """Achieved GOP/s at p50, as a fraction of the ceiling measured here with the same runtime, delegate and
    threads (:mod:`edgeres.measure.roofline`), and for int8 of the CPU's theoretical peak where it is known."""
    from edgeres.core.machine import int8_peak
    from edgeres.measure.roofline import measured_ceiling

    gops = 2.0 * macs / (p50_ms / 1000.0) / 1e9 if p50_ms > 0 else None
    out = {"macs": macs, "gops": gops, "precision": precision}
    if gops and macs and delegate in ("xnnpack", "none", "reference"):
        try:
            ceiling = measured_ceiling(threads, delegate, precision)
        except (EdgeresError, ImportError) as exc:  # a runtime without the schema bindings: no ceiling, say why
            out["ceiling_note"] = f"no measured ceiling: {exc}"
        else:
            out.update({"ceiling_gops": 2 * ceiling["gmacs"], "fraction_of_ceiling": gops / (2 * ceiling["gmacs"]),
                        "ceiling": ceiling})
    if precision == "int8":
        peak = int8_peak()
        if peak.get("gops") and gops:
            used = min(threads, peak["cores"])
            peak_used = peak["gops"] * used / peak["cores"]
            if gops > 0.9 * peak_used:
                out["note"] = ("over 90% of the peak computed from the reported clock: that clock is likely the "
                               "base clock (VMs report it; turbo runs faster), so the true fraction is lower")
            out.update({"int8_peak_gops": peak_used, "fraction_of_peak": gops / peak_used,
                        "peak_basis": f"{used} cores x {peak['ghz']:.2f} GHz ({peak['clock_source']}) x "
                                      f"{peak['int8_macs_per_cycle_per_core']} int8 MACs/cycle x 2: {peak['note']}"})
            if out.get("ceiling_gops", 0) > peak_used:  # measured beats "theoretical": the clock is not the real one
                out["peak_note"] = (f"the measured ceiling is above this peak: the cores run faster than the "
                                    f"{peak['ghz']:.2f} GHz reported ({peak['clock_source']}; a VM reports its base "
                                    "clock), so the fraction of the measured ceiling is the one to trust")
    return out


def resolve_models(paths) -> tuple[str, ...]:
    """``paths`` with each app bundle (or model in one) checked against its manifest, bundles expanded to
    their models: nothing is timed until every bundle checks."""
    return tuple(str(p) for path in paths for p in manifest.resolve(path)[0])


def _preprocess(path: str, cfg: BenchConfig) -> Preprocess:
    """A bundled model's own preprocessing (raw pixels when folded); else the options'."""
    return manifest.preprocess_of(path) or cfg.preprocess


def run_bench(cfg: BenchConfig, progress=None) -> dict:
    results = []
    t0 = time.perf_counter()
    for path in resolve_models(cfg.models):
        for threads in cfg.threads:
            results.append(bench_one(path, threads, cfg))
            if progress:
                progress(1)
    batches = sorted({r["batch"] for r in results})
    return {"machine": machine_info(), "results": results, "seconds": time.perf_counter() - t0,
            "settings": {"runs": cfg.runs, "warmup": cfg.warmup, "min_time": cfg.min_time,
                         "batch": batches[0] if len(batches) == 1 else batches,
                         "input": "data" if cfg.data else "random",
                         "preprocess": cfg.preprocess.to_dict() if cfg.data else None}}


def coverage_text(ops: dict) -> str:
    if "ops_total" not in ops:
        return ops.get("delegate", "-")
    if ops["delegate"] == "none" or ops["partitions"] == 0:
        return f"0 of {ops['ops_total']} delegated"
    text = f"{ops['ops_delegated']} of {ops['ops_total']} on {ops['delegate']}"
    if ops["cpu_ops"]:
        text += " (CPU: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops["cpu_ops"].items())) + ")"
    return text


def plot(report: dict, path: Path) -> None:
    """The latency distributions, one box per configuration, in the format the suffix names."""
    from edgeres.core.plots import pyplot, save_figure

    plt = pyplot()
    res = report["results"]
    labels = [f"{Path(r['model']).name}\n{r['delegate'].replace('ExecutionProvider', '')}, {r['threads']} thr"
              for r in res]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(res)), 4.5))
    ax.boxplot([r["samples_ms"] for r in res], showfliers=True, whis=(1, 99))
    ax.set_xticks(range(1, len(res) + 1), labels, fontsize=8)
    ax.set_yscale("log")  # keeps the boxes readable next to rare slow outliers
    ax.set_ylabel("latency per inference (ms, log scale)")
    ax.set_title(f"edgeres bench: {report['machine']['cpu']}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
