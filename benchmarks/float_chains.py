"""Ops with no int8 kernel: edgeres' int8 with each float chain kept float, against every op quantized.

    python benchmarks/float_chains.py [--models convnext_mini,...] [--suite-dir DIR] [--runs 300]

For each suite model (default: convnext_mini, keras.applications' ConvNeXt: LayerNormalization and an exact
GELU: TFLite has no int8 NEG, ONNX Runtime no int8 ReduceMean/Sub/Sqrt/Reciprocal/Erf), for each format one
calibration pass (300 cifar10/calib images, seed 0, as `edgeres convert` samples them) and two int8 models
of the `default` recipe from it:

- **edgeres**: what `edgeres convert` builds: each op with no int8 kernel, and the arithmetic after it up to
  the next convolution, matrix product or data move, left out of quantization (the chain is quantized once);
- **every op quantized**: the same recipe with that chain emptied, so every op with an int8 form is
  quantized, as TFLiteConverter and ONNX Runtime's `quantize_static` do by themselves.

Both run on the 2,000 cifar10/test images against the Keras float32 outputs (agreement, output SQNR) and are
timed in one interleaved run (batch 1, 2 threads); the table gives their ratio.  A model with no such op
builds the same model twice (nothing to keep float), and says so.  Build the suite first:
`python benchmarks/suite/train.py`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import shared, table
from suite.manifest import load_suite, preprocess_of, suite_dir

from edgeres.core.data import open_dataset
from edgeres.core.metrics import Tally
from edgeres.core.quiet import quiet
from edgeres.core.timing import measure_interleaved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="convnext_mini", help="comma-separated suite model names")
    ap.add_argument("--suite-dir", help="suite folder (default: $EDGERES_SUITE_DIR or ~/.cache/edgeres/suite)")
    ap.add_argument("--calib-size", type=int, default=300)
    ap.add_argument("--runs", type=int, default=300, help="timed batch-1 runs per model (interleaved)")
    args = ap.parse_args(argv)
    from edgeres.backends import keras_io
    from edgeres.backends.base import create_backend, resolve_settings
    from edgeres.devices.targets import resolve_target
    from edgeres.quant.recipes import resolve_recipe

    wanted = args.models.split(",")
    entries = [e for e in load_suite(suite_dir(args.suite_dir)) if e["name"] in wanted]
    if len(entries) != len(wanted):
        sys.exit(f"not in suite.json: {sorted(set(wanted) - {e['name'] for e in entries})}")
    recipe = resolve_recipe("default")
    settings = resolve_settings(resolve_target(None), recipe)
    rows = []
    for entry in entries:
        pre = preprocess_of(entry["convert_args"])
        with quiet():
            model = keras_io.load_model(entry["path"]).model
        hwc = tuple(int(d) for d in model.inputs[0].shape[1:])
        calib_ds = open_dataset(shared("cifar10", "calib"))
        calib, _ = calib_ds.sample(min(args.calib_size, len(calib_ds)), 0).load(hwc, pre)
        batches = [(x, keras_io.predict(model, x)) for x, _y in open_dataset(shared("cifar10", "test")).batches(
            hwc, 64, pre)]
        for fmt in ("tflite", "onnx"):
            print(f"[{entry['name']}] {fmt}: calibrating, then building both", file=sys.stderr, flush=True)
            rows.append((entry["name"], fmt, *compare(create_backend(fmt, model, hwc, calib, settings), recipe,
                                                     batches, args.runs)))
    print(table(("model", "format", "ops kept float", "agreement %", "SQNR dB", "p50 ms", "speedup"), rows))
    return 0


def compare(backend, recipe, batches, runs: int) -> tuple:
    """(ops kept float, agreement, SQNR, p50 and speedup, each 'every op quantized -> edgeres')."""
    q = backend.quantizer
    built = {"edgeres": backend.build(recipe)[0]}
    kept = list(q.float_chain or []) if backend.name == "tflite" else list(q.no_int8_kernel)
    if backend.name == "tflite":
        q.float_chain = []
    else:
        q.no_int8_kernel = []
    built["every op quantized"] = backend.build(recipe)[0]
    with tempfile.TemporaryDirectory() as tmp:
        runners, scores = {}, {}
        for name, data in built.items():
            (Path(tmp) / name[:7]).mkdir()
            runners[name] = backend.runner(data, Path(tmp) / name[:7])
            tally = Tally()
            for x, ref in batches:
                tally.update(runners[name].predict(x), ref=ref)
            scores[name] = tally.result()
        x1 = batches[0][0][:1]
        lat = measure_interleaved({k: r.timed_invoke(r.quantize_input(x1)) for k, r in runners.items()},
                                  runs=runs, warmup=20)
    a, b = scores["edgeres"], scores["every op quantized"]
    pa, pb = lat["edgeres"][0].p50, lat["every op quantized"][0].p50
    return (len(kept), f"{b['agreement']:.2f} -> {a['agreement']:.2f}", f"{b['sqnr_db']:.1f} -> {a['sqnr_db']:.1f}",
            f"{pb:.3f} -> {pa:.3f}", f"{pb / pa:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
