"""``edgeres recipes`` and ``edgeres diagnose``: what int8 configurations exist, and where one loses accuracy."""

from __future__ import annotations

import json
import sys
from contextlib import redirect_stdout
from pathlib import Path

import click

from edgeres.cli.app import cli
from edgeres.cli.options import (
    calib_size_option,
    echo_json,
    echo_table,
    json_option,
    preprocess_options,
    progress,
    seed_option,
    target_option,
    zoo_options,
)
from edgeres.core.errors import DataError, UsageError
from edgeres.core.limits import MAX_IMAGES


@cli.command()
@json_option
def recipes(as_json):
    """List the bundled quantization recipes (use with 'convert --recipe NAME')."""
    from edgeres.quant.recipes import list_recipes

    found = list_recipes()
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in found], indent=2))
        return
    echo_table(("recipe", "settings", "description"), [(r.name, r.summary(), r.description) for r in found])


@cli.command()
@click.argument("model", required=False)
@click.option("--calib", type=click.Path(), help="Calibration images (folder or .npz).")
@click.option("--data", type=click.Path(), help="Validation images to measure on (labels optional).")
@click.option("--recipe", default=None, metavar="NAME|FILE", help="Recipe to diagnose (default: 'default').")
@click.option("--backend", type=click.Choice(["tflite", "onnx"]), default="tflite", show_default=True)
@target_option
@calib_size_option
@click.option("--val-size", type=click.IntRange(1, MAX_IMAGES), default=500, show_default=True,
              help="Validation images to measure on (sampled with --seed).")
@seed_option
@click.option("--sensitivity/--no-sensitivity", default=True, show_default=True,
              help="Also measure agreement with only each layer int8, and with only each layer float "
                   "(two conversions per layer).")
@zoo_options
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Write the diagnosis JSON here.")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="Write a bar chart here: .png, .svg, .pdf, ... (needs matplotlib).")
@click.option("--force", is_flag=True, help="Replace an existing -o or --plot file.")
@preprocess_options
@json_option
def diagnose(model, calib, data, recipe, backend, target, calib_size, val_size, seed, sensitivity, input_size,
             num_classes, output, plot, force, preprocess, as_json):
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
    from edgeres.core.fs import check_output_file, to_json, write_text_atomic
    from edgeres.core.plots import check_plot_file
    from edgeres.devices.targets import resolve_target
    from edgeres.quant.diagnosis import HEADER, table_rows
    from edgeres.quant.diagnosis import plot as plot_diagnosis
    from edgeres.quant.recipes import resolve_recipe
    from edgeres.quant.search import MIN_CALIBRATION

    the_recipe = resolve_recipe(recipe)
    t = resolve_target(target)
    if output is not None:
        check_output_file(output, "-o", force)
    if plot is not None:
        check_plot_file(plot, force=force)
    if model is None:
        model = defaults.default_model()
        calib, data = calib or defaults.default_calib(), data or defaults.default_data()
    if calib is None or data is None:
        raise UsageError("diagnose needs --calib and --data with your own model")
    calib_ds, val_ds = open_dataset(calib, "calibration"), open_dataset(data, "validation")
    if len(calib_ds) < MIN_CALIBRATION:
        raise DataError(f"diagnose needs at least {MIN_CALIBRATION} calibration images, got {len(calib_ds)}")
    if calib_size is not None and calib_size < MIN_CALIBRATION:
        raise UsageError(f"--calib-size {calib_size}: diagnose needs at least {MIN_CALIBRATION} calibration images "
                         "(ranges from fewer are unreliable, and so would be the diagnosis)")
    with redirect_stdout(sys.stderr):
        result = _diagnose(model, calib_ds, val_ds, the_recipe, backend, t, calib_size, val_size, seed, sensitivity,
                           input_size, num_classes, preprocess)
    result["model_path"] = str(model)
    if output is not None:
        write_text_atomic(output, to_json(result))
    if plot is not None:
        plot_diagnosis(result, plot)
    if as_json:
        echo_json(result)
        return
    m = result["model"]
    click.echo(f"{backend} int8 ({the_recipe.name}): agreement {m['agreement']:.2f}%, SQNR {m['sqnr_db']:.1f} dB"
               + (f", top-1 drop {m['top1_drop']:+.2f}" if m["top1_drop"] is not None else "")
               + f" on {result['images']} images")
    echo_table(HEADER, table_rows(result))
    for c in result["causes"]:
        click.echo(f"cause: {c['kind']} in {c['layer']}: {c['detail']}")
    if not result["causes"]:
        click.echo("causes: none found (no outliers, dead channels or calibration/validation mismatch)")


def _diagnose(model, calib_ds, val_ds, recipe, backend, target, calib_size, val_size, seed, sensitivity,
              input_size, num_classes, preprocess) -> dict:
    """Load, calibrate through the one back-end factory (as convert does), and diagnose."""
    from edgeres.backends import keras_io
    from edgeres.backends.base import create_backend, resolve_settings
    from edgeres.core.quiet import quiet
    from edgeres.quant.diagnosis import diagnose as run_diagnosis
    from edgeres.quant.evaluate import Split
    from edgeres.quant.recipes import match_layers

    settings = resolve_settings(target, recipe)
    with quiet():
        loaded = keras_io.load_model(model, input_size=input_size, num_classes=num_classes)
    calib_ds.check_classes(loaded.num_outputs, "calibration")
    val_ds.check_classes(loaded.num_outputs, "validation")
    n_calib = min(recipe.calib_images(calib_size), len(calib_ds))
    cx, _ = calib_ds.sample(n_calib, seed).load(loaded.hwc, preprocess)
    vx, vy = val_ds.sample(min(val_size, len(val_ds)), seed).load(loaded.hwc, preprocess)
    with quiet():
        ref = keras_io.predict(loaded.model, vx)
    b = create_backend(backend, loaded.model, loaded.hwc, cx, settings)
    match_layers(recipe.for_backend(backend).keep_float, b.layers, f"recipe {recipe.name}")  # bad patterns: now
    with progress(sys.stderr.isatty())("layers", len(b.layers) if sensitivity else 0) as bar:
        return run_diagnosis(b, recipe, Split(vx, vy, ref), sensitivity, bar.update)
