"""SIGTERM (or Ctrl-C) at a random point of `edgeres convert --int8`: how the runs end, over many runs.

    python benchmarks/signal_stress.py [--runs 30] [--signal TERM|INT] [--min 1] [--max 12] [--seed 0]

Each run converts the embedded default into one run folder (``--force``, so a previous complete run is
there to be kept), and gets the signal after a uniform random delay.  Counted by exit code: 143/130 (stopped
cleanly), 0 (finished before the signal), -15/-2 (the default action: before edgeres handled the signal, or
in interpreter teardown after it finished), anything else (a crash: -11 was the bug this guards against).
After each run the folder must be a complete run, old or new, and no hidden stage or lock may remain.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--signal", choices=["TERM", "INT"], default="TERM")
    ap.add_argument("--min", type=float, default=1.0)
    ap.add_argument("--max", type=float, default=12.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sig = getattr(signal, f"SIG{args.signal}")
    rng = random.Random(args.seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    codes: collections.Counter = collections.Counter()
    broken = 0
    with tempfile.TemporaryDirectory(prefix="edgeres-signals-") as tmp:
        out = Path(tmp) / "run"
        subprocess.run([sys.executable, "-m", "edgeres", "convert", "--int8", "-o", str(out)], env=env,
                       capture_output=True, check=True)
        for i in range(args.runs):
            delay = rng.uniform(args.min, args.max)
            proc = subprocess.Popen([sys.executable, "-m", "edgeres", "convert", "--int8", "-o", str(out),
                                     "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True, restore_signals=True)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)
            _, err = proc.communicate(timeout=300)
            codes[proc.returncode] += 1
            report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
            left = [p.name for p in Path(tmp).iterdir() if p.name.startswith(".")]
            ok = report.get("passed") is True and not left
            broken += not ok
            tail = err.strip().splitlines()[-1:] if proc.returncode not in (0, 128 + sig) else ""
            print(f"{i:3d}  after {delay:5.1f} s  exit {proc.returncode:4d}  {'ok' if ok else 'BROKEN'}  {tail}",
                  flush=True)
    print(f"\nexit codes over {args.runs} runs: {dict(sorted(codes.items()))}; broken run folders: {broken}")
    return 1 if broken or any(c not in (0, 128 + sig, -sig) for c in codes) else 0


if __name__ == "__main__":
    sys.exit(main())
