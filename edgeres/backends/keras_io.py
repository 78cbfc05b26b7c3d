"""Load Keras models from the zoo or from disk, and describe them.

HEAVY layer: imports keras / TensorFlow.  Models are always loaded with
``safe_mode=True``: a ``.keras`` file that would need arbitrary code (a Lambda
layer, a pickled object) is refused, never executed.
"""

from __future__ import annotations

import logging
import os
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.backends.keras_repair import (
    any_batch,
    check_built,
    check_finite,
    check_format,
    flat_layers,
    float32_compute,
    functional,
)
from edgeres.core.errors import ModelError, ShapeError, UsageError, first_line

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger(__name__)

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass
class LoadedModel:
    model: Any  # keras.Model
    name: str
    source: str  # zoo name or path
    kind: str  # "zoo" | "keras" | "h5" | "savedmodel"

    @property
    def input_shape(self) -> tuple:
        return tuple(self.model.inputs[0].shape)

    @property
    def hwc(self) -> tuple[int, int, int]:
        shape = self.input_shape
        if len(shape) != 4 or any(d is None for d in shape[1:]):
            raise ShapeError(f"model input shape {shape} cannot be fed images: edgeres needs (N, H, W, C) "
                             "with fixed H, W and C")
        if shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4):
            raise ShapeError(f"model input shape {shape} looks channels-first (N, C, H, W): edgeres feeds "
                             "(N, H, W, C) images, the layout TFLite runs; save the model channels-last")
        dtype = str(getattr(self.model.inputs[0], "dtype", "float32"))
        if "float" not in dtype:
            raise ShapeError(f"model input is {dtype}: edgeres feeds float32 images (raw 0..255 pixels, or "
                             "normalised with --scale/--mean/--std); give the model a float32 input (a cast "
                             "inside the model is fine) and save it again")
        return tuple(int(d) for d in shape[1:])  # type: ignore[return-value]

    @property
    def num_outputs(self) -> int:
        """Classes: the output's size per image (checked to be a class vector when the model loaded)."""
        return int(np.prod([int(d) for d in self.model.outputs[0].shape[1:]]))


def load_model(spec: str, *, input_size: int | None = None, num_classes: int | None = None,
               weights: str | None = None) -> LoadedModel:
    """Resolve ``spec`` as a zoo name or a path to .keras/.h5/SavedModel."""
    path = Path(spec)
    if not path.exists():
        from edgeres.zoo import is_model_name

        if is_model_name(spec):
            return _from_zoo(spec, input_size, num_classes, weights)
        if path.suffix or os.sep in spec:
            raise ModelError(f"model {spec} does not exist")
        raise ModelError(f"'{spec}' is neither a model file nor a zoo model name "
                         "(see 'edgeres build --help' for the zoo)")
    zoo_only = [o for o, v in (("--input-size", input_size), ("--weights", weights)) if v is not None]
    if zoo_only:
        raise UsageError(f"{' and '.join(zoo_only)} build a zoo model; {spec} is a model file, which keeps its own "
                         "input size and weights")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return _from_savedmodel(path)
        raise ModelError(f"{path} is a folder but not a SavedModel (no saved_model.pb)")
    suffix = path.suffix.lower()
    if suffix not in KERAS_SUFFIXES:
        raise ModelError(f"{path} is not a Keras model: expected .keras, .h5 or a SavedModel folder")
    if path.stat().st_size == 0:
        raise ModelError(f"{path} is empty")
    check_format(path, suffix)
    import keras

    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types; all mean "not loadable"
        missing = re.search(r"Could not locate (?:class|function) '([^']+)'(?:.*?'registered_name': '([^']+)')?",
                            str(exc), re.S)
        if missing:
            name = missing[2] or missing[1]
            raise ModelError(f"cannot load {path}: it needs the custom class {name!r}, which is not registered here "
                             "(edgeres runs no code from a model file; a model of standard "
                             "Keras layers converts)") from None
        raise ModelError(f"cannot load {path}: {first_line(exc)}") from None
    if not isinstance(model, keras.Model):
        raise ModelError(f"{path} does not hold a Keras model")
    check_built(model, str(path))
    _check_single_io(model, str(path))
    _check_classifier(model, str(path))
    check_finite(model, str(path))
    model = float32_compute(model, str(path))
    model = functional(any_batch(model, str(path)))
    return LoadedModel(model, path.stem, str(path), suffix.lstrip(".").replace("hdf5", "h5"))


def _from_zoo(name: str, input_size, num_classes, weights) -> LoadedModel:
    from edgeres.zoo import create_model

    model = create_model(name, input_size=input_size, num_classes=num_classes, weights=weights)
    return LoadedModel(model, name, name, "zoo")


def _from_savedmodel(path: Path) -> LoadedModel:
    import keras
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
    except Exception as exc:
        raise ModelError(f"cannot load SavedModel {path}: {first_line(exc)}") from None
    specs = list(fn.structured_input_signature[1].values())
    if len(specs) != 1:
        raise ShapeError(f"SavedModel {path} has {len(specs)} inputs; edgeres handles single-input image models")
    shape = tuple(specs[0].shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ShapeError(f"SavedModel {path} input shape {shape} cannot be fed images (need N,H,W,C)")
    inp = keras.Input(shape=shape[1:], dtype="float32", name="input")
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    out = layer(inp)
    if isinstance(out, dict):
        if len(out) != 1:
            raise ShapeError(f"SavedModel {path} has {len(out)} outputs; edgeres handles one")
        out = next(iter(out.values()))
    model = keras.Model(inp, out, name=path.name)
    _check_classifier(model, f"SavedModel {path}")
    return LoadedModel(model, path.name, str(path), "savedmodel")


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def save_for_worker(model, path: Path) -> None:
    """``model`` as a ``.keras`` file for another process or machine to load with :func:`load_in_worker`."""
    from edgeres.core.quiet import quiet

    with quiet():
        model.save(path)


def load_in_worker(path: Path):
    """A model :func:`save_for_worker` wrote: no compile, and Keras ``safe_mode`` on like every load here."""
    import keras

    from edgeres.core.quiet import quiet

    with quiet():
        return keras.saving.load_model(path, compile=False, safe_mode=True)


def reference(model):
    """The model's inference as a compiled TensorFlow function (float32 in, numpy out).

    Calling a Keras model eagerly costs about 3x its compiled time (ResNet-20 on 2,000 images: 4.9 s
    against 1.4 s), which made the float reference the slowest part of validation.  The function is
    traced once per batch shape (``reduce_retracing``) and kept for the model's lifetime.
    """
    fn = _COMPILED.get(model)
    if fn is None:
        import tensorflow as tf

        shape = tuple(model.inputs[0].shape)
        # one trace for every batch size (a softmax model's logits model was traced for each one, and
        # TensorFlow printed its "triggered tf.function retracing" warning); a dynamic H, W still retraces
        spec = [tf.TensorSpec((None, *shape[1:]), tf.float32)] if None not in shape[1:] else None
        compiled = tf.function(lambda v: model(v, training=False), input_signature=spec, reduce_retracing=True)
        fn = _COMPILED[model] = lambda x: np.asarray(compiled(np.asarray(x, np.float32)))
    return fn


def predict(model, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Float32 outputs of a Keras model on an in-memory array, in batches (inference mode)."""
    fn = reference(model)
    return np.concatenate([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def layer_types(model) -> dict[str, str]:
    """Layer name -> Keras class name: how converted ops are mapped back to stable layer names."""
    return {layer.name: type(layer).__name__ for layer in model.layers}


def with_fixed_batch(model, hwc: tuple[int, int, int], batch: int = 1):
    """The same model with a static batch dimension (the Edge TPU needs static shapes)."""
    import keras

    inp = keras.Input(shape=hwc, batch_size=batch, name="input")
    return keras.Model(inp, model(inp), name=f"{model.name}_b{batch}")


def _check_single_io(model, where: str) -> None:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ShapeError(f"{where} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                         "edgeres handles single-input, single-output image classifiers")


# What TensorFlow accepts as an op name scope; the TFLite and ONNX converters trace layers under their names.
_TF_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/>]*$")


def _check_classifier(model, where: str) -> None:
    """Refuse, in the model's own terms, what edgeres cannot convert and validate as an image classifier."""
    shape = tuple(model.outputs[0].shape)
    per_image = shape[1:]
    if not per_image:
        raise ShapeError(f"{where} outputs one value per image (shape {shape}), not a vector of class scores: "
                         "edgeres measures classifiers by their top class; give the model a (N, classes) output")
    if any(d is None for d in per_image):
        raise ShapeError(f"{where} output shape {shape} has unknown dimensions; edgeres needs (N, classes)")
    if sum(1 for d in per_image if d != 1) > 1:
        raise ShapeError(f"{where} output shape {shape} is not a class vector (a feature map or a "
                         "segmentation?): edgeres converts image classifiers, whose output is (N, classes)")
    if int(np.prod(per_image)) < 2:
        raise ShapeError(f"{where} has a single output score per image (shape {shape}): top-1 needs at least "
                         "2 classes (a sigmoid binary classifier can output 2 softmax scores instead)")
    bad = [layer.name for layer in flat_layers(model) if not _TF_NAME.match(layer.name)]
    if bad:
        shown = ", ".join(repr(n) for n in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ModelError(f"{where}: layer name(s) {shown} are not valid TensorFlow op names (letters, digits, "
                         "'_', '.', '-' only), so the TFLite and ONNX converters cannot trace the model: "
                         "rename the layers")


def count_macs(model) -> int | None:
    """Multiply-accumulates for one image in the convolution and dense layers.

    None when it cannot be known: a dynamic input size, a layer whose kernel this does not recognise, or
    a model with no countable layer (a SavedModel wrapped as one opaque layer).
    """
    macs = 0
    for layer in flat_layers(model):
        try:
            out = tuple(layer.output.shape)
        except (AttributeError, ValueError):
            continue
        if any(d is None for d in out[1:]):
            return None  # the spatial size is only known when the model is fed
        try:
            layer_macs = _layer_macs(layer, out)
        except (AttributeError, ValueError, TypeError):
            return None
        macs += layer_macs
    return int(macs) or None


def _prod(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _layer_macs(layer, out: tuple) -> int:
    """One layer's MACs, from its kernels' shapes and its output size (Keras 3 and Keras 2 attribute names)."""
    kind = {c.__name__ for c in type(layer).__mro__}
    if "BaseSeparableConv" in kind or "SeparableConv2D" in kind:  # depthwise, then pointwise, at the output size
        depthwise, pointwise = tuple(layer.depthwise_kernel.shape), tuple(layer.pointwise_kernel.shape)
        return _prod(out[1:-1]) * (_prod(depthwise) + _prod(pointwise))
    if "BaseDepthwiseConv" in kind or "DepthwiseConv2D" in kind:  # Keras 3: .kernel; Keras 2: .depthwise_kernel
        kernel = getattr(layer, "depthwise_kernel", None)
        kernel = layer.kernel if kernel is None else kernel
        return _prod(out[1:-1]) * _prod(kernel.shape)  # (kh, kw, cin, multiplier)
    if "BaseConvTranspose" in kind or "Conv2DTranspose" in kind:  # every input pixel scatters the whole kernel
        return _prod(tuple(layer.input.shape)[1:-1]) * _prod(layer.kernel.shape)
    if "BaseConv" in kind or "Conv" in kind:  # Conv1D/2D/3D: (k..., cin / groups, cout)
        return _prod(out[1:-1]) * _prod(layer.kernel.shape)
    if "Dense" in kind:
        return _prod(out[1:-1]) * _prod(layer.kernel.shape)
    return 0


def describe(loaded: LoadedModel) -> dict:
    from edgeres.zoo.registry import count_params  # one definition of "parameters, excluding preprocess_*"

    model = loaded.model
    total, trainable = count_params(model)
    return {
        "name": loaded.name,
        "source": loaded.source,
        "kind": loaded.kind,
        "params": total,
        "trainable_params": trainable,
        "macs": count_macs(model),
        "input_shape": [None if d is None else int(d) for d in model.inputs[0].shape],
        "output_shape": [None if d is None else int(d) for d in model.outputs[0].shape],
        "layers": len(list(flat_layers(model))),
    }
