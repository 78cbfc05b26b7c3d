"""The embedded default: a trained ResNet-8 and real handwritten digits.

``edgeres convert --int8`` with no other argument uses these, so the first
command works on a fresh machine with no network and no extra data.  See
``calibration/README.md`` for provenance.  Standard library only.
"""

from __future__ import annotations

from pathlib import Path

MODEL_FILE = "digits_resnet8.keras"
CALIB_FILE = "digits-train.npz"
DATA_FILE = "digits-test.npz"
NOTE = ("embedded default: ResNet-8 trained on UCI handwritten digits (calibration/README.md); "
        "validation uses held-out digits never seen in training or calibration")


def calibration_dir() -> Path:
    here = Path(__file__).resolve().parents[1]  # the edgeres package
    for cand in (here / "_calibration", here.parent / "calibration"):
        if (cand / MODEL_FILE).is_file():
            return cand
    return here.parent / "calibration"


def default_model() -> str:
    return str(calibration_dir() / MODEL_FILE)


def default_calib() -> str:
    return str(calibration_dir() / CALIB_FILE)


def default_data() -> str:
    return str(calibration_dir() / DATA_FILE)
