"""The ``edgeres`` Click group, and its one error boundary.

Heavy modules (keras, TensorFlow, tf2onnx) are imported inside the command
bodies that need them, so ``bench``, ``validate``, ``info`` and ``targets``
on ``.tflite``/``.onnx`` files run with only numpy and a runtime installed.

Exit codes: 0 success; 1 other user error; 2 bad usage; 3 model problem;
4 data problem; 5 shape/class mismatch; 6 conversion failed; 7 runtime or
delegate missing; 8 output exists, is locked by another run, or cannot be
written; 10 accuracy budget not met (artifacts and report are still written);
130 interrupted; 143 terminated (SIGTERM).
"""

from __future__ import annotations

import json
import logging
import os
import signal

import click

from edgeres import __version__
from edgeres.cli.options import JSON_ASKED, JSON_WRITTEN
from edgeres.core.errors import EdgeresError
from edgeres.core.quiet import real_stderr
from edgeres.core.stop import stops_cleanly

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

_HEAVY = ("tensorflow", "keras", "tf2onnx", "onnx", "matplotlib")

EXIT_CODES = """\b
Exit codes: 0 ok, 1 other error, 2 bad usage, 3 model, 4 data, 5 shape/classes,
6 conversion/unsupported op, 7 runtime or delegate missing, 8 output exists,
locked or unwritable, 10 accuracy budget not met (run folder still written),
130 interrupted, 143 terminated."""


class _Group(click.Group):
    """Turns every EdgeresError into one line on stderr and its exit code."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:  # the group's own options
            _usage_error(exc)

    def invoke(self, ctx: click.Context):
        try:
            with stops_cleanly((signal.SIGINT, signal.SIGTERM)):  # Ctrl-C 130, SIGTERM 143: nothing half-written
                return super().invoke(ctx)
        except EdgeresError as exc:
            click.echo(f"edgeres: error: {exc}", err=True)
            if ctx.meta.get(JSON_ASKED) and not ctx.meta.get(JSON_WRITTEN):  # --json: stdout is never empty
                click.echo(json.dumps({"error": {"message": str(exc), "exit_code": exc.exit_code,
                                                 "kind": type(exc).__name__}}, indent=2))
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:  # click's own checks of a command's options and arguments
            _usage_error(exc)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in _HEAVY:
                click.echo(f"edgeres: error: this command needs {exc.name.split('.')[0]}, which is not installed: "
                           "pip install 'edgeres[convert]'", err=True)
                ctx.exit(7)
            raise
        except KeyboardInterrupt:
            click.echo("edgeres: interrupted", err=True)
            ctx.exit(130)


def _usage_error(exc: click.UsageError) -> None:
    """Click's usage errors follow the same contract: one line, exit code 2."""
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    click.echo(f"edgeres: error: {' '.join(exc.format_message().split())}{hint}", err=True)
    raise click.exceptions.Exit(2)


class _WarningsToStderr(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"edgeres: {record.levelname.lower()}: {record.getMessage()}", file=real_stderr())


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
