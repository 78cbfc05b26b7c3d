"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def shared(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        sys.exit(f"benchmark needs {p} (../shared/data); it is not present")
    return p


def edgeres_json(*args: str, tree: Path | None = None) -> dict:
    """Run the real CLI (`python -m edgeres ... --json`) and return its report.

    ``tree``: another checkout of the project (``git worktree add``) whose ``edgeres`` runs instead."""
    cmd = [sys.executable, "-m", "edgeres", *map(str, args), "--json"]
    print("$", f"PYTHONPATH={tree}" if tree else "", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode not in (0, 10):
        sys.exit(f"edgeres failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def table(header: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)])
