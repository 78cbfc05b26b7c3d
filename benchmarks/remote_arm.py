"""The whole path a user takes: workstation -> SSH -> an aarch64 runtime, with no board.

    python benchmarks/arm_emulation.py --limit 50 --cpus cortex-a76   # once: builds the arm64 Python
    python benchmarks/remote_arm.py [--cpu cortex-a76] [--images 200]

The "device" is a loopback OpenSSH server (tests/loopback_ssh.py) whose
``--remote-python`` is an arm64 CPython 3.11 under qemu-user with the
runtime-only edgeres (tflite-runtime 2.14, numpy, click, Pillow, filelock; no
TensorFlow), from the cache arm_emulation.py builds.  It runs ``bench`` and
``validate --remote ... --compare-local`` on the int8 ResNet-20 that script
converted, and prints what came back: the device's own machine metadata, the
emulated latency (NOT representative of a real board), and accuracy beside
this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, shared, table

sys.path.insert(0, str(ROOT))
from tests.loopback_ssh import start_devices  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgeres-arm")
    ap.add_argument("--cpu", default="cortex-a76")
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    rootfs, site = args.cache / "rootfs", args.cache / "site-aarch64"
    model = args.cache / "resnet20-run" / "model_int8.tflite"
    if not (rootfs / ".complete").is_file() or not (site / ".complete").is_file() or not model.is_file():
        sys.exit(f"no arm64 Python in {args.cache}: run python benchmarks/arm_emulation.py first")
    qemu = subprocess.run(["which", "qemu-aarch64-static"], capture_output=True, text=True).stdout.strip()
    wrapper = args.cache / "arm-python"
    wrapper.write_text("#!/bin/sh\n"
                       f"PYTHONPATH={site}:{ROOT} exec {qemu} -cpu {args.cpu} -L {rootfs} "
                       f"{rootfs}/usr/bin/python3.11 -S \"$@\"\n")
    wrapper.chmod(0o755)
    data = shared("cifar10", "test")
    with tempfile.TemporaryDirectory() as tmp:
        config, servers = start_devices(Path(tmp) / "ssh", 1)
        remote = ["--remote", "dev", "--remote-python", str(wrapper), "--ssh-config", str(config)]
        try:
            out = {}
            for name, cmd in (("bench", ["bench", model, "--runs", "10", "--warmup", "2", "--threads", "2"]),
                              ("validate", ["validate", model, "--data", data, "--val-size", str(args.images),
                                            "--compare-local"])):
                argv = [sys.executable, "-m", "edgeres", *map(str, cmd), *remote, "--json"]
                print("$ edgeres", " ".join(map(str, cmd + remote)), file=sys.stderr, flush=True)
                proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ})
                if proc.returncode != 0:
                    sys.exit(f"{name} failed ({proc.returncode}): {proc.stderr.strip()}")
                out[name] = json.loads(proc.stdout)
        finally:
            for s in servers:
                s.stop()
    b = out["bench"]["devices"][0]
    v = out["validate"]["devices"][0]
    m = b["report"]["machine"]
    res = b["report"]["results"][0]
    local = out["validate"]["local"]
    rows = [("device machine (as it reports itself)", f"{m['cpu']}, {m['cores']} cores, {m['arch']}"),
            ("device runtime", f"{res['runtime']} {res['runtime_version']}, delegate {res['delegate']}"),
            ("bench p50 on the device (emulated: not a real board's)", f"{res['latency_ms']['p50']:.1f} ms"),
            ("bench wall time incl. SSH (s)", f"{b['seconds']:.1f}"),
            (f"validate top-1 on the device ({v['result']['count']} images)", f"{v['result']['top1']:.2f} %"),
            ("validate top-1 here (x86, ai-edge-litert)", f"{local['top1']:.2f} %"),
            ("validate wall time incl. SSH (s)", f"{v['seconds']:.1f}")]
    print(table(("measure", "value"), rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
