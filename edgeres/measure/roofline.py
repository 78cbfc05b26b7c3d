"""A measured ceiling: the MAC rate this machine, runtime, delegate and thread count can reach.

LIGHT layer: numpy, the ``flatbuffers`` package and the TFLite schema
bindings a runtime ships.  Instead of a table of peak rates per CPU (wrong
on the next CPU, and for a VM's reported clock), edgeres writes a small
int8 (or float32) model whose time is one dense 3x3 convolution (28x28x256
in and out, per-channel int8 weights, 462 M MACs: a ResNet stage-3 layer),
times it through the same runtime, delegate and thread count as the model
being benchmarked, and reports that model's GOP/s as a fraction of this
ceiling.  The result is cached per machine, runtime version, delegate,
threads and precision in ``~/.cache/edgeres/roofline.json``.  See docs/bench.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgeres.core.stop import temp_dir

H = W = 28
C_IN = C_OUT = 256
K = 3
CEILING_MACS = H * W * C_OUT * K * K * C_IN  # 462,422,016
CACHE = Path(os.environ.get("EDGERES_CACHE", Path.home() / ".cache" / "edgeres")) / "roofline.json"


def conv_model(h: int = H, c: int = C_IN, precision: str = "int8") -> bytes:
    """A .tflite with one CONV_2D (SAME, stride 1, fused ReLU): int8 with per-channel weights, or float32."""
    import flatbuffers

    from edgeres.core.tflite_schema import schema

    s = schema()
    rng = np.random.default_rng(0)
    quant = precision == "int8"
    weights = (rng.integers(-127, 128, size=(c, K, K, c), dtype=np.int8) if quant
               else rng.standard_normal((c, K, K, c)).astype(np.float32) * 0.02)
    w_scale = np.full(c, 0.02, np.float32)
    x_scale, y_scale = 0.05, 0.1
    bias = np.zeros(c, np.int32 if quant else np.float32)

    def buffer(data: bytes | None):
        b = s.BufferT()
        b.data = list(data) if data else None
        return b

    def tensor(name, shape, ttype, buf, scale, zero, axis=0):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), list(shape), ttype, buf
        if not quant:
            t.type = s.TensorType.FLOAT32
            return t
        q = s.QuantizationParametersT()
        q.scale, q.zeroPoint, q.quantizedDimension = list(map(float, np.atleast_1d(scale))), \
            [int(z) for z in np.atleast_1d(zero)], axis
        t.quantization = q
        return t

    model = s.ModelT()
    model.version, model.description = 3, b"edgeres roofline: one int8 3x3 convolution"
    model.buffers = [buffer(None), buffer(None), buffer(weights.tobytes()), buffer(bias.tobytes()), buffer(None)]
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.CONV_2D
    code.version = 3
    model.operatorCodes = [code]
    sg = s.SubGraphT()
    sg.tensors = [tensor("input", (1, h, h, c), s.TensorType.INT8, 1, x_scale, 0),
                  tensor("weights", (c, K, K, c), s.TensorType.INT8, 2, w_scale, np.zeros(c), 0),
                  tensor("bias", (c,), s.TensorType.INT32, 3, w_scale * x_scale, np.zeros(c), 0),
                  tensor("output", (1, h, h, c), s.TensorType.INT8, 4, y_scale, -128)]
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    opts = s.Conv2DOptionsT()
    opts.padding, opts.strideW, opts.strideH = s.Padding.SAME, 1, 1
    opts.dilationWFactor = opts.dilationHFactor = 1
    opts.fusedActivationFunction = s.ActivationFunctionType.RELU
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.Conv2DOptions, opts
    sg.operators, sg.inputs, sg.outputs, sg.name = [op], [0], [3], b"main"
    model.subgraphs = [sg]
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _key(runtime: str, version: str, delegate: str, threads: int, precision: str) -> str:
    from edgeres.core.machine import cpu_model

    return f"{cpu_model()}|{os.cpu_count()}|{runtime} {version}|{delegate}|{threads}|{precision}|{H}x{C_IN}"


def measured_ceiling(threads: int, delegate: str = "xnnpack", precision: str = "int8", runs: int = 50,
                     use_cache: bool = True) -> dict:
    """GMAC/s of :func:`conv_model` here, cached per machine, runtime, delegate, threads and precision.

    A ceiling is what the machine can reach, so it is taken from the fastest of ``runs`` inferences, not
    the median: on a shared VM a neighbour can take a core for a while, and the median then measures them.
    """
    from edgeres.core.quiet import quiet
    from edgeres.core.runtime import open_runner, tflite_module
    from edgeres.core.timing import measure

    _, info = tflite_module()
    key = _key(info.name, info.version, delegate, threads, precision)
    cache = _read_cache()
    if use_cache and key in cache:
        return {**cache[key], "cached": True}
    with temp_dir("edgeres-roofline-") as tmp:
        path = Path(tmp) / "roofline.tflite"
        path.write_bytes(conv_model(precision=precision))
        with quiet():
            runner = open_runner(path, threads=threads, delegate=delegate)
        x = runner.quantize_input(np.random.default_rng(0).uniform(-5, 5, size=(1, H, W, C_IN)).astype(np.float32))
        stats, _ = measure(runner.timed_invoke(x), runs=runs, warmup=10)
    result = {"gmacs": CEILING_MACS / (stats.min / 1000.0) / 1e9, "min_ms": stats.min, "p50_ms": stats.p50,
              "macs": CEILING_MACS,
              "runtime": f"{info.name} {info.version}", "delegate": delegate, "threads": threads,
              "precision": precision,
              "method": f"one {precision} 3x3 conv, {H}x{W}x{C_IN} -> {C_OUT} (docs/bench.md)"}
    cache[key] = result
    _write_cache(cache)
    return {**result, "cached": False}


def _read_cache() -> dict:
    try:
        return json.loads(CACHE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict) -> None:
    try:
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = CACHE.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
        os.replace(tmp, CACHE)
    except OSError:
        pass  # a read-only home: measure again next time
