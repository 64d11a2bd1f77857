"""What the plan's parent run shows of its result: per-arm summary metrics and the verdict.

The orchestrator logs :func:`summary_metrics` on the parent run so the runs table's parent
row carries each arm's mean and 95% interval as the table shows them (``lsg.clip_score.mean``,
``lsg.clip_score.ci_low``, ...; FID, on the log scale, as its geometric mean:
``lsg.fid2k.gmean``, ``lsg.fid2k.ci_low``, ...), and puts :func:`verdict_line` with the
Markdown table into the run's description.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from results.arms import param_text
from results.load import load_runs
from results.stats import metric_of, shown_interval
from results.tables import Table
from results.verdict import verdict

# MLflow metric keys may hold alphanumerics, underscores, dashes, periods, spaces and slashes.
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_\-. /]")
STAT_SUFFIX = "_mean"


def metric_key(*parts: str) -> str:
    """Parts joined by '.', each character MLflow refuses replaced by '_'."""
    return _NOT_ALLOWED.sub("_", ".".join(parts))


def _arm(row: pd.Series, keys: list[str], teachers: int) -> str:
    """'lsg' for a strategy, 'kappa1.5' for another param, joined by '_'; the teacher is
    'teacher' (with its κ when there are several teacher rows)."""
    if row["role"] == "teacher":
        kappa = row.get("kappa")
        return "teacher" + (f"_kappa{param_text('kappa', kappa)}"
                            if teachers > 1 and pd.notna(kappa) else "")
    parts = [str(row[k]) if k == "strategy" else f"{k}{param_text(k, row[k])}" for k in keys]
    return "_".join(parts) or "all"


def summary_metrics(table: Table) -> dict[str, float]:
    """Per arm of the plan's comparison table (:func:`results.tables.build_table`, the one
    the report writes): ``<arm>.<metric>.mean``, ``.ci_low`` and ``.ci_high`` (the 95%
    t-interval over finished seeds; no bounds with one seed) for every final metric; for a
    log-scale metric (FID) ``<arm>.<metric>.gmean`` instead of ``.mean``, with its
    geometric interval's bounds (:func:`results.stats.geometric_interval`), as the table
    shows it. And ``<arm>.cost_vs_reference`` where the table has a cost column. Arms are
    named by the table's row params: a strategy by its name, another param as
    ``kappa1.5``, joined by '_'. NaN values are left out."""
    rows = table.csv[table.csv["role"].isin(["trial", "teacher"])]
    metrics = [c[:-len(STAT_SUFFIX)] for c in rows.columns
               if c.endswith(STAT_SUFFIX) and f"{c[:-len(STAT_SUFFIX)]}_ci95" in rows]
    teachers = int((rows["role"] == "teacher").sum())
    out: dict[str, float] = {}
    for _, row in rows.iterrows():
        arm = _arm(row, table.keys, teachers)
        for metric in metrics:
            centre, low, high = shown_interval(row, metric)
            if not math.isfinite(centre):
                continue
            name = "gmean" if metric_of(metric).log_scale else "mean"
            out[metric_key(arm, metric, name)] = float(centre)
            if math.isfinite(low):
                out[metric_key(arm, metric, "ci_low")] = float(low)
                out[metric_key(arm, metric, "ci_high")] = float(high)
        if math.isfinite(row.get("cost_vs_reference", math.nan)):
            out[metric_key(arm, "cost_vs_reference")] = float(row["cost_vs_reference"])
    return out


def verdict_line(plan: str, tracking_uri: str | None = None,
                 parent_run_id: str | None = None) -> str:
    """The one-line verdict (:func:`results.verdict.verdict`) of the plan's latest parent
    run, or of the named one."""
    runs = load_runs(plan, tracking_uri, parent_run_id)
    return verdict(runs, runs.attrs["comparison"])
