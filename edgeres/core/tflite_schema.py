"""The TFLite flatbuffer schema bindings (``schema_py_generated``), loaded once on first use.

LIGHT: nothing is imported until :func:`schema` is called; then the bindings of
``ai_edge_litert`` are preferred, ``tensorflow.lite`` is only a last resort.
"""

from __future__ import annotations

import functools
from typing import Any

from edgeres.core.errors import RuntimeUnavailableError


@functools.lru_cache(maxsize=1)
def schema() -> Any:
    """The TFLite flatbuffer schema module of the lightest runtime installed."""
    try:
        from ai_edge_litert import schema_py_generated
        return schema_py_generated
    except ImportError:
        pass
    try:  # last resort: TensorFlow ships the same generated module
        from tensorflow.lite.python import schema_py_generated
        return schema_py_generated
    except ImportError:
        raise RuntimeUnavailableError(
            "reading .tflite files needs the TFLite schema bindings: pip install ai-edge-litert") from None
