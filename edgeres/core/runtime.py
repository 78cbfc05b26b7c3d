"""Run ``.tflite`` and ``.onnx`` artifacts with one interface.

LIGHT layer: numpy plus one runtime.  The TFLite interpreter comes from
ai-edge-litert, falling back to tflite-runtime, then to ``tf.lite`` (the only
place this module may touch TensorFlow, and only when nothing lighter exists).

A :class:`Runner` takes float32 NHWC input already preprocessed, quantizes it
when the model has integer I/O, and returns float32 outputs (dequantized), so
every artifact can be compared with the Keras float32 reference directly.
A model whose input is NCHW (as PyTorch exports them) gets its batches
transposed, and one with a fixed batch of N gets them in chunks of exactly N.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.core.errors import ModelError, RuntimeUnavailableError, ShapeError, UsageError, first_line, no_model_file
from edgeres.core.limits import check_threads
from edgeres.core.tensors import (  # noqa: F401 - HOST_ACTIVATIONS and quantize: imported from here too
    HOST_ACTIVATIONS,
    _dims_text,
    detail_quant,
    input_layout,
    interpreter_macs,
    quantize,
    resolve_dims,
)

TFLITE_DELEGATES = ("xnnpack", "none", "reference", "edgetpu")
EDGETPU_LIBS = ("libedgetpu.so.1", "libedgetpu.1.dylib", "edgetpu.dll")


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    version: str


def tflite_module() -> tuple[Any, RuntimeInfo]:
    """The interpreter module of the lightest TFLite runtime installed."""
    for mod_name, dist in (("ai_edge_litert.interpreter", "ai-edge-litert"),
                           ("tflite_runtime.interpreter", "tflite-runtime")):
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        return mod, RuntimeInfo(dist, _dist_version(dist))
    try:
        import tensorflow as tf  # noqa: PLC0415 - last-resort fallback
    except ImportError:
        raise RuntimeUnavailableError(
            "no TFLite runtime installed: pip install ai-edge-litert "
            "(or tflite-runtime, or tensorflow)") from None
    return tf.lite, RuntimeInfo("tensorflow.lite", tf.__version__)


def onnx_module() -> tuple[Any, RuntimeInfo]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeUnavailableError("onnxruntime is not installed: pip install onnxruntime") from None
    return ort, RuntimeInfo("onnxruntime", ort.__version__)


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


class Runner:
    """Common interface of the TFLite and ONNX runners.

    Callers speak NHWC (``hwc``, ``predict``, ``timed_invoke``); the runner
    speaks the model's own layout and batch to the runtime.
    """

    format: str
    path: Path
    runtime: RuntimeInfo
    threads: int
    delegate: str
    input_shape: tuple[int, ...]  # the model's own order, with batch dimension, -1 for a dynamic batch
    layout: str = "NHWC"  # or "NCHW" (input_layout)
    #: images per inference when timing: the model's fixed batch, else --shape's N, else 1
    batch: int = 1
    input_dtype: np.dtype
    output_dtype: np.dtype
    input_quant: tuple[float, int] | None = None
    output_quant: tuple[float, int] | None = None
    load_seconds: float = 0.0
    #: how many outputs the model has (validate measures one class vector: it refuses more)
    outputs: int = 1
    #: "softmax"/"sigmoid": applied to the outputs on the host (a full-integer model that outputs logits)
    host_activation: str | None = None

    @property
    def hwc(self) -> tuple[int, int, int]:
        """The input of one image as H, W, C (what the data is resized to), whatever the model's layout.
        Running a model needs it, so dynamic H, W or C left unset is an error here (``info`` only reads
        ``input_shape``, and describes such a model)."""
        if any(d < 0 for d in self.input_shape[1:]):
            raise ShapeError(f"{self.path.name} has dynamic input dims {_dims_text(self.input_shape)}; "
                             "pass --shape N,H,W,C")
        if self.layout == "NCHW":
            _, c, h, w = self.input_shape
            return int(h), int(w), int(c)
        return tuple(int(v) for v in self.input_shape[1:])  # type: ignore[return-value]

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model was exported with, None when its batch is dynamic."""
        return int(self.input_shape[0]) if self.input_shape[0] > 0 else None

    def _finish_shape(self, dims: list[int], shape: tuple[int, ...] | None) -> None:
        """Set ``input_shape``, ``layout`` and ``batch`` from the model's ``dims`` and --shape (N,H,W,C)."""
        self.layout = input_layout(dims)
        dims = [dims[0], *resolve_dims(self.path.name, dims, shape, self.layout)[1:]]  # a dynamic batch stays so
        self.input_shape = tuple(dims)
        self.batch = self.fixed_batch or (shape[0] if shape is not None and shape[0] > 0 else 1)

    def _to_model(self, xq: np.ndarray) -> np.ndarray:
        """An NHWC batch in the model's layout.  A batch already in it (callers that read the model's own
        shape) passes unchanged: an NCHW model's last dimension is never its channel count, so the two
        cannot be confused."""
        if self.layout == "NCHW" and xq.ndim == 4 and tuple(xq.shape[1:]) == self.hwc:
            return np.ascontiguousarray(xq.transpose(0, 3, 1, 2))
        return xq

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        return quantize(x, self.input_quant, self.input_dtype)

    def dequantize_output(self, y: np.ndarray) -> np.ndarray:
        if self.output_quant is None or not np.issubdtype(y.dtype, np.integer):
            return y.astype(np.float32, copy=False)
        scale, zero = self.output_quant
        return (y.astype(np.float32) - zero) * np.float32(scale)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float32 outputs for a float32 NHWC batch (any batch size)."""
        if tuple(x.shape[1:]) not in (self.hwc, tuple(self.input_shape[1:])):
            raise ShapeError(f"{self.path.name} takes input {self._shape_text()}, got "
                             f"{'x'.join(map(str, x.shape[1:]))}")
        y = self.dequantize_output(self._run(self.quantize_input(x)))
        return HOST_ACTIVATIONS[self.host_activation](y) if self.host_activation else y

    def _shape_text(self) -> str:
        return "x".join("?" if (v is None or v < 0) else str(v) for v in self.hwc)

    def _run(self, xq: np.ndarray) -> np.ndarray:
        """Raw outputs for a quantized batch of any size.  A model with a fixed batch of N gets chunks of
        exactly N, the last one padded by repeating its images, and the padding's outputs are dropped (a
        classifier treats the images of a batch independently, so the padding changes no real output)."""
        xq = self._to_model(xq)
        n = self.fixed_batch
        if n is None or len(xq) == n:
            return self._invoke(xq)
        outs = []
        for i in range(0, len(xq), n):
            chunk = xq[i:i + n]
            k = len(chunk)
            outs.append(self._invoke(chunk[np.arange(n) % k])[:k])
        return np.concatenate(outs) if outs else self._invoke(xq[:0])

    def _invoke(self, xq: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """One inference of the runtime on a batch in the model's layout and batch size."""
        raise NotImplementedError

    def timed_invoke(self, xq: np.ndarray) -> Callable[[], None]:
        """A zero-argument callable that runs one inference on prepared input (``batch`` images, NHWC)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def describe(self) -> dict:
        return {"format": self.format, "path": str(self.path), "runtime": self.runtime.name,
                "runtime_version": self.runtime.version, "threads": self.threads,
                "delegate": self.delegate, "input_shape": list(self.input_shape), "layout": self.layout,
                "input_dtype": np.dtype(self.input_dtype).name,
                "output_dtype": np.dtype(self.output_dtype).name}


class TFLiteRunner(Runner):
    format = "tflite"

    def __init__(self, path: str | Path, threads: int = 2, delegate: str = "xnnpack",
                 shape: tuple[int, ...] | None = None, allocate: bool = True):
        if delegate not in TFLITE_DELEGATES:
            raise UsageError(f"unknown TFLite delegate {delegate!r}; choose from {', '.join(TFLITE_DELEGATES)}")
        self.path = Path(path)
        self.threads = threads
        self.delegate = delegate
        mod, self.runtime = tflite_module()
        kwargs: dict[str, Any] = {"model_path": str(self.path), "num_threads": threads}
        resolver = getattr(mod, "OpResolverType", None)
        if delegate == "none" and resolver is not None:
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        elif delegate == "reference" and resolver is not None:
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_REF
        elif delegate == "edgetpu":
            kwargs["experimental_delegates"] = [_load_edgetpu(mod)]
        t0 = time.perf_counter()
        try:
            self.interp = mod.Interpreter(**kwargs)
            inp = self.interp.get_input_details()
            out = self.interp.get_output_details()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.path} is not a loadable TFLite model: {first_line(exc)}") from None
        if len(inp) != 1:
            raise ShapeError(f"{self.path.name} has {len(inp)} inputs; edgeres handles single-input image models")
        self._in, self._out = inp[0], out[0]
        self.outputs = len(out)
        sig = [int(v) for v in self._in.get("shape_signature", self._in["shape"])]
        self._finish_shape(sig, shape)
        try:  # dynamic dims set by --shape are sized before the first allocation (at 1x1 a 3x3 conv fails)
            if all(d > 0 for d in self.input_shape[1:]) and list(self.input_shape[1:]) != list(sig[1:]):
                self.interp.resize_tensor_input(self._in["index"], [max(sig[0], 1), *self.input_shape[1:]])
            if allocate or all(d > 0 for d in self.input_shape[1:]):  # info describes a dynamic model as is
                self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            if any(d < 0 for d in self.input_shape[1:]):
                raise ShapeError(f"{self.path.name} has dynamic input dims {_dims_text(self.input_shape)}; "
                                 "pass --shape N,H,W,C") from None
            raise ModelError(f"{self.path} is not a loadable TFLite model: {first_line(exc)}") from None
        self.load_seconds = time.perf_counter() - t0
        self._in = self.interp.get_input_details()[0]
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])
        self.input_quant = detail_quant(self._in)
        self.output_quant = detail_quant(self._out)
        self._allocated = tuple(int(v) for v in self._in["shape"])

    def _resize(self, batch: int) -> None:
        """Allocate for ``batch`` images (only a dynamic batch changes; _run keeps a fixed one whole)."""
        want = (batch, *self.input_shape[1:])
        if want != self._allocated:
            if self.fixed_batch not in (None, batch):
                raise ShapeError(f"{self.path.name} has a fixed batch of {self.fixed_batch}, not {batch}")
            try:
                self.interp.resize_tensor_input(self._in["index"], list(want))
                self.interp.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                raise ShapeError(f"{self.path.name} cannot take input {_dims_text(want)}: {first_line(exc)}") \
                    from None
            self._allocated = want

    def _invoke(self, xq: np.ndarray) -> np.ndarray:
        self._resize(len(xq))
        self.interp.set_tensor(self._in["index"], xq)
        self.interp.invoke()
        return self.interp.get_tensor(self._out["index"]).copy()

    def timed_invoke(self, xq: np.ndarray) -> Callable[[], None]:
        xq = self._to_model(xq)
        self._resize(len(xq))
        self.interp.set_tensor(self._in["index"], xq)
        return self.interp.invoke

    def delegate_coverage(self) -> dict:
        """Which ops the delegate took, and which fell back to the CPU.

        A delegate replaces each partition of the graph by one DELEGATE node
        appended after the original nodes.  Walking back from a DELEGATE node's
        outputs to its inputs through the original nodes recovers the
        partition, so the nodes no partition covers are the CPU fallbacks.
        """
        ops = self.interp._get_ops_details()
        delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
        nodes = [o for o in ops if o["op_name"] != "DELEGATE"]
        producer = {t: o["index"] for o in nodes for t in o["outputs"]}
        by_index = {o["index"]: o for o in nodes}
        covered: set[int] = set()
        for d in delegates:
            stop = set(d["inputs"])
            todo = [t for t in d["outputs"] if t in producer]
            while todo:
                t = todo.pop()
                n = producer.get(t)
                if n is None or n in covered or t in stop:
                    continue
                covered.add(n)
                todo.extend(i for i in by_index[n]["inputs"] if i >= 0 and i not in stop)
        cpu: dict[str, int] = {}
        for o in nodes:
            if o["index"] not in covered:
                cpu[o["op_name"]] = cpu.get(o["op_name"], 0) + 1
        return {"delegate": self.delegate if delegates else "none", "ops_total": len(nodes),
                "ops_delegated": len(covered), "partitions": len(delegates), "cpu_ops": cpu}

    def macs(self) -> int:
        """Multiply-accumulates per inference at batch 1: convolutions and fully connected layers."""
        return interpreter_macs(self.interp)

    def compute_precision(self) -> str:
        """int8 when the convolutions' and fully connected layers' weights are 8-bit, else float32."""
        tensors = {t["index"]: t for t in self.interp.get_tensor_details()}
        for op in self.interp._get_ops_details():
            if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
                ins = [i for i in op["inputs"] if i >= 0]
                if len(ins) > 1 and np.dtype(tensors[ins[1]]["dtype"]) in (np.int8, np.uint8):
                    return "int8"
        return "float32"

    def op_counts(self) -> dict[str, int]:
        """Ops in the graph by name (needs the runtime's analyzer-free op details)."""
        counts: dict[str, int] = {}
        getter = getattr(self.interp, "_get_ops_details", None)
        for op in (getter() if getter else []):
            counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
        return counts


def _load_edgetpu(mod: Any) -> Any:
    for lib in EDGETPU_LIBS:
        try:
            return mod.load_delegate(lib)
        except (ValueError, OSError):
            continue
    raise RuntimeUnavailableError(
        "the edgetpu delegate needs libedgetpu (not found); install the Edge TPU runtime: "
        "https://coral.ai/docs/accelerator/get-started/ (apt-get install libedgetpu1-std)")


class OnnxRunner(Runner):
    format = "onnx"

    def __init__(self, path: str | Path, threads: int = 2, providers: tuple[str, ...] | None = None,
                 shape: tuple[int, ...] | None = None):
        self.path = Path(path)
        self.threads = threads
        ort, self.runtime = onnx_module()
        available = ort.get_available_providers()
        providers = tuple(providers or ("CPUExecutionProvider",))
        missing = [p for p in providers if p not in available]
        if missing:
            raise RuntimeUnavailableError(
                f"ONNX Runtime execution provider(s) not available: {', '.join(missing)} "
                f"(installed: {', '.join(available)})")
        self.delegate = ",".join(providers)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        t0 = time.perf_counter()
        try:
            self.sess = ort.InferenceSession(str(self.path), sess_options=so, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph classes
            raise ModelError(f"{self.path} is not a loadable ONNX model: {first_line(exc)}") from None
        self.load_seconds = time.perf_counter() - t0
        inputs = self.sess.get_inputs()
        if len(inputs) != 1:
            raise ShapeError(f"{self.path.name} has {len(inputs)} inputs; edgeres handles single-input image models")
        self._in = inputs[0]
        self._out_name = self.sess.get_outputs()[0].name
        self.outputs = len(self.sess.get_outputs())
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in self._in.shape]
        self._finish_shape(dims, shape)
        self.input_dtype = np.dtype(_ORT_TYPES.get(self._in.type, np.float32))
        self.output_dtype = np.dtype(_ORT_TYPES.get(self.sess.get_outputs()[0].type, np.float32))

    def _invoke(self, xq: np.ndarray) -> np.ndarray:
        return self.sess.run([self._out_name], {self._in.name: xq})[0]

    def timed_invoke(self, xq: np.ndarray) -> Callable[[], None]:
        run, out, feed = self.sess.run, [self._out_name], {self._in.name: self._to_model(xq)}
        return lambda: run(out, feed)


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
              "tensor(float16)": np.float16, "tensor(double)": np.float64}


def open_runner(path: str | Path, threads: int = 2, delegate: str | None = None,
                shape: tuple[int, ...] | None = None, allocate: bool = True) -> Runner:
    """Open a ``.tflite`` or ``.onnx`` file with the right runtime.  ``shape`` (N,H,W,C in any model layout,
    -1 for "any") fills the model's dynamic input dims and must agree with its fixed ones.  Without
    ``allocate`` a TFLite model with dynamic dims is opened only to be described (it cannot run)."""
    p = Path(path)
    check_threads(threads, "thread count")
    if not p.is_file():
        raise no_model_file(p)
    suffix = p.suffix.lower()
    if suffix == ".tflite":
        return TFLiteRunner(p, threads, delegate or "xnnpack", shape, allocate)
    if suffix == ".onnx":
        providers = None if delegate in (None, "xnnpack", "cpu") else tuple(delegate.split(","))
        return OnnxRunner(p, threads, providers, shape)
    raise ModelError(f"{p} is not a .tflite or .onnx file")
