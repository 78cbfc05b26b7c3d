"""Coral Edge TPU: a static compatibility check, and the real compiler when it is installed.

Three parts, LIGHT (numpy and the TFLite flatbuffer schema bindings; no interpreter, no
TensorFlow): :mod:`.graph` reads a ``.tflite`` flatbuffer's main subgraph; :mod:`.rules` holds
the supported-ops table of coral.ai with each op's limitations as a table of small rules, and
:mod:`.check` applies them in graph order (:func:`check_model`, :func:`format_check`) the way the
compiler partitions the graph; :mod:`.compiler` runs ``edgetpu_compiler`` (:func:`compile_model`)
and parses its log (:func:`parse_compiler_log`).
"""

from edgeres.devices.edgetpu.check import ON_CHIP_BYTES, check_model, format_check
from edgeres.devices.edgetpu.compiler import COMPILE_TIMEOUT_S, COMPILER_URL, compile_model, parse_compiler_log
from edgeres.devices.edgetpu.graph import Graph
from edgeres.devices.edgetpu.rules import DOCS_URL, OP_RULES, SOFTMAX_MAX_ELEMENTS, SUPPORTED_OPS, op_constraints

__all__ = [
    "COMPILER_URL",
    "COMPILE_TIMEOUT_S",
    "DOCS_URL",
    "ON_CHIP_BYTES",
    "OP_RULES",
    "SOFTMAX_MAX_ELEMENTS",
    "SUPPORTED_OPS",
    "Graph",
    "check_model",
    "compile_model",
    "format_check",
    "op_constraints",
    "parse_compiler_log",
]
