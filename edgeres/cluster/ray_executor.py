"""The :class:`~edgeres.core.executor.Executor` on Ray: one task per item, results in item order.

Where it runs (``address``):

* ``None`` or ``"local"``: a private Ray on this machine, started here with
  all its usable cores, and shut down by :meth:`RayExecutor.close`;
* ``"auto"``: the cluster already running on this machine (``ray start``),
  or the one ``RAY_ADDRESS`` names;
* ``"HOST:PORT"``: a cluster's head node (its GCS port, from this machine's
  network);
* ``"ray://HOST:PORT"``: a remote cluster through Ray Client.

A process already connected to Ray (``ray.init`` done by its caller) keeps
that connection, whatever the address, and it is left open.  Only a
connection the executor made itself is closed, and only a Ray it started is
stopped.

Each task may be retried when its worker or node dies (``max_retries``),
never when its function raises: an :class:`EdgeresError` raised by the
function reaches the caller as itself, with its exit code.  Ray is imported
when an executor is made, so this module imports without it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from edgeres.core import stop
from edgeres.core.errors import ClusterError, EdgeresError, UsageError, first_line
from edgeres.core.executor import Progress
from edgeres.core.machine import usable_cores

INSTALL_HINT = "--ray needs Ray, which is not installed: pip install 'edgeres[cluster]'"
MAX_RETRIES = 3  # per task, for system failures only: a dead worker or node
CONNECT_TIMEOUT = 5.0  # seconds to reach a HOST:PORT before Ray itself tries (and waits minutes)


def parse_address(address: str | None) -> str:
    """``address`` checked and normalised: "local", "auto", "HOST:PORT" or "ray://HOST:PORT"; else UsageError."""
    a = "local" if address is None else str(address).strip()
    if a in ("local", "auto"):
        return a
    host, sep, port = a.removeprefix("ray://").rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ray takes local, auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    return a


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    return ray


def _check_reachable(address: str) -> None:
    """ClusterError naming ``address`` when nothing listens there: Ray would retry for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise ClusterError(f"cannot connect to Ray at {address}: {exc.strerror or first_line(exc)}") from None


def _connected_address(ray) -> str | None:
    """The GCS address this process is connected to (None through Ray Client, which does not say)."""
    try:
        return ray.get_runtime_context().gcs_address or None
    except Exception:  # Ray Client, or a Ray without it
        return None


def _call(fn: Callable[[Any, Any], Any], shared: Any, item: Any) -> Any:
    """The remote task's body (Ray resolves ``shared``, put once, to its value)."""
    return fn(shared, item)


class RayExecutor:
    """Runs ``fn(shared, item)`` as one Ray task per item; see the module's docstring for ``address``.

    Use it as a context manager (or call :meth:`close`) to release the Ray it
    started or the connection it made.
    """

    def __init__(self, address: str | None = None, *, max_retries: int = MAX_RETRIES):
        self.address = parse_address(address)
        self.max_retries = max_retries
        ray = self._ray = _import_ray()
        self._owned = False
        self._sigterm = None  # the SIGTERM handler to put back on close
        self._on_stop = None  # while connected: _shutdown registered with core.stop
        if not ray.is_initialized():
            self._connect()
            self._owned = True
        if ray.is_initialized() and (not self._owned or self.address == "auto"):  # say where it really goes
            self.address = _connected_address(ray) or self.address
        try:
            self.cpus = int(ray.cluster_resources().get("CPU", 0))
            self.nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            if self.cpus < 1:
                raise ClusterError(f"Ray at {self.address} has no CPUs to run tasks on")
        except BaseException:
            self.close()
            raise
        self.workers = self.cpus
        # SPREAD: shards are alike and CPU-bound, so every node gets its share (Ray's default packs the first)
        self._task = ray.remote(max_retries=max_retries, retry_exceptions=False, scheduling_strategy="SPREAD")(_call)

    def _connect(self) -> None:
        ray, address = self._ray, self.address
        quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
        main = threading.current_thread() is threading.main_thread()
        before = signal.getsignal(signal.SIGTERM) if main else None
        connected = False
        try:
            if address == "local":
                ray.init(address="local", num_cpus=usable_cores(), include_dashboard=False, **quiet)
            else:
                if address != "auto":
                    _check_reachable(address)
                ray.init(address=address, **quiet)  # Ray Client forwards log_to_driver to its server's Ray
            connected = True
        except EdgeresError:
            raise
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError (version mismatch), ...
            raise ClusterError(f"cannot connect to Ray at {address}: {first_line(exc)}") from None
        finally:  # ray.init sets its own SIGTERM handler (exit 15): SIGTERM keeps edgeres's meaning instead
            if before is not None:
                default = connected and before == signal.SIG_DFL
                signal.signal(signal.SIGTERM, stop.stop if default else before)
                self._sigterm = before if default else None
        if connected:  # a signal's cleanup (core.stop): Ray's processes would outlive a plain exit
            self._on_stop = stop.on_stop(self._shutdown)
            self._on_stop.__enter__()

    def describe(self) -> dict:
        return {"backend": "ray", "ray": self._ray.__version__, "address": self.address, "nodes": self.nodes,
                "cpus": self.cpus, "workers": self.workers}

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable, *, shared: Any = None,
            progress: Progress | None = None) -> list:
        """``[fn(shared, item) for item in items]`` as Ray tasks, in item order; ``shared`` is put once."""
        ray = self._ray
        items = list(items)
        if not items:
            return []
        shared_ref = ray.put(shared)
        refs = [self._task.remote(fn, shared_ref, item) for item in items]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(items)
        pending = refs
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = index[ref]
                    results[i] = ray.get(ref)
                    if progress is not None:
                        progress(i, results[i])
        except BaseException as exc:
            for ref in pending:
                with contextlib.suppress(Exception):  # best effort: the error being raised matters more
                    ray.cancel(ref)
            raise self._unwrap(exc) from None
        return results

    def _unwrap(self, exc: BaseException) -> BaseException:
        """The error to raise for a failed task: the function's own EdgeresError as it was raised; a one-line
        ClusterError for Ray losing the task beyond its retries; anything else (a bug) with Ray's traceback."""
        errors = self._ray.exceptions
        if isinstance(exc, errors.RayTaskError):
            cause = getattr(exc, "cause", None)
            if isinstance(cause, EdgeresError):
                return cause
            missing = next((e for e in (cause, *getattr(cause, "args", ())) if isinstance(e, ImportError)), None)
            if missing is not None:  # a worker without edgeres, or another version of it
                return ClusterError(f"the Ray workers at {self.address} cannot import {missing.name or 'a module'}: "
                                    "every node needs the same edgeres (pip install 'edgeres[runtime,cluster]')")
            return exc
        if isinstance(exc, errors.RayError):
            return ClusterError(f"Ray at {self.address} lost a task beyond {self.max_retries} retries: "
                                f"{first_line(exc)}")
        return exc

    def _shutdown(self) -> None:
        if self._owned:
            self._owned = False
            self._ray.shutdown()

    def close(self) -> None:
        """Stop the Ray this executor started, or drop the connection it made; leave any other alone."""
        self._shutdown()
        if self._on_stop is not None:
            self._on_stop.__exit__(None, None, None)
            self._on_stop = None
        if self._sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
