"""The TFLite back end's plug-in (:mod:`edgeres.backends.base`).  HEAVY layer (TensorFlow).

Float32 through TFLiteConverter and full-integer int8 through edgeres' own
ranges (:mod:`.tflite_convert`, :mod:`.tflite_quant`), run by LiteRT with
XNNPACK.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeres.backends.tflite_convert import float_compute_ops, to_float32, to_int8

__all__ = ["FORMAT", "TFLiteFormat", "float_compute_ops", "to_float32", "to_int8"]


class TFLiteFormat:
    """The TFLite back end: TFLiteConverter float export, full-integer int8, run by LiteRT (XNNPACK)."""

    name = "tflite"
    suffix = ".tflite"

    def export_float(self, model: Any, hwc: tuple[int, int, int], settings) -> tuple[bytes, dict]:
        return to_float32(model), {}

    def quantizer(self, model: Any, hwc: tuple[int, int, int], calib: np.ndarray, layer_types: dict[str, str],
                  settings, float_model: bytes | None = None):
        from edgeres.backends.keras_rewrite import standalone_batchnorm_as_depthwise
        from edgeres.backends.tflite_quant import TFLiteQuantizer

        # one int8 op instead of MUL+ADD for a BatchNormalization no convolution absorbs (exact, checked)
        model, as_depthwise = standalone_batchnorm_as_depthwise(model, calib[:8])
        if settings.static_batch:  # accelerators compile static shapes only
            from edgeres.backends.keras_io import with_fixed_batch

            model = with_fixed_batch(model, hwc)
        return TFLiteQuantizer(model, calib, layer_types, settings.io_dtype, batchnorm_as_depthwise=as_depthwise,
                               allow_float_ops=not settings.full_integer_only)

    def int8_details(self, settings, recipe) -> dict:
        return {"io_dtype": settings.io_dtype, "static_batch": 1 if settings.static_batch else None}

    def run_delegate(self, settings) -> str | None:
        delegate = settings.target.tflite.delegate
        return "xnnpack" if delegate == "edgetpu" else delegate  # the Edge TPU compiles separately: run on the CPU


FORMAT = TFLiteFormat()
