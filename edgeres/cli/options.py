"""Options shared by several commands, each declared once, and small output helpers."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from edgeres.core.errors import UsageError
from edgeres.core.limits import (
    MAX_CALIB_IMAGES,
    MAX_CLASSES,
    MAX_IMAGES,
    MAX_INPUT_SIZE,
    MAX_SEED,
    MAX_THREADS,
    check_threads,
)


class FiniteFloat(click.FloatRange):
    """A float option that must be finite (click's FloatRange lets NaN through every bound)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        import math

        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def non_negative(ctx, param, value):
    """A callback for float options that must be finite and 0 or more."""
    import math

    if value is not None and (not math.isfinite(value) or value < 0):
        raise UsageError(f"--{param.name.replace('_', '-')} must be 0 or more, got {value:g}")
    return value


def _threads(ctx, param, value):
    return None if value is None else check_threads(value, "--threads")


target_option = click.option("--target", default=None, metavar="NAME|FILE",
                             help="Device profile (see 'edgeres targets'); default: this machine's.")
seed_option = click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
                           help="Seed for sampling images.")
JSON_ASKED, JSON_WRITTEN = "edgeres.json", "edgeres.json_written"  # ctx.meta keys, read by the error boundary


def _remember_json(ctx, param, value):
    ctx.meta[JSON_ASKED] = value  # meta is shared by every context of the command line
    return value


json_option = click.option("--json", "as_json", is_flag=True, callback=_remember_json,
                           help="Print machine-readable JSON to stdout (on an error, {\"error\": {...}}).")
on_bad_image_option = click.option("--on-bad-image", type=click.Choice(["warn", "error"]), default="warn",
                                   show_default=True, help="Skip unreadable images with a warning, or stop.")
val_size_option = click.option("--val-size", type=click.IntRange(1, MAX_IMAGES), default=None,
                               help="Validate on a sample of N images (deterministic, --seed).")


def threads_option(default: int | None = None, help: str = "Inference threads (default: the target's)."):
    return click.option("--threads", type=int, default=default, show_default=default is not None,
                        callback=_threads, help=f"{help} 1..{MAX_THREADS}.")


def calib_size_option(fn):
    return click.option("--calib-size", type=click.IntRange(1, MAX_CALIB_IMAGES), default=300, show_default=True,
                        help="Calibration images to sample (deterministic, --seed); a recipe's "
                             "calib_size takes precedence.")(fn)


def zoo_options(fn):
    """--input-size/--num-classes, for zoo model names."""
    fn = click.option("--num-classes", type=click.IntRange(2, MAX_CLASSES), default=None,
                      help="Classes for zoo models.")(fn)
    return click.option("--input-size", type=click.IntRange(1, MAX_INPUT_SIZE), default=None,
                        help="Input size for zoo models.")(fn)


def preprocess_options(fn):
    """--scale/--mean/--std/--resize, turned into one ``preprocess`` argument."""
    @click.option("--scale", type=FiniteFloat(), default=1.0, show_default=True,
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


def progress(enabled: bool):
    """A progress-bar factory for the pipeline: click bars on a terminal, nothing otherwise."""
    def make(label: str, length: int):
        if not enabled:
            from edgeres.core.progress import ProgressBar
            return ProgressBar()
        return click.progressbar(length=length, label=f"{label:<20}", file=sys.stderr, show_pos=True,
                                 show_eta=False)
    return make


def echo_table(header, rows) -> None:
    from edgeres.report.render import format_table

    click.echo(format_table(header, rows))


def echo_json(obj) -> None:
    from edgeres.core.fs import to_json

    echo_json_text(to_json(obj))


def echo_json_text(text: str) -> None:
    """The command's JSON document on stdout; an error after it (exit 10) then adds no second one."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[JSON_WRITTEN] = True
    click.echo(text, nl=not text.endswith("\n"))


fold_option = click.option("--fold-preprocessing", "fold", is_flag=True,
                           help="Fold --scale/--mean/--std into the bundled int8 TFLite model, exactly: it takes "
                                "raw uint8 RGB pixels (scale 1, zero-point 0) and gives float32 scores.")
labels_option = click.option("--labels", type=click.Path(path_type=Path), default=None, metavar="FILE",
                             help="Class names, one per line (default: the class folders of the run's data).")
