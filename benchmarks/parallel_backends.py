"""Issue #13 parts 4-5: convert with the formats in their own processes, against one process, in one run.

    python benchmarks/parallel_backends.py [--skip-resnet20] [--skip-300] [--baseline [COMMIT]]

Each run is a fresh `edgeres convert --int8` process (no --data: the
conversion stages and the benchmark), sampled every 0.1 s for the resident
memory of its whole process tree (the sum over the parent and its format
processes) and of its largest single process (what `/usr/bin/time -v` reports).

- ResNet-50 at 224 (`edgeres build resnet50`), 100 calibration images
  (../shared/data/imagenet-samples): `--jobs 1` (everything in one process, the
  old way) and the default (here: both formats side by side).  Ratio of wall
  times; the artifacts must be identical (TFLite byte for byte; ONNX the same
  graph, weights and outputs, see tests/test_processes.py).
- `--baseline` (default commit 1c6bf5e, the code when issue #13 was filed):
  the same ResNet-50 conversion with that commit's code, checked out in a git
  worktree and run with the same Python, in the same run: the issue's "1.3x
  faster than today's sequential run" and its peak memory, as ratios.
- ResNet-50 with 300 calibration images (CIFAR-10 calib/ as a flat folder, resized to 224):
  memory within 10% of the run with 100 (statistics are streamed).
- ResNet-20 at 32x32 with 300 images, `--jobs 1` against `--jobs 2`: where a
  child's start (TensorFlow import, model load) costs more than the overlap
  saves; why the default keeps small models in one process (AUTO_MIN_WORK).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import shared, table


def run(args: list[str], code: Path | None = None) -> dict:
    """One convert in a fresh process: wall seconds, peak tree RSS and peak single-process RSS (GB).
    ``code``: a checkout whose ``edgeres`` package runs instead of this one."""
    import os

    import psutil

    cmd = [sys.executable, "-m", "edgeres", "convert", "--int8", *map(str, args)]
    print("$", " ".join(cmd[2:]), f"(code: {code})" if code else "", file=sys.stderr, flush=True)
    env = dict(os.environ, PYTHONPATH=str(code)) if code else None
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=code)
    root, tree, single = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            rss = [p.memory_info().rss for p in [root, *root.children(recursive=True)]]
            tree, single = max(tree, sum(rss)), max(single, max(rss))
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"convert failed ({proc.returncode}): {proc.stderr.read().strip()}")
    out = Path(args[args.index("-o") + 1])
    report = json.loads((out / "report.json").read_text())
    return {"wall": wall, "tree_gb": tree / 1e9, "single_gb": single / 1e9, "report": report, "out": out}


def same_artifacts(a: Path, b: Path) -> bool:
    import onnx
    from onnx import numpy_helper

    from edgeres.backends.onnx_kernels import canonical

    for name in ("model_fp32.tflite", "model_int8.tflite"):
        if (a / name).read_bytes() != (b / name).read_bytes():
            return False
    for name in ("model_fp32.onnx", "model_int8.onnx"):
        ma, mb = canonical(onnx.load(a / name)), canonical(onnx.load(b / name))  # each run times ORT's kernels
        wa = sorted(numpy_helper.to_array(i).tobytes() for i in ma.graph.initializer)
        wb = sorted(numpy_helper.to_array(i).tobytes() for i in mb.graph.initializer)
        ops = [sorted(n.op_type for n in m.graph.node) for m in (ma, mb)]
        if wa != wb or ops[0] != ops[1]:
            return False
    return True


def row(name: str, r: dict) -> tuple:
    res = r["report"].get("resources", {"peak_rss_mb": {}, "formats_built": "in one process (not recorded)"})
    peaks = ", ".join(f"{k} {v / 1024:.2f}" for k, v in res["peak_rss_mb"].items()) or "-"
    return (name, f"{r['wall']:.1f}", f"{r['report']['conversion_seconds']:.1f}", f"{r['tree_gb']:.2f}",
            f"{r['single_gb']:.2f}", peaks, res["formats_built"])


def worktree(commit: str, where: Path) -> Path:
    """``commit`` of this repository checked out (detached) at ``where``."""
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-f", str(where), commit], check=True,
                   capture_output=True)
    return where


def drop_worktree(where: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(where)], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-resnet20", action="store_true")
    ap.add_argument("--skip-300", action="store_true")
    ap.add_argument("--baseline", nargs="?", const="1c6bf5e", default=None, metavar="COMMIT",
                    help="also convert with this commit's code (default 1c6bf5e: before issue #13)")
    a = ap.parse_args()
    samples, cifar = shared("imagenet-samples"), shared("cifar10", "calib")
    rows, lines = [], []
    with tempfile.TemporaryDirectory(prefix="edgeres-bench-") as tmp:
        tmp = Path(tmp)
        r50 = tmp / "resnet50.keras"
        subprocess.run([sys.executable, "-m", "edgeres", "build", "resnet50", "-o", str(r50)], check=True,
                       capture_output=True)
        common = [r50, "--recipe", "default", "--runs", 50, "--warmup", 5]
        one = run([*common, "--calib", samples, "--calib-size", 100, "--jobs", 1, "-o", tmp / "one"])
        auto = run([*common, "--calib", samples, "--calib-size", 100, "-o", tmp / "auto"])
        rows += [row("ResNet-50, 100 images, --jobs 1", one), row("ResNet-50, 100 images, default", auto)]
        stages = one["report"]["conversion_seconds"] / auto["report"]["conversion_seconds"]
        lines.append(f"ResNet-50 convert wall time, --jobs 1 / default: {one['wall'] / auto['wall']:.2f}x "
                     f"(conversion stages {stages:.2f}x)")
        lines.append(f"identical artifacts: {same_artifacts(one['out'], auto['out'])}")
        if a.baseline:
            code = worktree(a.baseline, tmp / "baseline-code")
            try:
                old = run([*common, "--calib", samples, "--calib-size", 100, "-o", tmp / "old"], code=code)
            finally:
                drop_worktree(code)
            rows.append(row(f"ResNet-50, 100 images, code of {a.baseline}", old))
            lines.append(f"ResNet-50 convert wall time, {a.baseline} / default: {old['wall'] / auto['wall']:.2f}x; "
                         f"largest process {old['single_gb'] / auto['single_gb']:.2f}x, "
                         f"tree {old['tree_gb'] / auto['tree_gb']:.2f}x")
        if not a.skip_300:  # a flat folder: the CIFAR-10 class folders would not match ResNet-50's 1,000 classes
            flat = tmp / "flat"
            flat.mkdir()
            for png in sorted(cifar.glob("*/*.png"))[::3][:300]:
                shutil.copy(png, flat / f"{png.parent.name}_{png.name}")
            big = run([*common, "--calib", flat, "--calib-size", 300, "-o", tmp / "c300"])
            rows.append(row("ResNet-50, 300 images, default", big))
            lines.append(f"largest process with 300 images / with 100: {big['single_gb'] / auto['single_gb']:.2f}x; "
                         f"tree: {big['tree_gb'] / auto['tree_gb']:.2f}x")
        if not a.skip_resnet20:
            r20 = [shared("models", "resnet20_cifar10.keras"), "--recipe", "default", "--calib", cifar,
                   "--calib-size", 300]
            s1 = run([*r20, "--jobs", 1, "-o", tmp / "r20one"])
            s2 = run([*r20, "--jobs", 2, "-o", tmp / "r20two"])
            rows += [row("ResNet-20, 300 images, --jobs 1", s1), row("ResNet-20, 300 images, --jobs 2", s2)]
            lines.append(f"ResNet-20 wall time, --jobs 1 / --jobs 2: {s1['wall'] / s2['wall']:.2f}x "
                         "(below 1: children do not pay; the default keeps it in one process)")
    print(table(("run", "wall s", "conversion s", "tree peak GB", "largest process GB",
                 "per-process peak GB", "formats built"), rows))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
