"""The real Edge TPU compiler: :func:`compile_model` runs ``edgetpu_compiler`` when it is installed.

``edgetpu_compiler`` runs only on x86-64 Debian/Ubuntu Linux;
:func:`parse_compiler_log` reads what it prints (and its ``*_edgetpu.log``).
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edgeres.core.errors import ConversionError, RuntimeUnavailableError
from edgeres.devices.edgetpu.graph import read_tflite

COMPILER_URL = "https://coral.ai/docs/edgetpu/compiler/"
COMPILE_TIMEOUT_S = 600.0

_SIZE_RE = r"([0-9.]+)\s*(B|KiB|MiB|GiB)"
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_LOG_FIELDS = {
    "version": re.compile(r"^Edge TPU Compiler version\s+(\S+)"),
    "input_model": re.compile(r"^Input model:\s*(.+)$"),
    "output_model": re.compile(r"^Output model:\s*(.+)$"),
    "on_chip_bytes": re.compile(r"^On-chip memory used for caching model parameters:\s*" + _SIZE_RE),
    "on_chip_remaining_bytes": re.compile(
        r"^On-chip memory remaining for caching model parameters:\s*" + _SIZE_RE),
    "off_chip_bytes": re.compile(r"^Off-chip memory used for streaming uncached model parameters:\s*" + _SIZE_RE),
    "subgraphs": re.compile(r"^Number of Edge TPU subgraphs:\s*(\d+)"),
    "ops_total": re.compile(r"^Total number of operations:\s*(\d+)"),
    "ops_on_tpu": re.compile(r"^Number of operations that will run on Edge TPU:\s*(\d+)"),
    "ops_on_cpu": re.compile(r"^Number of operations that will run on CPU:\s*(\d+)"),
}
_TABLE_HEAD = re.compile(r"^Operator\s+Count\s+Status\s*$")
_TABLE_ROW = re.compile(r"^([A-Za-z0-9_\-]+)\s+(\d+)\s+(\S.*?)\s*$")
_NOISE = ("Compilation child process completed within timeout period.",
          "Started a compilation timeout timer", "Compilation succeeded!")


def parse_compiler_log(text: str) -> dict:
    """Parse what ``edgetpu_compiler -s`` prints (and its ``*_edgetpu.log``).

    Returns {version, input_model, output_model, on_chip_bytes, on_chip_remaining_bytes,
    off_chip_bytes, subgraphs, ops_total, ops_on_tpu, ops_on_cpu, op_table: [{op, count, status,
    mapped}]}; fields the log does not have are None.  The op counts fall back on the table.
    """
    out: dict[str, Any] = {k: None for k in _LOG_FIELDS}
    table: list[dict] = []
    in_table = False
    for raw in text.splitlines():
        line = raw.strip()
        if _TABLE_HEAD.match(line):
            in_table = True
            continue
        if in_table:
            m = _TABLE_ROW.match(line)
            if m and not line.startswith(_NOISE):
                status = m.group(3)
                table.append({"op": m.group(1), "count": int(m.group(2)), "status": status,
                              "mapped": status == "Mapped to Edge TPU"})
                continue
            if line and table:
                in_table = False  # a non-row line after the rows ends the table
        for key, rx in _LOG_FIELDS.items():
            m = rx.match(line)
            if not m:
                continue
            if key.endswith("_bytes"):
                out[key] = round(float(m.group(1)) * _UNITS[m.group(2)])
            elif key in ("subgraphs", "ops_total", "ops_on_tpu", "ops_on_cpu"):
                out[key] = int(m.group(1))
            else:
                out[key] = m.group(1).strip()
    out["op_table"] = table
    if table:
        if out["ops_on_tpu"] is None:
            out["ops_on_tpu"] = sum(r["count"] for r in table if r["mapped"])
        if out["ops_on_cpu"] is None:
            out["ops_on_cpu"] = sum(r["count"] for r in table if not r["mapped"])
    if out["ops_total"] is None and out["ops_on_tpu"] is not None and out["ops_on_cpu"] is not None:
        out["ops_total"] = out["ops_on_tpu"] + out["ops_on_cpu"]
    if out["ops_on_cpu"] is None and out["ops_total"] is not None and out["ops_on_tpu"] is not None:
        out["ops_on_cpu"] = out["ops_total"] - out["ops_on_tpu"]
    return out


def _compiler_missing_message() -> str:
    arch = platform.machine().lower()
    where = "" if arch in ("x86_64", "amd64") else f" and this machine is {arch}, so compile on another host"
    return ("edgetpu_compiler is not installed (it runs only on x86-64 Debian/Ubuntu Linux"
            f"{where}): add the Coral apt repository "
            "'deb https://packages.cloud.google.com/apt coral-edgetpu-stable main', then "
            f"'sudo apt-get update && sudo apt-get install edgetpu-compiler' (see {COMPILER_URL})")


def _last_meaningful_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(_NOISE)]
    for ln in reversed(lines):
        if re.search(r"error|fail|invalid|unsupported|abort", ln, re.IGNORECASE):
            return ln
    return lines[-1] if lines else "no output"


def compile_model(path: str | Path, out_dir: str | Path, timeout: float = COMPILE_TIMEOUT_S) -> dict:
    """Compile a ``.tflite`` for the Edge TPU with ``edgetpu_compiler -s -o OUT_DIR PATH``.

    Returns {compiled_path, ops_on_tpu, ops_on_cpu, on_chip_bytes, off_chip_bytes, op_table, log,
    ...} (see :func:`parse_compiler_log`).  Raises RuntimeUnavailableError when the compiler is not
    installed and ConversionError when it fails.
    """
    exe = shutil.which("edgetpu_compiler")
    if exe is None:
        raise RuntimeUnavailableError(_compiler_missing_message())
    p, _ = read_tflite(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run([exe, "-s", "-o", str(out), str(p)], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"edgetpu_compiler did not finish {p.name} within {timeout:.0f} s") from None
    except OSError as exc:
        raise RuntimeUnavailableError(f"cannot run {exe}: {exc.strerror or exc}") from None
    log = (proc.stdout or "") + (("\n" + proc.stderr) if proc.stderr else "")
    if proc.returncode != 0:
        raise ConversionError(f"edgetpu_compiler failed on {p.name} (exit {proc.returncode}): "
                              f"{_last_meaningful_line(log)}")
    parsed = parse_compiler_log(log)
    compiled = out / f"{p.stem}_edgetpu.tflite"
    if not compiled.is_file() and parsed.get("output_model"):
        cand = Path(parsed["output_model"])
        compiled = cand if cand.is_absolute() else out / cand.name
    if not compiled.is_file():
        raise ConversionError(f"edgetpu_compiler wrote no {compiled.name}: {_last_meaningful_line(log)}")
    op_log = out / f"{p.stem}_edgetpu.log"
    if not parsed["op_table"] and op_log.is_file():  # older compilers put the table only in the log file
        parsed["op_table"] = parse_compiler_log(op_log.read_text(errors="replace"))["op_table"]
    return {"compiled_path": str(compiled), **parsed, "log": log}
