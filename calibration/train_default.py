"""Train the embedded default model: calibration/digits_resnet8.keras.

    python calibration/train_default.py          # about a minute on 2 CPU cores

A CIFAR-style ResNet-8 from the edgeres zoo (option-A shortcuts, 8x8x1 input,
10 classes) trained on calibration/digits-train.npz only.  The 500 images in
digits-test.npz are never seen here; `edgeres convert --int8` validates on them.
Seeds are fixed and TensorFlow's deterministic ops are on, so a re-run on the
same versions reproduces the weights.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
EPOCHS = 60
SEED = 0


def main() -> None:
    import keras
    import tensorflow as tf

    from edgeres.zoo import create_model

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    train = np.load(HERE / "digits-train.npz")
    test = np.load(HERE / "digits-test.npz")
    x, y = train["x"].astype("float32"), train["y"]
    model = create_model("resnet8", input_size=8, channels=1, num_classes=10)
    steps = EPOCHS * int(np.ceil(len(x) / 64))
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    aug = keras.Sequential([keras.layers.RandomTranslation(0.125, 0.125, fill_mode="constant"),
                            keras.layers.RandomRotation(0.04, fill_mode="constant")])
    ds = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=SEED).batch(64)
          .map(lambda a, b: (aug(a, training=True), b)))
    model.fit(ds, epochs=EPOCHS, verbose=2)
    loss, acc = model.evaluate(test["x"].astype("float32"), test["y"], verbose=0)
    print(f"held-out top-1 on digits-test.npz: {100 * acc:.2f}% ({len(test['y'])} images)")
    out = HERE / "digits_resnet8.keras"
    clean = keras.models.clone_model(model)  # weights only: no optimizer state in the file
    clean.set_weights(model.get_weights())
    clean.save(out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
