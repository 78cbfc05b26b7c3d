"""Keras models saved the way users save them, made convertible or refused in one line: a .keras archive
named .h5 (and the reverse), a Sequential never built, NaN weights, a half-precision or float64 model, a fixed
batch above 1, and a Sequential (which tf2onnx cannot export as it is).  HEAVY layer: imports keras when a
model needs rebuilding.  Used by :func:`edgeres.backends.keras_io.load_model`."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from edgeres.core.errors import ModelError, ShapeError, first_line

log = logging.getLogger(__name__)


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_format(path: Path, suffix: str) -> None:
    """A .keras archive named .h5 or an HDF5 file named .keras: say which it is, not the loader's complaint."""
    with open(path, "rb") as f:
        head = f.read(len(_HDF5_SIGNATURE))
    is_zip, is_hdf5 = zipfile.is_zipfile(path), head == _HDF5_SIGNATURE
    if suffix == ".keras" and not is_zip:
        raise ModelError(f"{path} is an HDF5 model named .keras: rename it to .h5" if is_hdf5 else
                         f"{path} is corrupt or not a .keras file (not a zip archive)")
    if suffix != ".keras" and is_zip:
        raise ModelError(f"{path} is a .keras archive named {suffix}: rename it to .keras")


#: float dtypes no converter here runs as they are: TFLite has no half-precision or float64 kernels for
#: convolutions and matmuls, and int8 calibration wants float32 statistics
_NOT_FLOAT32 = ("float16", "bfloat16", "float64")


def float32_compute(model, where: str):
    """The same model computing in float32, when any layer computes in float16/bfloat16/float64 (a
    ``mixed_float16`` policy from training, a half-precision model) or its input is such a float.  The weights
    are the same values (half weights widen exactly; float64 ones round to float32)."""
    found = {layer.name: str(getattr(layer, "compute_dtype", "float32")) for layer in flat_layers(model)}
    found = {"the input": str(getattr(model.inputs[0], "dtype", "float32")), **found}
    other = [name for name, dtype in found.items() if dtype in _NOT_FLOAT32]
    if not other:
        return model

    def widen(d: dict) -> dict:
        if d.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(d.get("config"), dict):
            return {**d, "config": {**d["config"], "name": "float32"}}
        return {k: ("float32" if k == "dtype" and isinstance(v, str) and (v in _NOT_FLOAT32 or v.startswith("mixed_"))
                    else v) for k, v in d.items()}

    dtypes = "/".join(sorted({found[name] for name in other}))
    what = f"computes in {dtypes} ({other[0]}" + (f" and {len(other) - 1} more" if len(other) > 1 else "") + ")"
    wide = _rebuilt(model, widen, f"{where} {what}", "save it with the float32 dtype policy")
    still = [layer.name for layer in flat_layers(wide) if str(getattr(layer, "compute_dtype", "")) in _NOT_FLOAT32]
    if still or str(getattr(wide.inputs[0], "dtype", "float32")) in _NOT_FLOAT32:
        raise ModelError(f"{where}: {(still or ['the input'])[0]} is still not float32 after rebuilding the model "
                         "in float32; save it with the float32 dtype policy")
    log.warning("%s %s: converted in float32 (same weights)", where, what)
    return wide


def any_batch(model, where: str):
    """The same model with any batch size, when it was saved with a fixed one above 1 (``keras.Input(...,
    batch_size=8)``, or a Sequential built by ``fit`` on batches of 64): every stage here feeds it other
    batch sizes, and an artifact with a fixed batch of 8 could not run one camera frame.  (A fixed batch of 1
    is kept: the Edge TPU path makes it on purpose, and it runs one image at a time like a deployment.)"""
    batch = model.inputs[0].shape[0]
    if batch is None or int(batch) == 1:
        return model

    def free(d: dict) -> dict:
        out = dict(d)
        for k, v in d.items():
            if k in ("batch_shape", "batch_input_shape") and isinstance(v, (list, tuple)) and v:
                out[k] = [None, *v[1:]]
            elif k == "batch_size" and isinstance(v, int):
                out[k] = None
        return out

    rebuilt = _rebuilt(model, free, f"{where} has a fixed batch of {batch}",
                       "save it with keras.Input(shape=...) and no batch_size")
    if rebuilt.inputs[0].shape[0] is not None:
        raise ShapeError(f"{where} has a fixed batch of {batch} that could not be freed: save it with "
                         "keras.Input(shape=...) and no batch_size")
    log.warning("%s has a fixed batch of %s: converted with any batch size (same weights)", where, batch)
    return rebuilt


def functional(model):
    """A ``Sequential`` as the same layers in a functional model.  tf2onnx's Keras 3 path names the outputs
    after ``model.outputs``, which a Sequential's traced call does not produce ("ONNX conversion failed:
    'keras_tensor_3'" for every Sequential); the layers, their names and their weights are the same objects."""
    import keras

    if not isinstance(model, keras.Sequential):
        return model
    spec = model.inputs[0]
    x = inp = keras.Input(batch_shape=tuple(spec.shape), dtype=spec.dtype, name=spec.name)
    for layer in model.layers:
        x = layer(x)
    return keras.Model(inp, x, name=model.name)


def _edited(cfg, edit):
    """A serialized Keras config with ``edit`` applied to every dict in it, each before its values."""
    if isinstance(cfg, dict):
        return {k: _edited(v, edit) for k, v in edit(cfg).items()}
    return [_edited(v, edit) for v in cfg] if isinstance(cfg, list) else cfg


def _rebuilt(model, edit, what: str, advice: str):
    """``model`` rebuilt from its own config with ``edit`` applied to each of its dicts (:func:`_edited`; safe
    mode, like every load here), same weights."""
    import keras

    try:
        new = keras.saving.deserialize_keras_object(_edited(keras.saving.serialize_keras_object(model), edit),
                                                    safe_mode=True)
        new.set_weights([np.asarray(w, np.float32) if np.asarray(w).dtype.kind == "f" else w
                         for w in model.get_weights()])
    except Exception as exc:
        raise ModelError(f"{what} and could not be rebuilt: {first_line(exc)}; {advice}") from None
    return new


def check_built(model, where: str) -> None:
    """A Sequential saved before it was built has no input shape: nothing here could feed it."""
    try:
        model.inputs[0].shape  # noqa: B018 - raises when the model has no inputs yet
    except (AttributeError, IndexError, TypeError, ValueError):
        raise ShapeError(f"{where} has no input shape (a Sequential saved before it was built): start it with "
                         "keras.Input(shape=(H, W, C)), build it, and save it again") from None


def check_finite(model, where: str) -> None:
    """NaN or infinite weights make every output NaN: say so, rather than let calibration fail on it."""
    for layer in flat_layers(model):
        for w in layer.weights:
            v = np.asarray(w.numpy())
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                bad = int(np.count_nonzero(~np.isfinite(v)))
                raise ModelError(f"{where}: layer {layer.name!r} has {bad} NaN or infinite weight(s) in "
                                 f"{w.path if hasattr(w, 'path') else w.name}: the model's outputs would be NaN; "
                                 "retrain or restore it")


def flat_layers(model):
    """Every layer, the layers of nested models instead of the models themselves."""
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from flat_layers(layer)
        else:
            yield layer
