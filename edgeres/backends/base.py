"""The back-end plug-in: one interface, one registry, one factory.

A :class:`Format` is an output format edgeres can export in float, quantize
from calibration statistics (through a :class:`~edgeres.quant.backend.Quantizer`),
run, and describe in the report.  :data:`FORMATS` lists them, in artifact
order; a new format (a LiteRT CompiledModel, an OpenVINO IR, ...) is one module
with a ``FORMAT`` object plus one line here.  :func:`create_backend` is the
only place a calibrated back end is built, for ``convert``, the ``--max-drop``
search and ``diagnose`` alike, from the :class:`Settings` that
:func:`resolve_settings` derives once from target, recipe and command line.

This module imports no converter: formats load on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edgeres.core.errors import UsageError
from edgeres.core.limits import check_threads
from edgeres.devices.targets import Target
from edgeres.quant.backend import Backend, Quantizer
from edgeres.quant.recipes import Recipe

#: registry name -> "module:attribute" of its Format, in the order artifacts are written
FORMATS: dict[str, str] = {
    "tflite": "edgeres.backends.tflite:FORMAT",
    "onnx": "edgeres.backends.onnx:FORMAT",
}


@dataclass(frozen=True)
class Settings:
    """How back ends are built and run, resolved once (command line > recipe > target)."""

    target: Target
    threads: int
    io_dtype: str  # the int8 TFLite model's input/output dtype

    @property
    def full_integer_only(self) -> bool:
        return self.target.constraints.full_int8

    @property
    def static_batch(self) -> bool:
        c = self.target.constraints
        return c.static_shapes or c.batch_one


def resolve_settings(target: Target, recipe: Recipe, *, io_dtype: str | None = None,
                     threads: int | None = None) -> Settings:
    if target.constraints.full_int8 and not recipe.full_integer:
        what = "keeps layers in float" if recipe.keep_float else f"uses {recipe.activations} activations"
        raise UsageError(f"target '{target.name}' needs a full-integer int8 model, but recipe '{recipe.name}' {what}")
    return Settings(target=target, threads=check_threads(threads or target.threads, "--threads"),
                    io_dtype=io_dtype or recipe.io_dtype or target.tflite.io_dtype)


class Format(Protocol):
    """One output format."""

    name: str     # registry key; artifacts are <name>_fp32 and <name>_int8
    suffix: str   # file suffix, e.g. ".tflite"

    def export_float(self, model: Any, hwc: tuple[int, int, int], settings: Settings) -> tuple[bytes, dict]:
        """The float32 model, and details for the report."""

    def quantizer(self, model: Any, hwc: tuple[int, int, int], calib: np.ndarray, layer_types: dict[str, str],
                  settings: Settings, float_model: bytes | None = None) -> Quantizer:
        """Calibrate once on ``calib``; ``float_model`` is this format's float export when already made."""

    def int8_details(self, settings: Settings, recipe: Recipe) -> dict:
        """What the report records about the int8 artifact besides the quantizer's own details."""

    def run_delegate(self, settings: Settings) -> str | None:
        """The delegate (TFLite) or providers (ONNX) its models run with on this machine."""

    # Optional: ``tune_int8(data, settings, log=None) -> (data, details)``, an exact rewrite of the final
    # int8 model for the target's speed, run after every format is built (nothing else runs then).
    # Optional: ``audit_int8(data, layer_types, settings) -> dict``, what the runtime runs in float inside the final
    # int8 model (``float_ops``: op -> layers, ``float_ops_note``), ``{}`` when nothing; the report records it.


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise UsageError(f"unknown back end {name!r}; known: {', '.join(FORMATS)}")
    module, attr = FORMATS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def formats() -> list[Format]:
    return [get_format(name) for name in FORMATS]


def create_backend(fmt: str | Format, model: Any, hwc: tuple[int, int, int], calib: np.ndarray,
                   settings: Settings, *, float_model: bytes | None = None,
                   layer_types: dict[str, str] | None = None, head: Any = None) -> Backend:
    """A calibrated back end for ``model``: the one way convert, the search and diagnose get one."""
    from edgeres.backends.keras_io import layer_types as types_of
    from edgeres.core.quiet import quiet

    f = get_format(fmt) if isinstance(fmt, str) else fmt
    with quiet():
        q = f.quantizer(model, hwc, calib, layer_types or types_of(model), settings, float_model)
    finish = host = None
    if head is not None and settings.full_integer_only and f.name == "tflite":  # ``model`` is head.logits:
        host = head.activation  # int8 logits out of a full-integer model, the activation applied on the host
    elif head is not None:  # ``model`` is head.logits: every int8 build gets the activation back, in float
        from functools import partial

        from edgeres.backends import heads

        finish = partial(heads.tflite_tail if f.name == "tflite" else heads.onnx_tail, activation=head.activation)
    return Backend(f.name, f.suffix, q, settings.threads, f.run_delegate(settings),
                   float_layers_allowed=not settings.full_integer_only, finish=finish, host_activation=host)
