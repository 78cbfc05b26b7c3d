"""Read a .tflite file's TFLite Metadata with a reader independent of edgeres's writer: tflite-support 0.4.4's
``MetadataDisplayer``, run in its own side venv (no TensorFlow) because its wheels stop at CPython 3.11 and pin
protobuf 3.  The wheel's extension links libusb-1.0 (apt: libusb-1.0-0, which .ci/run installs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.side_venv import side_venv

TFLITE_SUPPORT = "0.4.4"
REQUIREMENTS = [f"tflite-support=={TFLITE_SUPPORT}", "numpy<2"]  # the wheel was built against numpy 1
NO_LIBUSB = 75  # the exit code of a script whose `import tflite_support` failed for want of libusb-1.0

PRELUDE = f"""
import sys
try:
    from tflite_support import metadata  # an attribute of the package, not an importable module
except (ImportError, OSError) as exc:  # ImportError: libusb-1.0.so.0: cannot open shared object file
    if "libusb" not in str(exc):
        raise
    print(exc, file=sys.stderr)
    sys.exit({NO_LIBUSB})
"""

READER = """
import json, sys
from tflite_support import metadata
d = metadata.MetadataDisplayer.with_model_file(sys.argv[1])
packed = list(d.get_packed_associated_file_list())
files = {n: d.get_associated_file_buffer(n).decode("utf-8", "replace") for n in packed}
print(json.dumps({"metadata": json.loads(d.get_metadata_json()), "packed_files": packed, "files": files}))
"""


def tflite_support_python() -> Path:
    """The python of the side venv with tflite-support (built once; skips where it cannot be had)."""
    if sys.version_info[:2] <= (3, 11):
        python = sys.executable
    else:
        python = shutil.which("python3.11")
        if python is None:
            pytest.skip(f"tflite-support {TFLITE_SUPPORT} has wheels only up to CPython 3.11; this is Python "
                        f"{sys.version_info[0]}.{sys.version_info[1]} and there is no python3.11 on PATH")
    return side_venv(f"tflite-support-{TFLITE_SUPPORT}", REQUIREMENTS, python=python)


def run_tflite_support(script: str, *args: str | os.PathLike, timeout: float = 300) -> str:
    """Run ``script`` (``args`` as sys.argv[1:]) in the tflite-support side venv and return its stdout.

    Skips if libusb-1.0 is missing; raises AssertionError with the script's stderr if it fails otherwise.
    """
    python = tflite_support_python()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(python), "-c", PRELUDE + script, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode == NO_LIBUSB:
        pytest.skip(f"tflite-support {TFLITE_SUPPORT} needs the system library libusb-1.0 "
                    f"(`apt-get install libusb-1.0-0`): {proc.stderr.strip()}")
    if proc.returncode != 0:
        raise AssertionError(f"tflite-support {TFLITE_SUPPORT} failed (exit code {proc.returncode}) on "
                             f"{' '.join(map(str, args))}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def read_tflite_metadata(model_path: str | os.PathLike) -> dict:
    """``{"metadata": dict of MetadataDisplayer.get_metadata_json(), "packed_files": [names of the files packed in
    the model], "files": {name: text of that file}}``; AssertionError (with the reader's stderr) if the reader
    fails, e.g. on a model with no metadata."""
    out = run_tflite_support(READER, Path(model_path).resolve())
    return json.loads(out.strip().splitlines()[-1])
