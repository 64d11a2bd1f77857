"""The one-line verdict a run ends with: which differences are significant, and which are not.

Significance is the tables' own test (two-sided Welch t-test over seeds, p < 0.05,
:data:`results.tables.SIGNIFICANCE_P`), so the line never claims more than the table marks.

- Plans whose strategy varies (with an ``lsg`` arm): each other arm against ``lsg``, per metric.
- Any other plan (κ sweep, generic): per metric, the best row by mean, and which rows it is
  significantly better than and which it cannot be told apart from.

With fewer than two finished seeds on a side no test is possible and the line says so
instead of naming a winner.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from results import schema
from results.stats import (
    finished_values,
    lower_is_better,
    metric_columns,
    seeds_for_power,
    welch_p_value,
)
from results.tables import (
    PARAM_HEADERS,
    SIGNIFICANCE_P,
    STRATEGY_ORDER,
    combos,
    metric_format,
    param_text,
    select_rows,
    varying_params,
)

_SHORT = {schema.CLIP_SCORE: "CLIP", schema.ADHERENCE: "adherence"}


def _name(metric: str) -> str:
    return "FID" if metric.startswith("fid") else _SHORT.get(metric, metric)


def _short(key: str, value) -> str:
    """A row's name in the line: 'lsg' for a strategy, 'κ=2' for anything else."""
    if key == "strategy":
        return str(value)
    return f"{PARAM_HEADERS.get(key, key)}={param_text(key, value)}"


def _delta_text(metric: str, delta: float) -> str:
    fmt = metric_format(metric)
    unit = " pts" if fmt.scale == 100 else ""
    text = fmt.number(delta)
    return (text if text.startswith("-") else "+" + text) + unit


def _p(p_value: float) -> str:
    return f"p={p_value:.2g}" if p_value >= 0.001 else "p<0.001"


def _versus(reference: pd.DataFrame, other: pd.DataFrame, metrics: list[str],
            ref_name: str, other_name: str) -> str:
    """'lsg vs cfg: lsg better on CLIP (-0.03, p=0.01); not significant: FID (p=0.6)'."""
    better, worse, level, untested = [], [], [], []
    for metric in metrics:
        ref, mine = finished_values(reference, metric), finished_values(other, metric)
        if len(ref) == 0 or len(mine) == 0:
            continue
        p_value = welch_p_value(ref, mine)
        if not math.isfinite(p_value):
            untested.append(_name(metric))
            continue
        delta = float(ref.mean() - mine.mean())
        part = f"{_name(metric)} ({_delta_text(metric, delta)}, {_p(p_value)})"
        if p_value >= SIGNIFICANCE_P:
            level.append(f"{_name(metric)} ({_p(p_value)})")
        elif (delta < 0) == lower_is_better(metric):
            better.append(part)
        else:
            worse.append(part)
    parts = []
    if better:
        parts.append(f"{ref_name} better on " + ", ".join(better))
    if worse:
        parts.append(f"{ref_name} worse on " + ", ".join(worse))
    if level:
        parts.append(("no significant difference: " if not better and not worse
                      else "not significant: ") + ", ".join(level))
    if untested:
        parts.append("untestable (< 2 finished seeds or no spread): " + ", ".join(untested))
    return f"{ref_name} vs {other_name}: " + ("; ".join(parts) or "no finished runs to compare")


def _best_of(rows: list[tuple[str, pd.DataFrame]], metric: str) -> str | None:
    """'FID best at κ=2 (3.21), significantly better than κ=0.5, 3; level with κ=1.5'."""
    means = [(label, finished_values(g, metric)) for label, g in rows]
    means = [(label, v) for label, v in means if len(v)]
    if len(means) < 2:
        return None
    pick = min if lower_is_better(metric) else max
    best_label, best = pick(means, key=lambda item: item[1].mean())
    fmt = metric_format(metric)
    beaten, level = [], []
    for label, values in means:
        if label == best_label:
            continue
        p_value = welch_p_value(best, values)
        (beaten if math.isfinite(p_value) and p_value < SIGNIFICANCE_P else level).append(label)
    text = f"{_name(metric)} best at {best_label} ({fmt.number(best.mean())})"
    if beaten:
        text += ", significantly better than " + ", ".join(beaten)
    if level:
        text += (", not significantly better than " if beaten or len(best) > 1
                 else ", untested against ") + ", ".join(level)
    return text


def verdict(plan: str, runs: pd.DataFrame) -> str:
    """One line: the significant differences of a plan's finished trials, and the rest."""
    trials = runs[runs["role"] == "trial"]
    finished = trials[trials["status"] == "finished"]
    if finished.empty:
        return "verdict: no finished trials"
    metrics = [m for m in metric_columns(finished)
               if m.startswith("fid") or m in (schema.CLIP_SCORE, schema.ADHERENCE)]
    params = [p for p in runs.attrs.get("param_columns", trials.columns) if p in trials]
    varying = varying_params(trials, params)
    per_row = finished.groupby(varying, dropna=False).size() if varying else [len(finished)]
    most_seeds = int(max(per_row))
    if most_seeds < 2:
        return ("verdict: one seed per row, so no difference can be called significant; "
                "rerun with --seeds 0,1,2")
    head = (f"verdict (two-sided Welch t-test, p < {SIGNIFICANCE_P:g}, "
            f"up to {most_seeds} finished seeds per row)")
    if "strategy" in varying and (trials["strategy"] == "lsg").any():
        blocks = [p for p in varying if p != "strategy"]
        parts = []
        for block in combos(trials, blocks):
            scope = select_rows(trials, blocks, block)
            prefix = "".join(f"{_short(k, v)} " for k, v in zip(blocks, block))
            reference = scope[scope["strategy"] == "lsg"]
            if reference.empty:
                continue
            others = [s for s in STRATEGY_ORDER if s != "lsg" and (scope["strategy"] == s).any()]
            parts += [prefix + _versus(reference, scope[scope["strategy"] == s], metrics, "lsg", s)
                      for s in others]
        return f"{head}: " + " | ".join(parts) if parts else f"{head}: no lsg row to compare with"
    row_keys = ["kappa"] if "kappa" in varying else varying[:1]
    if not row_keys:
        return f"{head}: one configuration, nothing to compare"
    blocks = [p for p in varying if p not in row_keys]
    parts = []
    for block in combos(trials, blocks):
        scope = select_rows(trials, blocks, block)
        rows = [(", ".join(_short(k, v) for k, v in zip(row_keys, values)),
                 select_rows(scope, row_keys, values)) for values in combos(scope, row_keys)]
        prefix = ", ".join(_short(k, v) for k, v in zip(blocks, block))
        found = [t for t in (_best_of(rows, m) for m in metrics) if t]
        if found:
            parts.append((f"{prefix}: " if prefix else "") + "; ".join(found))
    return f"{head}: " + " | ".join(parts) if parts else f"{head}: nothing to compare"


def power_table(runs: pd.DataFrame) -> str | None:
    """Markdown, for plans whose strategy varies: per arm and metric against lsg, the means'
    difference, each arm's per-seed standard deviation, the Welch p-value, and how many seeds
    per arm would detect a true difference of that size with 80% power at p < 0.05
    (:func:`results.stats.seeds_for_power`). None when no two arms have two finished seeds."""
    trials = runs[(runs["role"] == "trial") & (runs["status"] == "finished")]
    if "strategy" not in trials or not (trials["strategy"] == "lsg").any():
        return None
    metrics = [m for m in metric_columns(trials)
               if m.startswith("fid") or m in (schema.CLIP_SCORE, schema.ADHERENCE)]
    blocks = [k for k in ("kappa",) if k in trials and trials[k].nunique() > 1]
    lines = []
    for block in combos(trials, blocks):
        scope = select_rows(trials, blocks, block)
        reference = scope[scope["strategy"] == "lsg"]
        for other in (s for s in STRATEGY_ORDER if s != "lsg"):
            mine = scope[scope["strategy"] == other]
            for metric in metrics:
                a, b = finished_values(reference, metric), finished_values(mine, metric)
                if len(a) < 2 or len(b) < 2:
                    continue
                sd_a, sd_b = float(np.std(a, ddof=1)), float(np.std(b, ddof=1))
                delta = float(b.mean() - a.mean())
                needed = seeds_for_power(delta, sd_a, sd_b)
                fmt = metric_format(metric)
                where = "".join(f"κ={param_text(k, v)} " for k, v in zip(blocks, block))
                lines.append(
                    f"| {where}{other} − lsg | {_name(metric)} | {_delta_text(metric, delta)} "
                    f"| {fmt.number(sd_a)} | {fmt.number(sd_b)} | {_p(welch_p_value(a, b))} "
                    f"| {needed if needed is not None else '—'} |")
    if not lines:
        return None
    header = [("| comparison | metric | Δ of means | sd lsg | sd other | Welch p "
               "| seeds per arm for 80% power |"), "|---|---|---|---|---|---|---|"]
    return "\n".join(header + lines) + (
        "\n\nsd: per-seed standard deviation. Seeds for 80% power: how many seeds per arm a "
        "two-sided t-test at p < 0.05 needs to detect a true difference of the measured size "
        "with these spreads.\n")
