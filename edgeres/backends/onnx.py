"""Keras -> ONNX float32 (tf2onnx) -> ONNX int8 (ONNX Runtime static QDQ).

HEAVY layer.  The int8 scheme comes from the target: U8S8 (uint8 activations,
int8 per-channel weights) on x86, where ORT's VNNI/AVX2 kernels want unsigned
activations, and S8S8 on ARM.  :data:`FORMAT` is this back end's plug-in
(:mod:`edgeres.backends.base`); the quantizer is in :mod:`.onnx_quant`, the
graph rewrites in :mod:`.onnx_graph`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeres.backends.onnx_graph import check, fold_input_scale_into_conv, fold_pad_into_maxpool, hoist_input_transpose
from edgeres.core.errors import ConversionError, first_line

OPSET = 17
INPUT_NAME = "input"


def to_float32(model: Any, hwc: tuple[int, int, int]) -> bytes:
    """tf2onnx conversion with an explicit (None, H, W, C) input signature (Keras 3 needs it)."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, *hwc), tf.float32, name=INPUT_NAME),)
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET,
                                              optimizers=_collecting_optimizers())
    except Exception as exc:
        raise ConversionError(f"ONNX conversion (tf2onnx) failed: {first_line(exc)}") from None
    if hoist_input_transpose(proto):
        fold_input_scale_into_conv(proto)
    fold_pad_into_maxpool(proto)
    check(proto)
    return proto.SerializeToString()


def _collecting_optimizers() -> dict | None:
    """tf2onnx's own graph optimizers, in its order, each made after a garbage collection.

    tf2onnx deep-copies the whole graph before every optimizer pass, and the
    copies it drops hold reference cycles that Python's cyclic collector frees
    late: on ResNet-50 they piled up to 7 GB (300 MB a pass).  Collecting
    before each pass keeps the export near 3 GB; the passes and the exported
    graph are exactly tf2onnx's.  None (tf2onnx's defaults) when its optimizer
    registry moved.
    """
    import gc

    from tf2onnx import optimizer

    registry = getattr(optimizer, "_get_optimizers", None)
    if registry is None:
        return None

    def after_collecting(cls):
        def make():
            gc.collect()
            return cls()
        return make

    return {name: after_collecting(cls) for name, cls in registry().items()}


class OnnxFormat:
    """The ONNX back end: tf2onnx float export, ORT static QDQ int8, run by ONNX Runtime."""

    name = "onnx"
    suffix = ".onnx"

    def export_float(self, model: Any, hwc: tuple[int, int, int], settings) -> tuple[bytes, dict]:
        return to_float32(model, hwc), {"opset": OPSET}

    def quantizer(self, model: Any, hwc: tuple[int, int, int], calib: np.ndarray, layer_types: dict[str, str],
                  settings, float_model: bytes | None = None):
        from edgeres.backends.onnx_quant import OnnxQuantizer

        if float_model is None:
            float_model = to_float32(model, hwc)
        return OnnxQuantizer(float_model, calib, layer_types, settings.target.onnx.activation_type)

    def int8_details(self, settings, recipe) -> dict:
        return {"scheme": settings.target.onnx_scheme, "format": "QDQ",
                "per_channel": recipe.weights == "per-channel"}

    def tune_int8(self, data: bytes, settings, log=None) -> tuple[bytes, dict]:
        """The int8 model with each convolution on ONNX Runtime's faster kernel here (exact;
        :mod:`edgeres.backends.onnx_kernels`), when the target runs on this machine's kind of CPU."""
        from edgeres.devices.targets import host_arch

        target = settings.target
        if target.onnx.kernels != "measure":
            return data, {"choice": "symmetric", "why": f"target '{target.name}' asks for ORT's default kernels"}
        if self.run_delegate(settings) is not None:
            return data, {"choice": "symmetric", "why": "measured for ORT's CPU provider only"}
        if target.arch != host_arch():
            return data, {"choice": "symmetric",
                          "why": f"converted on {host_arch()} for {target.arch}: kernels are timed on the target's CPU"}
        from edgeres.backends.onnx_kernels import tune

        return tune(data, settings.threads, log=log)

    def run_delegate(self, settings) -> str | None:
        providers = settings.target.onnx.providers
        return None if tuple(providers) == ("CPUExecutionProvider",) else ",".join(providers)


FORMAT = OnnxFormat()
