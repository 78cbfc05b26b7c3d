"""``edgeres validate``: accuracy of one artifact, and its fidelity to another.

LIGHT layer: runs on the device with numpy, Pillow and one runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeres.core.data import Preprocess, open_dataset
from edgeres.core.errors import ShapeError
from edgeres.core.metrics import tally_batches
from edgeres.core.quiet import quiet
from edgeres.core.runtime import open_runner


def recorded_preprocess(model: str) -> Preprocess | None:
    """The preprocessing recorded in the run folder's report.json next to ``model``, if any."""
    report = Path(model).resolve().parent / "report.json"
    if not report.is_file():
        return None
    try:
        return Preprocess.from_dict(json.loads(report.read_text())["preprocess"])
    except (ValueError, KeyError, TypeError):
        return None


def run_validate(model: str, data: str, *, reference: str | None = None, preprocess: Preprocess | None = None,
                 threads: int = 2, delegate: str | None = None, val_size: int | None = None, seed: int = 0,
                 batch_size: int = 32, on_error: str = "warn", progress=None) -> dict:
    source = "given"
    if preprocess is None:
        preprocess = recorded_preprocess(model)
        source = "report.json" if preprocess is not None else "default"
        preprocess = preprocess or Preprocess()
    with quiet():
        runner = open_runner(model, threads=threads, delegate=delegate)
        ref_runner = open_runner(reference, threads=threads) if reference else None
    if ref_runner is not None and ref_runner.hwc != runner.hwc:
        raise ShapeError(f"--reference takes input {ref_runner.hwc} but {Path(model).name} takes {runner.hwc}")
    ds = open_dataset(data, "validation")
    if val_size:
        ds = ds.sample(val_size, seed)
    ref_fn = ref_runner.predict if ref_runner is not None else None
    ref_tally, tallies = tally_batches(ds.batches(runner.hwc, batch_size, preprocess, on_error),
                                       {"model": runner.predict}, reference=ref_fn,
                                       first_output=lambda n: ds.check_classes(n, "validation"), progress=progress)
    tally = tallies["model"]
    result = {"model": str(model), **runner.describe(), "data": ds.describe(),
              "preprocess": {**preprocess.to_dict(), "from": source}, **tally.result()}
    if ref_runner is not None:
        result["reference"] = {"model": str(reference), **ref_tally.result()}
        if "top1" in result and "top1" in result["reference"]:
            result["top1_drop"] = result["reference"]["top1"] - result["top1"]
    return result
