"""What machine and which tool versions made a result.  Standard library only."""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

TOOLS = ("edgeres", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert",
         "tflite-runtime", "numpy", "pillow")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("model name", "hardware", "cpu model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (empty where Linux does not expose it)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return fields


# int8 multiply-accumulates per cycle per core, by the best dot-product ISA found:
# (flag, vendor or None, MACs/cycle, explanation).  First match wins.
_INT8_RATES = (
    ("amx_int8", None, 1024,
     "Intel AMX: TDPBUSD on 16x64 int8 tiles, 1024 MACs per cycle (runtimes that only use AVX-512 VNNI reach "
     "an eighth of it)"),
    ("avx512_vnni", "AuthenticAMD/25", 64,
     "AVX-512 VNNI on AMD Zen 4 (family 25): VPDPBUSD zmm at 1/cycle (two 256-bit halves), 64 MACs"),
    ("avx512_vnni", "AuthenticAMD/26", 128,
     "AVX-512 VNNI on AMD Zen 5 (family 26): a full 512-bit datapath, 2 x VPDPBUSD zmm per cycle, 128 MACs"),
    ("avx512_vnni", "AuthenticAMD", None, "an AMD CPU generation this table does not know"),
    ("avx512_vnni", None, 128, "AVX-512 VNNI: 2 x VPDPBUSD zmm per cycle, 64 MACs each"),
    ("avx_vnni", None, 64, "AVX-VNNI: 2 x VPDPBUSD ymm per cycle, 32 MACs each"),
    ("avx2", None, 32, "AVX2: VPMADDUBSW+VPMADDWD, about 32 MACs per cycle"),
    ("i8mm", None, 64, "ARM i8mm: 2 x SMMLA per cycle, 32 MACs each"),
    ("asimddp", None, 32, "ARM dot product: 2 x SDOT per cycle, 16 MACs each"),
    ("asimd", None, 16, "ARM NEON without dot product: SMLAL-based, about 16 MACs per cycle"),
)


def int8_peak() -> dict:
    """Theoretical int8 throughput of this CPU, from core count, clock and ISA.

    peak GOP/s = cores x GHz x int8 MACs per cycle per core x 2 (a MAC is two ops).
    The clock is what Linux reports (cpufreq's maximum where present, else
    /proc/cpuinfo's 'cpu MHz', which in a VM is usually the base clock: turbo
    raises the real peak, so a fraction of peak computed here is an upper bound).
    """
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("features") or "").split())
    vendor = info.get("vendor_id", "")
    mhz = None
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", encoding="utf-8") as f:
            mhz, clock_source = int(f.read().strip()) / 1000.0, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        try:
            mhz, clock_source = float(info["cpu mhz"]), "/proc/cpuinfo cpu MHz"
        except (KeyError, ValueError):
            clock_source = "unknown"
    cores = os.cpu_count() or 1
    family = f"{vendor}/{info.get('cpu family', '')}"
    match = next(((f, rate, why) for f, want_vendor, rate, why in _INT8_RATES
                  if f in flags and want_vendor in (None, vendor, family)), None)
    if match is None or match[1] is None:
        return {"cores": cores, "ghz": mhz and mhz / 1000, "gops": None, "isa": None,
                "note": "no known int8 dot-product ISA detected"}
    flag, rate, why = match
    gops = cores * (mhz or 0) / 1000.0 * rate * 2 if mhz else None
    return {"cores": cores, "ghz": mhz and mhz / 1000.0, "clock_source": clock_source, "isa": flag,
            "int8_macs_per_cycle_per_core": rate, "gops": gops, "note": why}


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset), else all of them."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def physical_memory() -> int | None:
    """This machine's RAM in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
    }


def tool_versions() -> dict:
    out = {}
    for dist in TOOLS:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def release_memory() -> None:
    """Give freed memory back to the system between the heavy stages of a conversion.

    The cyclic collector frees the graph copies TensorFlow and tf2onnx leave
    behind, then glibc's ``malloc_trim`` returns the freed heap pages, which it
    otherwise keeps for reuse. They would count towards the next stage's peak:
    on ResNet-50 the ONNX statistics peaked 1.1 GB higher without it (docs/scale.md).
    Nothing else changes; a no-op where the C library has no ``malloc_trim``.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols, which include the C library's
    except (OSError, AttributeError):  # not glibc (macOS, musl): the collector's work is all there is
        pass
