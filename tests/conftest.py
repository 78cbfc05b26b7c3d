"""Shared fixtures.  Real converters and runtimes, small models, real images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CALIBRATION = ROOT / "calibration"


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (the shared test data, present in CI; see ../shared/data/README.md)")
    return p


def invoke(*args):
    """Run the edgeres CLI in-process on string-converted arguments (CliRunner keeps stdout and stderr apart)."""
    from click.testing import CliRunner

    from edgeres.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, code: int, *needles: str) -> None:
    """The CLI's error contract: the exit code, exactly one 'edgeres: error:' line naming ``needles``, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edgeres: error: ")
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """The embedded held-out digits written as PNGs in class subfolders (a real image folder)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("digits-png")
    d = np.load(CALIBRATION / "digits-test.npz")
    for i, (x, y) in enumerate(zip(d["x"], d["y"])):
        folder = root / f"{int(y)}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(x[..., 0], "L").save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Path:
    """One `edgeres convert --int8` run on the embedded default, shared by several tests."""
    from click.testing import CliRunner

    from edgeres.cli import cli

    out = tmp_path_factory.mktemp("default") / "run"
    result = CliRunner().invoke(cli, ["convert", "--int8", "-o", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    return out
