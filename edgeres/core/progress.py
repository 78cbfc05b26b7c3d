"""The progress protocol long stages report through.  Standard library only.

A stage asks ``progress(label, total)`` for a bar and calls ``bar.update(n)``;
the CLI passes click progress bars on a terminal, and everything else gets
:func:`no_progress`.
"""

from __future__ import annotations

from collections.abc import Callable


class ProgressBar:
    """A progress bar that shows nothing."""

    def update(self, n: int) -> None: ...
    def __enter__(self): return self
    def __exit__(self, *exc): return False


Progress = Callable[[str, int], ProgressBar]


def no_progress(label: str, length: int) -> ProgressBar:
    return ProgressBar()
