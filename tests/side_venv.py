"""Side virtual environments for tests: a package that must not share this interpreter's environment (an old
runtime, a reader independent of edgeres's own writer) is installed once in a venv kept under
/tmp/edgeres-test-venvs and run there as a subprocess."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

VENVS = Path("/tmp/edgeres-test-venvs")
READY = ".edgeres-ready"  # written last: a venv without it is half-built and is built again


def side_venv(name: str, requirements: list[str], *, python: str | None = None) -> Path:
    """The python executable of the venv ``VENVS/name`` holding ``requirements`` (pip specifiers), built with
    ``python`` (default: this interpreter) the first time it is asked for and reused after that.

    The build is serialised between pytest-xdist workers (and concurrent pytest runs) by a file lock.  The ready
    marker records the interpreter's version and the requirements: changing either builds the venv again.  pip
    gets a second try; if that fails too, the calling test (or fixture) is skipped with pip's last error line.
    """
    from filelock import FileLock

    python = python or sys.executable
    probe = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot run (exit code {probe.returncode}), so the side venv {name} cannot be built: "
                    f"{(probe.stderr.strip().splitlines() or [''])[-1].strip()}")
    version = probe.stdout.strip()
    venv, spec = VENVS / name, "\n".join([f"Python {version}", *requirements]) + "\n"
    marker = venv / READY
    VENVS.mkdir(parents=True, exist_ok=True)
    with FileLock(str(VENVS / f"{name}.lock")):
        if not marker.exists() or marker.read_text() != spec:
            shutil.rmtree(venv, ignore_errors=True)
            made = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True)
            if made.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                pytest.skip(f"{python} -m venv could not make the side venv {name}: "
                            f"{(made.stderr.strip().splitlines() or [''])[-1].strip()}")
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--retries", "1", "--timeout", "30",
                   "--disable-pip-version-check", *requirements]
            error = None
            for attempt in range(2):  # a second try, for a transient index or network failure
                if attempt:
                    time.sleep(2)
                try:
                    proc = subprocess.run(pip, capture_output=True, text=True, timeout=900)
                except subprocess.TimeoutExpired:
                    error = "pip ran for more than 900 s"
                    break  # not twice
                if proc.returncode == 0:
                    error = None
                    break
                error = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            if error is not None:
                shutil.rmtree(venv, ignore_errors=True)
                pytest.skip(f"pip could not install {' '.join(requirements)} into a side venv (no index reachable, "
                            f"or no wheel for this platform and Python): {error}")
            marker.write_text(spec)
    return venv / "bin" / "python"
