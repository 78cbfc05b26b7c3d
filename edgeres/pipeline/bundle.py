"""``edgeres bundle RUN -o APP``: the run's validated int8 models, ready for a mobile app.

The bundle holds the int8 ``.tflite`` with TFLite Metadata and labels inside (optionally with the
preprocessing folded in, so it takes raw uint8 pixels), the int8 ``.onnx`` with the same facts in its
``metadata_props``, ``labels.txt``, a README with Kotlin and Swift snippets, and ``manifest.json`` with the
hash of every file.  The run's artifacts are checked against the run's report.json first, and a folded model
against the run's own model on probe images covering every pixel value: the bundle runs what was validated.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeres.bundle import app_readme, manifest
from edgeres.bundle.fold import Fold, fold_preprocessing, ramp_images
from edgeres.bundle.tflite_metadata import ClassifierInfo, metadata_buffer, populate, read_metadata
from edgeres.core.errors import BundleError, DataError, ModelError, ShapeError, UsageError, first_line
from edgeres.core.fs import check_output_dir, staged_dir, to_json
from edgeres.core.preprocess import Preprocess
from edgeres.core.quiet import quiet
from edgeres.core.runtime import open_runner

MAX_LABEL_BYTES = 8 << 20


@dataclass(frozen=True)
class BundleConfig:
    run: Path
    out: Path
    force: bool = False
    labels: Path | None = None
    fold: bool = False
    name: str | None = None
    description: str | None = None
    version: str = "1"
    author: str | None = None
    license: str | None = None


def _report(run: Path) -> tuple[dict, str]:
    """The run's report.json, and its SHA-256."""
    where = run / "report.json"
    if not run.is_dir():
        raise DataError(f"run folder {run} does not exist" if not run.exists() else f"{run} is not a folder")
    try:
        raw = where.read_bytes()
        report = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{run} is not an edgeres run folder: it has no report.json") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot read {where}: {first_line(exc)}") from None
    if not isinstance(report, dict) or not isinstance(report.get("artifacts"), list):
        raise DataError(f"{where} is not an edgeres report (no artifacts list)")
    return report, hashlib.sha256(raw).hexdigest()


def _artifact(run: Path, report: dict, name: str, required: bool) -> tuple[dict, bytes] | None:
    art = next((a for a in report["artifacts"] if isinstance(a, dict) and a.get("name") == name), None)
    if art is None:
        if required:
            raise ModelError(f"{run} has no int8 TFLite model ({name} in report.json): run 'edgeres convert "
                             f"--int8' first")
        return None
    path = run / str(art.get("path", ""))
    if not path.is_file():
        raise ModelError(f"{path} is missing: report.json lists it as {name}")
    data = path.read_bytes()
    if art.get("sha256") and hashlib.sha256(data).hexdigest() != art["sha256"]:
        raise BundleError(f"{path} changed since the run validated it (sha256 differs from report.json): "
                          f"convert again")
    return art, data


def _labels(cfg: BundleConfig, report: dict, outputs: int) -> tuple[list[str], str]:
    names, source = labels_from(cfg.labels, {role: (report.get(role) or {}).get("classes")
                                             for role in ("validation", "calibration")})
    check_labels(names, source, outputs)
    return names, source


def labels_from(labels: Path | None, classes: dict[str, object], prefix: str = "") -> tuple[list[str], str]:
    """The bundle's class names and where they come from: ``--labels``, else the first of ``classes`` (role ->
    a data set's described ``classes``, in order of preference) that names them.  Needs no model, so that
    ``convert --bundle`` refuses unusable labels before converting (its error then starts with ``prefix``)."""
    if labels is not None:
        try:
            if labels.stat().st_size > MAX_LABEL_BYTES:
                raise UsageError(f"--labels {labels} is over {MAX_LABEL_BYTES >> 20} MiB")
            text = labels.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--labels {labels} cannot be read: {first_line(exc)}") from None
        names = text.splitlines()
        while names and not names[-1].strip():
            names.pop()
        source = f"--labels {labels}"
        blank = next((i for i, n in enumerate(names, 1) if not n.strip()), None)
        if blank is not None:
            raise UsageError(f"--labels {labels} has a blank line {blank}; give one class name per line")
        return names, source
    for role, found in classes.items():
        if isinstance(found, list) and found and all(isinstance(c, str) for c in found):
            return list(found), f"the class names of the run's {role} data"
    raise UsageError(f"{prefix}the run's data carry no class names (a flat folder, or an .npz without "
                     "'class_names'): pass --labels FILE, one name per line")


def check_labels(names: list[str], source: str, outputs: int) -> None:
    """A name per output, each one line of labels.txt: a folder name with a line break would become two."""
    broken = next((n for n in names if n != " ".join(n.splitlines()) or not n.strip()), None)
    if broken is not None:
        raise UsageError(f"{source} has a class name that is not one line of labels.txt ({broken!r}): rename "
                         "that class folder, or pass --labels FILE, one name per line")
    if len(names) != outputs:
        raise ShapeError(f"{source} names {len(names)} classes but the model outputs {outputs}")
    if len(set(names)) != len(names):
        raise UsageError(f"{source} repeats a class name")


def check_bundle_dir(out: Path, run: Path, force: bool, inputs: list) -> None:
    """Refuse, before ``convert --bundle`` converts anything, a bundle folder that the bundle step would refuse
    after it (or that would replace the run or an input): each message names ``--bundle``, not ``-o``."""
    bundle, folder = _real(out), _real(run)
    if bundle == folder:
        raise UsageError(f"--bundle {out} is the run folder -o {run}: give the bundle a folder of its own")
    if folder in bundle.parents:
        raise UsageError(f"--bundle {out} is inside the run folder -o {run}, which is written as a whole: "
                         "choose a --bundle outside it")
    if bundle in folder.parents:
        raise UsageError(f"--bundle {out} holds the run folder -o {run}, and a bundle folder is replaced as a "
                         "whole: choose a --bundle that does not hold it")
    for given in inputs:
        try:
            source = _real(given) if given is not None and str(given) and Path(given).exists() else None
        except (OSError, ValueError):
            source = None
        if source is None:
            continue  # not a path: a zoo name, no such option
        if source == bundle or bundle in source.parents:
            raise UsageError(f"--bundle {out} holds this run's input {given}, and a bundle folder is replaced as "
                             "a whole: choose another --bundle")
        if source in bundle.parents:
            raise UsageError(f"--bundle {out} is inside this run's input folder {given}: choose a --bundle "
                             "outside it")
    check_output_dir(out, force)


def _real(p) -> Path:
    return Path(os.path.realpath(p))


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "model"


def _output_kind(runner) -> str:
    """'probabilities' when the TFLite graph ends in a softmax (then its outputs sum to 1), else 'logits'."""
    return "probabilities" if runner.op_counts().get("SOFTMAX") else "logits"


def _color(channels: int) -> str:
    return {1: "GRAYSCALE", 3: "RGB"}.get(channels, "UNKNOWN")


def _probe_images(hwc: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Images holding every pixel value 0..255 in every channel, then 8 random ones."""
    rnd = np.random.default_rng(seed).integers(0, 256, (8, *hwc)).astype(np.float32)
    return np.concatenate([ramp_images(hwc), rnd])


def _check_fold(a, folded: Path, pre: Preprocess) -> dict:
    """The run's model (runner ``a``) fed edgeres' preprocessing against the folded one fed raw pixels."""
    with quiet():
        b = open_runner(folded, threads=1)
    x = _probe_images(a.hwc)
    ya, yb = a.predict(pre.apply(x)), b.predict(x)
    if not np.array_equal(ya, yb):
        raise ModelError(f"the folded model differs from the run's on {int((ya != yb).any(axis=1).sum())} of "
                         f"{len(x)} probe images; the fold is not exact for this model (bundle without "
                         f"--fold-preprocessing)")
    return {"probe_images": len(x), "identical_outputs": True}


def _validation(report: dict, art: dict) -> dict:
    lat = art.get("latency_ms") or {}
    val = report.get("validation") or {}
    return {"images": val.get("measured") or val.get("count"), "data": val.get("source"),
            "top1": art.get("top1"), "top1_drop": art.get("top1_drop"), "agreement": art.get("agreement"),
            "sqnr_db": art.get("sqnr_db"), "p50_ms": lat.get("p50"), "runtime": art.get("runtime"),
            "runtime_version": art.get("runtime_version"), "delegate": art.get("delegate"),
            "threads": art.get("threads"), "target": (report.get("target") or {}).get("name"),
            "machine": (report.get("machine") or {}).get("cpu"), "passed": report.get("passed")}


def _tools() -> dict:
    from edgeres import __version__
    from edgeres.core.runtime import _dist_version

    out = {"edgeres": __version__, "python": platform.python_version()}
    for dist in ("ai-edge-litert", "flatbuffers", "onnx", "onnxruntime", "numpy"):
        if (v := _dist_version(dist)) != "unknown":
            out[dist] = v
    return out


def _io(quant, dtype, shape) -> dict:
    return {"shape": [1 if (v is None or v < 0) else int(v) for v in shape], "dtype": np.dtype(dtype).name,
            "scale": None if quant is None else float(quant[0]), "zero_point": None if quant is None else int(quant[1])}


def run_bundle(cfg: BundleConfig, log=lambda msg: None) -> dict:
    run = Path(cfg.run)
    report, report_sha256 = _report(run)
    tfl_art, tfl_bytes = _artifact(run, report, "tflite_int8", required=True)
    onnx = _artifact(run, report, "onnx_int8", required=False)
    pre = Preprocess.from_dict(report.get("preprocess") or {}, source=f"report.json in {run}")
    with quiet():
        base = open_runner(run / tfl_art["path"], threads=1)
    h, w, c = base.hwc
    outputs = _outputs(base)
    labels, labels_source = _labels(cfg, report, outputs)
    name = _safe_name(cfg.name or (report.get("model") or {}).get("name") or run.name)
    host = ((tfl_art.get("details") or {}).get("head") or {}).get("host_activation")
    kind = "logits" if host else _output_kind(base)
    source = Path(str((report.get("model") or {}).get("source") or "a Keras model")).name  # no workstation paths
    description = cfg.description or (f"{name}: int8 image classifier, {outputs} classes, converted by edgeres "
                                      f"from {source}.")
    fold: Fold | None = None
    model = tfl_bytes
    if cfg.fold:
        model, fold = fold_preprocessing(tfl_bytes, pre)
        log(f"folded the preprocessing into the TFLite model ({fold.method})")
    color = _color(c)
    with staged_dir(cfg.out, cfg.force, inputs=[run, cfg.labels]) as stage:
        tfl_name = f"{name}_int8.tflite"
        tfl_path, bare = stage / tfl_name, stage / ".without-metadata.tflite"
        # The interpreter maps its file: a file a runner has open is never rewritten, only removed after.
        bare.write_bytes(model)
        with quiet():
            r = open_runner(bare, threads=1)
        in_quant, out_quant, in_dtype, out_dtype = r.input_quant, r.output_quant, r.input_dtype, r.output_dtype
        if fold is not None:
            equivalence = _check_fold(base, bare, pre)
            meta_mean, meta_std = (0.0,), (1.0,)
            input_text = (f"Raw {color} pixels 0..255 as uint8, {w}x{h} ({pre.resize}); the preprocessing "
                          f"x = (pixels * {pre.scale!r} - {list(pre.mean)}) / {list(pre.std)} is folded into the "
                          f"model.")
        else:
            equivalence = None
            meta_mean = tuple(m / pre.scale for m in pre.mean)
            meta_std = tuple(s / pre.scale for s in pre.std)
            input_text = (f"{color} pixels, {w}x{h} ({pre.resize}), normalised as (pixel - mean) / std, then "
                          f"quantized with scale {in_quant[0]!r} and zero-point {in_quant[1]}."
                          if in_quant else f"{color} pixels, {w}x{h}, normalised as (pixel - mean) / std.")
        out_range = None
        if out_quant is not None and np.issubdtype(out_dtype, np.integer):
            info = np.iinfo(out_dtype)
            out_range = (out_quant[0] * (info.min - out_quant[1]), out_quant[0] * (info.max - out_quant[1]))
        info = ClassifierInfo(
            name=name, description=description, version=cfg.version, author=cfg.author, license=cfg.license,
            color_space=color, width=w, height=h, mean=meta_mean, std=meta_std, input_description=input_text,
            output_name="probability" if kind == "probabilities" else "logits",
            output_description=f"{outputs} {kind}, in the order of labels.txt; the top-1 is the largest.",
            output_range=out_range)
        labels_bytes = ("\n".join(labels) + "\n").encode("utf-8")
        final = populate(model, metadata_buffer(info), {"labels.txt": labels_bytes})
        tfl_path.write_bytes(final)
        with quiet():
            r2 = open_runner(tfl_path, threads=1)
        probe = _probe_images(r.hwc)[:4]
        if not np.array_equal(r.predict(probe), r2.predict(probe)):  # the metadata must change nothing
            raise ModelError("adding TFLite Metadata changed the model's outputs")
        del r, r2
        bare.unlink()
        (stage / "labels.txt").write_bytes(labels_bytes)
        pre_dict = {**pre.to_dict(), "folded": fold is not None}
        models = [{
            "file": tfl_name, "format": "tflite", "precision": "int8",
            "input": {**_io(in_quant, in_dtype, [1, h, w, c]), "layout": "NHWC",
                      "color_space": color},
            "output": {**_io(out_quant if np.issubdtype(out_dtype, np.integer) else None, out_dtype,
                             [1, outputs]), "scores": kind, **({"host_activation": host} if host else {})},
            "preprocessing": pre_dict, "fold": fold.to_dict() if fold else None, "fold_check": equivalence,
            "metadata": {"tflite_metadata": sorted(_metadata_fields(read_metadata(final)["metadata"])),
                         "packed_files": ["labels.txt"], "min_parser_version": "1.0.0"},
            "source": {"artifact": "tflite_int8", "path": tfl_art["path"], "sha256": tfl_art.get("sha256")},
            "validation": _validation(report, tfl_art),
        }]
        if onnx is not None:
            models.append(_bundle_onnx(stage, name, onnx, report, pre, labels, description, kind, cfg))
        m = {"format": manifest.FORMAT, "schema_version": manifest.SCHEMA_VERSION,
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "name": name, "description": description,
             "version": cfg.version, "author": cfg.author, "license": cfg.license, "classes": outputs,
             "labels": {"file": "labels.txt", "count": outputs, "source": labels_source},
             "models": models, "tools": _tools(),
             "run": {"folder": str(run.resolve()), "report_sha256": report_sha256,
                     "edgeres_version": report.get("edgeres_version"), "tools": report.get("tools")}}
        (stage / "README.md").write_text(app_readme.render(m), encoding="utf-8")
        m["files"] = {p.name: manifest.file_entry(p) for p in sorted(stage.iterdir()) if p.is_file()}
        (stage / manifest.MANIFEST).write_text(to_json(m), encoding="utf-8")
        manifest.verify(stage)  # what was written reads back and checks
    return m


def _outputs(runner) -> int:
    return int(runner.predict(np.zeros((1, *runner.hwc), np.float32)).shape[-1])


def _metadata_fields(meta: dict, prefix: str = "") -> set[str]:
    """Dotted names of every field set in the metadata (lists indexed as ``[]``)."""
    out: set[str] = set()
    for key, value in meta.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out |= _metadata_fields(value, path) or {path}
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                out |= _metadata_fields(item, path + "[]")
        elif value not in (None, [], ""):
            out.add(path)
    return out


def _bundle_onnx(stage: Path, name: str, onnx: tuple[dict, bytes], report: dict, pre: Preprocess,
                 labels: list[str], description: str, kind: str, cfg: BundleConfig) -> dict:
    from edgeres.backends.onnx_metadata import with_metadata_props

    art, data = onnx
    props = {"edgeres.preprocessing": json.dumps(pre.to_dict()), "edgeres.labels": json.dumps(labels),
             "edgeres.layout": "NHWC", "edgeres.scores": kind, "edgeres.name": name,
             "edgeres.version": cfg.version}
    if cfg.author:
        props["edgeres.author"] = cfg.author
    if cfg.license:
        props["edgeres.license"] = cfg.license
    path = stage / f"{name}_int8.onnx"
    path.write_bytes(with_metadata_props(data, props, name=name, description=description))
    with quiet():
        r = open_runner(path, threads=1)
    return {"file": path.name, "format": "onnx", "precision": "int8",
            "input": {**_io(None, r.input_dtype, [1, *r.hwc]), "layout": "NHWC", "color_space": _color(r.hwc[2])},
            "output": {**_io(None, r.output_dtype, [1, len(labels)]), "scores": kind},
            "preprocessing": {**pre.to_dict(), "folded": False}, "fold": None, "fold_check": None,
            "metadata": {"metadata_props": sorted(props)},
            "source": {"artifact": "onnx_int8", "path": art["path"], "sha256": art.get("sha256")},
            "validation": _validation(report, art)}
