"""What ``--remote`` costs: remote p50 against local p50, fixed overhead per model, and a fleet of four.

Runs real OpenSSH servers on 127.0.0.1 (tests/loopback_ssh.py; needs Debian's
openssh-server) as the "devices", each running this interpreter's edgeres.

1. Latency: ``edgeres bench MODEL`` here and on ``dev``, alternated for
   ``--rounds`` rounds in one run; the ratio of the median p50s.
2. Fixed overhead: the wall time of the whole CLI with ``--remote dev`` minus
   the wall time of the same command run here, with ``--runs 1 --warmup 0``
   (connection, archive copy, the device's edgeres start-up, cleanup).
3. Fleet: the wall time of ``--remote dev,dev2,dev3,dev4`` over that of
   ``--remote dev``.  The four loopback servers share this machine's cores,
   so the command uses ``--threads 1`` and few runs: what is measured is
   edgeres' orchestration, which real boards would run on their own CPUs.

    python benchmarks/remote_overhead.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, table

sys.path.insert(0, str(ROOT))
from tests.loopback_ssh import start_devices  # noqa: E402


def cli(*args) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeres", *map(str, args), "--json"], capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"edgeres failed: {proc.stderr.strip()}")
    return wall, json.loads(proc.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("$ edgeres convert resnet20 --input-size 32 --int8 (random weights; latency only)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "edgeres", "convert", "resnet20", "--input-size", "32", "--int8",
                        "--calib", ROOT / "calibration" / "digits-train.npz", "--resize", "stretch", "-o",
                        tmp / "run"], check=True, capture_output=True)
        model = tmp / "run" / "model_int8.tflite"
        config, servers = start_devices(tmp / "ssh", 4)
        try:
            remote = ["--remote-python", sys.executable, "--ssh-config", config]
            local_p50, remote_p50 = [], []
            for _ in range(args.rounds):  # alternating, so a drift hits both alike
                _, here = cli("bench", model, "--runs", args.runs, "--threads", "1")
                _, there = cli("bench", model, "--runs", args.runs, "--threads", "1", "--remote", "dev", *remote)
                local_p50.append(here["results"][0]["latency_ms"]["p50"])
                remote_p50.append(there["devices"][0]["report"]["results"][0]["latency_ms"]["p50"])
            overhead = []
            for _ in range(args.rounds):
                w_local, _ = cli("bench", model, "--runs", 1, "--warmup", 0)
                w_remote, _ = cli("bench", model, "--runs", 1, "--warmup", 0, "--remote", "dev", *remote)
                overhead.append(w_remote - w_local)
            one, four = [], []
            for _ in range(args.rounds):
                one.append(cli("bench", model, "--runs", 20, "--threads", 1, "--remote", "dev", *remote)[0])
                four.append(cli("bench", model, "--runs", 20, "--threads", 1, "--remote", "dev,dev2,dev3,dev4",
                                *remote)[0])
        finally:
            for s in servers:
                s.stop()
    lp, rp = statistics.median(local_p50), statistics.median(remote_p50)
    rows = [("p50 here (ms)", f"{lp:.3f}"), ("p50 on dev over SSH (ms)", f"{rp:.3f}"),
            ("remote / local p50", f"{rp / lp:.3f}"),
            ("fixed overhead per model (s, median)", f"{statistics.median(overhead):.2f}"),
            ("one device, wall (s, median)", f"{statistics.median(one):.2f}"),
            ("four devices as a fleet, wall (s, median)", f"{statistics.median(four):.2f}"),
            ("fleet of four / one", f"{statistics.median(four) / statistics.median(one):.2f}")]
    print(table(("measure", "value"), rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
