"""Reports: run store -> tidy frame -> the paper's tables and figures, with CIs and noise marks.

Never imports torch or the training/eval layers (only ``ablate.spec`` and ``ablate.store``).
"""

from ablate.report.build import ReportError, build_report
from ablate.report.frame import Results, load_results
from ablate.report.groups import group_stats
from ablate.report.paper import load_paper_table
from ablate.report.tables import TABLES, build_table

__all__ = ["ReportError", "Results", "TABLES", "build_report", "build_table", "group_stats",
           "load_paper_table", "load_results"]
