"""How close `convert`'s validate stage runs to the runtimes' own speed.

    python benchmarks/validate_speed.py [--images 2000]

Converts the shared ResNet-20 with ``--data`` on the CIFAR-10 test images
and compares, in one run, the validate stage's wall time (from report.json)
with what it cannot avoid: for each artifact, its batch time on the same
images (the same runner, batches of 32, timed here), plus the Keras float
reference at its best batch throughput (``model.predict`` at batch 256, after
a warm-up).  The issue's figure: at most 1.3x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import shared, table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    args = ap.parse_args()
    model, calib, data = shared("models", "resnet20_cifar10.keras"), shared("cifar10", "calib"), shared("cifar10",
                                                                                                       "test")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        subprocess.run([sys.executable, "-m", "edgeres", "convert", model, "--int8", "--calib", calib, "--data",
                        data, "--val-size", str(args.images), "-o", run], check=True, capture_output=True)
        report = json.loads((run / "report.json").read_text())
        from edgeres.core.data import Preprocess, open_dataset
        from edgeres.core.runtime import open_runner

        ds = open_dataset(data).sample(args.images, 0)
        x = np.concatenate([b[0] for b in ds.batches((32, 32, 3), 32, Preprocess())])
        rows, floor = [], 0.0
        for a in report["artifacts"]:
            r = open_runner(run / a["path"], threads=a["threads"])
            r.predict(x[:32])
            t0 = time.perf_counter()
            for i in range(0, len(x), 32):
                r.predict(x[i:i + 32])
            sec = time.perf_counter() - t0
            floor += sec
            rows.append((a["name"], f"{sec:.2f}"))
        import keras

        m = keras.saving.load_model(str(model), compile=False)
        m.predict(x[:256], batch_size=256, verbose=0)
        t0 = time.perf_counter()
        m.predict(x, batch_size=256, verbose=0)
        keras_s = time.perf_counter() - t0
    floor += keras_s
    stage = report["stages_seconds"]["validate"]
    rows += [("Keras reference, predict at batch 256", f"{keras_s:.2f}"), ("floor: the sum", f"{floor:.2f}"),
             ("edgeres validate stage", f"{stage:.2f}"), ("stage / floor", f"{stage / floor:.2f}")]
    print(f"ResNet-20, {args.images} CIFAR-10 test images, 2 threads")
    print(table(("what", "seconds"), rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
