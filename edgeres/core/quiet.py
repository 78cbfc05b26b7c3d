"""Silence the converters' and runtimes' own chatter.  Standard library only.

TensorFlow, the TFLite converter and XNNPACK print from C++ straight to file
descriptors 1 and 2, and Keras' exporter prints from Python.  Both would mix
into ``--json`` output and bury edgeres' own messages.  ``quiet()`` sends them
to a temporary file for the duration of a block; with ``EDGERES_VERBOSE=1`` it
does nothing.  What was captured is logged at debug level.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
_REAL_STDERR: list = []  # a stream on the real stderr for each quiet() block being run, innermost last


def real_stderr():
    """Where edgeres' own warnings go: the terminal's stderr, even inside a :func:`quiet` block."""
    return _REAL_STDERR[-1] if _REAL_STDERR else sys.stderr


@contextmanager
def quiet() -> Iterator[None]:
    if os.environ.get("EDGERES_VERBOSE") == "1":
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no real file descriptors (embedded interpreters): nothing to silence
        yield
        return
    py_out, py_err = sys.stdout, sys.stderr
    try:  # the stderr stream of before, unless it writes to fd 2, which is about to point at the sink
        writes_fd2 = py_err.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a test runner's buffer
        writes_fd2 = False
    real = open(os.dup(saved[1]), "w", closefd=True) if writes_fd2 and not _REAL_STDERR else None
    _REAL_STDERR.append(real or real_stderr())  # a nested block keeps the outer block's
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        sys.stdout = sys.stderr = open(os.dup(sink.fileno()), "w", closefd=True)  # Python-level prints
        try:
            yield
        finally:
            try:
                sys.stdout.flush()
                _repoint_log_handlers(sys.stdout, py_err)
                sys.stdout.close()
            finally:
                _REAL_STDERR.pop()
                if real is not None:
                    real.close()
                sys.stdout, sys.stderr = py_out, py_err
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
            sink.seek(0)
            captured = sink.read().decode("utf-8", "replace")
            if captured.strip():
                log.debug("converter output:\n%s", captured[-20000:])


def _repoint_log_handlers(temporary, real) -> None:
    """Logging handlers made inside the block (TensorFlow's, on first import) hold the temporary stream,
    which is about to close: give them the real stderr, or each later record prints "--- Logging error ---"
    with a traceback."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is temporary:
                handler.setStream(real)
