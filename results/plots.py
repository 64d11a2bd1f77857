"""Figures for the paper: metrics vs κ with 95% CI bars, the FID–CLIP trade-off per
strategy, and a sample-grid figure from the trials' logged ``samples/grid_final.png``.

Figures are built as ``matplotlib.figure.Figure`` objects without pyplot, so no GUI
backend or global figure registry is involved (Agg renders PNG, the PDF backend PDF),
and callers (tests) can inspect the series before saving.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from results import schema
from results.stats import aggregate, metric_columns
from results.tables import (
    PARAM_HEADERS,
    combos,
    metric_format,
    ordered_values,
    param_text,
    runs_text,
    teacher_label,
    varying_params,
)

_COLOURS = {"lsg": "tab:blue", "cfg": "tab:orange", "none": "tab:green", "short": "tab:red"}


def _series(trials: pd.DataFrame, params: list[str]) -> tuple[list[str], pd.DataFrame]:
    """Series keys (everything that varies except κ) and the per-(series, κ) aggregate."""
    varying = varying_params(trials, params)
    keys = [p for p in varying if p != "kappa"]
    if "strategy" in trials and "strategy" not in keys:
        # A constant strategy (the default κ sweep is lsg only) still names the series.
        keys = ["strategy", *keys]
    by = keys + (["kappa"] if "kappa" in trials else [])
    return keys, aggregate(trials, by, metric_columns(trials[trials["status"] == "finished"]))


def _series_groups(agg: pd.DataFrame, keys: list[str]):
    """(label, colour, rows sorted by κ) per series, strategies in the paper's order."""
    if not keys:
        yield "distilled" + _outcome_note(agg), "tab:blue", (
            agg.sort_values("kappa") if "kappa" in agg else agg)
        return
    for index, combo in enumerate(combos(agg, keys)):
        rows = agg
        for key, value in zip(keys, combo):
            rows = rows[rows[key].map(str) == str(value)]
        rows = rows.sort_values("kappa") if "kappa" in rows else rows
        label = ", ".join(str(v) if k == "strategy" else f"{PARAM_HEADERS.get(k, k)}="
                          f"{param_text(k, v)}" for k, v in zip(keys, combo))
        colour = _COLOURS.get(combo[0]) if keys[0] == "strategy" else f"C{index}"
        yield label + _outcome_note(rows), colour or f"C{index}", rows


def _outcome_note(rows: pd.DataFrame) -> str:
    """' (diverged 1/6)' when a series lost runs, so a missing point is explained."""
    total = pd.Series({c: rows[c].sum() for c in rows.columns if c.startswith("n_")})
    return "" if total["n_finished"] == total["n_runs"] else f" ({runs_text(total)})"


def _err(values: pd.Series) -> np.ndarray:
    """CI half-widths for error bars; a single seed has no interval, so no bar (0)."""
    return np.nan_to_num(values.to_numpy(dtype=float), nan=0.0)


def kappa_figure(runs: pd.DataFrame) -> Figure | None:
    """FID and CLIP (and adherence, when logged) against κ: one errorbar series per
    strategy, bars = 95% t-interval over seeds; teacher baselines as dashed lines.
    None when κ does not vary across the plan's trials."""
    trials = runs[runs["role"] == "trial"]
    if "kappa" not in trials or trials["kappa"].nunique() < 2:
        return None
    params = [p for p in runs.attrs.get("param_columns", trials.columns) if p in trials]
    keys, agg = _series(trials, params)
    metrics = [m for m in agg.attrs["metrics"] if m.startswith("fid")
               or m in (schema.CLIP_SCORE, schema.ADHERENCE)]
    teacher = _teacher_agg(runs, agg.attrs["metrics"])
    fig = Figure(figsize=(4.0 * len(metrics), 3.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        fmt = metric_format(metric)
        for label, colour, rows in _series_groups(agg, keys):
            ax.errorbar(rows["kappa"], rows[f"{metric}_mean"] * fmt.scale,
                        yerr=_err(rows[f"{metric}_ci95"]) * fmt.scale, marker="o",
                        capsize=3, color=colour, label=label)
        for _, row in teacher.iterrows():
            if math.isfinite(row[f"{metric}_mean"]):
                ax.axhline(row[f"{metric}_mean"] * fmt.scale, color="0.4", linestyle="--",
                           linewidth=1, label=teacher_label(row))
        ax.set_xlabel("guidance scale κ")
        ax.set_ylabel(fmt.header)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def _teacher_agg(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    teacher = runs[runs["role"] == "teacher"]
    keys = [p for p in ("sampler", "sampler_steps", "kappa")
            if p in teacher and teacher[p].notna().any()]
    return aggregate(teacher, keys, metrics) if len(teacher) else pd.DataFrame()


def tradeoff_figure(runs: pd.DataFrame) -> Figure | None:
    """FID (y, lower is better) against CLIP (x, higher is better): one curve per
    strategy through its κ values (annotated), CI bars both ways; the teacher as a star.
    None without both an FID and a CLIP metric."""
    trials = runs[runs["role"] == "trial"]
    params = [p for p in runs.attrs.get("param_columns", trials.columns) if p in trials]
    keys, agg = _series(trials, params)
    fids = [m for m in agg.attrs["metrics"] if m.startswith("fid")]
    if not fids or schema.CLIP_SCORE not in agg.attrs["metrics"]:
        return None
    fid, clip = fids[0], schema.CLIP_SCORE
    fig = Figure(figsize=(5.0, 4.0), layout="constrained")
    ax = fig.subplots()
    for label, colour, rows in _series_groups(agg, keys):
        ax.errorbar(rows[f"{clip}_mean"], rows[f"{fid}_mean"], xerr=_err(rows[f"{clip}_ci95"]),
                    yerr=_err(rows[f"{fid}_ci95"]), marker="o", capsize=3, color=colour,
                    label=label)
        if "kappa" in rows and rows["kappa"].nunique() > 1:
            for _, row in rows.iterrows():
                if math.isfinite(row[f"{fid}_mean"]) and math.isfinite(row[f"{clip}_mean"]):
                    ax.annotate(f"κ={row['kappa']:g}", (row[f"{clip}_mean"], row[f"{fid}_mean"]),
                                textcoords="offset points", xytext=(4, 4), fontsize=7)
    for _, row in _teacher_agg(runs, agg.attrs["metrics"]).iterrows():
        ax.errorbar([row[f"{clip}_mean"]], [row[f"{fid}_mean"]],
                    xerr=_err(pd.Series([row[f"{clip}_ci95"]])),
                    yerr=_err(pd.Series([row[f"{fid}_ci95"]])), marker="*", markersize=12,
                    color="0.3", linestyle="none", capsize=3, label=teacher_label(row))
    ax.set_xlabel(metric_format(clip).header)
    ax.set_ylabel(metric_format(fid).header)
    ax.set_title("FID–CLIP trade-off")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def sample_panels(runs: pd.DataFrame) -> list[list[tuple[str, pd.Series | None, str]]]:
    """The sample-grid layout: one row per series (strategy, or block), one column per
    κ (or per strategy when κ is fixed); each cell (title, run or None, why-missing).
    The run shown is the finished trial with the lowest seed, so the figure is stable."""
    trials = runs[runs["role"] == "trial"]
    params = [p for p in runs.attrs.get("param_columns", trials.columns) if p in trials]
    varying = varying_params(trials, params)
    if "kappa" in varying:
        row_keys, col_keys = [p for p in varying if p != "kappa"], ["kappa"]
    else:  # one κ: strategies side by side
        row_keys, col_keys = varying[1:], varying[:1]
    grid: list[list[tuple[str, pd.Series | None, str]]] = []
    col_values = ordered_values(trials[col_keys[0]]) if col_keys else [None]
    for combo in combos(trials, row_keys):
        row_runs = trials
        for key, value in zip(row_keys, combo):
            row_runs = row_runs[row_runs[key].map(str) == str(value)]
        prefix = ", ".join(param_text(k, v).split(":")[0] if k == "strategy"
                           else f"{PARAM_HEADERS.get(k, k)}={param_text(k, v)}"
                           for k, v in zip(row_keys, combo))
        cells = []
        for value in col_values:
            group = row_runs if not col_keys else row_runs[
                row_runs[col_keys[0]].map(str) == str(value)]
            if not len(group):
                continue
            title = ", ".join(filter(None, [prefix, _col_title(col_keys, value)]))
            finished = group[group["status"] == "finished"]
            if "seed" in finished:
                finished = finished.sort_values("seed")
            if len(finished):
                cells.append((title, finished.iloc[0], ""))
            else:
                cells.append((title, None, runs_text(pd.Series(
                    {"n_runs": len(group), **{f"n_{o}": int((group["status"] == o).sum())
                                              for o in ("finished", "diverged", "failed",
                                                        "incomplete")}}))))
        grid.append(cells)
    teacher = runs[(runs["role"] == "teacher") & (runs["status"] == "finished")]
    if len(teacher):
        panel = (teacher_label(teacher.iloc[0]), teacher.iloc[0], "")
        # Beside the strategies when they fit in one row; below a strategies x κ grid.
        if len(grid) == 1:
            grid[0].append(panel)
        else:
            grid.append([panel])
    return grid


def _col_title(col_keys: list[str], value) -> str:
    if not col_keys:
        return ""
    key = col_keys[0]
    return (param_text(key, value).split(":")[0] if key == "strategy"
            else f"{PARAM_HEADERS.get(key, key)}={param_text(key, value)}")


def sample_grid_figure(runs: pd.DataFrame,
                       fetch: Callable[[str], Path | None]) -> Figure | None:
    """Each logged ``samples/grid_final.png`` (rows of prompts, as the trials log them)
    as one panel, arranged strategies x κ; a trial without a finished run or artifact
    gets a panel that says why. ``fetch(run_id)`` returns the local image or None.
    None when no panel has an image."""
    from PIL import Image

    layout = sample_panels(runs)
    images = [[(title, _load(fetch, run, Image), why) for title, run, why in row]
              for row in layout]
    # The teacher's panel is an extra, not a trial: without its grid it is left out.
    images = [[(title, image, why) for (title, image, why), (_, run, _) in zip(row, layout_row)
               if not (image is None and run is not None and run["role"] == "teacher")]
              for row, layout_row in zip(images, layout)]
    images = [row for row in images if row]
    if not any(img is not None for row in images for _, img, _ in row):
        return None
    n_rows, n_cols = len(images), max(len(row) for row in images)
    fig = Figure(figsize=(2.2 * n_cols, 2.4 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, row in enumerate(images):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c >= len(row):
                continue
            title, image, why = row[c]
            ax.set_title(title, fontsize=8)
            if image is not None:
                ax.imshow(image, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, why or f"no {schema.GRID_FINAL}", ha="center",
                        va="center", fontsize=8, transform=ax.transAxes)
    return fig


def _load(fetch, run, image_module):
    if run is None:
        return None
    path = fetch(run["run_id"])
    if path is None:
        return None
    with image_module.open(path) as image:
        return np.asarray(image.convert("RGB"))


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """``stem``.png (150 dpi) and ``stem``.pdf, without timestamps in the PDF so the same
    runs give the same bytes."""
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    fig.savefig(png, dpi=150)
    fig.savefig(pdf, metadata={"CreationDate": None})
    return [png, pdf]

