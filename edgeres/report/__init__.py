"""The run report: typed data (:mod:`.model`) and its renderings (:mod:`.render`).  LIGHT layer."""

from edgeres.report.model import SCHEMA_VERSION, ArtifactReport, BackendSearch, Report, SearchReport
from edgeres.report.render import TABLE_HEADER, render_markdown, render_terminal, table_rows, to_json

__all__ = ["SCHEMA_VERSION", "ArtifactReport", "BackendSearch", "Report", "SearchReport", "TABLE_HEADER",
           "render_markdown", "render_terminal", "table_rows", "to_json"]
