"""Issue #13 part 4: where a format's conversion peaks in memory, stage by stage, with and without
edgeres' release between stages, in one run.

    python benchmarks/stage_memory.py [--model resnet50] [--calib-size 100]

For each format (TFLite, ONNX), and for each of "edgeres" (``release_memory()``
between the stages, as ``convert`` does) and "no release" (the same stages with
it switched off), a fresh process builds the model from the zoo, then runs the
format's stages as a format process of ``convert`` does: float export,
calibration statistics (``Format.quantizer``), int8 quantization with the
``default`` recipe.  A 20 ms sampler records the resident memory (bytes / 1e9)
and the Python stack at each stage's peak.  Images: the ImageNet sample photos
(../shared/data/imagenet-samples), decoded as convert does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import shared, table

CHILD = r"""
import json, os, sys, threading, time, traceback
import numpy as np

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9

fmt_name, arch, calib_dir, n, release = sys.argv[1:6]
main = threading.main_thread().ident
stage, peaks, where = ["load"], {}, {}

def sample():
    while True:
        r = rss()
        if r > peaks.get(stage[0], 0):
            peaks[stage[0]] = r
            frames = traceback.extract_stack(sys._current_frames()[main])
            where[stage[0]] = " < ".join(f"{os.path.basename(f.filename)}:{f.name}" for f in frames[-3:][::-1])
        time.sleep(0.02)

threading.Thread(target=sample, daemon=True).start()
import edgeres.core.machine as machine
if release == "0":
    machine.release_memory = lambda: None
from edgeres.backends.base import get_format
from pathlib import Path
from edgeres.core.data import decode_image
from edgeres.quant.recipes import resolve_recipe
from edgeres.zoo import create_model
from edgeres.devices.targets import resolve_target

model = create_model(arch)
hwc = tuple(model.input_shape[1:])
files = sorted(p for p in Path(calib_dir).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:int(n)]
calib = np.stack([decode_image(str(p), *hwc) for p in files]).astype(np.float32)
target = resolve_target(None)

from edgeres.backends.base import Settings

settings = Settings(target=target, threads=target.threads, io_dtype=target.tflite.io_dtype)
fmt = get_format(fmt_name)
stage[0] = "float export"
float_model, _ = fmt.export_float(model, hwc, settings)
machine.release_memory()
stage[0] = "statistics"
q = fmt.quantizer(model, hwc, calib, {}, settings, float_model=float_model)
machine.release_memory()
stage[0] = "int8 quantization"
q.quantize(resolve_recipe("default"))
stage[0] = "done"
time.sleep(0.1)
print(json.dumps({"peaks": peaks, "where": where}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--calib-size", type=int, default=100)
    a = ap.parse_args()
    calib = shared("imagenet-samples")
    rows, notes = [], []
    for fmt in ("tflite", "onnx"):
        for label, release in (("no release", "0"), ("edgeres", "1")):
            print(f"$ {fmt}, {label}", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, "-c", CHILD, fmt, a.model, str(calib), str(a.calib_size), release],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{fmt} ({label}) failed: {proc.stderr.strip()[-2000:]}")
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            peaks = out["peaks"]
            stages = ("float export", "statistics", "int8 quantization")
            rows.append((fmt, label, *(f"{peaks.get(s, 0):.2f}" for s in stages), f"{max(peaks.values()):.2f}"))
            if release == "1":
                top = max(stages, key=lambda s: peaks.get(s, 0))
                notes.append(f"{fmt}: the peak is in {top}, at {out['where'].get(top)}")
    print(table(("format", "run", "export GB", "statistics GB", "quantize GB", "process peak GB"), rows))
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
