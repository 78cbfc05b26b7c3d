"""The run report as typed data: what ``edgeres convert`` measured, and where it came from.

LIGHT layer: standard library only.  The pipeline builds a :class:`Report`;
:mod:`edgeres.report.render` turns it into the terminal table, ``report.md``
and ``report.json``.  :meth:`Report.to_dict` is the JSON layout (its keys are
the documented ``report.json`` keys; ``schema_version`` numbers the layout),
and :meth:`Report.from_dict` reads any layout since the first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: 1: the first versioned layout (issue #8).  0: reports written before the field existed; same keys.
SCHEMA_VERSION = 1

LATENCY_KEYS = ("min", "p50", "p90", "p99", "mean", "stdev", "first", "runs", "warmup", "unstable")


@dataclass
class ArtifactReport:
    """One artifact of the run folder, with everything measured on it."""

    name: str                      # e.g. tflite_int8
    format: str                    # a back end's registry name
    precision: str                 # float32 | int8
    path: str                      # file name inside the run folder
    size_bytes: int = 0
    sha256: str = ""
    input_dtype: str | None = None
    output_dtype: str | None = None
    input_quant: list | None = None   # [scale, zero point]
    output_quant: list | None = None
    runtime: str | None = None
    runtime_version: str | None = None
    delegate: str | None = None
    threads: int | None = None
    top1: float | None = None
    top5: float | None = None
    top1_drop: float | None = None
    top1_drop_ci: list | None = None  # [lo, hi] points, REPORT_LEVEL (95%) two-sided (Tango), same images
    agreement: float | None = None
    agreement_ci: list | None = None  # [lo, hi] percent, REPORT_LEVEL (95%) two-sided (Wilson)
    sqnr_db: float | None = None
    max_abs_diff: float | None = None
    latency_ms: dict = field(default_factory=dict)
    latency_samples_ms: list | None = None
    speedup_vs_fp32: float | None = None
    details: dict = field(default_factory=dict)

    @property
    def display_precision(self) -> str:
        """int16x8 for 16-bit activations; the float share when layers stayed float; else the precision."""
        if self.details.get("activations") == "int16":
            return "int16x8"
        share = self.details.get("float_share") or 0.0
        if self.precision == "int8" and share >= 1.0:
            return "float32 (every layer kept float)"
        if self.precision == "int8" and share > 0:
            return f"int8+{100 * share:.0f}% float"
        return self.precision


@dataclass
class BackendSearch:
    """The --max-drop search of one back end: every configuration tried, and the one chosen."""

    met: bool
    winner: dict
    trials: list[dict]


@dataclass
class SearchReport:
    budget: float
    metric: str
    selection: dict
    backends: dict[str, BackendSearch] = field(default_factory=dict)


@dataclass
class Report:
    edgeres_version: str
    created: str
    model: dict
    preprocess: dict
    target: dict
    calibration: dict
    validation: dict | None
    reference: dict
    artifacts: list[ArtifactReport]
    stages_seconds: dict[str, float]
    conversion_seconds: float
    max_drop: float | None
    passed: bool
    failures: list[str]
    notes: list[str]
    machine: dict
    tools: dict
    search: SearchReport | None = None
    diagnosis: dict | None = None   # back end -> per-layer diagnosis of a collapsed int8 model
    edgetpu: dict | None = None     # Edge TPU check and compiler log
    resources: dict | None = None   # peak memory of the run's processes, and how many built the formats
    schema_version: int = SCHEMA_VERSION

    def fail(self, reason: str) -> None:
        self.passed = False
        self.failures.append(reason)

    def artifact(self, name: str) -> ArtifactReport | None:
        return next((a for a in self.artifacts if a.name == name), None)

    def to_dict(self) -> dict:
        """The report.json layout: ``schema_version`` first, then the documented keys in order;
        ``search``, ``diagnosis`` and ``edgetpu`` only when the run had them."""
        d: dict[str, Any] = {"schema_version": self.schema_version}
        for f in dataclasses.fields(self):
            if f.name == "schema_version":
                continue
            value = getattr(self, f.name)
            if f.name in ("search", "diagnosis", "edgetpu", "resources") and value is None:
                continue
            d[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        d["artifacts"] = [dataclasses.asdict(a) for a in self.artifacts]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        """A report read back from report.json (any schema version, unknown keys ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["schema_version"] = int(d.get("schema_version", 0))
        art_fields = {f.name for f in dataclasses.fields(ArtifactReport)}
        kwargs["artifacts"] = [ArtifactReport(**{k: v for k, v in a.items() if k in art_fields})
                               for a in d.get("artifacts", [])]
        s = d.get("search")
        if s:
            kwargs["search"] = SearchReport(s["budget"], s["metric"], s["selection"],
                                            {k: BackendSearch(**v) for k, v in s.get("backends", {}).items()})
        for key in ("validation", "search", "diagnosis", "edgetpu", "max_drop"):
            kwargs.setdefault(key, None)
        return cls(**kwargs)
