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
    # ``python -m`` puts the working folder first on sys.path, ahead of PYTHONPATH: run in the tree, so its
    # edgeres is the one imported (the arguments are absolute paths or the tree's own relative ones)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    if proc.returncode not in (0, 10):
        sys.exit(f"edgeres failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def table(header: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)])


def add_model_options(ap) -> None:
    """--model (default: the shared ResNet-20, raw pixels) and its preprocessing, as `edgeres convert` takes it."""
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--scale", default=None)
    ap.add_argument("--mean", default=None)
    ap.add_argument("--std", default=None)


def model_and_preprocessing(args) -> tuple[Path, list[str]]:
    """The model from :func:`add_model_options`, and its --scale/--mean/--std as CLI arguments."""
    pre = [a for k in ("scale", "mean", "std") if getattr(args, k) for a in (f"--{k}", getattr(args, k))]
    return args.model or shared("models", "resnet20_cifar10.keras"), pre
