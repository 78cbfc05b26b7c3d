"""Regenerate calibration/digits-train.npz and digits-test.npz (run once; outputs are committed).

Source: the UCI "Optical Recognition of Handwritten Digits" test set (1,797
8x8 images, pixel counts 0..16), as shipped inside the scikit-learn wheel at
sklearn/datasets/data/digits.csv.gz.  Needs scikit-learn installed only to find
that file:  pip install scikit-learn && python calibration/make_digits.py

Pixels are rescaled to uint8 0..255 (round(v * 255 / 16)) so the default model
takes raw pixels like every other edgeres model.  The split is stratified and
deterministic: 50 images per class (500) are held out for validation, the other
1,297 train the default model and supply its calibration images.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TEST_PER_CLASS = 50
SEED = 0


def main() -> None:
    import sklearn

    src = Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(src, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels, labels = raw[:, :64], raw[:, 64]
    x = np.round(pixels.reshape(-1, 8, 8, 1) * 255.0 / 16.0).astype(np.uint8)
    rng = np.random.default_rng(SEED)
    test_idx = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(labels == c), TEST_PER_CLASS, replace=False) for c in range(10)]))
    train_mask = np.ones(len(x), bool)
    train_mask[test_idx] = False
    names = np.array([str(d) for d in range(10)])  # label i is the digit i: labels.txt of `edgeres bundle`
    np.savez_compressed(HERE / "digits-train.npz", x=x[train_mask], y=labels[train_mask], class_names=names)
    np.savez_compressed(HERE / "digits-test.npz", x=x[test_idx], y=labels[test_idx], class_names=names)
    print(f"train {int(train_mask.sum())}, test {len(test_idx)} from {src} (sklearn {sklearn.__version__})")


if __name__ == "__main__":
    main()
