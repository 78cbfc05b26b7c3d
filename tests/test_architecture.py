"""The layout is enforced, not described: import layers, lint, module size, no import cycles."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

MAX_MODULE_LINES = 400


def _tool(name: str) -> str:
    """The console script from this interpreter's environment (the venv's bin), else PATH's."""
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if exe is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]' brings it)")
    return exe


def test_import_layers_hold():
    """pyproject.toml's import-linter contracts: imports point down, the light layers never import TensorFlow."""
    proc = subprocess.run([_tool("lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_ruff_is_clean():
    proc = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_no_import_cycles_between_modules():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("edgeres")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.find_shortest_chain(importer=imported, imported=module):
                cycles.append((module, imported))
    # a package __init__ re-exporting its own submodules is not a cycle of logic
    cycles = [(a, b) for a, b in cycles if not (b.startswith(a + ".") or a.startswith(b + "."))]
    assert not cycles, cycles


def test_no_module_is_over_the_size_limit():
    too_big = {str(p.relative_to(ROOT)): n for p in (ROOT / "edgeres").rglob("*.py")
               if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not too_big, too_big
