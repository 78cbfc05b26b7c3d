"""Issue #10: train the extra models of the development suite, deterministically, and write suite.json.

    python benchmarks/suite/train.py [--force] [--only NAME,...] [--dir DIR] [--epochs N]

Trains six small CIFAR-10 classifiers on ../shared/data/cifar10/train-10k.npz
(10,000 training images, disjoint from cifar10/calib and cifar10/test) into a
cache folder outside git: --dir, else $EDGERES_SUITE_DIR, else
~/.cache/edgeres/suite/.  A model already there is kept unless --force.

- resnet8_mlperf_softmax.h5: the MLPerf Tiny image-classification ResNet-8
  (conv 16 + BN + ReLU, three one-block stages of 16/32/64 filters, stride 2 and
  a 1x1 conv shortcut in stages 2 and 3, 8x8 average pool over the whole map,
  Dense 10 softmax; L2 1e-4 on the convolutions as in the reference), built and
  trained with tf_keras (Keras 2), saved as a legacy Keras 2 .h5; pixels / 255
  outside the model (`--scale 0.00392156862745098`);
- resnet8_mlperf_logits.h5: the same weights, the softmax removed;
- resnet14_v2.keras: pre-activation ResNet v2 (BN-ReLU-conv), 2 blocks per
  stage, 16/32/64 filters; Keras 3; Rescaling + Normalization first, so it takes
  raw 0..255 pixels; logits;
- resnet8_gray.keras: ResNet-8 on 32x32x1 luma (Pillow's convert("L"):
  (R*19595 + G*38470 + B*7471 + 0x8000) >> 16), raw pixels, normalises inside,
  logits;
- resnet8_wide_normalized.keras: ResNet-8 with 32/64/128 filters, expects
  ImageNet-normalised input made outside the model (`--scale
  0.00392156862745098 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225`), logits;
- convnext_mini.keras: not a ResNet, keras.applications' ConvNeXt builder
  (patchify stem, depthwise 7x7, LayerNormalization, exact GELU, layer scale)
  at depths 2/2/4/2 and widths 32/64/128/256; raw pixels, its own
  Normalization inside; logits.  Its LayerNormalization and GELU have ops with
  no int8 kernel in TFLite or ONNX Runtime.

Fixed seeds, TensorFlow deterministic ops, a per-model seed (so training one
model never changes another), Adam with cosine decay, random flips and up to 4
pixels of translation.  Float32 top-1 is measured on the 2,000 cifar10/test
images after reloading each saved file with edgeres' own loader (Keras 3,
safe_mode), decoded and preprocessed exactly as `edgeres convert` does.

suite.json lists every suite model, the three shared ones by absolute path
included: name, path, convert_args, input convention, head, channels,
float32 top-1, description (and how it was trained).  `benchmarks/int8_suite.py`
reads it.  About 10 minutes on 2 idle CPU cores (each model under 3 minutes); --epochs N
overrides every epoch count for a quick check of the script itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import shared  # noqa: E402
from manifest import preprocess_of, suite_dir  # noqa: E402

from edgeres.core.data import open_dataset  # noqa: E402
from edgeres.core.preprocess import Preprocess  # noqa: E402
from edgeres.core.quiet import quiet  # noqa: E402

SCALE = "0.00392156862745098"  # 1 / 255
IMAGENET = ["--scale", SCALE, "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]
CIFAR_MEAN = (125.3, 123.0, 113.9)  # per-channel pixel mean and std of CIFAR-10's training set
CIFAR_STD = (63.0, 62.1, 66.7)
GRAY_MEAN, GRAY_STD = (122.6,), (61.0,)  # the same for luma
BATCH = 64
SEED = 10

RAW = "normalised inside (raw 0..255 in)"
SCALED = "scaled outside (/255)"
NORMALISED = "normalised outside (ImageNet)"

# name, file, input convention, convert args, head, channels, description
SHARED = [
    ("resnet20", "resnet20_cifar10.keras", RAW, [], "logits", 3,
     "ResNet-20 (He et al. 2016, option-A shortcuts as fixed 1x1 convs), akamaster weights, Keras 3"),
    ("resnet32_normalized", "resnet32_cifar10_normalized_input.keras", NORMALISED, IMAGENET, "logits", 3,
     "ResNet-32, same family, no scaling layers: ImageNet mean/std applied by the caller, Keras 3"),
    ("resnet44", "resnet44_cifar10.keras", RAW, [], "logits", 3,
     "ResNet-44, same family, 7 blocks per stage, normalises inside, Keras 3"),
]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="suite folder (default: $EDGERES_SUITE_DIR or ~/.cache/edgeres/suite)")
    ap.add_argument("--force", action="store_true", help="retrain models that are already there")
    ap.add_argument("--only", help="comma-separated names of the models to train (the others are kept or skipped)")
    ap.add_argument("--epochs", type=int, help="override every model's epoch count (quick checks)")
    return ap.parse_args(argv)


# ---------------------------------------------------------------- models


def mlperf_resnet8(softmax: bool):
    """MLPerf Tiny IC reference ResNet-8 (resnet_v1_eembc with 16 filters) in tf_keras (Keras 2)."""
    import tf_keras as k2

    layers, l2 = k2.layers, k2.regularizers.l2

    def conv(f, size, stride, name):
        return layers.Conv2D(f, size, strides=stride, padding="same", kernel_initializer="he_normal",
                             kernel_regularizer=l2(1e-4), name=name)

    inp = layers.Input((32, 32, 3), name="input")
    x = conv(16, 3, 1, "stem_conv")(inp)
    x = layers.Activation("relu", name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    for stage, f in enumerate((16, 32, 64), start=1):
        stride = 1 if stage == 1 else 2
        y = conv(f, 3, stride, f"s{stage}_conv1")(x)
        y = layers.Activation("relu", name=f"s{stage}_relu1")(layers.BatchNormalization(name=f"s{stage}_bn1")(y))
        y = layers.BatchNormalization(name=f"s{stage}_bn2")(conv(f, 3, 1, f"s{stage}_conv2")(y))
        if stride != 1:
            x = conv(f, 1, stride, f"s{stage}_shortcut")(x)
        x = layers.Activation("relu", name=f"s{stage}_relu2")(layers.Add(name=f"s{stage}_add")([x, y]))
    x = layers.Flatten(name="flatten")(layers.AveragePooling2D(pool_size=8, name="avg_pool")(x))
    out = layers.Dense(10, activation="softmax" if softmax else None, kernel_initializer="he_normal",
                       name="dense")(x)
    return k2.Model(inp, out, name="resnet8_mlperf_" + ("softmax" if softmax else "logits"))


def _normalise_inside(keras, x, mean, std, rescale: bool):
    """Raw 0..255 pixels normalised by the model itself: [Rescaling(1/255),] Normalization(mean, std**2)."""
    if rescale:
        x = keras.layers.Rescaling(1 / 255, name="rescale")(x)
    return keras.layers.Normalization(mean=list(mean), variance=[s * s for s in std], name="normalize")(x)


def resnet8_v1(channels: int, widths: tuple[int, int, int], inside: tuple | None, name: str):
    """ResNet-8 (v1, post-activation) in Keras 3, global average pool, logits."""
    import keras

    L = keras.layers
    inp = keras.Input((32, 32, channels), name="input")
    x = _normalise_inside(keras, inp, *inside, rescale=False) if inside else inp
    x = L.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(x))
    for stage, f in enumerate(widths, start=1):
        stride = 1 if stage == 1 else 2
        y = L.Conv2D(f, 3, strides=stride, padding="same", use_bias=False, name=f"s{stage}_conv1")(x)
        y = L.ReLU(name=f"s{stage}_relu1")(L.BatchNormalization(name=f"s{stage}_bn1")(y))
        y = L.Conv2D(f, 3, padding="same", use_bias=False, name=f"s{stage}_conv2")(y)
        y = L.BatchNormalization(name=f"s{stage}_bn2")(y)
        if stride != 1 or x.shape[-1] != f:
            x = L.Conv2D(f, 1, strides=stride, use_bias=False, name=f"s{stage}_shortcut")(x)
            x = L.BatchNormalization(name=f"s{stage}_shortcut_bn")(x)
        x = L.ReLU(name=f"s{stage}_relu2")(L.Add(name=f"s{stage}_add")([x, y]))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name=name)


def resnet14_v2(name: str):
    """Pre-activation ResNet v2 (He et al. 2016b): BN-ReLU-conv, 2 blocks per stage, 16/32/64, Keras 3."""
    import keras

    L = keras.layers
    inp = keras.Input((32, 32, 3), name="input")
    x = _normalise_inside(keras, inp, [m / 255 for m in CIFAR_MEAN], [v / 255 for v in CIFAR_STD], rescale=True)
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem_conv")(x)
    for stage, f in enumerate((16, 32, 64), start=1):
        for block in range(2):
            stride = 2 if (stage > 1 and block == 0) else 1
            p = f"s{stage}b{block}"
            pre = L.ReLU(name=f"{p}_relu1")(L.BatchNormalization(name=f"{p}_bn1")(x))
            if stride != 1 or x.shape[-1] != f:
                x = L.Conv2D(f, 1, strides=stride, use_bias=False, name=f"{p}_shortcut")(pre)
            y = L.Conv2D(f, 3, strides=stride, padding="same", use_bias=False, name=f"{p}_conv1")(pre)
            y = L.ReLU(name=f"{p}_relu2")(L.BatchNormalization(name=f"{p}_bn2")(y))
            y = L.Conv2D(f, 3, padding="same", use_bias=False, name=f"{p}_conv2")(y)
            x = L.Add(name=f"{p}_add")([x, y])
    x = L.ReLU(name="post_relu")(L.BatchNormalization(name="post_bn")(x))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name=name)


# name, file, input convention, convert args, head, channels, epochs, description (built by build())
TRAINED = [
    ("resnet8_mlperf_softmax", "resnet8_mlperf_softmax.h5", SCALED, ["--scale", SCALE], "softmax", 3, 10,
     "MLPerf Tiny IC ResNet-8 (16/32/64, 1x1 conv shortcuts, avg-pool, Dense softmax), tf_keras, legacy Keras 2 "
     ".h5, pixels/255 outside"),
    ("resnet8_mlperf_logits", "resnet8_mlperf_logits.h5", SCALED, ["--scale", SCALE], "logits", 3, 0,
     "resnet8_mlperf_softmax's trained weights with the softmax removed (Dense linear), legacy Keras 2 .h5"),
    ("resnet14_v2", "resnet14_v2.keras", RAW, [], "logits", 3, 6,
     "pre-activation ResNet v2 (BN-ReLU-conv), 2 blocks/stage, 16/32/64, Rescaling+Normalization inside, Keras 3"),
    ("resnet8_gray", "resnet8_gray.keras", RAW, [], "logits", 1, 12,
     "ResNet-8 on 32x32x1 luma (Pillow convert('L')), 16/32/64, normalises inside, Keras 3"),
    ("resnet8_wide_normalized", "resnet8_wide_normalized.keras", NORMALISED, IMAGENET, "logits", 3, 5,
     "wide ResNet-8 (32/64/128), ImageNet mean/std applied outside, Keras 3"),
    ("convnext_mini", "convnext_mini.keras", RAW, [], "logits", 3, 12,
     "not a ResNet: keras.applications' ConvNeXt (depthwise 7x7, LayerNormalization, exact GELU, layer scale), "
     "depths 2/2/4/2, widths 32/64/128/256, its own Normalization inside, Keras 3"),
]


def build(name: str):
    if name == "resnet8_mlperf_softmax":
        return mlperf_resnet8(softmax=True)
    if name == "resnet14_v2":
        return resnet14_v2(name)
    if name == "resnet8_gray":
        return resnet8_v1(1, (16, 32, 64), (GRAY_MEAN, GRAY_STD), name)
    if name == "resnet8_wide_normalized":
        return resnet8_v1(3, (32, 64, 128), None, name)
    if name == "convnext_mini":
        from keras.src.applications import convnext  # the builder behind ConvNeXtTiny and friends

        return convnext.ConvNeXt(depths=[2, 2, 4, 2], projection_dims=[32, 64, 128, 256], default_size=32,
                                 name=name, include_preprocessing=True, weights=None, input_shape=(32, 32, 3),
                                 classes=10, classifier_activation=None)
    raise ValueError(name)


# ---------------------------------------------------------------- data


def luma(rgb: np.ndarray) -> np.ndarray:
    """Pillow's convert("L") of uint8 RGB, bit for bit: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]


def augment(x: np.ndarray, rng: np.random.Generator, shift: int = 4) -> np.ndarray:
    """Random horizontal flips and translations of up to ``shift`` pixels (zero fill), on uint8 NHWC."""
    n, h, w, _ = x.shape
    flip = rng.random(n) < 0.5
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    padded = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
    dy, dx = rng.integers(0, 2 * shift + 1, n), rng.integers(0, 2 * shift + 1, n)
    rows = dy[:, None] + np.arange(h)[None]  # (n, h)
    cols = dx[:, None] + np.arange(w)[None]  # (n, w)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def test_set(channels: int, pre: Preprocess):
    return open_dataset(shared("cifar10", "test")).load((32, 32, channels), pre)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- training


def train(name: str, channels: int, epochs: int, pre: Preprocess, out: Path) -> tuple[object, float]:
    """Train one model and save it atomically to ``out``; returns (the in-memory model, seconds)."""
    import tensorflow as tf

    h5 = out.suffix == ".h5"
    if h5:
        import tf_keras as kl
    else:
        import keras as kl
    seed = SEED + [t[0] for t in TRAINED].index(name)
    kl.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    data = np.load(shared("cifar10", "train-10k.npz"))
    x, y = data["x"], data["y"].astype(np.int64)
    assert x.shape == (10000, 32, 32, 3) and x.dtype == np.uint8, x.shape
    if channels == 1:
        x = luma(x)
    model = build(name)
    steps = epochs * (len(x) // BATCH)
    sched = kl.optimizers.schedules.CosineDecay(2e-3, steps, alpha=0.02)
    softmax = model.layers[-1].get_config().get("activation") == "softmax"
    model.compile(optimizer=kl.optimizers.Adam(sched),
                  loss=kl.losses.SparseCategoricalCrossentropy(from_logits=not softmax),
                  metrics=["accuracy"])
    rng = np.random.default_rng(seed)
    print(f"[{name}] {model.count_params():,} parameters, {epochs} epochs of {len(x)} images", flush=True)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(x))[: (len(x) // BATCH) * BATCH]  # whole batches only
        xb = pre.apply(augment(x[order], rng))
        hist = model.fit(xb, y[order], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        print(f"[{name}] epoch {epoch + 1}/{epochs}: loss {hist.history['loss'][-1]:.3f}, "
              f"train acc {100 * hist.history['accuracy'][-1]:.1f}%, {time.perf_counter() - t0:.0f} s", flush=True)
    seconds = time.perf_counter() - t0
    save(model, out)
    return model, seconds


def save(model, out: Path) -> None:
    tmp = out.with_name(f".tmp-{out.name}")  # same suffix: Keras picks the format from it
    tmp.unlink(missing_ok=True)
    with warnings.catch_warnings():  # tf_keras: "HDF5 ... is considered legacy" (that is the point here)
        warnings.simplefilter("ignore", UserWarning)
        if out.suffix == ".h5":
            model.save(str(tmp), include_optimizer=False)
        else:
            model.save(str(tmp))
    os.replace(tmp, out)


def logits_copy(trained, out: Path) -> None:
    """The softmax model's weights in the same layout with a linear Dense head, saved as .h5."""
    model = mlperf_resnet8(softmax=False)
    model.set_weights(trained.get_weights())
    save(model, out)


def float_top1(path: Path, channels: int, pre: Preprocess) -> float:
    """Keras float32 top-1 on cifar10/test, loading the file as `edgeres convert` does."""
    from edgeres.backends import keras_io

    with quiet():
        loaded = keras_io.load_model(str(path))
    if loaded.hwc != (32, 32, channels):
        sys.exit(f"{path}: input {loaded.hwc}, expected 32x32x{channels}")
    x, y = test_set(channels, pre)
    return 100.0 * float((keras_io.predict(loaded.model, x, 200).argmax(1) == y).mean())


def check_luma() -> None:
    """Our luma() equals Pillow's convert("L") on real images (50 calibration PNGs decoded both ways)."""
    ds = open_dataset(shared("cifar10", "calib")).sample(50)
    rgb, _ = ds.load((32, 32, 3), Preprocess())
    gray, _ = ds.load((32, 32, 1), Preprocess())
    if not np.array_equal(luma(rgb.astype(np.uint8)), gray.astype(np.uint8)):
        sys.exit("luma() differs from Pillow's convert('L'): the gray model would train on other pixels")


def main(argv=None) -> int:
    args = parse_args(argv)
    root = suite_dir(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    names = [t[0] for t in TRAINED]
    if only and only - set(names):
        sys.exit(f"unknown model(s) {', '.join(sorted(only - set(names)))}; trained models: {', '.join(names)}")
    manifest_path = root / "suite.json"
    old = {}
    if manifest_path.is_file():
        old = {m["name"]: m for m in json.loads(manifest_path.read_text()).get("models", [])}
    check_luma()

    entries, trained_now = [], {}
    for name, file, conv, cargs, head, ch, desc in SHARED:
        path = shared("models", file)
        entries.append(dict(name=name, path=str(path), convert_args=cargs, input=conv, head=head, channels=ch,
                            description=desc, source="shared", format="keras3"))
    for name, file, conv, cargs, head, ch, epochs, desc in TRAINED:
        path = root / file
        epochs = args.epochs if args.epochs is not None else epochs
        selected = only is None or name in only
        entry = dict(name=name, path=str(path), convert_args=cargs, input=conv, head=head, channels=ch,
                     description=desc, source="trained", format="keras2-h5" if file.endswith(".h5") else "keras3")
        prev = old.get(name, {})
        if name == "resnet8_mlperf_logits":  # a copy of the softmax model's weights, never trained itself
            src = trained_now.get("resnet8_mlperf_softmax")
            if src is None and selected and (args.force or not path.exists()):
                import tf_keras

                if not (root / "resnet8_mlperf_softmax.h5").exists():
                    sys.exit(f"[{name}] is a copy of resnet8_mlperf_softmax.h5, which is missing: "
                             f"train both (--only resnet8_mlperf_softmax,{name})")

                src = tf_keras.models.load_model(root / "resnet8_mlperf_softmax.h5", compile=False)
            if src is not None:
                logits_copy(src, path)
                print(f"[{name}] written from resnet8_mlperf_softmax's weights", flush=True)
            elif path.exists():
                print(f"[{name}] present, kept ({path})", flush=True)
            softmax = next((e for e in entries if e["name"] == "resnet8_mlperf_softmax"), {})
            entry.update(epochs=softmax.get("epochs"), train_seconds=0.0)
        elif selected and (args.force or not path.exists()):
            trained_now[name], seconds = train(name, ch, epochs, preprocess_of(cargs), path)
            entry.update(epochs=epochs, train_seconds=round(seconds, 1))
        elif path.exists():
            print(f"[{name}] present, kept ({path}; --force retrains)", flush=True)
            entry.update(epochs=prev.get("epochs"), train_seconds=prev.get("train_seconds"))
        else:
            print(f"[{name}] not trained (not selected), left out of suite.json", flush=True)
            continue
        if not path.exists():
            print(f"[{name}] missing ({path}), left out of suite.json", flush=True)
            continue
        entries.append(entry)

    for e in entries:  # float top-1, measured once per file version
        path = Path(e["path"])
        digest = sha256(path)
        prev = old.get(e["name"], {})
        if prev.get("sha256") == digest and "float_top1" in prev:
            e["float_top1"] = prev["float_top1"]
        else:
            e["float_top1"] = round(float_top1(path, e["channels"], preprocess_of(e["convert_args"])), 2)
        e["sha256"] = digest
        how = (f"trained in {e['train_seconds']:.0f} s" if e.get("train_seconds") else
               "copy of resnet8_mlperf_softmax with a linear head" if e["name"] == "resnet8_mlperf_logits" else
               e["source"])
        print(f"{e['name']:<26} float32 top-1 {e['float_top1']:6.2f}% on cifar10/test  ({how})", flush=True)
    order = ("name", "path", "convert_args", "input", "head", "channels", "float_top1", "description", "source",
             "format", "epochs", "train_seconds", "sha256")
    models = [{k: e[k] for k in order if k in e} for e in entries]
    manifest = {"schema": 1, "test_data": str(shared("cifar10", "test")), "float_top1_on": "cifar10/test (2000)",
                "trained_on": str(shared("cifar10", "train-10k.npz")), "models": models}
    tmp = manifest_path.with_name(".tmp-suite.json")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, manifest_path)
    print(f"wrote {manifest_path} ({len(models)} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
