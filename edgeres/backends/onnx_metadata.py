"""``metadata_props`` on an ONNX model: the bundle's preprocessing and labels, for apps using ONNX Runtime
(which reads them back with ``InferenceSession.get_modelmeta().custom_metadata_map``).  HEAVY layer (onnx).

Only the model's metadata changes: the graph is untouched (tests/test_bundle.py checks identical outputs).
"""

from __future__ import annotations

from edgeres.core.errors import ModelError, RuntimeUnavailableError, first_line


def with_metadata_props(model: bytes, props: dict[str, str], *, name: str, version: int = 1,
                        description: str | None = None) -> bytes:
    """``model`` with ``props`` set (existing keys replaced), and its doc_string and model_version set."""
    try:
        import onnx
    except ImportError:
        raise RuntimeUnavailableError("bundling the ONNX model needs the onnx package: pip install onnx, or "
                                      "pip install \"edgeres[convert]\"") from None
    try:
        m = onnx.load_model_from_string(model)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelError(f"the run's int8 ONNX model cannot be read: {first_line(exc)}") from None
    keep = [p for p in m.metadata_props if p.key not in props]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    for key, value in props.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = key, value
    m.model_version = version
    if description:
        m.doc_string = description
    m.graph.doc_string = m.graph.doc_string or name
    return m.SerializeToString()
