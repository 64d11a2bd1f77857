"""The end of ``ablate run`` in the terminal: the report written by the results package (or
a plain table of what each trial ended with), then where everything is and the verdict."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from orchestrator import tracking
from orchestrator.plan import Trial


def write(plan_name: str, tables: Path, uri: str, parent_id: str | None):
    """The results package's report (tables, figures, verdict, per-arm summary), or None
    when there is nothing to compare (every trial failed or diverged)."""
    from results import ResultsError, write_report

    try:
        return write_report(plan_name, tables, tracking_uri=uri, parent_run_id=parent_id)
    except ResultsError as exc:
        print(f"no comparison table: {exc}", file=sys.stderr)
        return None


def fallback_table(trials: list[Trial], done: dict[str, dict | None],
                   status: dict[str, str]) -> str:
    """What each trial ended with, when there is no comparison table."""
    finals = {t.trial_id: (done[t.trial_id] or {}).get("final_metrics", {}) for t in trials}
    keys = sorted({k for metrics in finals.values() for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})
    lines = ["| trial | status | " + " | ".join(keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for t in trials:
        cells = [f"{finals[t.trial_id][k]:.4g}" if k in finals[t.trial_id] else ""
                 for k in keys]
        lines.append(f"| {t.name} | {status[t.trial_id]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def show(out: TextIO, trials: list[Trial], failed: dict[str, str], status: dict[str, str],
         markdown: str, written, uri: str, parent_id: str | None, tables: Path) -> None:
    """Failed and diverged trials, the table, where the store, dashboard and tables are,
    and the verdict as the last lines."""
    for t in trials:
        if t.trial_id in failed:
            print(f"FAILED {t.name}: {failed[t.trial_id].splitlines()[0][:300]}", file=out)
        elif status[t.trial_id] == "diverged":
            print(f"DIVERGED {t.name}: its losses became non-finite; see its MLflow run",
                  file=out)
    print(f"\n{markdown}\n", file=out)
    print(f"MLflow: {uri}  (parent run {parent_id})", file=out)
    # A tracking server is its own dashboard; a SQLite store needs one started.
    dashboard = uri if tracking.is_server(uri) else f"ablate mlflow-ui --tracking-uri {uri}"
    print(f"Dashboard: {dashboard}", file=out)
    print(f"Tables: {tables}", file=out)
    for line in (written.lines or (written.verdict,)) if written else ():
        if line:
            print(line[0].upper() + line[1:], file=out)
