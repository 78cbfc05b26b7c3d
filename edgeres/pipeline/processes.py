"""Each format's conversion in its own process.  HEAVY (the children run the converters).

TFLite and ONNX conversion are independent: each format's float export,
calibration statistics and int8 build (:func:`edgeres.pipeline.artifacts.build_format`)
run in a spawned child process, as many at once as ``--jobs`` allows.  This buys
two things on a workstation:

- time: the converters are largely single-threaded (graph passes, MLIR, ONNX
  shape inference), so two of them overlap on two cores;
- memory: a converter's peak (TensorFlow's graph copies, tf2onnx, ONNX Runtime's
  arenas) is returned to the system when its process exits, instead of staying
  in the one long-lived process that later validates and benchmarks.

The children read what the parent decoded once (the model saved as ``.keras``
and loaded with ``safe_mode``, the images as ``.npy`` without pickles) from a
private temporary folder, write their artifacts into the run's staging folder
atomically, and send back only small records: the artifacts' details, the
search trials without their models, and their peak memory and stage times.
The artifacts are byte-identical to a run in one process (tests/test_processes.py).
A failure in a child reaches the parent as the same EdgeresError (same exit
code); a child that dies (killed for memory) is a ConversionError naming it;
when the parent stops for any reason, the children are stopped too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import resource
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeres.core.errors import ConversionError, EdgeresError
from edgeres.core.machine import available_memory, usable_cores
from edgeres.core.quiet import quiet
from edgeres.core.stop import on_stop, stops_cleanly, temp_dir

log = logging.getLogger(__name__)

#: below this much work (multiply-accumulates per image x images calibrated and held out) the formats stay in
#: this process: a child's start (importing TensorFlow, loading the model) is about 5 s.  Measured with
#: benchmarks/parallel_backends.py, formats in processes against one process: ResNet-50 at 224 x 100 images
#: (3.9e11) 1.24-1.28x faster; ResNet-20 at 32x32 x 300 images (1.2e10) 1.11-1.15x faster, for 2.6x the memory
#: (1.0 -> 2.6 GB, all processes together)
AUTO_MIN_WORK = 1e10
#: the memory a child needs, to decide how many run at once: TensorFlow and a converter's base, plus this many
#: bytes per byte of float32 weights.  Measured peaks: ResNet-20 children 0.9-1.0 GB, ResNet-50 children 3.2-3.5
#: GB (102 MB of weights); the estimate gives 1.5 and 3.5 GB
CHILD_BASE_BYTES = 1.5 * 2**30
CHILD_BYTES_PER_WEIGHT_BYTE = 20


@dataclass(frozen=True)
class Plan:
    """How the formats are built: in this process, or each in its own process, ``jobs`` at a time."""

    processes: bool
    jobs: int = 1

    def describe(self) -> str:
        return f"{self.jobs} at a time in their own processes" if self.processes else "in one process"


def backend_plan(cfg, inputs, n_formats: int) -> Plan:
    """``--jobs N``: N processes at once (1: everything in this process).  By default, a model big enough for
    a child's start to pay gets one process per format, as many at once as the cores and the memory allow
    (at least one at a time: a converter's memory is then returned before the next starts); a small one is
    built in this process."""
    if cfg.jobs is not None:
        return Plan(cfg.jobs > 1 and n_formats > 1, max(1, min(cfg.jobs, n_formats)))
    macs = inputs.model_info.get("macs") or 0
    images = len(inputs.calib) + (len(inputs.holdout) if inputs.holdout is not None else 0)
    if n_formats < 2 or macs * images < AUTO_MIN_WORK:
        return Plan(False)
    need = CHILD_BASE_BYTES + CHILD_BYTES_PER_WEIGHT_BYTE * 4 * (inputs.model_info.get("params") or 0)
    have = available_memory()
    fit = n_formats if have is None else int(have // need)
    return Plan(True, max(1, min(n_formats, usable_cores(), fit)))


@dataclass(frozen=True)
class Job:
    """What a child needs: the run's options, and where the shared inputs and the staging folder are."""

    cfg: object
    settings: object
    name: str            # the format
    shared: Path         # the private folder with model.keras and the .npy arrays
    stage: Path
    hwc: tuple[int, int, int]
    log_level: int
    holdout_carved: bool
    build: object = None  # edgeres.pipeline.artifacts.build_format (passed in: this module does not import it)


@dataclass
class _Inputs:
    """The part of pipeline.convert.Inputs that build_format reads."""

    model: object
    hwc: tuple[int, int, int]
    calib: np.ndarray
    holdout: object = None
    select: object = None
    holdout_carved: bool = False


def build_in_processes(build, cfg, settings, inputs, stage: Path, stages, names: list[str], jobs: int) -> list:
    """``build`` (:func:`~edgeres.pipeline.artifacts.build_format`) for every format in ``names``, ``jobs`` at a
    time, each in its own spawned process; the parts come back in ``names`` order."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")  # never fork a process that has TensorFlow's threads running
    parts: dict[str, object] = {}
    running: dict[str, tuple] = {}
    log.info(f"building {', '.join(names)} in their own processes, {jobs} at a time")

    def children() -> None:  # stopped at the end, and on a signal (core.stop) before the stage is removed
        _stop([proc for proc, _ in running.values()])

    with temp_dir("edgeres-jobs-") as tmp, on_stop(children), stages(f"formats ({jobs} at a time)"):
        shared = _share(inputs, Path(tmp))
        pending = list(names)
        try:
            while pending or running:
                while pending and len(running) < jobs:
                    name = pending.pop(0)
                    job = Job(cfg, settings, name, shared, stage, inputs.hwc, logging.getLogger("edgeres").level,
                              bool(getattr(inputs, "holdout_carved", False)), build)
                    receive, send = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_child, args=(send, job), name=f"edgeres-{name}", daemon=True)
                    proc.start()
                    send.close()
                    running[name] = (proc, receive)
                ready = set(wait([c for _, c in running.values()] + [p.sentinel for p, _ in running.values()]))
                for name, (proc, receive) in list(running.items()):
                    if receive in ready or proc.sentinel in ready:
                        parts[name] = _collect(name, proc, receive)
                        del running[name]
        finally:
            children()
    return [parts[name] for name in names]


def _share(inputs, tmp: Path) -> Path:
    """The model and the decoded images, written once for every child to read."""
    from edgeres.backends.keras_io import save_for_worker

    save_for_worker(inputs.model, tmp / "model.keras")
    np.save(tmp / "calib.npy", inputs.calib)
    for split in ("holdout", "select"):
        s = getattr(inputs, split, None)
        if s is None:
            continue
        np.save(tmp / f"{split}_x.npy", s.x)
        np.save(tmp / f"{split}_ref.npy", s.ref)
        if s.y is not None:
            np.save(tmp / f"{split}_y.npy", s.y)
    return tmp


def _collect(name: str, proc, receive):
    """The child's part, or its error raised here; a child that died without a word is a ConversionError."""
    try:
        status, payload = receive.recv()
    except (EOFError, OSError):
        proc.join(5)
        code = proc.exitcode
        why = " (killed: out of memory?)" if code in (-9, 137) else ""
        raise ConversionError(f"the {name} conversion process died with exit code {code}{why}; "
                              "run with --jobs 1 to convert in one process") from None
    finally:
        receive.close()
    proc.join(30)
    if status == "error":
        raise payload
    return payload


def _stop(procs) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def _load(job: Job) -> _Inputs:
    from edgeres.backends.keras_io import load_in_worker
    from edgeres.quant.evaluate import Split

    def array(name: str):
        path = job.shared / f"{name}.npy"
        return np.load(path, allow_pickle=False) if path.is_file() else None

    model = load_in_worker(job.shared / "model.keras")
    splits = {}
    for split in ("holdout", "select"):
        x = array(f"{split}_x")
        splits[split] = None if x is None else Split(x, array(f"{split}_y"), array(f"{split}_ref"))
    return _Inputs(model, job.hwc, array("calib"), splits["holdout"], splits["select"], job.holdout_carved)


def _child(send, job: Job) -> None:
    """A child's whole life: load the shared inputs, build one format, send back the part (or the error)."""
    os.dup2(2, 1)  # converter chatter never reaches the parent's stdout (--json)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    root = logging.getLogger("edgeres")
    root.handlers[:] = [_StderrHandler()]
    root.setLevel(job.log_level)
    root.propagate = False
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(stops_cleanly((signal.SIGINT, signal.SIGTERM), announce=False))  # the parent speaks
        from edgeres.core.timing import Stages

        with quiet():  # TensorFlow's import logs (absl, the CUDA stub) before any log level applies
            inputs = _load(job)
        stages = Stages()
        part = job.build(job.cfg, job.settings, inputs, job.stage, stages, job.name)
        part.backend = None  # calibrated runtimes stay here; the parent rebuilds one if it ever needs it
        if part.search is not None:
            for t in part.search.trials:
                t.data = b""  # the winner is already written; the others are not needed
        part.process = {"pid": os.getpid(), "seconds": {k: round(v, 3) for k, v in stages.seconds.items()},
                        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        send.send(("ok", part))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent, which decides
        send.send(("error", _portable(exc, job.name)))
    finally:
        send.close()
        stack.close()


def _portable(exc: BaseException, name: str) -> BaseException:
    """``exc`` if it survives pickling as itself (EdgeresErrors keep their class and exit code), else a
    ConversionError with its message (and the traceback at debug level)."""
    if isinstance(exc, EdgeresError):
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:  # noqa: BLE001
            pass
    log.debug("".join(traceback.format_exception(exc)))
    return ConversionError(f"{name} conversion failed in its process: {type(exc).__name__}: {exc}")


class _StderrHandler(logging.Handler):
    """The CLI's message format, from a child (whole lines, so two children do not interleave mid-line)."""

    def emit(self, record: logging.LogRecord) -> None:
        os.write(2, f"edgeres: {record.levelname.lower()}: {record.getMessage()}\n".encode())
