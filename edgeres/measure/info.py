"""Describe a ``.tflite`` or ``.onnx`` artifact.  LIGHT layer: numpy and a runtime."""

from __future__ import annotations

from pathlib import Path

from edgeres.core.runtime import TFLiteRunner, open_runner


def describe_artifact(path: str) -> dict:
    runner = open_runner(path, threads=1, delegate="none" if path.endswith(".tflite") else None, allocate=False)
    d = {
        "path": str(path),
        "format": runner.format,
        "size_bytes": Path(path).stat().st_size,
        "input_shape": list(runner.input_shape),
        "layout": runner.layout,
        "input_dtype": runner.input_dtype.name,
        "output_dtype": runner.output_dtype.name,
        "input_quant": runner.input_quant,
        "output_quant": runner.output_quant,
        "runtime": f"{runner.runtime.name} {runner.runtime.version}",
    }
    if isinstance(runner, TFLiteRunner):
        d["ops"] = runner.op_counts()
    else:
        d["ops"] = onnx_op_counts(path)
    d["op_total"] = sum(d["ops"].values())
    return d


def onnx_op_counts(path: str) -> dict[str, int]:
    """Node types in an ONNX graph, read with the ``onnx`` package when it is installed."""
    try:
        import onnx
    except ImportError:
        return {}
    counts: dict[str, int] = {}
    for node in onnx.load(path, load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
