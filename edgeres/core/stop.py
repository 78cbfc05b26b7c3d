"""Stopping on SIGTERM or Ctrl-C: nothing half-written is left, and the exit code says why.  Standard library.

Why not an exception.  A Python signal handler runs between two bytecodes of the main thread, and during a
conversion that is often a callback TensorFlow's C++ converter made (the representative dataset, a
calibration step).  An exception raised there crosses C++: the converter may turn it into its own error,
which the adaptive default then counts as one failed candidate and goes on (the run ended with exit 0), or
leave the converter's state broken (the process then died of a segfault, exit -11).  So the handler does the
cleanup itself, at once: it runs the cleanups registered with :func:`on_stop` (newest first: format
processes stopped, temporary folders and the unfinished run folder removed, the lock file deleted), stops
any child process still running (an ssh to a device, a Ray this run started), logs one line and ends the
process with ``os._exit(128 + signal)``: 143 for SIGTERM, 130 for Ctrl-C.

A file the handler cannot know of (TensorFlow's own temporary SavedModel) may be left in the system's
temporary folder; never a run folder that looks valid.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)

SIGTERM_EXIT = 143  # 128 + 15: what a shell reports for a process that SIGTERM ended

#: what ends a run, and the words for it
_WHAT = {signal.SIGTERM: "terminated (SIGTERM)", signal.SIGINT: "interrupted"}
#: each returns a note for the last line ("the unfinished run folder was removed") or None
_CLEANUPS: list[Callable[[], str | None]] = []
_RECEIVED: list[int] = []  # the signal being handled, for cleanups that report it (see received)


def received() -> tuple[int, str] | None:
    """In a cleanup: the signal that stopped the process and its words ("terminated (SIGTERM)")."""
    return (_RECEIVED[0], _WHAT.get(_RECEIVED[0], f"stopped by signal {_RECEIVED[0]}")) if _RECEIVED else None


@contextmanager
def on_stop(cleanup: Callable[[], str | None]) -> Iterator[None]:
    """Meanwhile, ``cleanup`` runs if the process is stopped by a signal :func:`stops_cleanly` handles."""
    _CLEANUPS.append(cleanup)
    try:
        yield
    finally:
        for i in range(len(_CLEANUPS) - 1, -1, -1):  # by identity, the newest first
            if _CLEANUPS[i] is cleanup:
                del _CLEANUPS[i]
                break


@contextmanager
def temp_dir(prefix: str) -> Iterator[str]:
    """``tempfile.TemporaryDirectory``, also removed when the process is stopped by a signal."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, on_stop(lambda: shutil.rmtree(tmp, True)):
        yield tmp


@contextmanager
def stops_cleanly(signals: Iterable[int] = (signal.SIGTERM,), *, announce: bool = True) -> Iterator[None]:
    """Meanwhile each of ``signals`` that still has Python's default action (SIGTERM: die; SIGINT:
    KeyboardInterrupt) ends the process cleanly (:func:`stop`; without its line if not ``announce``).  Only in
    the main thread: elsewhere, and for a signal someone else handles, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    mine = {}
    for s in signals:
        before = signal.getsignal(s)
        if before in (signal.SIG_DFL, signal.default_int_handler):
            mine[s] = before
            signal.signal(s, stop if announce else functools.partial(stop, announce=False))
    try:
        yield
    finally:
        for s, before in mine.items():
            signal.signal(s, before)


def stop(signum: int, frame: object = None, *, announce: bool = True) -> None:
    """The signal handler: every registered cleanup, the children stopped, one line, ``os._exit(128 + signum)``."""
    for s in _WHAT:  # a second Ctrl-C while cleaning up does not cut the cleanup short
        with suppress(ValueError, OSError):
            signal.signal(s, signal.SIG_IGN)
    _RECEIVED[:] = [signum]
    notes = []
    for cleanup in reversed(list(_CLEANUPS)):
        try:
            note = cleanup()
        except BaseException:  # noqa: BLE001 - best effort: the remaining cleanups matter more
            continue
        if note:
            notes.append(note)
    _stop_children()
    what = received()[1]
    if announce:
        line = f"{what}: {'; '.join(notes)}" if notes else what
        if log.hasHandlers():
            log.warning(line)
        else:  # the command line's handler is not set up yet (still importing), nor any other
            with suppress(Exception):
                sys.stderr.write(f"edgeres: warning: {line}\n")
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(128 + signum)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while a rename or a cleanup runs, and deliver them after it.

    Python handlers run in the main thread, so they are swapped there (pthread_sigmask would not do: the
    kernel would hand the signals to TensorFlow's threads instead).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    saved = {s: h for s, h in saved.items() if h not in (None, signal.SIG_IGN)}
    for s in saved:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(held):
            signal.raise_signal(s)


def _stop_children() -> None:
    """SIGTERM to this process's children still running (Linux's /proc; elsewhere the registered cleanups only)."""
    me = os.getpid()
    with suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with suppress(OSError, ValueError, IndexError):
                stat = Path(entry.path, "stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == me:  # after "pid (comm) state": the parent
                    os.kill(int(entry.name), signal.SIGTERM)
