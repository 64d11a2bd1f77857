"""MLflow -> pandas -> tables (LaTeX, Markdown, CSV) and plots (PNG, PDF).

Public API: :func:`load_runs`, :func:`aggregate`, :func:`write_report` and
:class:`ReportPaths`; :class:`ResultsError` for "nothing (usable) to report".
"""

from results.aggregate import aggregate
from results.load import ResultsError, load_runs
from results.report import ReportPaths, write_report

__all__ = ["ReportPaths", "ResultsError", "aggregate", "load_runs", "write_report"]
