"""report.json stays what it was before the redesign of issue #8.

``tests/data/pre_redesign/*.report.json`` were written by the code as it
stood before the back ends became plug-ins and the report became typed
(commit 57218e7), with the commands in ``RUNS``.  Each test re-runs the same
command and compares the new report with the stored one, key by key, with
what cannot repeat masked:

- timings (stage seconds, latency statistics and samples, speedups, the
  "latency unstable" note and the ``unstable`` flag), ``created``, and the new
  ``schema_version``;
- absolute paths (compared by file name: the clone lives elsewhere in CI);
- the ONNX artifacts' SHA-256 and exact size (tf2onnx's generated names differ
  run to run on the same machine, by a few bytes: sizes must agree within 1%;
  the TFLite hashes and sizes are compared exactly);
- ``machine`` (CI may run on another CPU);
- keys added since (``ADDED_KEYS``): they must be new, every old key must stay;
- the last bits of the float reference: Keras computes it with TensorFlow's
  float kernels, which differ in the last bits from process to process (seen
  when the suite runs other conversions first), so SQNR and max abs diff agree
  to 1e-4 (relative, or absolute for differences near 0; SQNRs above 100 dB, float32 against float32, are only
  checked to be above 100 dB).  Accuracy and agreement are counts: exact.

When the converters' versions, or the CPU (TensorFlow's float kernels take
other code paths on an Intel Xeon than on the AMD EPYC that wrote them), differ
from those that wrote the stored report, numerics may legitimately move: then the structure and every non-numeric field
must still match, and accuracy must stay within 0.5 points.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import ROOT, invoke, shared

STORED = ROOT / "tests" / "data" / "pre_redesign"
TIMING_KEYS = {"latency_ms", "latency_samples_ms", "speedup_vs_fp32", "stages_seconds", "conversion_seconds",
               "p50_ms", "created", "schema_version", "machine", "resources", "timed_ms"}
#: keys schema 1 added after the stored reports were written (issue #9: what was measured, not requested; issue #10:
#: the report images' 95% intervals, and each search trial's upper confidence bound; issue #13: which of ORT's int8
#: convolution kernels the ONNX artifact uses, and what was timed to choose)
ADDED_KEYS = {".calibration.used", ".validation.measured", ".validation.skipped", ".validation.seed",
              "details.float_share",
              "top1_drop_ci", "agreement_ci", "loss_upper", "details.kernels",
              "details.int8_graph_rewrites", "details.bias_correction", "details.batchnorm_as_depthwise",
              "details.weight_rounding"}
#: Since commit 4fac287 bias correction runs layer by layer (and matches a ReLU6's pre-activation in ONNX): the
#: int8 artifacts' numbers move, on purpose.  They may not get worse: SQNR at most 0.5 dB lower, top-1 and
#: agreement at most 0.5 points lower (counts); the TFLite int8 bytes and the max abs diff may change.  Since the
#: third session of issue #10 a model's own Normalization layer is one depthwise op in TFLite (its float outputs,
#: and so the int8 output range, move in the last bits) and its leading normalization ops stay float in ONNX
#: (``details.float_nodes`` may gain them, never lose one).
INT8_NUMBERS = ("sqnr_db", "max_abs_diff", "sha256", "top1", "top5", "top1_drop", "top5_drop", "agreement",
                "top1_drop_ci", "agreement_ci", "size_bytes", "output_quant")
NOT_WORSE = {"sqnr_db": 0.5, "top1": 0.5, "agreement": 0.5}
NUMERIC_TOLERANCE = 0.5  # accuracy points, only when converter versions differ
CONVERTERS = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "numpy")


def _masked(report: dict) -> dict:
    def walk(o, key=""):
        if isinstance(o, dict):
            return {k: walk(v, k) for k, v in o.items() if k not in TIMING_KEYS}
        if isinstance(o, list):
            return [walk(v, key) for v in o if not (isinstance(v, str) and v.startswith("latency unstable"))]
        if isinstance(o, str) and (o.startswith("/") or key in ("source", "path", "compiled_path")):
            return Path(o).name
        return o

    out = walk(report)
    for a in out.get("artifacts", []):
        if a.get("format") == "onnx":
            a.pop("sha256", None)
    return out


def _diff(old, new, path="", numeric_tol: float | None = None) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = [f"{path}.{k}: missing" for k in old if k not in new]
        out += [f"{path}.{k}: new key" for k in new if k not in old
                and f"{path}.{k}" not in ADDED_KEYS and not f"{path}.{k}".endswith(tuple(ADDED_KEYS))]
        for k in old.keys() & new.keys():
            out += _diff(old[k], new[k], f"{path}.{k}", numeric_tol)
        return out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{path}: {len(old)} items, now {len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _diff(a, b, f"{path}[{i}]", numeric_tol)]
    numbers = (int, float)
    if path.endswith(".classes") and isinstance(old, int) and isinstance(new, list):
        # issue #12: the embedded default's .npz files gained 'class_names', so a count became the names
        return [] if len(new) == old else [f"{path}: {old} classes -> {len(new)} names"]
    if path.endswith(("sqnr_db", "max_abs_diff")) and isinstance(old, numbers) and isinstance(new, numbers):
        if path.endswith("sqnr_db") and old > 100 and new > 100:
            return []
        if numeric_tol is not None:  # other converters or another CPU: 0.5 dB of SQNR, a quarter of the max diff
            close = math.isclose(old, new, abs_tol=0.5) if path.endswith("sqnr_db") else \
                math.isclose(old, new, rel_tol=0.25)
            return [] if close else [f"{path}: {old} -> {new}"]
        return [] if math.isclose(old, new, rel_tol=1e-4, abs_tol=1e-4) else [f"{path}: {old} -> {new}"]
    if path.endswith("size_bytes") and isinstance(old, int) and isinstance(new, int):
        return [] if math.isclose(old, new, rel_tol=0.01) else [f"{path}: {old} -> {new}"]
    if numeric_tol is not None and isinstance(old, numbers) and isinstance(new, numbers) \
            and not isinstance(old, bool):
        return [] if math.isclose(old, new, abs_tol=numeric_tol) else [f"{path}: {old} -> {new}"]
    if numeric_tol is not None and path.endswith("sha256"):
        return []
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def _requantized(old: dict, new: dict) -> list[str]:
    """Check the int8 numbers that layer-by-layer bias correction moved (not worse), then drop them from both."""
    problems = []

    def settle(a: dict, b: dict, where: str) -> None:
        for key, slack in NOT_WORSE.items():
            if isinstance(a.get(key), (int, float)) and isinstance(b.get(key), (int, float)) \
                    and b[key] < a[key] - slack:
                problems.append(f"{where}.{key}: {a[key]} -> {b[key]} (worse)")
        for key in INT8_NUMBERS:
            if not (key == "size_bytes" and isinstance(a.get(key), int)
                    and math.isclose(a[key], b.get(key, -1), rel_tol=0.01)):
                a.pop(key, None), b.pop(key, None)
        da, db = a.get("details") or {}, b.get("details") or {}
        if isinstance(da.get("float_nodes"), list) and isinstance(db.get("float_nodes"), list):
            lost = sorted(set(da["float_nodes"]) - set(db["float_nodes"]))
            if lost:
                problems.append(f"{where}.details.float_nodes: lost {lost}")
            da.pop("float_nodes"), db.pop("float_nodes")

    for i, (a, b) in enumerate(zip(old.get("artifacts", []), new.get("artifacts", []))):
        if a.get("precision") == "int8" and b.get("precision") == "int8":
            settle(a, b, f".artifacts[{i}]")
    for name, backend in (old.get("search") or {}).get("backends", {}).items():
        other = ((new.get("search") or {}).get("backends") or {}).get(name, {})
        pairs = [("winner", backend.get("winner"), other.get("winner"))]
        pairs += [(f"trials[{i}]", x, y) for i, (x, y) in enumerate(zip(backend.get("trials", []),
                                                                     other.get("trials", [])))]
        for where, a, b in pairs:
            if isinstance(a, dict) and isinstance(b, dict):
                settle(a, b, f".search.backends.{name}.{where}")
    return problems


def _check(stored: str | dict, report: dict) -> None:
    old = json.loads((STORED / stored).read_text()) if isinstance(stored, str) else stored
    assert isinstance(report.get("schema_version"), int)
    same_tools = all(old["tools"].get(t) == report["tools"].get(t) for t in CONVERTERS)
    # TensorFlow's float kernels (oneDNN) take other code paths on another CPU (AVX-512 and AMX on a Xeon,
    # not on an EPYC): BatchNorm folding and the Keras reference move in their last bits, and int8 rounding
    # can then move a few images.  Exact comparison needs the CPU that wrote the stored report.
    same_cpu = old["machine"].get("cpu") == report["machine"].get("cpu")
    tol = None if same_tools and same_cpu else NUMERIC_TOLERANCE
    old_m, new_m = _masked(old), _masked(report)
    if not same_tools:
        old_m.pop("tools"), new_m.pop("tools")
    else:
        old_m["tools"].pop("edgeres", None), new_m["tools"].pop("edgeres", None)
    problems = _requantized(old_m, new_m)
    problems += _diff(old_m, new_m, numeric_tol=tol)
    assert not problems, "report.json changed:\n" + "\n".join(problems[:40])


def _run(tmp_path: Path, *args) -> dict:
    """The stored reports were made by the fixed default recipe: issue #10 made the default adaptive when no
    recipe is named, so the comparisons name it (what the adaptive default adds is tested in test_adaptive.py)."""
    out = tmp_path / "run"
    result = invoke("convert", "--int8", "--recipe", "default", *args, "-o", out)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def test_default_report_unchanged(tmp_path: Path):
    _check("def.report.json", _run(tmp_path))


def test_edgetpu_target_report_unchanged(tmp_path: Path):
    _check("tpu.report.json", _run(tmp_path, "--target", "coral-edgetpu"))


def test_search_report_budget_zero_is_refused(tmp_path: Path):
    """The stored search report was written with --max-drop 0, which no number of selection images can resolve
    (issue #10): now one line and exit 2, before anything is written."""
    from tests.conftest import assert_one_line_error

    out = tmp_path / "run"
    result = invoke("convert", "--int8", "--max-drop", "0", "--metric", "agreement", "-o", out)
    assert_one_line_error(result, 2, "--max-drop 0 (agreement) can never be met with confidence",
                          "the smallest budget these 250 selection images can resolve is 1.33 points")
    assert not out.exists()


def test_search_report_unchanged_on_a_resolvable_budget(tmp_path: Path):
    """The same search on a budget 250 selection images resolve: the recipe agrees on every selection image, so it
    meets both budgets.  The stored search stopped there, at the first configuration within budget; since the
    fourth session of issue #10 every full-integer configuration is built and the most faithful within budget
    wins, so the trials, the winner and the int8 models it chose differ by design.  The recipe's own trial is
    as stored, the winner follows the rule, the int8 artifacts keep every stored key, and everything else but
    the budget itself is as stored."""
    old = json.loads((STORED / "search.report.json").read_text())
    assert old["max_drop"] == old["search"]["budget"] == 0.0
    old["max_drop"] = old["search"]["budget"] = 2.0
    new = _run(tmp_path, "--max-drop", "2", "--metric", "agreement")
    for name, searched in new["search"]["backends"].items():
        stored = old["search"]["backends"][name]
        assert len(stored["trials"]) == 1 and len(searched["trials"]) > 1
        first, recipe = _masked(stored["trials"][0]), _masked(searched["trials"][0])
        assert recipe["sqnr_db"] >= first["sqnr_db"] - 0.5  # bias correction since improved it (see above)
        first["sqnr_db"] = recipe["sqnr_db"]
        assert not _diff(first, recipe, numeric_tol=NUMERIC_TOLERANCE)
        within = [t for t in searched["trials"] if t["meets_budget"]]
        best = max(within, key=lambda t: (t["agreement"], t["sqnr_db"]))
        assert searched["winner"] == best and not best["keep_float"]
        stored.update(trials=searched["trials"], winner=searched["winner"])
    for stored, made in zip(old["artifacts"], new["artifacts"]):
        if made["precision"] == "int8":  # the winner's model
            assert stored.keys() <= made.keys() and stored["details"].keys() <= made["details"].keys()
            stored.clear()
            stored.update(made)
    _check(old, new)


@pytest.mark.slow
def test_resnet20_report_unchanged(tmp_path: Path):
    model = shared("models", "resnet20_cifar10.keras")
    _check("r20.report.json", _run(tmp_path, model, "--calib", shared("cifar10", "calib"), "--data",
                                   shared("cifar10", "test"), "--calib-size", "200", "--val-size", "500"))


def test_an_old_report_still_reads(tmp_path: Path):
    """A report.json written before schema_version existed loads into the typed report and renders."""
    from edgeres.report import Report, render_markdown

    old = json.loads((STORED / "r20.report.json").read_text())
    report = Report.from_dict(old)
    assert report.schema_version == 0  # no field: the pre-versioned layout
    assert [a.name for a in report.artifacts] == ["tflite_fp32", "tflite_int8", "onnx_fp32", "onnx_int8"]
    again = report.to_dict()
    for key in old:
        assert key in again, key
    assert "| tflite_int8 | tflite | int8 |" in render_markdown(report)
