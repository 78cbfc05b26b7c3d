"""Issue #2 accuracy figure: int8 ResNet-20 stays close to float32 on real CIFAR-10.

    python benchmarks/accuracy_resnet20.py

Runs `edgeres convert --int8` on ../shared/data/models/resnet20_cifar10.keras,
calibrating on all 1,000 cifar10/calib images and validating on the 2,000
disjoint cifar10/test images, then checks both int8 artifacts: top-1 drop at
most 0.3 points and agreement with Keras float32 of at least 98%.
Exit code 1 when a figure is missed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _common import edgeres_json, shared, table

MAX_DROP, MIN_AGREE = 0.3, 98.0


def main() -> int:
    model = shared("models", "resnet20_cifar10.keras")
    with tempfile.TemporaryDirectory() as tmp:
        r = edgeres_json("convert", model, "--int8", "--calib", shared("cifar10", "calib"), "--calib-size", "1000",
                         "--data", shared("cifar10", "test"), "-o", Path(tmp) / "run")
    ok = True
    rows = [("keras float32", f"{r['reference']['top1']:.2f}", "-", "-", "-")]
    for a in r["artifacts"]:
        good = a["precision"] != "int8" or (a["top1_drop"] <= MAX_DROP and a["agreement"] >= MIN_AGREE)
        ok &= good
        rows.append((a["name"], f"{a['top1']:.2f}", f"{a['top1_drop']:+.2f}", f"{a['agreement']:.2f}",
                     "ok" if good else "MISSED"))
    print(f"ResNet-20 CIFAR-10: calibration {r['calibration']['count']} images, "
          f"validation {r['validation']['count']} images")
    print(table(("artifact", "top-1 %", "drop pp", "agreement %", f"drop<={MAX_DROP}, agree>={MIN_AGREE}"), rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
