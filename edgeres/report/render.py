"""Renderings of a :class:`~edgeres.report.model.Report`: the terminal table, report.md, report.json.

LIGHT layer.  The only place that decides how a report looks.
"""

from __future__ import annotations

from edgeres.core.fs import to_json as _strict_json
from edgeres.core.metrics import DECISION_LEVEL, REPORT_LEVEL, dash
from edgeres.report.model import Report

TABLE_HEADER = ("artifact", "format", "precision", "size", "top-1 %", "drop pp", "agree %", "p50 ms",
                "speedup")
SEARCH_HEADER = ("step", "loss", f"{100 * DECISION_LEVEL:g}% bound", "agree %", "p50 ms", "float layers", "meets")


def format_table(header, rows) -> str:
    """Left-aligned columns under a dashed rule: the one table style of every command."""
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def with_ci(v, spec: str, ci) -> str:
    """``v`` formatted, with its confidence interval ``[lo, hi]`` after it to one decimal when there is one:
    ``+0.10 (-0.2..+0.4)``."""
    if v is None or not ci:
        return dash(v, spec)
    short = "+.1f" if spec.startswith("+") else ".1f"
    return f"{v:{spec}} ({ci[0]:{short}}..{ci[1]:{short}})"


def has_ci(report: Report) -> bool:
    return any(a.top1_drop_ci or a.agreement_ci for a in report.artifacts)


def table_header(report: Report) -> tuple[str, ...]:
    """:data:`TABLE_HEADER`, naming the confidence intervals when the report has them."""
    if not has_ci(report):
        return TABLE_HEADER
    return tuple(f"{h} ({100 * REPORT_LEVEL:g}% CI)" if h in ("drop pp", "agree %") else h for h in TABLE_HEADER)


def table_rows(report: Report) -> list[tuple[str, ...]]:
    rows = [("keras (reference)", "keras", "float32", "-", dash(report.reference.get("top1"), ".2f"),
             "-", "-", "-", "-")]
    for a in report.artifacts:
        precision = a.display_precision
        scheme = a.details.get("scheme") if precision.startswith("int8") else None
        rows.append((a.name, a.format, precision + (f" ({scheme})" if scheme else ""), human_size(a.size_bytes),
                     dash(a.top1, ".2f"), with_ci(a.top1_drop, "+.2f", a.top1_drop_ci),
                     with_ci(a.agreement, ".2f", a.agreement_ci),
                     dash(a.latency_ms.get("p50"), ".3f"), dash(a.speedup_vs_fp32, ".2f", "x")))
    return rows


def _search_rows(metric: str, trials: list[dict]) -> list[tuple[str, ...]]:
    return [(t["step"], dash(t["top1_drop"] if metric == "top1" else 100 - t["agreement"], "+.2f"),
             dash(t.get("loss_upper"), "+.2f"), dash(t["agreement"], ".2f"), dash(t["p50_ms"], ".3f"),
             str(len(t["keep_float"])), "yes" if t["meets_budget"] else "no") for t in trials]


def _bounded(report: Report) -> bool:
    """Whether the search decided on confidence bounds (reports before issue #10 decided on point estimates)."""
    return any("loss_upper" in t for b in report.search.backends.values() for t in b.trials)


def _search_title(report: Report) -> str:
    s = report.search
    return (f"budget {s.budget:g} {s.metric}, {s.selection['count']} selection images"
            + (f"; meets: the {100 * DECISION_LEVEL:g}% upper bound of the loss is within the budget"
               if _bounded(report) else ""))


def render_terminal(report: Report, out_dir) -> str:
    """What ``edgeres convert`` prints for people."""
    lines = [format_table(table_header(report), table_rows(report)), "",
             "stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.stages_seconds.items())]
    s = report.search
    for backend, b in (s.backends.items() if s else ()):
        lines += ["", f"{backend} search ({_search_title(report)}):",
                  format_table(SEARCH_HEADER, _search_rows(s.metric, b.trials)),
                  f"chosen: {b.winner['step']}" + ("" if b.met else " (FAILS the budget)")]
    lines += [f"note: {n}" for n in report.notes]
    lines.append(f"wrote {out_dir}/ (report.md, report.json, {len(report.artifacts)} artifacts): "
                 + ("PASSED" if report.passed else "FAILED"))
    return "\n".join(lines) + "\n"


def render_markdown(report: Report) -> str:
    m = report.model
    lines = [f"# edgeres report: {m['name']}", "",
             f"Model: `{m['source']}`, {m['params']:,} parameters, {dash(m['macs'], ',')} MACs, input "
             f"{m['input_shape']}.  Target: `{report.target['name']}` ({report.target['threads']} threads).", ""]
    cal, val = report.calibration, report.validation
    lines.append(f"Calibration: {cal.get('used', cal['count'])} images from `{cal['source']}`.  "
                 + (f"Validation: {val.get('measured', val['count'])} held-out images from `{val['source']}`"
                    + (f" ({val['skipped']} unreadable, skipped)" if val.get("skipped") else "") + "."
                    if val else "No validation data."))
    recipes = [f"{a.name}: recipe `{a.details['recipe']}` ({a.details.get('recipe_summary', '')}"
               + (f"; float layers: {', '.join(a.details['float_layers'])}" if a.details.get("float_layers")
                  else "; full-integer" if a.details.get("full_integer") else "") + ")"
               for a in report.artifacts if a.details.get("recipe")]
    if recipes:
        lines += ["", "Int8: " + ".  ".join(recipes) + "."]
    header = table_header(report)
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    runs = report.artifacts[0].latency_ms.get("runs") if report.artifacts else None
    ci = (f"  In parentheses: {100 * REPORT_LEVEL:g}% confidence intervals on these "
          f"{val.get('measured', val['count'])} images (Tango's score interval for the paired drop, Wilson's for "
          "agreement)." if val and has_ci(report) else "")
    lines += ["", "Drop: top-1 percentage points lost against Keras float32.  Agree: top-1 agreement with "
              f"Keras float32.{ci}  Latency: batch 1, median of {runs} runs after warm-up; speedup over float32 "
              "on the same runtime.", "", "Stage times (s): " + ", ".join(
                  f"{k} {v:.2f}" for k, v in report.stages_seconds.items()), ""]
    s = report.search
    if s:
        bound = f"{100 * DECISION_LEVEL:g}% bound, " + ("top-1 drop" if s.metric == "top1" else "agreement lost")
        lines += [f"## --max-drop search: budget {s.budget:g} ({s.metric}), chosen on "
                  f"{s.selection['count']} selection images", ""]
        if _bounded(report):
            lines += [f"A configuration meets the budget when the one-sided {100 * DECISION_LEVEL:g}% upper "
                      "confidence bound of its loss on the selection images is within it (Tango's score bound on the "
                      "paired top-1 drop, Wilson's on agreement lost), not when its point estimate is.", ""]
        for backend, b in s.backends.items():
            lines += [f"{backend}: chose **{b.winner['step']}**" + ("" if b.met else " (FAILS the budget)"),
                      "", f"| step | top-1 drop | {bound} | agree % | p50 ms | float layers | meets |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {t['step']} | {dash(t['top1_drop'], '+.2f')} | {dash(t.get('loss_upper'), '+.2f')} | "
                      f"{dash(t['agreement'], '.2f')} | {dash(t['p50_ms'], '.3f')} | "
                      f"{', '.join(t['keep_float']) or '-'} | {'yes' if t['meets_budget'] else 'no'} |"
                      for t in b.trials]
            lines.append("")
    if report.notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in report.notes] + [""]
    lines.append(f"Result: {'PASSED' if report.passed else 'FAILED: ' + '; '.join(report.failures)}")
    return "\n".join(lines) + "\n"


def to_json(report: Report) -> str:
    """report.json: strict JSON (non-finite numbers become null)."""
    return _strict_json(report.to_dict())
