"""Keras -> ONNX float32 (tf2onnx) -> ONNX int8 (ONNX Runtime static QDQ).

HEAVY layer.  The int8 scheme comes from the target: U8S8 (uint8 activations,
int8 per-channel weights) on x86, where ORT's VNNI/AVX2 kernels want unsigned
activations, and S8S8 on ARM.  :data:`FORMAT` is this back end's plug-in
(:mod:`edgeres.backends.base`); the quantizer is in :mod:`.onnx_quant`, the
graph rewrites in :mod:`.onnx_graph`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import numpy as np

from edgeres.backends.onnx_graph import (
    canonical_names,
    check,
    fold_input_scale_into_conv,
    fold_pad_into_maxpool,
    hoist_input_transpose,
)
from edgeres.core.errors import ConversionError, first_line

OPSET = 17
INPUT_NAME = "input"


def to_float32(model: Any, hwc: tuple[int, int, int]) -> bytes:
    """tf2onnx conversion with an explicit (None, H, W, C) input signature (Keras 3 needs it)."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, *hwc), tf.float32, name=INPUT_NAME),)
    try:
        with _lean_freezing(), _traceable_grouped_conv():
            _register_erfc()
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET,
                                                  optimizers=_collecting_optimizers())
    except Exception as exc:
        raise ConversionError(f"ONNX conversion (tf2onnx) failed: {first_line(exc)}") from None
    if hoist_input_transpose(proto):
        fold_input_scale_into_conv(proto)
    fold_pad_into_maxpool(proto)
    canonical_names(proto)
    check(proto)
    return proto.SerializeToString()


@contextlib.contextmanager
def _traceable_grouped_conv():
    """Keras' grouped convolutions traced as plain ``tf.nn.convolution`` for the export.

    TensorFlow's CPU kernel has no grouped convolution, so Keras runs one (``Conv2D(groups=g)``, RegNet,
    ResNeXt) inside a nested ``tf.function(jit_compile=True)``.  tf2onnx cannot inline that function and
    leaves a ``StatefulPartitionedCall`` the ONNX checker refuses.  The export only traces the graph, never
    runs it on TensorFlow's kernels, and tf2onnx turns a convolution whose input has more channels than
    its kernel into an ONNX ``Conv`` with ``group`` set: the same function, which edgeres' validation then
    measures against Keras.  Ungrouped convolutions take Keras' own path.  When Keras moved the function,
    nothing is patched (and a grouped model fails the export with tf2onnx's error, as before).
    """
    try:
        from keras.src import backend
        nn = backend.nn
        original = nn.conv
        to_format = nn._convert_data_format
    except (ImportError, AttributeError):
        yield
        return

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        import tensorflow as tf

        data_format = backend.standardize_data_format(data_format)
        channels = inputs.shape[-1] if data_format == "channels_last" else inputs.shape[1]
        if channels == kernel.shape[-2]:
            return original(inputs, kernel, strides, padding, data_format, dilation_rate)
        return tf.nn.convolution(inputs, kernel, strides, padding.upper(),
                                 data_format=to_format(data_format, len(inputs.shape)), dilations=dilation_rate)

    nn.conv = conv
    try:
        yield
    finally:
        nn.conv = original


def _runs_here(settings) -> bool:
    """Whether the target is this machine's kind of CPU: what ORT does here (its fusions, its kernel timings)
    says something about the target only then."""
    from edgeres.devices.targets import host_arch

    return settings.target.arch == host_arch()


@functools.cache
def _register_erfc() -> None:
    """A tf2onnx handler for TensorFlow's ``Erfc`` (Keras 3's exact GELU: ConvNeXt, ViTs): ``1 - Erf(x)``.

    tf2onnx converts ``Erf`` but not ``Erfc``; ONNX has ``Erf`` from opset 9.  Registered once, on the first
    export (tf2onnx's handler registry is global).
    """
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class Erfc:  # noqa: F841 - registered by the decorator
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            dtype = ctx.get_dtype(node.input[0])
            shapes, dtypes = node.output_shapes, node.output_dtypes
            erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
            one = ctx.make_const(utils.make_name(f"{node.name}_one"),
                                 np.array(1, dtype=utils.map_onnx_to_numpy_type(dtype)))
            ctx.remove_node(node.name)
            ctx.make_node("Sub", [one.output[0], erf.output[0]], outputs=node.output, name=node.name,
                          shapes=shapes, dtypes=dtypes)


@contextlib.contextmanager
def _lean_freezing():
    """tf2onnx's ``tf_loader.from_function``, with each copy of the weights freed before the next is made.

    tf2onnx freezes the function (a frozen ConcreteFunction), takes its GraphDef, imports that into a
    second graph to list the inputs, and runs grappler while all of them are alive: on ResNet-50 the
    export peaked at 3.0 GB from 0.8 GB with the model loaded, 1.0 GB of it the freezing's leftovers.
    This makes the same calls in the same order on the same GraphDef, so the exported graph is the same
    bytes (``tests/test_onnx_passes.py``), but drops the frozen function and the second graph before
    grappler runs.  tf2onnx's own ``from_function`` stays in charge of what this does not handle: large
    models, and the freezing errors it repairs.  Its functions are looked up by name; when one moved,
    tf2onnx runs unchanged.
    """
    from tf2onnx import tf_loader

    original = getattr(tf_loader, "from_function", None)
    parts = ("convert_variables_to_constants_v2", "fix_freezing_errors_part2", "inputs_without_resource",
             "tf_optimize", "tf_session")
    if original is None or not all(hasattr(tf_loader, name) for name in parts):
        yield
        return

    def lean(func, input_names, output_names, large_model=False):
        import tensorflow as tf

        from edgeres.core.machine import release_memory

        if large_model:
            return original(func, input_names, output_names, large_model)
        try:
            frozen = tf_loader.convert_variables_to_constants_v2(func, lower_control_flow=False,
                                                                 aggressive_inlining=True)
        except ValueError:
            return original(func, input_names, output_names, large_model)  # its repairs, its way
        graph_def = frozen.graph.as_graph_def(add_shapes=True)
        del frozen
        graph_def = tf_loader.fix_freezing_errors_part2(graph_def)
        with tf.Graph().as_default() as listing, tf_loader.tf_session(graph=listing) as sess:
            tf.import_graph_def(graph_def, name="")
            input_names = tf_loader.inputs_without_resource(sess, input_names)
        del listing, sess
        release_memory()
        with tf.Graph().as_default():  # grappler's meta graph takes the (empty) default graph's collections
            return tf_loader.tf_optimize(input_names, output_names, graph_def)

    tf_loader.from_function = lean
    try:
        yield
    finally:
        tf_loader.from_function = original


def _collecting_optimizers() -> dict | None:
    """tf2onnx's own graph optimizers, in its order, each made after a garbage collection.

    tf2onnx deep-copies the whole graph before every optimizer pass, and the
    copies it drops hold reference cycles that Python's cyclic collector frees
    late: on ResNet-50 they piled up to 7 GB (300 MB a pass).  Collecting
    before each pass kept the export near 3 GB (2.4 GB with :func:`_lean_freezing`); the passes and the exported
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
        # which ops ORT runs in float is read from its fusions on this CPU: for another kind of target, not assumed
        return OnnxQuantizer(float_model, calib, layer_types, settings.target.onnx.activation_type,
                             float_chains=_runs_here(settings))

    def int8_details(self, settings, recipe) -> dict:
        return {"scheme": settings.target.onnx_scheme, "format": "QDQ",
                "per_channel": recipe.weights == "per-channel"}

    def audit_int8(self, data: bytes, layer_types: dict[str, str], settings) -> dict:
        """``float_ops`` (op -> layers) and a note for the report: what ONNX Runtime runs in float inside the
        int8 model (:func:`~.onnx_subgraph.float_islands`); ``{}`` when it is integer throughout, or when the
        target is another kind of CPU (ORT's fusions are per CPU: this one's say nothing about the target's)."""
        from edgeres.backends.onnx_subgraph import float_islands
        from edgeres.core.layers import float_ops_note, ops_by_layer

        if not _runs_here(settings):
            return {}
        where = ops_by_layer(float_islands(data), layer_types)
        if not where:
            return {}
        return {"float_ops": where, "float_ops_note": float_ops_note(where, "ONNX Runtime")}

    def tune_int8(self, data: bytes, settings, log=None) -> tuple[bytes, dict]:
        """The int8 model with each convolution on ONNX Runtime's faster kernel here (exact;
        :mod:`edgeres.backends.onnx_kernels`), when the target runs on this machine's kind of CPU."""
        from edgeres.devices.targets import host_arch

        target = settings.target
        if target.onnx.kernels != "measure":
            return data, {"choice": "symmetric", "why": f"target '{target.name}' asks for ORT's default kernels"}
        if self.run_delegate(settings) is not None:
            return data, {"choice": "symmetric", "why": "measured for ORT's CPU provider only"}
        if not _runs_here(settings):
            return data, {"choice": "symmetric",
                          "why": f"converted on {host_arch()} for {target.arch}: kernels are timed on the target's CPU"}
        from edgeres.backends.onnx_kernels import tune

        return tune(data, settings.threads, log=log)

    def run_delegate(self, settings) -> str | None:
        providers = settings.target.onnx.providers
        return None if tuple(providers) == ("CPUExecutionProvider",) else ",".join(providers)


FORMAT = OnnxFormat()
