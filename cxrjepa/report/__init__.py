"""``cxrjepa report``: one self-contained HTML page (and a Markdown summary) from a chain's artifacts.

Modules: lineage (follow manifests' inputs), readers (bounded, sampled reads), sections/* (one builder
per page section), figures (matplotlib), doc (the document model), html / markdown (renderers), api.
"""

from cxrjepa.report.api import build_document, run_report
from cxrjepa.report.config import ReportConfig

__all__ = ["ReportConfig", "build_document", "run_report"]
