"""The ``edgeres`` command line.

Heavy modules (keras, TensorFlow, tf2onnx) are imported inside the command
bodies that need them, so ``edgeres info``/``targets`` on ``.tflite``/``.onnx``
files run with only numpy and a runtime installed.

Exit codes: 0 success; 1 other user error; 2 bad usage; 3 model problem;
4 data problem; 5 shape/class mismatch; 6 conversion failed; 7 runtime or
delegate missing; 8 output exists; 10 accuracy budget not met (artifacts and
report are still written); 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from contextlib import redirect_stdout
from pathlib import Path

import click

from edgeres import __version__
from edgeres.core.errors import DataError, EdgeresError, UsageError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

log = logging.getLogger("edgeres")


_HEAVY = ("tensorflow", "keras", "tf2onnx", "onnx", "matplotlib")


class _Group(click.Group):
    """Turns every EdgeresError into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgeresError as exc:
            click.echo(f"edgeres: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in _HEAVY:
                click.echo(f"edgeres: error: this command needs {exc.name.split('.')[0]}, which is not installed: "
                           "pip install 'edgeres[convert]'", err=True)
                ctx.exit(7)
            raise
        except KeyboardInterrupt:
            click.echo("edgeres: interrupted", err=True)
            ctx.exit(130)


class _WarningsToStderr(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"edgeres: {record.levelname.lower()}: {record.getMessage()}", err=True)


EXIT_CODES = """\b
Exit codes: 0 ok, 1 other error, 2 bad usage, 3 model, 4 data, 5 shape/classes,
6 conversion/unsupported op, 7 runtime or delegate missing, 8 output exists,
10 accuracy budget not met (run folder still written), 130 interrupted."""


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="edgeres")
@click.option("-v", "--verbose", is_flag=True, help="Show converter logs and debug messages.")
def cli(verbose: bool) -> None:
    """Take a Keras ResNet (or any Keras image classifier) to int8 TFLite and ONNX,
    and measure what it cost in accuracy, size and latency."""
    root = logging.getLogger("edgeres")
    root.handlers[:] = [_WarningsToStderr()]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        os.environ["EDGERES_VERBOSE"] = "1"


def main() -> None:
    cli(prog_name="edgeres")


# ---------------------------------------------------------------- shared options

def preprocess_options(fn):
    """--scale/--mean/--std/--resize, turned into one ``preprocess`` argument."""
    @click.option("--scale", type=float, default=1.0, show_default=True,
                  help="Multiply pixels (0..255) by S before normalising.")
    @click.option("--mean", default=None, metavar="R,G,B", help="Subtract per-channel mean (after --scale).")
    @click.option("--std", default=None, metavar="R,G,B", help="Divide by per-channel std.")
    @click.option("--resize", type=click.Choice(["crop", "stretch"]), default="crop", show_default=True,
                  help="Fit images to the model input: keep aspect and center-crop, or stretch.")
    @functools.wraps(fn)
    def wrapper(*args, scale, mean, std, resize, **kwargs):
        from edgeres.core.data import Preprocess

        kwargs["preprocess"] = Preprocess.parse(scale, mean, std, resize)
        return fn(*args, **kwargs)
    return wrapper


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON to stdout.")(fn)


def _progress(enabled: bool):
    def make(label: str, length: int):
        if not enabled:
            from edgeres.pipeline.convert import ProgressBar
            return ProgressBar()
        return click.progressbar(length=length, label=f"{label:<20}", file=sys.stderr, show_pos=True,
                                 show_eta=False)
    return make


def _echo_table(header, rows) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    click.echo(line(header))
    click.echo("  ".join("-" * w for w in widths))
    for r in rows:
        click.echo(line(r))


# ---------------------------------------------------------------- convert

@cli.command()
@click.argument("model", required=False)
@click.option("--calib", type=click.Path(), help="Calibration images: folder (class subfolders or flat) or .npz.")
@click.option("--data", type=click.Path(), help="Held-out labelled validation set: class-subfolder folder or .npz with y.")
@click.option("--int8/--no-int8", default=False, help="Also produce full-integer int8 TFLite and int8 ONNX.")
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), default=Path("edgeres-out"),
              show_default=True, help="Run folder for artifacts and reports.")
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--target", default=None, metavar="NAME|FILE",
              help="Device profile (see 'edgeres targets'); default: this machine's.")
@click.option("--io-dtype", type=click.Choice(["int8", "uint8", "float32"]), default=None,
              help="I/O dtype of the int8 TFLite model (default: the target's).")
@click.option("--calib-size", type=click.IntRange(min=1), default=300, show_default=True,
              help="Calibration images to sample (deterministic, --seed).")
@click.option("--val-size", type=click.IntRange(min=1), default=None, help="Validate on a sample of N images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="Inference threads (default: the target's).")
@click.option("--runs", type=click.IntRange(min=50), default=50, show_default=True,
              help="Timed runs per artifact after warm-up.")
@click.option("--warmup", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--max-drop", type=float, default=None, metavar="PP",
              help="Accuracy budget: search, on part of --data, for the fastest int8 configuration losing at most "
                   "PP points (see --metric); exit 10 when none does (the best one is still written).")
@click.option("--metric", type=click.Choice(["top1", "agreement"]), default="top1", show_default=True,
              help="What --max-drop budgets: top-1 points lost, or points of top-1 agreement with float32 lost.")
@click.option("--select-fraction", type=click.FloatRange(0.05, 0.95), default=0.5, show_default=True,
              help="Share of --data the --max-drop search chooses on; figures use the rest.")
@click.option("--recipe", default=None, metavar="NAME|FILE",
              help="Quantization recipe (see 'edgeres recipes'); default: 'default'.")
@click.option("--input-size", type=click.IntRange(min=1), default=None, help="Input size for zoo models.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Classes for zoo models.")
@click.option("--weights", default=None, help="Zoo weights: 'imagenet' (downloads) or none.")
@click.option("--on-bad-image", type=click.Choice(["warn", "error"]), default="warn", show_default=True,
              help="Skip unreadable images with a warning, or stop.")
@preprocess_options
@json_option
def convert(model, calib, data, int8, output_dir, force, target, io_dtype, calib_size, val_size, seed,
            threads, runs, warmup, max_drop, metric, select_fraction, recipe, input_size, num_classes, weights,
            on_bad_image, preprocess, as_json):
    """Convert MODEL (zoo name, .keras, .h5 or SavedModel) to TFLite and ONNX, validate, and report.

    With no MODEL, uses the embedded default: a ResNet-8 trained on real
    handwritten digits, calibrated and validated on disjoint digit images.

    \b
    Example:
      edgeres convert --int8
      edgeres convert model.keras --int8 --calib calib/ --data test/ -o out --max-drop 0.5
    """
    from edgeres.core import defaults
    from edgeres.pipeline.convert import ConvertConfig, parse_usage, run_convert
    from edgeres.quant.recipes import resolve_recipe
    from edgeres.devices.targets import resolve_target

    parse_usage(max_drop, "--max-drop")
    the_recipe = resolve_recipe(recipe)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be 1 or more, got {threads}")
    note = ""
    if model is None:
        model, note = defaults.default_model(), defaults.NOTE
        calib = calib or defaults.default_calib()
        data = data or defaults.default_data()
    elif calib is None:
        raise UsageError("--calib is required with your own model (a folder of representative images or an .npz)")
    if max_drop is not None and data is None:
        raise UsageError("--max-drop needs --data: the labelled images the budget is measured on")
    cfg = ConvertConfig(
        model=model, calib=calib, data=data, output_dir=output_dir, target=resolve_target(target),
        preprocess=preprocess, int8=int8, io_dtype=io_dtype, input_size=input_size, num_classes=num_classes,
        weights=weights, calib_size=calib_size, val_size=val_size, seed=seed, threads=threads, runs=runs,
        warmup=warmup, max_drop=max_drop, force=force, on_error=on_bad_image, default_note=note,
        recipe=the_recipe, metric=metric, select_fraction=select_fraction)
    from edgeres.core.errors import BudgetExceededError

    try:
        with redirect_stdout(sys.stderr):  # converters print; keep stdout for the table / JSON
            report = run_convert(cfg, progress=_progress(sys.stderr.isatty()))
    except BudgetExceededError:
        # The run folder was written and marked as failing: show it, then exit non-zero.
        _print_convert(json.loads((output_dir / "report.json").read_text()), output_dir, as_json)
        raise
    _print_convert(report, output_dir, as_json)


def _print_convert(report: dict, out: Path, as_json: bool) -> None:
    from edgeres.core.metrics import dash
    from edgeres.pipeline.convert import TABLE_HEADER, table_rows

    if as_json:
        from edgeres.core.fs import to_json
        click.echo(to_json(report), nl=False)
        return
    _echo_table(TABLE_HEADER, table_rows(report))
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in report["stages_seconds"].items())
    click.echo(f"\nstages: {stages}")
    for backend, s in (report.get("search") or {}).get("backends", {}).items():
        click.echo(f"\n{backend} search (budget {report['search']['budget']:g} {report['search']['metric']}, "
                   f"{report['search']['selection']['count']} selection images):")
        _echo_table(("step", "loss", "agree %", "p50 ms", "float layers", "meets"),
                    [(t["step"], dash(t["top1_drop"] if report["search"]["metric"] == "top1"
                                      else 100 - t["agreement"], "+.2f"), dash(t["agreement"], ".2f"),
                      dash(t["p50_ms"], ".3f"), str(len(t["keep_float"])), "yes" if t["meets_budget"] else "no")
                     for t in s["trials"]])
        click.echo(f"chosen: {s['winner']['step']}" + ("" if s["met"] else " (FAILS the budget)"))
    for n in report["notes"]:
        click.echo(f"note: {n}")
    click.echo(f"wrote {out}/ (report.md, report.json, {len(report['artifacts'])} artifacts): "
               + ("PASSED" if report["passed"] else "FAILED"))


@cli.command()
@json_option
def recipes(as_json):
    """List the bundled quantization recipes (use with 'convert --recipe NAME')."""
    from edgeres.quant.recipes import list_recipes

    found = list_recipes()
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in found], indent=2))
        return
    _echo_table(("recipe", "settings", "description"), [(r.name, r.summary(), r.description) for r in found])


@cli.command()
@click.argument("model", required=False)
@click.option("--calib", type=click.Path(), help="Calibration images (folder or .npz).")
@click.option("--data", type=click.Path(), help="Validation images to measure on (labels optional).")
@click.option("--recipe", default=None, metavar="NAME|FILE", help="Recipe to diagnose (default: 'default').")
@click.option("--backend", type=click.Choice(["tflite", "onnx"]), default="tflite", show_default=True)
@click.option("--target", default=None, metavar="NAME|FILE", help="Device profile (ONNX scheme, threads).")
@click.option("--calib-size", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--val-size", type=click.IntRange(min=1), default=500, show_default=True,
              help="Validation images to measure on (sampled with --seed).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sensitivity/--no-sensitivity", default=True, show_default=True,
              help="Also measure agreement with only each layer int8, and with only each layer float "
                   "(two conversions per layer).")
@click.option("--input-size", type=click.IntRange(min=1), default=None, help="Input size for zoo models.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Classes for zoo models.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Write the diagnosis JSON here.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Write a PNG bar chart here.")
@preprocess_options
@json_option
def diagnose(model, calib, data, recipe, backend, target, calib_size, val_size, seed, sensitivity, input_size,
             num_classes, output, plot, preprocess, as_json):
    """Per-layer int8 error and sensitivity of MODEL, and the failure causes found.

    For every quantized layer: SQNR and range-scaled RMSE of its output
    against float32, the top-1 agreement lost when only that layer is int8,
    and regained when only that layer stays float.  Names activation
    outliers, dead channels and calibration data unlike the validation data.

    \b
    Example:
      edgeres diagnose model.keras --calib calib/ --data test/ --plot layers.png
    """
    from edgeres.core import defaults
    from edgeres.core.data import open_dataset
    from edgeres.quant.diagnosis import HEADER, plot as plot_diagnosis, table_rows
    from edgeres.core.fs import to_json, write_text_atomic
    from edgeres.pipeline.convert import _layer_types
    from edgeres.quant.search import MIN_CALIBRATION, Backend, Split, diagnose as run_diagnosis
    from edgeres.quant.recipes import match_layers, resolve_recipe
    from edgeres.devices.targets import resolve_target

    the_recipe = resolve_recipe(recipe)
    t = resolve_target(target)
    if model is None:
        model = defaults.default_model()
        calib, data = calib or defaults.default_calib(), data or defaults.default_data()
    if calib is None or data is None:
        raise UsageError("diagnose needs --calib and --data with your own model")
    calib_ds, val_ds = open_dataset(calib, "calibration"), open_dataset(data, "validation")
    if len(calib_ds) < MIN_CALIBRATION:
        raise DataError(f"diagnose needs at least {MIN_CALIBRATION} calibration images, got {len(calib_ds)}")
    from edgeres.backends import keras_io
    from edgeres.core.quiet import quiet

    with redirect_stdout(sys.stderr), quiet():
        loaded = keras_io.load_model(model, input_size=input_size, num_classes=num_classes)
        calib_ds.check_classes(loaded.num_outputs, "calibration")
        val_ds.check_classes(loaded.num_outputs, "validation")
        cx, _ = calib_ds.sample(min(calib_size, len(calib_ds)), seed).load(loaded.hwc, preprocess)
        vx, vy = val_ds.sample(min(val_size, len(val_ds)), seed).load(loaded.hwc, preprocess)
        ref = keras_io.predict(loaded.model, vx)
        types = _layer_types(loaded.model)
        if backend == "tflite":
            from edgeres.backends.tflite import TFLiteQuantizer

            q = TFLiteQuantizer(loaded.model, cx, types)
            b = Backend("tflite", ".tflite", q, lambda r, k: q.quantize(r, t.tflite.io_dtype, k), t.threads)
        else:
            from edgeres.backends import onnx as onnx_conv

            q = onnx_conv.OnnxQuantizer(onnx_conv.to_float32(loaded.model, loaded.hwc), cx, types)
            b = Backend("onnx", ".onnx", q, lambda r, k: q.quantize(r, t.onnx.activation_type, k), t.threads)
        match_layers(the_recipe.for_backend(backend).keep_float, b.layers, f"recipe {the_recipe.name}")
        with _progress(sys.stderr.isatty())("layers", len(b.layers) if sensitivity else 0) as bar:
            result = run_diagnosis(b, the_recipe, Split(vx, vy, ref), sensitivity, bar.update)
    result["model_path"] = str(model)
    if output is not None:
        write_text_atomic(output, to_json(result))
    if plot is not None:
        plot_diagnosis(result, plot)
    if as_json:
        click.echo(to_json(result), nl=False)
        return
    m = result["model"]
    click.echo(f"{backend} int8 ({the_recipe.name}): agreement {m['agreement']:.2f}%, SQNR {m['sqnr_db']:.1f} dB"
               + (f", top-1 drop {m['top1_drop']:+.2f}" if m["top1_drop"] is not None else "")
               + f" on {result['images']} images")
    _echo_table(HEADER, table_rows(result))
    for c in result["causes"]:
        click.echo(f"cause: {c['kind']} in {c['layer']}: {c['detail']}")
    if not result["causes"]:
        click.echo("causes: none found (no outliers, dead channels or calibration/validation mismatch)")


# ---------------------------------------------------------------- build / info / targets

@cli.command()
@click.argument("arch")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Where to write the .keras file.")
@click.option("--input-size", type=click.IntRange(min=1), default=None, help="Square input size (default: the arch's).")
@click.option("--num-classes", type=click.IntRange(min=1), default=None)
@click.option("--channels", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--width", type=float, default=1.0, show_default=True, help="Width multiplier for all filters.")
@click.option("--shortcut", type=click.Choice(["A", "B"], case_sensitive=False), default=None,
              help="CIFAR ResNets: A zero-pad (parameter-free) or B projection shortcuts.")
@click.option("--weights", default=None, help="'imagenet' to load keras.applications weights (downloads).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def build(arch, output, input_size, num_classes, channels, width, shortcut, weights, seed, force):
    """Build zoo model ARCH and save it as a .keras file.

    Known architectures: resnet18/34/50/101/152, resnet50v2/101v2/152v2 and
    CIFAR-style resnet8/20/32/44/56/110 (see 'edgeres info ARCH').
    """
    from edgeres.core.errors import OutputExistsError

    if output.suffix != ".keras":
        raise UsageError(f"--output must end in .keras, got {output}")
    if output.exists() and not force:
        raise OutputExistsError(f"{output} already exists; pass --force to overwrite")
    from edgeres.core.quiet import quiet

    with quiet():  # TensorFlow's import chatter, as in convert
        import keras

        from edgeres.zoo import create_model

        keras.utils.set_random_seed(seed)
        model = create_model(arch, input_size=input_size, num_classes=num_classes, channels=channels,
                             width=width, shortcut=shortcut.upper() if shortcut else None, weights=weights)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.partial.keras")
    try:
        model.save(tmp)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    from edgeres.zoo import count_params

    total, _ = count_params(model)
    click.echo(f"wrote {output}: {arch}, {total:,} parameters, input {tuple(model.inputs[0].shape)}")


@cli.command()
@click.argument("model")
@json_option
def info(model, as_json):
    """Describe MODEL: a zoo name, .keras/.h5/SavedModel, .tflite or .onnx file.

    Prints parameters, MACs, input/output shapes and layer count for Keras
    models; shapes, dtypes, quantization and op counts for .tflite/.onnx.
    """
    suffix = Path(model).suffix.lower()
    if suffix in (".tflite", ".onnx"):
        from edgeres.measure.info import describe_artifact
        d = describe_artifact(model)
    else:
        from edgeres.core.quiet import quiet
        with quiet():  # TensorFlow's import chatter, as in convert
            from edgeres.backends.keras_io import describe, load_model
            d = describe(load_model(model))
    if as_json:
        from edgeres.core.fs import to_json
        click.echo(to_json(d), nl=False)
        return
    for k, v in d.items():
        if isinstance(v, int) and not isinstance(v, bool) and k.endswith(("params", "macs", "bytes")):
            v = f"{v:,}"
        elif isinstance(v, dict):
            v = ", ".join(f"{a} x{b}" if isinstance(b, int) else f"{a}={b}" for a, b in v.items())
        click.echo(f"{k:<18} {v}")


@cli.command()
@json_option
def targets(as_json):
    """List the device profiles that --target accepts."""
    from edgeres.devices.targets import default_target_name, list_targets

    items = list_targets()
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in items], indent=2))
        return
    default = default_target_name()
    rows = [(t.name + (" *" if t.name == default else ""), t.arch, str(t.threads), t.tflite.delegate,
             t.tflite.io_dtype, t.onnx_scheme, t.description) for t in items]
    _echo_table(("target", "arch", "threads", "delegate", "tflite io", "onnx int8", "description"), rows)
    click.echo("\n* default on this machine")


# ---------------------------------------------------------------- bench / validate (light: no TensorFlow)

@cli.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--threads", default=None, metavar="N[,N...]", help="Thread counts to sweep, e.g. 1,2,4 "
              "(default: the target's).")
@click.option("--runs", type=click.IntRange(min=1), default=100, show_default=True, help="Timed runs per configuration.")
@click.option("--min-time", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Keep timing until this many seconds have passed.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed runs first.")
@click.option("--delegate", default=None, help="TFLite: xnnpack, none (built-in kernels), reference, edgetpu. "
              "ONNX: execution providers, e.g. CPUExecutionProvider (default: the target's).")
@click.option("--target", default=None, metavar="NAME|FILE", help="Device profile for threads and delegate.")
@click.option("--data", type=click.Path(), default=None, help="Feed a real image (folder or .npz) instead of random data.")
@click.option("--shape", default=None, metavar="N,H,W,C", help="Input shape for ONNX models with dynamic dims.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Write a PNG of the latency distributions (needs matplotlib).")
@preprocess_options
@json_option
def bench(models, threads, runs, min_time, warmup, delegate, target, data, shape, plot_path, preprocess, as_json):
    """Benchmark one or more .tflite / .onnx MODELS (batch 1).

    Reports min, p50, p90, p99, mean and stdev, first-inference and load
    time, peak RSS, which ops ran on the delegate, and the machine.  Runs
    with only numpy and a runtime installed.

    \b
    Example:
      edgeres bench edgeres-out/model_int8.tflite edgeres-out/model_int8.onnx --threads 1,2,4
    """
    from edgeres.measure.bench import BenchConfig, coverage_text, parse_shape, parse_threads, plot, run_bench
    from edgeres.devices.targets import resolve_target

    t = resolve_target(target)
    cfg = BenchConfig(models=tuple(models), threads=parse_threads(threads) if threads else (t.threads,),
                      delegate=delegate or (t.tflite.delegate if target else None), runs=runs, warmup=warmup,
                      min_time=min_time, data=data, preprocess=preprocess, shape=parse_shape(shape))
    with _progress(sys.stderr.isatty() and not as_json)("benchmarking", len(models) * len(cfg.threads)) as bar:
        report = run_bench(cfg, progress=bar.update)
    if plot_path:
        plot(report, plot_path)
    for r in report["results"]:
        for w in r["warnings"]:
            click.echo(f"edgeres: warning: {Path(r['model']).name} ({r['threads']} threads): {w}", err=True)
    if as_json:
        from edgeres.core.fs import to_json
        click.echo(to_json(report), nl=False)
        return
    rows = []
    for r in report["results"]:
        lat = r["latency_ms"]
        rows.append((Path(r["model"]).name, str(r["threads"]), r["delegate"], f"{lat['min']:.3f}",
                     f"{lat['p50']:.3f}", f"{lat['p90']:.3f}", f"{lat['p99']:.3f}", f"{lat['mean']:.3f}",
                     f"{lat['stdev']:.3f}", str(lat["runs"]), f"{lat['first']:.2f}", f"{r['load_ms']:.1f}",
                     f"{r['peak_rss_mb']:.0f}", coverage_text(r["ops"])))
    _echo_table(("model", "thr", "delegate", "min", "p50", "p90", "p99", "mean", "stdev", "runs", "first",
                 "load", "rss MB", "ops"), rows)
    for r in report["results"]:
        tp = r.get("throughput") or {}
        if tp.get("fraction_of_peak"):
            click.echo(f"{Path(r['model']).name} ({r['threads']} threads): {tp['gops']:.1f} GOP/s, "
                       f"{100 * tp['fraction_of_peak']:.0f}% of the int8 peak of {tp['int8_peak_gops']:.0f} GOP/s "
                       f"[{tp['peak_basis']}]" + (f"; {tp['note']}" if tp.get("note") else ""))
    m = report["machine"]
    r0 = report["results"][0]
    click.echo(f"\nms per inference, batch 1, {r0['input']} input; {m['cpu']}, {m['cores']} cores, {m['arch']}; "
               f"{r0['runtime']} {r0['runtime_version']}; Python {m['python']}")


@cli.command()
@click.argument("model")
@click.option("--data", type=click.Path(), required=True, help="Labelled images: class-subfolder folder or .npz with y.")
@click.option("--reference", default=None, help="Another .tflite/.onnx to compare outputs with "
              "(agreement, SQNR, max abs diff).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--delegate", default=None, help="As for 'edgeres bench'.")
@click.option("--val-size", type=click.IntRange(min=1), default=None, help="Validate on a sample of N images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--on-bad-image", type=click.Choice(["warn", "error"]), default="warn", show_default=True)
@click.option("--scale", type=float, default=None, help="As for convert; default: the run folder's report.json.")
@click.option("--mean", default=None, metavar="R,G,B")
@click.option("--std", default=None, metavar="R,G,B")
@click.option("--resize", type=click.Choice(["crop", "stretch"]), default=None)
@json_option
def validate(model, data, reference, threads, delegate, val_size, seed, on_bad_image, scale, mean, std, resize,
             as_json):
    """Accuracy of one .tflite/.onnx MODEL on labelled --data, on this device.

    Preprocessing comes from the options, else from the report.json of the
    run folder the model sits in.  With --reference, also compares outputs.
    """
    from edgeres.core.data import Preprocess
    from edgeres.measure.validate import run_validate

    explicit = any(v is not None for v in (scale, mean, std, resize))
    pre = Preprocess.parse(scale if scale is not None else 1.0, mean, std, resize or "crop") if explicit else None
    with _progress(sys.stderr.isatty() and not as_json)("validating", 0) as bar:
        result = run_validate(model, data, reference=reference, preprocess=pre, threads=threads, delegate=delegate,
                              val_size=val_size, seed=seed, on_error=on_bad_image, progress=bar.update)
    if as_json:
        from edgeres.core.fs import to_json
        click.echo(to_json(result), nl=False)
        return
    keys = [("top1", "top-1 %", ".2f"), ("top5", "top-5 %", ".2f"), ("agreement", "agreement %", ".2f"),
            ("sqnr_db", "SQNR dB", ".1f"), ("max_abs_diff", "max abs diff", ".4g"), ("top1_drop", "drop pp", "+.2f")]
    click.echo(f"{Path(model).name}: {result['count']} images from {result['data']['source']} "
               f"({result['runtime']} {result['runtime_version']}, {result['threads']} threads)")
    for key, label, spec in keys:
        if result.get(key) is not None:
            click.echo(f"  {label:<14} {result[key]:{spec}}")
    if "reference" in result and result["reference"].get("top1") is not None:
        click.echo(f"  reference      {Path(reference).name}: top-1 {result['reference']['top1']:.2f}%")


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--target", default="coral-edgetpu", show_default=True, metavar="NAME|FILE",
              help="Device profile whose rules to check (today: the Edge TPU's).")
@json_option
def check(model, target, as_json):
    """Statically check an int8 .tflite MODEL against a target's requirements.

    For the Coral Edge TPU: full int8 quantization, the supported ops and
    their constraints, static shapes, batch 1, and the on-chip parameter
    cache.  Lists each op that would run on the CPU and the first one, which
    splits the graph.  Exit code 0 when compatible, 6 when not.
    """
    from edgeres.devices.edgetpu import check_model, format_check
    from edgeres.core.errors import ConversionError
    from edgeres.devices.targets import resolve_target

    t = resolve_target(target)
    if t.tflite.delegate != "edgetpu":
        raise UsageError(f"'edgeres check' knows the Edge TPU's rules; target '{t.name}' uses "
                         f"{t.tflite.delegate}, which runs every TFLite op")
    result = check_model(model, max_tensor_bytes=t.constraints.max_tensor_bytes or 8 * 2**20)
    if as_json:
        from edgeres.core.fs import to_json
        click.echo(to_json(result), nl=False)
    else:
        click.echo(format_check(result))
    if not result["compatible"]:
        reason = result["errors"][0] if result["errors"] else (
            f"op #{result['first_unsupported']['index']} {result['first_unsupported']['op']} "
            f"is not supported: {result['first_unsupported']['reason']}")
        raise ConversionError(f"{Path(model).name} is not Edge TPU compatible: {reason}")
