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

# Upper bounds on the other counts a user gives.  Each is far above any real use and far below
# what would crash a runtime or exhaust memory; the CLI enforces them as option ranges.
MAX_RUNS = 1_000_000         # timed runs per configuration
MAX_WARMUP = 100_000         # untimed runs
MAX_SECONDS = 24 * 3600      # --min-time
MAX_CALIB_IMAGES = 100_000   # calibration images are held in memory (see the memory check in convert)
MAX_IMAGES = 100_000_000     # validation images are streamed
MAX_INPUT_SIZE = 8192        # a square image side, pixels
MAX_CLASSES = 1_000_000
MAX_CHANNELS = 64
MAX_WIDTH = 64.0             # zoo width multiplier
MAX_SEED = 2**32 - 1         # numpy's generators take 0..2**32-1
