"""Model registry: name -> builder, with per-model defaults and validation.

Architectures register themselves with :func:`register_model`;
:func:`create_model` validates user options (raising :class:`UsageError` /
:class:`ModelError` with one clear line) and builds a ``keras.Model``.

This module is a plain table and imports no architecture.  The built-in
ResNets (:mod:`edgeres.zoo.resnet`) register when the package
:mod:`edgeres.zoo` is imported, which Python always does before running this
module, so ``from edgeres.zoo.registry import create_model`` sees them too.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable

import keras
import numpy as np

from edgeres.core.errors import ModelError, UsageError

PREPROCESS_PREFIX = "preprocess_"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One registered architecture and its defaults."""

    name: str
    fn: Callable[..., keras.Model]  # fn(*, input_size, num_classes, channels, width, shortcut)
    default_input_size: int
    default_num_classes: int
    min_input_size: int
    shortcuts: tuple[str, ...] = ()  # allowed shortcut options, first is the default
    keras_application: str | None = None  # keras.applications class with ImageNet weights
    flip_conv1_bgr: bool = False  # reverse conv1 input channels when copying its weights
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    *,
    input_size: int,
    num_classes: int,
    min_input_size: int,
    shortcuts: tuple[str, ...] = (),
    keras_application: str | None = None,
    flip_conv1_bgr: bool = False,
):
    """Decorator factory registering a builder under its ``__name__``.

    The builder is called with keyword arguments ``input_size`` ((height,
    width)), ``num_classes``, ``channels``, ``width`` and ``shortcut`` (None
    when the model has no shortcut options) and returns a ``keras.Model``.
    The other arguments become the :class:`ModelEntry` defaults.
    """

    def decorate(fn):
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} is already registered")
        _REGISTRY[fn.__name__] = ModelEntry(
            name=fn.__name__,
            fn=fn,
            default_input_size=input_size,
            default_num_classes=num_classes,
            min_input_size=min_input_size,
            shortcuts=tuple(shortcuts),
            keras_application=keras_application,
            flip_conv1_bgr=flip_conv1_bgr,
            description=((fn.__doc__ or "").strip().splitlines() or [""])[0],
        )
        return fn

    return decorate


def list_models() -> list[str]:
    """Registered model names, in registration order."""
    return list(_REGISTRY)


def is_model_name(name: str) -> bool:
    return isinstance(name, str) and name in _REGISTRY


def model_entry(name: str) -> ModelEntry:
    """The registry entry (defaults, weight source) for ``name``."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _resolve_input_size(entry: ModelEntry, input_size) -> tuple[int, int]:
    if input_size is None:
        return (entry.default_input_size,) * 2
    size = (input_size,) * 2 if _is_int(input_size) else input_size
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(map(_is_int, size))):
        raise UsageError(f"input_size must be an int or (height, width), got {input_size!r}")
    if min(size) < entry.min_input_size:
        raise UsageError(
            f"input_size {input_size!r} is too small for {entry.name} "
            f"(minimum {entry.min_input_size})"
        )
    return int(size[0]), int(size[1])


def create_model(
    name: str,
    *,
    input_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    channels: int = 3,
    width: float = 1.0,
    shortcut: str | None = None,
    weights: str | None = None,
) -> keras.Model:
    """Build registered model ``name``.

    Args:
        input_size: square side or (height, width); default per model
            (224 for ImageNet archs, 32 for CIFAR archs).
        num_classes: default per model (1000 ImageNet, 10 CIFAR).
        channels: input channels (raw pixels 0..255, NHWC float32).
        width: filter-count multiplier; 1.0 gives the published models.
        shortcut: "A" (parameter-free, default) or "B" (projection); CIFAR
            archs only.
        weights: None (random init, deterministic under
            ``keras.utils.set_random_seed``) or "imagenet" (copied from
            ``keras.applications``; needs a download).  With
            ``num_classes != 1000`` the backbone is ImageNet-initialised and
            the ``predictions`` layer stays random, for fine-tuning.

    The model outputs logits.
    """
    entry = model_entry(name)
    size = _resolve_input_size(entry, input_size)
    if num_classes is None:
        num_classes = entry.default_num_classes
    if not _is_int(num_classes) or num_classes < 1:
        raise UsageError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if not _is_int(channels) or channels < 1:
        raise UsageError(f"channels must be an integer >= 1, got {channels!r}")
    if isinstance(width, bool) or not isinstance(width, numbers.Real) or not (
        math.isfinite(width) and width > 0
    ):
        raise UsageError(f"width must be a number > 0, got {width!r}")
    if shortcut is not None and not entry.shortcuts:
        raise UsageError(f"{name} has no shortcut option (only CIFAR ResNets take 'A' or 'B')")
    if entry.shortcuts:
        shortcut = entry.shortcuts[0] if shortcut is None else str(shortcut).upper()
        if shortcut not in entry.shortcuts:
            options = ", ".join(entry.shortcuts)
            raise UsageError(f"shortcut must be one of {options}, got {shortcut!r}")
    if weights not in (None, "imagenet"):
        raise UsageError(f"weights must be None or 'imagenet', got {weights!r}")
    if weights == "imagenet":
        if entry.keras_application is None:
            have = [n for n, e in _REGISTRY.items() if e.keras_application]
            raise ModelError(f"{name} has no ImageNet weights; available for: {', '.join(have)}")
        if channels != 3 or width != 1.0:
            raise UsageError("weights='imagenet' needs channels=3 and width=1.0")

    # Fetch pretrained weights first, so a failed download fails fast.
    ka_model = _imagenet_twin(entry, include_top=num_classes == 1000) if weights else None
    model = entry.fn(
        input_size=size, num_classes=int(num_classes), channels=int(channels),
        width=float(width), shortcut=shortcut,
    )
    if ka_model is not None:
        load_weights_from_keras_applications(model, ka_model, flip_conv1_bgr=entry.flip_conv1_bgr)
    return model


def _imagenet_twin(entry: ModelEntry, include_top: bool) -> keras.Model:
    """The keras.applications model of ``entry`` with ImageNet weights (downloads)."""
    ctor = getattr(keras.applications, entry.keras_application)
    try:
        return ctor(weights="imagenet", include_top=include_top, classifier_activation=None)
    except Exception as exc:  # download, hash or file errors
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(
            f"could not load ImageNet weights for {entry.name} via "
            f"keras.applications.{entry.keras_application}: {first_line}"
        ) from exc


def load_weights_from_keras_applications(
    model: keras.Model, ka_model: keras.Model, flip_conv1_bgr: bool
) -> list[str]:
    """Copy every weighted layer of ``ka_model`` into the same-named layer of ``model``.

    ``flip_conv1_bgr`` reverses the input-channel axis of the ``conv1_conv``
    kernel: keras.applications v1 ResNets see BGR input ('caffe'
    preprocessing) while edgeres models see RGB.  If ``ka_model`` has no
    ``predictions`` layer (``include_top=False``), ours is left as is.
    Returns the names of the copied layers.  Raises ModelError on any
    missing layer or shape mismatch.
    """
    ours = {layer.name: layer for layer in model.layers}
    plan = []  # (destination layer, values); checked in full before any assignment
    for src in ka_model.layers:
        values = src.get_weights()
        if not values:
            continue
        dst = ours.get(src.name)
        if dst is None:
            raise ModelError(
                f"layer {src.name!r} of {ka_model.name} has no counterpart in {model.name}"
            )
        want = [tuple(w.shape) for w in dst.weights]
        got = [tuple(v.shape) for v in values]
        if want != got:
            raise ModelError(f"layer {src.name!r}: shapes {got} do not fit {model.name}'s {want}")
        if flip_conv1_bgr and src.name == "conv1_conv":
            values[0] = np.ascontiguousarray(values[0][:, :, ::-1, :])
        plan.append((dst, values))

    covered = {dst.name for dst, _ in plan}
    if "predictions" not in {layer.name for layer in ka_model.layers}:
        covered.add("predictions")  # headless source: keep our (random) classifier
    missing = [layer.name for layer in model.layers if layer.weights and layer.name not in covered]
    if missing:
        raise ModelError(
            f"{ka_model.name} has no weights for {model.name} layers: {', '.join(missing[:5])}"
        )
    for dst, values in plan:
        dst.set_weights(values)
    return [dst.name for dst, _ in plan]


def count_params(model: keras.Model, exclude_preprocessing: bool = True) -> tuple[int, int]:
    """(total, trainable) parameter counts, skipping ``preprocess_*`` layers."""
    total = trainable = 0
    for layer in model.layers:
        if exclude_preprocessing and layer.name.startswith(PREPROCESS_PREFIX):
            continue
        total += sum(int(np.prod(w.shape)) for w in layer.weights)
        trainable += sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
    return total, trainable
