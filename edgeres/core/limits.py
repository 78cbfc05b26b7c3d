"""Bounds on every count the user gives, checked in one place.  Standard library only."""

from __future__ import annotations

from edgeres.core.errors import UsageError

MAX_THREADS = 256  # more than any edge device has; runtimes crash or balloon far above it


def check_threads(value: int, where: str = "--threads") -> int:
    """``value`` as a thread count, or a UsageError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{where} must be a whole number, got {value!r}")
    if not 1 <= value <= MAX_THREADS:
        raise UsageError(f"{where} must be 1 or more and at most {MAX_THREADS}, got {value}")
    return value
