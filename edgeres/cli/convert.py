"""``edgeres convert``: the whole pipeline from the command line."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext, redirect_stdout
from pathlib import Path

import click

from edgeres.cli.app import cli
from edgeres.cli.options import (
    FiniteFloat,
    calib_size_option,
    echo_json_text,
    fold_option,
    json_option,
    labels_option,
    non_negative,
    on_bad_image_option,
    preprocess_options,
    progress,
    seed_option,
    target_option,
    threads_option,
    val_size_option,
    zoo_options,
)
from edgeres.core.errors import BudgetExceededError, UsageError
from edgeres.core.limits import MAX_RUNS, MAX_WARMUP


@cli.command()
@click.argument("model", required=False)
@click.option("--calib", type=click.Path(), help="Calibration images: folder (class subfolders or flat) or .npz.")
@click.option("--data", type=click.Path(),
              help="Held-out labelled validation set: class-subfolder folder or .npz with y.")
@click.option("--int8/--no-int8", default=False, help="Also produce full-integer int8 TFLite and int8 ONNX.")
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), default=Path("edgeres-out"),
              show_default=True, help="Run folder for artifacts and reports.")
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
@target_option
@click.option("--io-dtype", type=click.Choice(["int8", "uint8", "float32"]), default=None,
              help="I/O dtype of the int8 TFLite model (default: the recipe's, else the target's).")
@calib_size_option
@val_size_option
@seed_option
@threads_option()
@click.option("--jobs", type=click.IntRange(1, 64), default=None, metavar="N",
              help="Processes to convert the formats in (TFLite and ONNX side by side; each converter's memory "
                   "is returned when it ends).  Default: one per format when the model is big enough to gain "
                   "and the cores and memory allow, else 1 (all in this process).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Fan out on Ray (pip install 'edgeres[cluster]'): the --max-drop search's layer ranking and "
                   "configurations, and the validation of --data in shards; the same choices and figures. Plain "
                   "--ray starts a private Ray on this machine; --ray auto joins the running cluster; --ray "
                   "ray://HOST:PORT a remote one (give it as --ray=ADDRESS). Every node needs edgeres[convert] "
                   "and must read --data at the same absolute path. The formats are then built in this process.")
@click.option("--runs", type=click.IntRange(50, MAX_RUNS), default=50, show_default=True,
              help="Timed runs per artifact after warm-up.")
@click.option("--warmup", type=click.IntRange(1, MAX_WARMUP), default=10, show_default=True,
              help="Untimed runs per artifact first.")
@click.option("--max-drop", type=FiniteFloat(), default=None, metavar="PP", callback=non_negative,
              help="Accuracy budget: search, on part of --data, for the fastest int8 configuration losing at most "
                   "PP points (see --metric); exit 10 when none does (the best one is still written).")
@click.option("--metric", type=click.Choice(["top1", "agreement"]), default="top1", show_default=True,
              help="What --max-drop budgets: top-1 points lost, or points of top-1 agreement with float32 lost.")
@click.option("--select-fraction", type=FiniteFloat(0.05, 0.95), default=0.5, show_default=True,
              help="Share of --data the --max-drop search chooses on; figures use the rest.")
@click.option("--recipe", default=None, metavar="NAME|FILE",
              help="Quantization recipe (see 'edgeres recipes').  Without it, each back end tries the "
                   "'default' recipe, the stock configuration and other range methods, and keeps the one "
                   "most faithful to float32 on held-out calibration images (no labels needed); "
                   "--recipe default builds the default recipe alone.")
@zoo_options
@click.option("--weights", default=None, help="Zoo weights: 'imagenet' (downloads) or none.")
@on_bad_image_option
@preprocess_options
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Also write an app bundle of the int8 models (as 'edgeres bundle'); needs --int8.")
@fold_option
@labels_option
@json_option
def convert(model, calib, data, int8, output_dir, force, target, io_dtype, calib_size, val_size, seed,
            threads, jobs, ray_address, runs, warmup, max_drop, metric, select_fraction, recipe, input_size,
            num_classes, weights, on_bad_image, preprocess, bundle_dir, fold, labels, as_json):
    """Convert MODEL (zoo name, .keras, .h5 or SavedModel) to TFLite and ONNX, validate, and report.

    With no MODEL, uses the embedded default: a ResNet-8 trained on real
    handwritten digits, calibrated and validated on disjoint digit images.

    \b
    Example:
      edgeres convert --int8
      edgeres convert model.keras --int8 --calib calib/ --data test/ -o out --max-drop 0.5
      edgeres convert --int8 --bundle app/ --fold-preprocessing
    """
    from edgeres.core import defaults
    from edgeres.devices.targets import resolve_target
    from edgeres.pipeline.convert import ConvertConfig, run_convert
    from edgeres.quant.recipes import resolve_recipe

    the_recipe = resolve_recipe(recipe)
    note = ""
    if model is None:
        model, note = defaults.default_model(), defaults.NOTE
        calib = calib or defaults.default_calib()
        data = data or defaults.default_data()
    elif calib is None:
        raise UsageError("--calib is required with your own model (a folder of representative images or an .npz)")
    if max_drop is not None and data is None:
        raise UsageError("--max-drop needs --data: the labelled images the budget is measured on")
    if bundle_dir is not None and not int8:
        raise UsageError("--bundle packages the int8 models: add --int8")
    given = click.get_current_context().get_parameter_source
    int8_only = [o for o, name in (("--max-drop", "max_drop"), ("--recipe", "recipe"), ("--io-dtype", "io_dtype"),
                                   ("--metric", "metric"), ("--select-fraction", "select_fraction"))
                 if given(name) == click.core.ParameterSource.COMMANDLINE]
    if int8_only and not int8:
        raise UsageError(f"{', '.join(int8_only)} shape the int8 models, and this run makes none: add --int8")
    unsearched = [o for o in ("--metric", "--select-fraction") if o in int8_only]
    if unsearched and max_drop is None:
        raise UsageError(f"{' and '.join(unsearched)} shape the --max-drop search: add --max-drop PP")
    if (fold or labels is not None) and bundle_dir is None:
        raise UsageError("--fold-preprocessing and --labels shape the app bundle: add --bundle DIR")
    cfg = ConvertConfig(
        model=model, calib=calib, data=data, output_dir=output_dir, target=resolve_target(target),
        preprocess=preprocess, int8=int8, io_dtype=io_dtype, input_size=input_size, num_classes=num_classes,
        weights=weights, calib_size=calib_size, val_size=val_size, seed=seed, threads=threads, jobs=jobs, runs=runs,
        warmup=warmup, max_drop=max_drop, force=force, on_error=on_bad_image, default_note=note,
        recipe=the_recipe, metric=metric, select_fraction=select_fraction,
        adaptive=recipe is None and max_drop is None, bundle_dir=bundle_dir, labels=labels)
    executor = None
    if ray_address is not None:
        if jobs is not None and jobs > 1:
            raise UsageError("give --ray or --jobs, not both: with --ray the formats are built in this process "
                             "and the search and validation fan out on the cluster")
        from edgeres.cluster import RayExecutor

        executor = RayExecutor(ray_address)
    try:
        with redirect_stdout(sys.stderr), executor or nullcontext():  # converters print; stdout: table / JSON
            report = run_convert(cfg, progress=progress(sys.stderr.isatty()), executor=executor)
    except BudgetExceededError as exc:
        if exc.report is not None:  # the run folder was written and marked as failing: show it, then exit
            _print(exc.report, output_dir, as_json)
        raise
    if bundle_dir is None:
        _print(report, output_dir, as_json)
        return
    from edgeres.cli.bundle import print_manifest
    from edgeres.pipeline.bundle import BundleConfig, run_bundle

    m = run_bundle(BundleConfig(run=output_dir, out=bundle_dir, force=force, labels=labels, fold=fold),
                   log=lambda msg: click.echo(f"edgeres: {msg}", err=True))
    if as_json:  # one JSON document: the report, with the bundle's manifest under "bundle"
        from edgeres.report import to_json

        doc = json.loads(to_json(report))
        doc["bundle"] = m
        echo_json_text(json.dumps(doc, indent=2))
        return
    _print(report, output_dir, False)
    print_manifest(m, bundle_dir)


def _print(report, out: Path, as_json: bool) -> None:
    from edgeres.report import render_terminal, to_json

    if as_json:
        echo_json_text(to_json(report))
    else:
        click.echo(render_terminal(report, out), nl=False)
