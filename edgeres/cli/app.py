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
from typing import NoReturn

import click

from edgeres import __version__
from edgeres.cli.options import JSON_ASKED, JSON_WRITTEN
from edgeres.core.errors import EdgeresError
from edgeres.core.quiet import real_stderr
from edgeres.core.stop import on_stop, received, stops_cleanly

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

_ARGV = "edgeres.argv"  # ctx.meta: the command line as given
_HEAVY = ("tensorflow", "keras", "tf2onnx", "onnx", "matplotlib")

EXIT_CODES = """\b
Exit codes: 0 ok, 1 other error, 2 bad usage, 3 model, 4 data, 5 shape/classes,
6 conversion/unsupported op, 7 runtime or delegate missing, 8 output exists,
locked or unwritable, 10 accuracy budget not met (run folder still written),
130 interrupted, 143 terminated."""


class _Group(click.Group):
    """Turns every error into one line on stderr and its exit code (and, with --json, one document on stdout)."""

    def parse_args(self, ctx, args):
        ctx.meta[_ARGV] = list(args)  # a usage error comes before --json is parsed: _fail looks here
        return super().parse_args(ctx, args)

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:  # the group's own options
            _usage_error(exc)

    def invoke(self, ctx: click.Context):
        def json_on_stop() -> None:  # run by core.stop's handler, the last of its cleanups
            if _json_asked(ctx.meta) and not ctx.meta.get(JSON_WRITTEN) and (got := received()) is not None:
                click.echo(_error_doc(got[1], 128 + got[0], "Stopped"))

        try:
            # Ctrl-C 130, SIGTERM 143: nothing half-written (core.stop)
            with stops_cleanly((signal.SIGINT, signal.SIGTERM)), on_stop(json_on_stop):
                return super().invoke(ctx)
        except EdgeresError as exc:
            _fail(ctx, str(exc), exc.exit_code, type(exc).__name__)
        except click.UsageError as exc:  # click's own checks of a command's options and arguments
            _usage_error(exc)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in _HEAVY:
                _fail(ctx, f"this command needs {exc.name.split('.')[0]}, which is not installed: "
                      "pip install 'edgeres[convert]'", 7, "RuntimeUnavailableError")
            raise
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130, "Interrupted")


def _fail(ctx: click.Context | None, message: str, code: int, kind: str) -> NoReturn:
    """The one error line on stderr; with --json, also ``{"error": ...}`` on stdout unless the command printed
    its result already (exit 10 prints the report)."""
    message = one_line(message)
    click.echo(f"edgeres: error: {message}", err=True)
    meta = ctx.meta if ctx is not None else {}
    if _json_asked(meta) and not meta.get(JSON_WRITTEN):
        click.echo(_error_doc(message, code, kind))
    raise click.exceptions.Exit(code)


def one_line(text: str) -> str:
    """``text`` as one line: a line break inside it (a file name may hold one) is written as \\n."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _json_asked(meta: dict) -> bool:
    argv = meta.get(_ARGV) or []
    return bool(meta.get(JSON_ASKED)) or "--json" in argv[:argv.index("--") if "--" in argv else len(argv)]


def _error_doc(message: str, code: int, kind: str) -> str:
    return json.dumps({"error": {"message": message, "exit_code": code, "kind": kind}}, indent=2)


def _usage_error(exc: click.UsageError) -> NoReturn:
    """Click's usage errors follow the same contract: one line, exit code 2."""
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    _fail(exc.ctx, f"{' '.join(exc.format_message().split())}{hint}", 2, "UsageError")


class _WarningsToStderr(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"edgeres: {record.levelname.lower()}: {one_line(record.getMessage())}", file=real_stderr())


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
