"""A standalone BatchNormalization (or Normalization layer) as one int8 DEPTHWISE_CONV_2D instead of MUL+ADD
(SUB+MUL): precision and latency.

    python benchmarks/batchnorm_depthwise.py [--models NAME,...] [--val-size N] [--runs 300] [--threads 2]

TFLiteConverter lowers a BatchNormalization that follows no convolution (pre-activation ResNet v2's
BN-ReLU-conv) to MUL and ADD, and a Normalization layer to SUB and MUL, each rounding to int8.  edgeres
builds the int8 TFLite model from the same network with each such layer as a 1x1 DepthwiseConv2D
(``edgeres/backends/keras_rewrite.py``).  This script
builds both int8 models of each model in one run, with the same quantizer, recipe (``default``) and 300
calibration images, and compares them:

- precision against Keras float32 on ``cifar10/test``: top-1 agreement and output SQNR (trained models only);
- batch-1 latency, the two models alternated in blocks (``measure_interleaved``), as a ratio.

Models: ``resnet14_v2`` (the development suite's trained pre-activation ResNet, 32x32; needs
``python benchmarks/suite/train.py``), ``resnet20`` (the shared ResNet-20, with Rescaling and Normalization
inside), and ``resnet50v2`` / ``efficientnetb0`` (``keras.applications``, untrained, 224x224, 10 classes:
latency only; random weights make precision meaningless; EfficientNet has a Normalization layer inside).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import shared, table

sys.path.insert(0, str(Path(__file__).parent / "suite"))


def build_models(names: list[str]):
    import keras
    from manifest import load_suite, suite_dir  # benchmarks/suite

    for name in names:
        if name in ("resnet50v2", "efficientnetb0"):
            keras.utils.set_random_seed(0)
            app = keras.applications.ResNet50V2 if name == "resnet50v2" else keras.applications.EfficientNetB0
            yield name, app(weights=None, input_shape=(224, 224, 3), classes=10, classifier_activation=None), False
        else:
            entry = next((m for m in load_suite(suite_dir()) if m["name"] == name), None)
            if entry is None:
                sys.exit(f"{name} is not in the suite")
            yield name, keras.models.load_model(entry["path"], safe_mode=True, compile=False), True


def int8_pair(model, calib: np.ndarray) -> tuple[bytes, bytes, list[str]]:
    from edgeres.backends.keras_io import layer_types
    from edgeres.backends.keras_rewrite import standalone_batchnorm_as_depthwise
    from edgeres.backends.tflite_quant import TFLiteQuantizer
    from edgeres.core.quiet import quiet
    from edgeres.quant.recipes import resolve_recipe

    recipe = resolve_recipe("default").for_backend("tflite")
    rewritten, names = standalone_batchnorm_as_depthwise(model, calib[:8])
    built = []
    with quiet():
        for m in (model, rewritten):
            built.append(TFLiteQuantizer(m, calib, layer_types(model), "int8").quantize(recipe)[0])
    return built[0], built[1], names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet14_v2,resnet20,resnet50v2,efficientnetb0")
    ap.add_argument("--val-size", type=int, default=None)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from edgeres.core.data import open_dataset
    from edgeres.core.metrics import Tally
    from edgeres.core.preprocess import Preprocess
    from edgeres.core.runtime import open_runner
    from edgeres.core.timing import measure_interleaved

    rows = []
    for name, model, trained in build_models(args.models.split(",")):
        hwc = tuple(model.input_shape[1:])
        calib, _ = open_dataset(shared("cifar10", "calib")).sample(300, 0).load(hwc, Preprocess())
        plain, folded, names = int8_pair(model, calib)
        print(f"[{name}] {len(names)} standalone BatchNormalization / Normalization as depthwise: {', '.join(names)}",
              file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            runners = {}
            for label, data in (("MUL+ADD", plain), ("DEPTHWISE", folded)):
                path = Path(tmp) / f"{label}.tflite"
                path.write_bytes(data)
                runners[label] = open_runner(path, threads=args.threads)
            figures = {label: ("-", "-") for label in runners}
            if trained:
                test = open_dataset(shared("cifar10", "test"))
                if args.val_size:
                    test = test.sample(args.val_size, 0)
                x, _ = test.load(hwc, Preprocess())
                ref = model.predict(x, batch_size=250, verbose=0)
                for label, r in runners.items():
                    tally = Tally()
                    tally.update(r.predict(x), ref=ref)
                    res = tally.result()
                    figures[label] = (f"{res['agreement']:.2f}", f"{res['sqnr_db']:.1f}")
            x1 = calib[:1]
            lat = measure_interleaved({label: r.timed_invoke(r.quantize_input(x1)) for label, r in runners.items()},
                                      runs=args.runs, block=20)
            p50 = {label: stats.p50 for label, (stats, _) in lat.items()}  # ms
            for label in runners:
                rows.append((name, label, *figures[label], f"{p50[label]:.3f}",
                             f"{p50[label] / p50['MUL+ADD']:.2f}x"))
    print(table(("model", "standalone BN / Normalization as", "agree %", "SQNR dB", "p50 ms", "vs MUL+ADD"), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
