"""Where independent pieces of work run: the :class:`Executor` protocol, and :class:`LocalExecutor`.

An executor maps a module-level function over items, ``fn(shared, item)``
for each, and returns the results in item order, whatever order they finish
in.  ``shared`` is one object every call needs (a model's bytes, settings):
an executor that ships work elsewhere sends it once, not once per item.
:class:`LocalExecutor` runs everything here, in turn;
:class:`edgeres.cluster.RayExecutor` runs it on a Ray cluster.

LIGHT layer: standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

#: ``progress(index, result)``: called as each item's result arrives (in the order they finish)
Progress = Callable[[int, Any], None]


@runtime_checkable
class Executor(Protocol):
    """Runs ``fn(shared, item)`` for each item, maybe elsewhere, and returns the results in item order.

    ``fn`` must be a module-level function (importable where it runs), and
    ``shared``, the items and the results picklable.  An exception raised by
    ``fn`` propagates to the caller as it was raised.
    """

    #: how many items can run at once: callers cut their work into at least this many pieces
    workers: int

    def describe(self) -> dict:
        """What ran the work, for a report: JSON-ready."""
        ...

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable, *, shared: Any = None,
            progress: Progress | None = None) -> list:
        """``[fn(shared, item) for item in items]``, in item order."""
        ...


class LocalExecutor:
    """Every item here, in this process, one after another.

    ``workers`` is how many workers the callers plan for (how finely they cut
    the work): the pieces still run here in turn, which checks the cutting
    and merging without a cluster.
    """

    def __init__(self, workers: int = 1):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a whole number of at least 1, got {workers!r}")
        self.workers = workers

    def describe(self) -> dict:
        return {"backend": "local", "workers": self.workers}

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable, *, shared: Any = None,
            progress: Progress | None = None) -> list:
        results = []
        for i, item in enumerate(items):
            results.append(fn(shared, item))
            if progress is not None:
                progress(i, results[-1])
        return results

    def close(self) -> None:
        """Nothing to release: for symmetry with executors that hold a cluster."""

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
