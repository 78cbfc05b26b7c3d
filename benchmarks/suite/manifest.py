"""Where the development suite lives and how to read its suite.json (for train.py and ../int8_suite.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from edgeres.core.preprocess import Preprocess

REBUILD = "python benchmarks/suite/train.py"


def suite_dir(arg: str | os.PathLike | None = None) -> Path:
    """``arg``, else $EDGERES_SUITE_DIR, else ~/.cache/edgeres/suite (outside git)."""
    if arg:
        return Path(arg).expanduser().resolve()
    env = os.environ.get("EDGERES_SUITE_DIR")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "edgeres" / "suite"


def load_suite(root: Path) -> list[dict]:
    """The models listed in ROOT/suite.json, each file checked to exist (else exit with how to rebuild)."""
    path = root / "suite.json"
    if not path.is_file():
        sys.exit(f"no {path}: build the suite first with `{REBUILD}`")
    models = json.loads(path.read_text())["models"]
    missing = [m["path"] for m in models if not Path(m["path"]).exists()]
    if missing:
        sys.exit(f"{path} lists missing file(s) {', '.join(missing)}: rebuild with `{REBUILD}`")
    return models


def preprocess_of(convert_args: list[str]) -> Preprocess:
    """The Preprocess that `edgeres convert` builds from these --scale/--mean/--std arguments."""
    opts = dict(zip(convert_args[::2], convert_args[1::2]))
    unknown = set(opts) - {"--scale", "--mean", "--std"}
    if unknown or len(convert_args) % 2:
        raise ValueError(f"convert_args {convert_args} are not pairs of --scale/--mean/--std")
    return Preprocess.parse(float(opts.get("--scale", 1.0)), opts.get("--mean"), opts.get("--std"))
