"""``edgeres convert``: load -> calibrate -> convert -> validate -> bench -> report.

Each stage is a plain function; this module wires them together, times
them, and writes the run folder atomically.  TensorFlow is imported only by
the stages that need it (load and convert, through :mod:`edgeres.backends`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.backends.base import Settings, resolve_settings
from edgeres.core.data import Dataset, Preprocess, open_dataset
from edgeres.core.errors import BudgetExceededError, DataError
from edgeres.core.fs import check_output_dir, staged_dir, write_text_atomic
from edgeres.core.machine import available_memory
from edgeres.core.progress import Progress, no_progress
from edgeres.core.quiet import quiet
from edgeres.core.timing import Stages
from edgeres.devices.targets import Target
from edgeres.quant.evaluate import Split
from edgeres.quant.recipes import Recipe, resolve_recipe
from edgeres.quant.search import SearchPlan, check_budget, check_sizes
from edgeres.report import Report, render_markdown, to_json


@dataclass(frozen=True)
class ConvertConfig:
    model: str
    calib: str
    data: str | None
    output_dir: Path
    target: Target
    preprocess: Preprocess = field(default_factory=Preprocess)
    int8: bool = True
    io_dtype: str | None = None  # None: the recipe's, else the target's
    input_size: int | None = None
    num_classes: int | None = None
    weights: str | None = None
    calib_size: int = 300
    val_size: int | None = None
    seed: int = 0
    threads: int | None = None  # None: the target's
    jobs: int | None = None  # processes for the formats' conversions; None: edgeres.pipeline.processes decides
    runs: int = 50
    warmup: int = 10
    max_drop: float | None = None
    force: bool = False
    on_error: str = "warn"
    batch_size: int = 32
    default_note: str = ""
    recipe: Recipe = field(default_factory=lambda: resolve_recipe(None))
    #: choose each int8 configuration on held-out calibration images (edgeres.quant.adaptive): when no
    #: recipe was named and there is no --max-drop search
    adaptive: bool = False
    metric: str = "top1"  # what --max-drop budgets: top1 drop, or agreement lost
    select_fraction: float = 0.5  # of --data, used only to choose a configuration with --max-drop
    plan: SearchPlan = field(default_factory=SearchPlan)  # what the --max-drop search may try
    #: --bundle and --labels: the app bundle written after the run; checked by prepare() before converting
    bundle_dir: Path | None = None
    labels: Path | None = None

    @property
    def searching(self) -> bool:
        return self.int8 and self.max_drop is not None and self.data is not None

    def settings(self) -> Settings:
        return resolve_settings(self.target, self.recipe, io_dtype=self.io_dtype, threads=self.threads)


@dataclass
class Inputs:
    """Everything the conversion stages read: the model, and the images, decoded once."""

    model: Any               # keras.Model
    hwc: tuple[int, int, int]
    n_out: int
    model_info: dict
    calib_ds: Dataset        # the sample actually used
    calib: np.ndarray        # its decoded, preprocessed images
    val_ds: Dataset | None   # what the figures are measured on
    select_ds: Dataset | None = None  # with --max-drop: what the search chooses on
    select: Split | None = None
    holdout: Split | None = None      # adaptive default: unlabelled calibration images it chooses on
    holdout_carved: bool = False      # ... taken out of the calibration sample (the choice is then rebuilt
                                      # from calibration and holdout images together)
    adaptive_skipped: str | None = None  # why the adaptive default was skipped (a report note), if it was


def run_convert(cfg: ConvertConfig, progress: Progress = no_progress, executor=None) -> Report:
    """Run the whole pipeline; returns the report.  Raises EdgeresError on bad input.

    An ``executor`` (:mod:`edgeres.core.executor`; ``--ray``) fans out the
    ``--max-drop`` search's layer ranking and candidate configurations, and
    the validation of the images in shards, with the figures of a run here.

    When ``cfg.max_drop`` is exceeded the run folder is still written (marked
    ``passed: false``) and BudgetExceededError, carrying the report, is raised afterwards.
    """
    from edgeres.pipeline.artifacts import build_artifacts, tune_artifacts
    from edgeres.pipeline.assemble import assemble
    from edgeres.pipeline.measure import bench, open_runners, validate

    stages = Stages()
    settings = cfg.settings()
    inputs = prepare(cfg, stages, progress)
    with staged_dir(cfg.output_dir, cfg.force) as stage:
        built = build_artifacts(cfg, settings, inputs, stage, stages, executor)
        tune_artifacts(settings, built, stage, stages)
        device = _after_convert(settings, built.artifacts, stage, stages)
        runners = open_runners(settings, built.artifacts, stage)
        ref, collapsed = None, set()
        if inputs.val_ds is not None:
            with stages("validate"):
                ref, collapsed = validate(cfg, inputs, built.artifacts, runners, progress, executor)
        with stages("bench"):
            bench(cfg, built.artifacts, runners, inputs.calib[:1], progress)
        report = assemble(cfg, settings, inputs, built, stages, ref, collapsed, stage, device)
        if executor is not None:
            report.resources["executor"] = executor.describe()
        write_text_atomic(stage / "report.json", to_json(report))
        write_text_atomic(stage / "report.md", render_markdown(report))
    if not report.passed:
        raise BudgetExceededError("; ".join(report.failures) + f" (report in {cfg.output_dir})", report=report)
    return report


def prepare(cfg: ConvertConfig, stages: Stages, progress: Progress) -> Inputs:
    """Open the data, load the model and decode the images; cheap checks first, so bad input fails fast."""
    from edgeres.backends import keras_io
    from edgeres.quant.adaptive import HOLDOUT

    calib_ds = open_dataset(cfg.calib, "calibration")
    val_ds = open_dataset(cfg.data, "validation") if cfg.data else None
    if val_ds is not None and not val_ds.labelled:
        raise DataError(f"validation data {cfg.data} has no labels: use class subfolders or an .npz with 'y'")
    check_output_dir(cfg.output_dir, cfg.force, inputs=[cfg.model, cfg.calib, cfg.data, cfg.weights])
    labels = _bundle_labels(cfg, calib_ds, val_ds) if cfg.bundle_dir is not None else None
    with stages("load"), quiet():
        loaded = keras_io.load_model(cfg.model, input_size=cfg.input_size, num_classes=cfg.num_classes,
                                     weights=cfg.weights)
        model_info = keras_io.describe(loaded)
    hwc, n_out = loaded.hwc, loaded.num_outputs
    calib_ds.check_classes(n_out, "calibration")
    if labels is not None:
        from edgeres.pipeline.bundle import check_labels

        check_labels(*labels, n_out)
    n_calib = min(cfg.recipe.calib_images(cfg.calib_size), len(calib_ds))
    select_ds = select = None
    if val_ds is not None:
        val_ds.check_classes(n_out, "validation")
        if cfg.val_size:
            val_ds = val_ds.sample(cfg.val_size, cfg.seed)
        if cfg.searching:
            n_select = int(round(len(val_ds) * cfg.select_fraction))
            check_sizes(n_calib, n_select, len(val_ds) - n_select)
            check_budget(cfg.max_drop, cfg.metric, n_select, cfg.select_fraction, len(val_ds))
            select_ds, val_ds = val_ds.split(n_select, cfg.seed + 1)
    _check_memory(n_calib + (len(select_ds) if select_ds is not None else 0)
                  + (HOLDOUT if cfg.adaptive and cfg.int8 else 0), hwc, cfg)
    if select_ds is not None:
        with stages("selection_data"):
            sx, sy = select_ds.load(hwc, cfg.preprocess, cfg.on_error)
            select = Split(sx, sy, keras_io.predict(loaded.model, sx))
    with stages("calibration_data"):
        calib_sample = calib_ds.sample(n_calib, cfg.seed)
        holdout_ds = _holdout(cfg, calib_ds, calib_sample) if cfg.adaptive and cfg.int8 else None
        carved = holdout_ds is not None and not set(holdout_ds.items).isdisjoint(calib_sample.items)
        if carved:
            calib_sample = calib_sample.rest(holdout_ds)  # carved out of a small calibration set
        calib = _decode(calib_sample, hwc, cfg, progress, "calibration images")
    holdout = None
    if holdout_ds is not None:
        with stages("holdout_data"):
            hx = _decode(holdout_ds, hwc, cfg, progress, "held-out calibration images")
            holdout = Split(hx, None, keras_io.predict(loaded.model, hx))
    skipped = None
    if cfg.adaptive and cfg.int8 and holdout is None:
        skipped = _adaptive_skipped(cfg, len(calib_ds), n_calib)
    return Inputs(loaded.model, hwc, n_out, model_info, calib_sample, calib, val_ds, select_ds, select, holdout,
                  holdout_carved=holdout is not None and carved, adaptive_skipped=skipped)


def _bundle_labels(cfg: ConvertConfig, calib_ds: Dataset, val_ds: Dataset | None) -> tuple[list[str], str]:
    """``--bundle``'s folder and class names, checked as the bundle step would check them after the run: a
    conflict or a missing name found there would cost the whole conversion (and leave the run folder)."""
    from edgeres.pipeline.bundle import check_bundle_dir, labels_from

    check_bundle_dir(cfg.bundle_dir, cfg.output_dir, cfg.force,
                     inputs=[cfg.model, cfg.calib, cfg.data, cfg.weights, cfg.labels])
    classes = {"validation": val_ds.describe()["classes"] if val_ds is not None else None,
               "calibration": calib_ds.describe()["classes"]}
    return labels_from(cfg.labels, classes, prefix="--bundle: ")


def _decode(ds: Dataset, hwc, cfg: ConvertConfig, progress: Progress, what: str) -> np.ndarray:
    with progress(what, len(ds)) as bar:
        parts = []
        for x, _ in ds.batches(hwc, cfg.batch_size, cfg.preprocess, cfg.on_error):
            parts.append(x)
            bar.update(len(x))
    return np.concatenate(parts).astype(np.float32)


def _holdout(cfg: ConvertConfig, calib_ds: Dataset, calib_sample: Dataset) -> Dataset | None:
    """Calibration images the statistics never see, for the adaptive default to choose on: beyond the
    sample when the set has them, else a third carved out of the sample; None when too few either way."""
    from edgeres.quant.adaptive import HOLDOUT, MIN_HOLDOUT

    rest = calib_ds.rest(calib_sample, HOLDOUT, cfg.seed + 2)
    if len(rest) >= MIN_HOLDOUT:
        return rest
    if len(calib_sample) >= 3 * MIN_HOLDOUT:
        return calib_sample.sample(len(calib_sample) // 3, cfg.seed + 2)
    return None


def _adaptive_skipped(cfg: ConvertConfig, n_set: int, n_calib: int) -> str:
    """Why the adaptive default did not run, and what it needs: said in the report, not only in the docs, since
    the recipe built alone is a different model from the one the same command gives with more images."""
    from edgeres.quant.adaptive import MIN_HOLDOUT

    carve = 3 * MIN_HOLDOUT  # a sample this big gives a third of itself as the holdout (_holdout)
    asked = cfg.recipe.calib_images(cfg.calib_size)
    need = carve if asked >= carve else asked + MIN_HOLDOUT
    also = f", or --calib-size {carve} with these" if asked < carve <= n_set else ""
    return (f"the adaptive default was skipped and each back end built the recipe '{cfg.recipe.name}' alone: it "
            f"chooses on at least {MIN_HOLDOUT} calibration images held out from calibration (beyond the sample "
            f"of {n_calib}, or a third of a sample of {carve} or more), and the {n_set} calibration images give "
            f"neither; it needs {need} calibration images{also}")


MEMORY_SHARE = 0.5  # of the memory available now, for the decoded images (the converters need the rest)


def _check_memory(n_images: int, hwc: tuple[int, int, int], cfg: ConvertConfig) -> None:
    """Refuse, before decoding anything, images in memory that would not fit (the run would be killed)."""
    need = n_images * int(np.prod(hwc)) * 4 * 2  # float32, and one preprocessing copy
    have = available_memory()
    if have is not None and need > MEMORY_SHARE * have:
        raise DataError(f"{n_images} images of {hwc[0]}x{hwc[1]}x{hwc[2]} need about {need / 2**30:.1f} GiB in "
                        f"memory, more than half of the {have / 2**30:.1f} GiB available: lower --calib-size "
                        "(or the recipe's calib_size)" + (" or --val-size" if cfg.searching else ""))


def _after_convert(settings: Settings, artifacts, stage: Path, stages: Stages) -> dict | None:
    """The target's own step after conversion (for the Edge TPU: check and compile), if it has one."""
    from edgeres.devices.hooks import hook_for

    hook = hook_for(settings.target)
    int8 = next((a for a in artifacts if a.name == "tflite_int8"), None)
    if hook is None or int8 is None:
        return None
    name, step = hook
    with stages(name):
        return step(settings.target, stage, int8.path)
