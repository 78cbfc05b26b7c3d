"""``edgeres build`` and ``edgeres info``: zoo models and what a model file holds."""

from __future__ import annotations

import os
from pathlib import Path

import click

from edgeres.cli.app import cli
from edgeres.cli.options import FiniteFloat, echo_json, json_option, seed_option
from edgeres.core.errors import UsageError
from edgeres.core.limits import MAX_CHANNELS, MAX_CLASSES, MAX_INPUT_SIZE, MAX_WIDTH


@cli.command()
@click.argument("arch")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Where to write the .keras file.")
@click.option("--input-size", type=click.IntRange(1, MAX_INPUT_SIZE), default=None,
              help="Square input size (default: the arch's).")
@click.option("--num-classes", type=click.IntRange(2, MAX_CLASSES), default=None)
@click.option("--channels", type=click.IntRange(1, MAX_CHANNELS), default=3, show_default=True)
@click.option("--width", type=FiniteFloat(0, MAX_WIDTH, min_open=True), default=1.0, show_default=True,
              help="Width multiplier for all filters.")
@click.option("--shortcut", type=click.Choice(["A", "B"], case_sensitive=False), default=None,
              help="CIFAR ResNets: A zero-pad (parameter-free) or B projection shortcuts.")
@click.option("--weights", default=None, help="'imagenet' to load keras.applications weights (downloads).")
@seed_option
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def build(arch, output, input_size, num_classes, channels, width, shortcut, weights, seed, force):
    """Build zoo model ARCH and save it as a .keras file.

    Known architectures: resnet18/34/50/101/152, resnet50v2/101v2/152v2 and
    CIFAR-style resnet8/20/32/44/56/110 (see 'edgeres info ARCH').
    """
    from edgeres.core.errors import OutputExistsError

    if output.suffix != ".keras":
        raise UsageError(f"--output must end in .keras, got {output}")
    if output.exists() and not force:
        raise OutputExistsError(f"{output} already exists; pass --force to overwrite")
    from edgeres.core.quiet import quiet

    with quiet():  # TensorFlow's import chatter, as in convert
        import keras

        from edgeres.zoo import create_model

        keras.utils.set_random_seed(seed)
        model = create_model(arch, input_size=input_size, num_classes=num_classes, channels=channels,
                             width=width, shortcut=shortcut.upper() if shortcut else None, weights=weights)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.partial.keras")
    try:
        model.save(tmp)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    from edgeres.zoo import count_params

    total, _ = count_params(model)
    click.echo(f"wrote {output}: {arch}, {total:,} parameters, input {tuple(model.inputs[0].shape)}")


@cli.command()
@click.argument("model")
@json_option
def info(model, as_json):
    """Describe MODEL: a zoo name, .keras/.h5/SavedModel, .tflite or .onnx file.

    Prints parameters, MACs, input/output shapes and layer count for Keras
    models; shapes, dtypes, quantization and op counts for .tflite/.onnx.
    """
    suffix = Path(model).suffix.lower()
    if suffix in (".tflite", ".onnx"):
        from edgeres.measure.info import describe_artifact
        d = describe_artifact(model)
    else:
        from edgeres.core.quiet import quiet
        with quiet():  # TensorFlow's import chatter, as in convert
            from edgeres.backends.keras_io import describe, load_model
            d = describe(load_model(model))
    if as_json:
        echo_json(d)
        return
    for k, v in d.items():
        if v is None and k == "macs":
            v = "unknown (dynamic input size)"
        elif isinstance(v, int) and not isinstance(v, bool) and k.endswith(("params", "macs", "bytes")):
            v = f"{v:,}"
        elif isinstance(v, dict):
            v = ", ".join(f"{a} x{b}" if isinstance(b, int) else f"{a}={b}" for a, b in v.items())
        click.echo(f"{k:<18} {v}")
