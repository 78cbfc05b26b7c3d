"""``edgeres validate``: accuracy of one artifact, and its fidelity to another.

LIGHT layer: runs on the device with numpy, Pillow and one runtime.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgeres.bundle import manifest
from edgeres.core.data import Preprocess, open_dataset
from edgeres.core.errors import DataError, ShapeError, UsageError, first_line
from edgeres.core.executor import Executor
from edgeres.core.machine import machine_info
from edgeres.core.metrics import tally_batches
from edgeres.core.preprocess import FIELDS
from edgeres.core.quiet import quiet
from edgeres.core.runtime import HOST_ACTIVATIONS, open_runner
from edgeres.measure.shards import feeds, tally_shards

log = logging.getLogger(__name__)


def run_report(model: str) -> Path:
    """The report.json of the run folder ``model`` sits in (it may not exist)."""
    return Path(model).resolve().parent / "report.json"


def _read_report(report: Path, hint: str = ""):
    """The parsed report.json; DataError naming it when it cannot be read."""
    try:
        return json.loads(report.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot read report.json in {report.parent}: {first_line(exc)}{hint}") from None


def recorded_seed(model: str, data: str) -> int | None:
    """The seed the run folder ``model`` sits in drew its validation sample with, when ``data`` is that run's
    validation data: ``validate --val-size N`` then measures the images the report did."""
    report = run_report(model)
    try:
        v = json.loads(report.read_text(encoding="utf-8")).get("validation") or {}
        same = Path(v["source"]).resolve() == Path(data).resolve()
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, KeyError, TypeError):
        return None
    seed = v.get("seed")
    return seed if same and isinstance(seed, int) and not isinstance(seed, bool) else None


def recorded_preprocess(model: str) -> Preprocess | None:
    """The preprocessing recorded in the manifest of the bundle ``model`` sits in, else in the report.json of
    its run folder, if there is one.

    A report.json that is there but unreadable or malformed is an error naming
    that file (not the options, which the user did not give): guessing the
    preprocessing would measure the wrong thing.
    """
    if manifest.bundle_of(model) is not None:
        return manifest.preprocess_of(model)
    report = run_report(model)
    if not report.is_file():
        return None
    where = f"report.json in {report.parent}"
    hint = "; pass --scale, --mean, --std and --resize to set the preprocessing yourself"
    d = _read_report(report, hint)
    if not isinstance(d, dict) or not isinstance(d.get("preprocess"), dict):
        raise DataError(f"{where} has no 'preprocess' table{hint}")
    try:
        return Preprocess.from_dict(d["preprocess"], source=where)
    except DataError as exc:
        raise DataError(f"{exc}{hint}") from None


def effective_preprocess(model: str, given: Preprocess | dict | None) -> tuple[Preprocess, dict[str, str]]:
    """What ``model`` is fed, and where each field came from (``given``, ``manifest.json``, ``report.json`` or
    ``default``).

    ``given`` is a whole Preprocess (it replaces any record) or the options the
    user gave (:meth:`Preprocess.given`): each replaces its own field only, the
    others keep the recorded values, so ``--resize stretch`` alone does not
    reset a recorded ``--scale`` to 1.  A record that cannot be read still gets
    its error, unless every field was given; when only some were, it is a
    warning and the others are the defaults.
    """
    if isinstance(given, Preprocess):
        return given, dict.fromkeys(FIELDS, "given")
    fields = dict(given or {})
    recorded, base = None, "default"
    if set(fields) != set(FIELDS):
        try:
            recorded = recorded_preprocess(model)
        except DataError as exc:
            if not fields:
                raise
            log.warning("%s; using the default %s", exc, ", ".join(f for f in FIELDS if f not in fields))
        if recorded is not None:
            base = "manifest.json" if manifest.bundle_of(model) is not None else "report.json"
    pre = (recorded or Preprocess()).merged(fields)
    return pre, {f: "given" if f in fields else base for f in FIELDS}


def sources_text(sources: dict[str, str]) -> str:
    """``report.json``, or ``given (std); report.json (scale, mean, resize)`` when the fields' sources differ."""
    by: dict[str, list[str]] = {}
    for field, source in sources.items():
        by.setdefault(source, []).append(field)
    if len(by) == 1:
        return next(iter(by))
    return "; ".join(f"{source} ({', '.join(fields)})" for source, fields in by.items())


def recorded_host_activation(model: str) -> str | None:
    """The activation the host applies after ``model`` (a full-integer model that outputs logits), as its
    bundle's manifest or its run folder's report.json records it; None for a model that needs none."""
    bundle = manifest.bundle_of(model)
    if bundle is not None:
        return (manifest.model_entry(manifest.load(bundle), model).get("output") or {}).get("host_activation")
    report = run_report(model)
    try:
        d = _read_report(report) if report.is_file() else {}
    except DataError:
        return None  # recorded_preprocess has already named an unreadable report
    for a in d.get("artifacts") or [] if isinstance(d, dict) else []:
        if isinstance(a, dict) and a.get("path") == Path(model).name:
            act = ((a.get("details") or {}).get("head") or {}).get("host_activation")
            return act if act in HOST_ACTIVATIONS else None
    return None


def has_record(model: str) -> bool:
    """Whether ``model`` sits in an app bundle or a run folder that records its preprocessing."""
    return manifest.bundle_of(model) is not None or run_report(model).is_file()


def reference_preprocess(reference: str, given: Preprocess | dict | None, pre: Preprocess) -> Preprocess:
    """What ``reference`` is fed: its own recorded preprocessing (with the options given on top, as for the
    model) when it has a record, else the model's ``pre``.  Feeding a reference from another run the model's
    preprocessing would compare it on inputs it was never meant to see."""
    if isinstance(given, Preprocess) or not has_record(reference):
        return pre
    return effective_preprocess(reference, given)[0]


def run_validate(model: str, data: str, *, reference: str | None = None,
                 preprocess: Preprocess | dict | None = None, threads: int = 2, delegate: str | None = None,
                 val_size: int | None = None, seed: int = 0, batch_size: int = 32, on_error: str = "warn",
                 progress=None, executor: Executor | None = None, shape: tuple[int, ...] | None = None) -> dict:
    """Accuracy of ``model`` on ``data`` (and its fidelity to ``reference``): the dict ``edgeres validate``
    prints.

    ``preprocess`` is a whole Preprocess, or the fields the user gave (a dict,
    :func:`effective_preprocess`), or None for the recorded one.  ``shape``
    (N,H,W,C; N unused) fills a model's dynamic input dims.  With an
    ``executor`` of more than one worker, the images are tallied in shards on
    it (:mod:`edgeres.measure.shards`): the same figures, and an ``executor``
    entry describing what ran them.  ``progress(n)`` is called as ``n`` more
    images are done.
    """
    (model, *_), bundle = manifest.resolve(model)  # a bundle: every hash checks before anything runs
    if reference:
        manifest.resolve(reference)
    pre, sources = effective_preprocess(str(model), preprocess)
    ref_pre = reference_preprocess(str(reference), preprocess, pre) if reference else None
    if ref_pre is not None and ref_pre.resize != pre.resize:
        raise UsageError(f"{Path(model).name} and --reference {Path(reference).name} recorded different "
                         f"preprocessing (resize {pre.resize} vs {ref_pre.resize}), and one pass over the images "
                         "resizes them one way: validate each on its own, or give --resize for both")
    shape = None if shape is None else (-1, *shape[1:])  # validation feeds its own batches
    with quiet():
        runner = open_runner(model, threads=threads, delegate=delegate, shape=shape)
        ref_runner = open_runner(reference, threads=threads, shape=shape) if reference else None
    for r, name in ((runner, model), (ref_runner, reference)):
        if r is not None and r.outputs != 1:
            raise ShapeError(f"{Path(name).name} has {r.outputs} outputs; validate measures a classifier's one "
                             "class vector (edgeres handles single-output models)")
    runner.host_activation = recorded_host_activation(str(model))
    if ref_runner is not None:
        ref_runner.host_activation = recorded_host_activation(str(reference))
    if ref_runner is not None and ref_runner.hwc != runner.hwc:
        raise ShapeError(f"--reference takes input {ref_runner.hwc} but {Path(model).name} takes {runner.hwc}")
    ds = open_dataset(data, "validation")
    if not ds.labelled and ref_runner is None:
        raise DataError(f"validation data {data} has no labels, so there is no accuracy to measure: use class "
                        "subfolders or an .npz with 'y', or pass --reference to measure agreement only")
    if val_size:
        ds = ds.sample(val_size, seed)
    shards = 1
    if executor is not None and executor.workers > 1:
        ref_tally, tally, shards = tally_shards(executor, ds, runner, ref_runner, threads=threads, delegate=delegate,
                                                batch_size=batch_size, preprocess=pre, ref_preprocess=ref_pre,
                                                on_error=on_error, progress=progress, shape=shape)
    else:
        stream, model_fn, ref_fn = feeds(runner.predict, ref_runner.predict if ref_runner else None, pre, ref_pre)
        ref_tally, tallies = tally_batches(ds.batches(runner.hwc, batch_size, stream, on_error),
                                           {"model": model_fn}, reference=ref_fn,
                                           first_output=lambda n: ds.check_classes(n, "validation"),
                                           progress=progress)
        tally = tallies["model"]
    result = {"model": str(model), **({"bundle": {"verified": True, "files": len(bundle["files"])}} if bundle else {}),
              **runner.describe(), "machine": machine_info(), "data": ds.describe(),
              "preprocess": {**pre.to_dict(), "from": sources_text(sources), "sources": sources}, **tally.result()}
    if runner.fixed_batch and runner.fixed_batch > 1:
        result["batch"] = runner.fixed_batch
    if runner.host_activation:
        result["host_activation"] = runner.host_activation
    if ref_runner is not None:
        result["reference"] = {"model": str(reference), **ref_tally.result()}
        if ref_pre != pre:
            result["reference"]["preprocess"] = ref_pre.to_dict()
        if "top1" in result and "top1" in result["reference"]:
            result["top1_drop"] = result["reference"]["top1"] - result["top1"]
    if executor is not None:
        result["executor"] = {**executor.describe(), "shards": shards}
    return result
