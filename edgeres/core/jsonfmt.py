"""Strict JSON for reports and manifests.  LIGHT layer."""

from __future__ import annotations

import json
import math
from pathlib import Path


def to_json(obj: object) -> str:
    """Strict JSON: non-finite floats (an SQNR of +inf) become null."""
    return json.dumps(_finite(obj), indent=2, default=_jsonable, allow_nan=False) + "\n"


def _finite(o: object) -> object:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _jsonable(o: object) -> object:
    if hasattr(o, "item"):
        return o.item()  # numpy scalars
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
