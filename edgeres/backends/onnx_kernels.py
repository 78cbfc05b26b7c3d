"""ONNX Runtime's int8 convolution kernels, chosen per layer by measurement.  HEAVY layer (onnx, onnxruntime).

ONNX Runtime runs an int8 convolution (a QDQ ``Conv``, fused into a
``QLinearConv``) one of two ways, and the graph decides which:

* **symmetric weights** (every weight zero point 0, what edgeres and ORT
  write): MLAS's direct symmetric convolution kernels (AVX-512 VNNI, AVX2,
  NEON dot products);
* **any other weight zero point**: im2col plus MLAS's int8 GEMM, which on CPUs
  with Intel AMX runs on the tile units.

Which one is faster depends on the CPU and on the layer.  On a 2-core Xeon
with AMX, 34 of ResNet-50's 53 convolutions ran faster as GEMM (7.60 -> 6.16
ms for the model); on an AMD EPYC Zen 5 without AMX, none did (``edgeres
convert`` reports, ``details.kernels``; docs/bench.md).  So nothing is assumed:
:func:`tune` times every convolution both ways on this machine, with ORT's
own profiler, and moves to GEMM only the layers that were clearly faster,
then keeps the result only if the whole model ran faster too.

The switch is exact.  Symmetric int8 weights lie in [-127, 127], so storing
``w - 1`` with zero point -1 dequantizes to the same values: the outputs are
bit-identical (checked again on every tuned model), only the kernel differs.
:func:`canonical` undoes it, to compare artifacts built on different machines.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgeres.core.runtime import _ORT_TYPES
from edgeres.core.stop import temp_dir

FASTER = 0.9        # a layer moves to GEMM when it ran in at most 90% of its symmetric time ...
WHOLE_FASTER = 0.97  # ... and the tuned model is kept when it ran in at most 97% of the untuned one
MIN_CONV_MS = 0.5   # below this much convolution time per image, timer noise outweighs any gain
RUNS = 30


def _conv_weights(proto) -> dict[str, tuple]:
    """Weight initializer name -> (weight initializer, zero-point initializer) for every Conv whose
    weights come from a DequantizeLinear of an int8 constant."""
    from onnx import TensorProto

    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    found = {}
    for node in g.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            continue
        w, zp = inits.get(dq.input[0]), inits.get(dq.input[2])
        if w is not None and zp is not None and w.data_type == TensorProto.INT8 and zp.data_type == TensorProto.INT8:
            found[w.name] = (w, zp)
    return found


def _shift(proto, names, by: int, zero_from: int) -> int:
    """Store ``w + by`` with zero point ``zero_from + by`` for the named weights whose zero points are all
    ``zero_from`` and whose values stay in int8; the number changed.  Edits ``proto`` in place."""
    from onnx import numpy_helper

    changed = 0
    for name, (w, zp) in _conv_weights(proto).items():
        if names is not None and name not in names:
            continue
        z, q = numpy_helper.to_array(zp), numpy_helper.to_array(w).astype(np.int16)
        if q.size == 0 or np.any(z != zero_from) or q.min() + by < -128 or q.max() + by > 127:
            continue
        w.CopyFrom(numpy_helper.from_array((q + by).astype(np.int8), w.name))
        zp.CopyFrom(numpy_helper.from_array(np.full(z.shape, zero_from + by, np.int8), zp.name))
        changed += 1
    return changed


def as_gemm(proto, names: set[str] | None = None):
    """A copy of ``proto`` whose named convolutions (all when None) run as im2col + GEMM (exact)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    _shift(out, names, -1, 0)
    return out


def canonical(proto):
    """A copy of ``proto`` with every convolution back on symmetric weights: what :func:`tune` started from."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    _shift(out, None, +1, -1)
    return out


def _session(data: bytes, threads: int, profile_dir: str | None = None, optimized: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if profile_dir is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(profile_dir, "edgeres-kernels")
    if optimized is not None:
        opts.optimized_model_filepath = optimized
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _feed(sess) -> dict:
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    dtype = _ORT_TYPES.get(inp.type, np.float32)
    x = np.random.default_rng(0).uniform(0, 1, shape)  # kernel times do not depend on the values
    return {inp.name: x.astype(dtype)}


def conv_times(data: bytes, threads: int, runs: int = RUNS) -> dict[str, float]:
    """Median time (ms) of every int8 convolution, by weight name, from ONNX Runtime's profiler."""
    import onnx

    with temp_dir("edgeres-kernels-") as tmp:
        optimized = str(Path(tmp, "optimized.onnx"))
        sess = _session(data, threads, tmp, optimized)
        feed = _feed(sess)
        for _ in range(runs + 3):
            sess.run(None, feed)
        trace = json.loads(Path(sess.end_profiling()).read_text())
        weight_of = {n.name: n.input[3] for n in onnx.load(optimized, load_external_data=False).graph.node
                     if n.op_type == "QLinearConv"}
    times: dict[str, list[float]] = {}
    for e in trace:
        name = e.get("name", "").removesuffix("_kernel_time")
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and name in weight_of:
            times.setdefault(weight_of[name], []).append(e["dur"] / 1000.0)
    return {w: float(np.median(t[3:] if len(t) > 3 else t)) for w, t in times.items()}


def whole_times(models: list[bytes], threads: int, rounds: int = 6, per_round: int = 8) -> list[float]:
    """Median latency (ms) of each model, in alternating blocks so drift hits them alike
    (:func:`edgeres.core.timing.measure_interleaved`); and their outputs on one input must be identical, or
    this raises."""
    from edgeres.core.timing import measure_interleaved

    sessions = [_session(m, threads) for m in models]
    feed = _feed(sessions[0])
    outputs = [s.run(None, feed) for s in sessions]
    for other in outputs[1:]:
        if any(not np.array_equal(a, b) for a, b in zip(outputs[0], other)):
            raise AssertionError("an exact kernel rewrite changed the outputs")
    fns = {i: (lambda s=s: s.run(None, feed)) for i, s in enumerate(sessions)}
    stats = measure_interleaved(fns, runs=rounds * per_round, warmup=1, block=per_round, settle=1)
    return [stats[i][0].p50 for i in range(len(sessions))]


def tune(data: bytes, threads: int, log=None) -> tuple[bytes, dict]:
    """``data`` with each int8 convolution on the kernel that ran faster here; and what was measured."""
    import onnx
    import onnxruntime as ort

    from edgeres.core.machine import cpu_model

    proto = onnx.load_from_string(data)
    where = {"cpu": cpu_model(), "onnxruntime": ort.__version__,
             "threads": threads}
    layers = _conv_weights(proto)
    if not layers:
        return data, {"choice": "symmetric", "why": "no int8 convolutions", **where}
    sym = conv_times(data, threads)
    total = sum(sym.values())
    if total < MIN_CONV_MS:
        return data, {"choice": "symmetric", "why": f"under {MIN_CONV_MS} ms of convolutions: too little to time",
                      "layers": len(layers), "timed_ms": {"conv_symmetric": round(total, 3)}, **where}
    gemm = conv_times(as_gemm(proto).SerializeToString(), threads)
    faster = {w for w in sym if w in gemm and gemm[w] <= FASTER * sym[w]}
    timed = {"conv_symmetric": round(total, 3), "conv_gemm": round(sum(gemm.values()), 3),
             "conv_best": round(sum(min(sym[w], gemm.get(w, sym[w])) for w in sym), 3)}
    summary = {"layers": len(layers), "timed_ms": timed, **where}  # timed_ms: figures of this run, not settings
    if not faster:
        return data, {"choice": "symmetric", "why": "no convolution was faster as GEMM", **summary}
    tuned = as_gemm(proto, faster).SerializeToString()
    before, after = whole_times([data, tuned], threads)
    timed.update(model_symmetric=round(before, 3), model_tuned=round(after, 3))
    summary["gemm_layers"] = len(faster)
    if after > WHOLE_FASTER * before:
        return data, {"choice": "symmetric", "why": "the mixed model was not faster as a whole", **summary}
    if log is not None:
        log(f"onnx int8: {len(faster)} of {len(layers)} convolutions run faster as GEMM here: "
            f"{before:.2f} -> {after:.2f} ms (exact)")
    return tuned, {"choice": "measured", **summary}
