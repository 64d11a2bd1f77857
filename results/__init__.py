"""MLflow -> pandas -> tables (LaTeX, Markdown, CSV) and plots (PNG, PDF).

Public API: :func:`load_runs`, :func:`aggregate`, :func:`write_report` and
:class:`ReportPaths`; :func:`summary_metrics` and :func:`verdict_line` for the parent run;
:class:`ResultsError` for "nothing (usable) to report".

The names resolve on first use (PEP 562): ``ablate`` imports ``results.cli`` for
every command, and importing this package must not pull in pandas, scipy and
matplotlib (a second on 2 cores) just to print ``--help``.
"""

import importlib

_WHERE = {"aggregate": "results.stats", "load_runs": "results.load",
          "ResultsError": "results.errors", "write_report": "results.report",
          "ReportPaths": "results.report", "summary_metrics": "results.summary",
          "verdict_line": "results.summary"}

__all__ = ["ReportPaths", "ResultsError", "aggregate", "load_runs", "summary_metrics",
           "verdict_line", "write_report"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'results' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
