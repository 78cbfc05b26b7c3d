"""Issue #13 part 6: `--ray` against the sequential run, in one run: same results, measured speedup, overhead.

    python benchmarks/ray_scaling.py [--images 8000] [--skip-search]

On a private local Ray (plain `--ray`: one worker per core here):

1. per-task overhead of edgeres.cluster.RayExecutor: a no-op mapped over 200
   items, with a 1 MB and a 25 MB `shared` object (a ResNet-50 int8 model's
   size), against the same calls in process;
2. `edgeres validate` of the shared ResNet-20's int8 TFLite model on
   --images CIFAR-10 training images (../shared/data/cifar10/train-10k.npz),
   sequential and `--ray`: wall time and identical figures;
3. `edgeres convert` of the shared ResNet-20 with a `--max-drop 0.5 --metric
   agreement` search (layers ranked and kept float) on the 2,000 test
   images, sequential and `--ray`: wall time and identical choices and figures.

Every wall time includes starting Ray and the workers' imports: what a user waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import shared, table

VOLATILE = {"latency_ms", "latency_samples_ms", "speedup_vs_fp32", "stages_seconds", "conversion_seconds", "p50_ms",
            "created", "machine", "resources", "seconds", "path", "source", "executor", "sha256"}


def stable(o):
    if isinstance(o, dict):
        return {k: stable(v) for k, v in o.items() if k not in VOLATILE}
    if isinstance(o, list):
        return [stable(v) for v in o if not (isinstance(v, str) and v.startswith("latency unstable"))]
    return o


def cli(*args) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "edgeres", *map(str, args), "--json"]
    print("$", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 10):
        sys.exit(f"edgeres failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return wall, json.loads(proc.stdout)


def _noop(shared, item):
    return item


def overhead() -> list[tuple]:
    from edgeres.cluster import RayExecutor
    from edgeres.core.executor import LocalExecutor

    rows = []
    items = list(range(200))
    with RayExecutor(None) as ray:
        ray.map(_noop, items[:4])  # workers started
        for mb in (1, 25):
            blob = bytes(mb * 2**20)
            t0 = time.perf_counter()
            ray.map(_noop, items, shared=blob)
            t_ray = time.perf_counter() - t0
            t0 = time.perf_counter()
            LocalExecutor().map(_noop, items, shared=blob)
            t_local = time.perf_counter() - t0
            rows.append((f"no-op x {len(items)}, {mb} MB shared", f"{1000 * t_ray / len(items):.2f} ms/task",
                         f"{1000 * t_local / len(items):.4f} ms/task", f"{ray.workers} workers"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8000)
    ap.add_argument("--skip-search", action="store_true")
    a = ap.parse_args()
    model, calib, test = shared("models", "resnet20_cifar10.keras"), shared("cifar10", "calib"), shared("cifar10",
                                                                                                      "test")
    train = shared("cifar10", "train-10k.npz")
    rows, lines = overhead(), []
    with tempfile.TemporaryDirectory(prefix="edgeres-ray-") as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        subprocess.run([sys.executable, "-m", "edgeres", "convert", str(model), "--int8", "--calib", str(calib),
                        "--recipe", "default", "-o", str(run)], check=True, capture_output=True)
        art = run / "model_int8.tflite"
        t_seq, v_seq = cli("validate", art, "--data", train, "--val-size", a.images)
        t_ray, v_ray = cli("validate", art, "--data", train, "--val-size", a.images, "--ray")
        rows.append((f"validate, {a.images} images", f"{t_seq:.1f} s", f"{t_ray:.1f} s",
                     f"{v_ray['executor']['shards']} shards"))
        lines.append(f"validate: sequential / --ray = {t_seq / t_ray:.2f}x; identical figures: "
                     f"{stable(v_seq) == stable(v_ray)}")
        if not a.skip_search:
            args = ["convert", model, "--int8", "--calib", calib, "--data", test, "--max-drop", 0.5, "--metric",
                    "agreement", "--recipe", "default"]
            t_seq, c_seq = cli(*args, "-o", tmp / "seq")
            t_ray, c_ray = cli(*args, "-o", tmp / "ray", "--ray")
            trials = sum(len(b["trials"]) for b in c_seq["search"]["backends"].values())
            rows.append(("convert --max-drop search", f"{t_seq:.1f} s", f"{t_ray:.1f} s", f"{trials} trials"))
            winners = {k: v["winner"]["step"] for k, v in c_ray["search"]["backends"].items()}
            lines.append(f"search: sequential / --ray = {t_seq / t_ray:.2f}x; winners {winners}; identical "
                         f"choices and figures: {stable(c_seq) == stable(c_ray)}")
    print(table(("work", "--ray", "in process", "note"), rows[:2]))
    print()
    print(table(("work", "sequential", "--ray", "note"), rows[2:]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
