"""Figures for the paper: metrics against a swept param (κ, α, ...) with 95% CI bands, the
FID–CLIP trade-off per series, and a sample-grid figure from the trials' logged
``samples/grid_final.png``.

The sample figure is sized to be read printed at a two-column paper's column width
(:data:`COLUMN_WIDTH_IN`): its text is at least :data:`MIN_FONT_PT` there.

Figures are built as ``matplotlib.figure.Figure`` objects without pyplot, so no GUI
backend or global figure registry is involved (Agg renders PNG, the PDF backend PDF),
and callers (tests) can inspect the series before saving.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from distill import metrics as registry
from distill.config import STRATEGIES
from results import schema
from results.arms import (
    PARAM_HEADERS,
    combos,
    ordered_values,
    param_text,
    short_text,
    varying_params,
)
from results.convergence import ARM, curve, has_curve
from results.stats import (
    OUTCOMES,
    aggregate,
    eval_protocol,
    metric_columns,
    metric_key,
    metric_of,
    shown_interval,
)
from results.tables import runs_text, teacher_label
from results.verdict import Verdict

COLUMN_WIDTH_IN = 3.3  # a two-column paper's column (IEEE, ACM, CVPR: 3.3-3.5 in)
MIN_FONT_PT = 8.0  # the smallest text of the sample figure, printed at column width
TILES_PER_CELL = 2  # images per prompt and arm: enough to see variety, large enough to see
UPSCALE_TO_PX = 128  # tiles are enlarged by an integer factor (nearest) to at least this


def _colour(keys: list[str], combo: tuple, index: int) -> str:
    """A strategy keeps its colour across figures (its place in STRATEGIES); else by order."""
    if keys and keys[0] == "strategy" and combo[0] in STRATEGIES:
        return f"C{STRATEGIES.index(combo[0])}"
    return f"C{index}"


def _series(trials: pd.DataFrame, params: list[str], x: str | None
            ) -> tuple[list[str], pd.DataFrame]:
    """Series keys (everything that varies except ``x``) and the per-(series, x) aggregate."""
    varying = varying_params(trials, params)
    keys = [p for p in varying if p != x]
    if "strategy" in trials and "strategy" not in keys and x != "strategy":
        # A constant strategy (the default κ sweep is lsg only) still names the series.
        keys = ["strategy", *keys]
    by = keys + ([x] if x and x in trials else [])
    return keys, aggregate(trials, by, metric_columns(trials[trials["status"] == "finished"]))


def swept_param(trials: pd.DataFrame, verdict: Verdict | None) -> str | None:
    """The x axis of the sweep figure: the first numeric param of the comparison's arms,
    then of its blocks, that takes two or more values; None if there is none."""
    if verdict is None:
        return None
    for param in (*verdict.layout.arms, *verdict.layout.blocks):
        values = trials[param].dropna() if param in trials else pd.Series([], dtype=float)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and values.nunique() > 1:
            return param
    return None


def _series_groups(agg: pd.DataFrame, keys: list[str], x: str | None):
    """(label, colour, rows sorted by ``x``) per series, strategies in the paper's order."""
    if not keys:
        yield "distilled" + _outcome_note(agg), "C0", (
            agg.sort_values(x) if x and x in agg else agg)
        return
    for index, combo in enumerate(combos(agg, keys)):
        rows = agg
        for key, value in zip(keys, combo):
            rows = rows[rows[key].map(str) == str(value)]
        rows = rows.sort_values(x) if x and x in rows else rows
        label = ", ".join(str(v) if k == "strategy" else f"{PARAM_HEADERS.get(k, k)}="
                          f"{param_text(k, v)}" for k, v in zip(keys, combo))
        yield label + _outcome_note(rows), _colour(keys, combo, index), rows


def _outcome_note(rows: pd.DataFrame) -> str:
    """' (diverged 1/6)' when a series lost runs, so a missing point is explained."""
    total = pd.Series({c: rows[c].sum() for c in rows.columns if c.startswith("n_")})
    return "" if total["n_finished"] == total["n_runs"] else f" ({runs_text(total)})"


def _err(values: pd.Series) -> np.ndarray:
    """CI half-widths for error bars; a single seed has no interval, so no bar (0)."""
    return np.nan_to_num(values.to_numpy(dtype=float), nan=0.0)


def _centre_and_err(agg: pd.DataFrame | pd.Series, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(centres, 2×N distances down and up to the interval's ends) of metric ``key`` over
    the rows of ``agg`` (or its one row), as tables show them (:func:`shown_interval`): a
    log-scale metric's geometric mean and asymmetric interval, so its bar stays above zero.
    A single seed has no interval, so no bar (0)."""
    centre, low, high = (np.atleast_1d(np.asarray(v, dtype=float))
                         for v in shown_interval(agg, key))
    return centre, np.nan_to_num(np.vstack([centre - low, high - centre]), nan=0.0)


def _value_label(key: str, protocol: str | None) -> str:
    """An axis label: the metric's header, naming the geometric mean where it is shown."""
    metric = metric_of(key)
    return metric.header(key, protocol) + (", geometric mean" if metric.log_scale else "")


def sweep_figure(runs: pd.DataFrame, verdict: Verdict | None
                 ) -> tuple[str, Figure] | None:
    """(param, figure): the table's metrics against the swept param (:func:`swept_param`),
    one line per series with its 95% t-interval over seeds as a band (a log-scale metric's
    geometric mean and its interval, as the table shows it); teacher baselines as dashed
    lines. None when no numeric param of the comparison varies."""
    trials = runs[runs["role"] == "trial"]
    x = swept_param(trials, verdict)
    if x is None:
        return None
    params = [p for p in runs.attrs.get("param_columns", trials.columns) if p in trials]
    keys, agg = _series(trials, params, x)
    keys = [k for k in keys if k != x]
    metrics = metric_columns(trials[trials["status"] == "finished"], "table")
    protocol = verdict.protocol if verdict is not None else None
    teacher = _teacher_agg(runs, agg.attrs["metrics"])
    fig = Figure(figsize=(4.0 * len(metrics), 3.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, key in zip(axes, metrics):
        metric = metric_of(key)
        for label, colour, rows in _series_groups(agg, keys, x):
            centre, err = _centre_and_err(rows, key)
            centre, err = centre * metric.scale, err * metric.scale
            ax.plot(rows[x], centre, marker="o", color=colour, label=label)
            # The 95% t-interval as a band: where bands overlap, the values are not told
            # apart by this many seeds (the verdict gives the corrected tests).
            ax.fill_between(rows[x].to_numpy(dtype=float), centre - err[0], centre + err[1],
                            color=colour, alpha=0.2, linewidth=0)
        for _, row in teacher.iterrows():
            value = shown_interval(row, key)[0]
            if math.isfinite(value):
                ax.axhline(value * metric.scale, color="0.4", linestyle="--", linewidth=1,
                           label=teacher_label(row))
        ax.set_xlabel("guidance scale κ" if x == "kappa" else PARAM_HEADERS.get(x, x))
        ax.set_ylabel(_value_label(key, protocol))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return x, fig


def curve_figure(history: pd.DataFrame, metrics: list[str],
                 protocol: str | None = None) -> Figure | None:
    """Each metric against training iterations: one line per arm (the comparison's) with its
    95% t-interval over seeds as a band. None without evaluations at two or more iterations."""

    if not has_curve(history):
        return None
    fig = Figure(figsize=(4.0 * len(metrics), 3.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    arm_keys = history.attrs.get("arms", [])
    for ax, key in zip(axes, metrics):
        metric = metric_of(key)
        points = curve(history, key)
        for index, arm in enumerate(ordered_values(points[ARM])):
            rows = points[points[ARM] == arm].sort_values("step")
            centre = rows["centre"].to_numpy(dtype=float) * metric.scale
            # One seed has no interval: the band shrinks to the line there.
            low = rows["low"].fillna(rows["centre"]).to_numpy(dtype=float) * metric.scale
            high = rows["high"].fillna(rows["centre"]).to_numpy(dtype=float) * metric.scale
            colour = (f"C{STRATEGIES.index(arm)}" if arm_keys == ["strategy"]
                      and arm in STRATEGIES else f"C{index}")
            ax.plot(rows["step"], centre, marker="o", color=colour, label=str(arm))
            ax.fill_between(rows["step"].to_numpy(dtype=float), low, high,
                            color=colour, alpha=0.2, linewidth=0)
        ax.set_xlabel("training iteration")
        ax.set_ylabel(metric.header(key, protocol))
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
    strategy through its κ values (annotated), 95% CI bars both ways (FID: its geometric
    mean and asymmetric interval, as the table shows it); the teacher as a star. None
    without both an FID and a CLIP metric."""
    trials = runs[runs["role"] == "trial"]
    params = [p for p in runs.attrs.get("param_columns", trials.columns) if p in trials]
    keys, agg = _series(trials, params, "kappa")
    finished = trials[trials["status"] == "finished"]
    fid, clip = metric_key(finished, registry.FID), metric_key(finished, registry.CLIP_SCORE)
    if fid is None or clip is None:
        return None
    protocol = eval_protocol(finished)
    fig = Figure(figsize=(5.0, 4.0), layout="constrained")
    ax = fig.subplots()
    kappa_varies = "kappa" in agg and agg["kappa"].nunique() > 1

    def annotate(text: str, row: pd.Series, below: bool = False) -> None:
        point = (shown_interval(row, clip)[0], shown_interval(row, fid)[0])
        if all(math.isfinite(v) for v in point):
            ax.annotate(text, point, color=colour, textcoords="offset points",
                        xytext=(4, -10 if below else 4), fontsize=7)

    for index, (label, colour, rows) in enumerate(_series_groups(agg, keys, "kappa")):
        (x, xerr), (y, yerr) = _centre_and_err(rows, clip), _centre_and_err(rows, fid)
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", capsize=3, color=colour,
                    label=label)
        for _, row in rows.iterrows():
            # A curve's points name only its κ (the curve is named in the legend and the
            # label takes its colour); every other curve's labels go below its points, so
            # two curves that cross do not write over each other.
            parts = [] if kappa_varies else [short_text(k, row[k]) for k in keys]
            parts += [f"κ={param_text('kappa', row['kappa'])}"] if kappa_varies else []
            annotate(", ".join(parts) or "distilled", row, below=index % 2 == 1)
    colour = "0.3"
    for _, row in _teacher_agg(runs, agg.attrs["metrics"]).iterrows():
        (x, xerr), (y, yerr) = _centre_and_err(row, clip), _centre_and_err(row, fid)
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="*", markersize=12, color=colour,
                    linestyle="none", capsize=3, label=teacher_label(row))
        annotate("teacher", row)
    ax.set_xlabel(_value_label(clip, protocol))
    ax.set_ylabel(_value_label(fid, protocol))
    ax.set_title(f"{metric_of(fid).label_for(None, protocol)}–CLIP trade-off")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


@dataclass(frozen=True)
class Panel:
    """One cell of the sample-grid figure: the run whose grid it shows, or why none."""

    title: str
    run: pd.Series | None  # the finished trial (lowest seed) or teacher run shown
    note: str = ""  # e.g. "diverged 2/2" when no run of the group finished


def sample_panels(runs: pd.DataFrame) -> list[list[Panel | None]]:
    """The sample-grid layout: one row per series (strategy, or block), one column per
    κ (or per strategy when κ is fixed); None where a row lacks that column's value, so
    columns stay aligned. The teacher is an extra panel at the end. The run shown is
    the finished trial with the lowest seed, so the figure is stable."""
    trials = runs[runs["role"] == "trial"]
    params = [p for p in runs.attrs.get("param_columns", trials.columns) if p in trials]
    varying = varying_params(trials, params)
    if "kappa" in varying:
        row_keys, col_keys = [p for p in varying if p != "kappa"], ["kappa"]
    else:  # one κ: strategies side by side
        row_keys, col_keys = varying[1:], varying[:1]
    grid: list[list[Panel | None]] = []
    col_values = ordered_values(trials[col_keys[0]]) if col_keys else [None]
    for combo in combos(trials, row_keys):
        row_runs = trials
        for key, value in zip(row_keys, combo):
            row_runs = row_runs[row_runs[key].map(str) == str(value)]
        prefix = ", ".join(short_text(k, v) for k, v in zip(row_keys, combo))
        cells: list[Panel | None] = []
        for value in col_values:
            group = row_runs if not col_keys else row_runs[
                row_runs[col_keys[0]].map(str) == str(value)]
            if not len(group):
                cells.append(None)
                continue
            title = ", ".join(filter(None, [prefix, short_text(col_keys[0], value)
                                            if col_keys else None]))
            finished = group[group["status"] == "finished"]
            if "seed" in finished:
                finished = finished.sort_values("seed")
            if len(finished):
                cells.append(Panel(title, finished.iloc[0]))
            else:
                counts = {f"n_{o}": int((group["status"] == o).sum()) for o in OUTCOMES}
                cells.append(Panel(title, None, runs_text(pd.Series(
                    {"n_runs": len(group), **counts}))))
        grid.append(cells)
    teacher = runs[(runs["role"] == "teacher") & (runs["status"] == "finished")]
    if len(teacher):
        panel = Panel(teacher_label(teacher.iloc[0]), teacher.iloc[0])
        # Beside the strategies when they fit in one row; below a strategies x κ grid.
        if len(grid) == 1:
            grid[0].append(panel)
        else:
            grid.append([panel])
    return grid


def sample_grid_figure(runs: pd.DataFrame,
                       fetch: Callable[[str], Path | None]) -> Figure | None:
    """The runs' logged ``samples/grid_final.png`` side by side. ``fetch(run_id)`` returns
    the local image (its layout, ``grid_final.json``, beside it when logged) or None.

    When every grid comes with its layout: one row per prompt, the prompt written once
    above it, one column per arm plus the teacher (:func:`prompt_grid_figure`). Otherwise
    each grid is one panel, arranged strategies x κ. A group without a finished run or
    without the artifact gets a cell that says why. None when no run has an image."""
    from PIL import Image

    images: list[list[tuple[Panel, np.ndarray | None, dict | None] | None]] = []
    for row in sample_panels(runs):
        cells = []
        for panel in row:
            image, layout = _load(fetch, panel.run, Image) if panel is not None else (None, None)
            # The teacher's panel is an extra, not a trial: without a grid it is left out.
            if panel is not None and image is None and panel.run is not None \
                    and panel.run["role"] == "teacher":
                continue
            cells.append((panel, image, layout) if panel is not None else None)
        if cells:
            images.append(cells)
    loaded = [cell for row in images for cell in row if cell is not None and cell[1] is not None]
    if not loaded:
        return None
    if all(layout is not None for _, _, layout in loaded):
        return prompt_grid_figure([cell for row in images for cell in row if cell is not None])
    return _panel_figure(images, [image.shape for _, image, _ in loaded if image is not None])


def _panel_figure(images: list, shapes: list[tuple]) -> Figure:
    """Each run's whole grid as one panel (its own prompt labels included)."""
    n_rows, n_cols = len(images), max(len(row) for row in images)
    # Panels sized by the grids' own aspect (rows of prompts), titles wrapped so that
    # long generic-plan titles (several params) do not run into their neighbours.
    aspect = float(np.median([h / w for h, w, _ in shapes]))
    panel_width = 2.6
    fig = Figure(figsize=(panel_width * n_cols, (panel_width * aspect + 0.5) * n_rows),
                 layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, row in enumerate(images):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c >= len(row) or row[c] is None:
                continue
            panel, image, _ = row[c]
            ax.set_title(textwrap.fill(panel.title, 32), fontsize=7)
            if image is not None:
                ax.imshow(image, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, panel.note or f"no {schema.GRID_FINAL}", ha="center",
                        va="center", fontsize=8, transform=ax.transAxes)
    return fig


def _tiles(image: np.ndarray, boxes: list) -> np.ndarray:
    """A prompt's first tiles side by side (one white pixel apart), enlarged by an integer
    factor with nearest neighbour so every pixel stays a crisp square."""
    tiles = [image[top:bottom, left:right] for left, top, right, bottom in boxes[:TILES_PER_CELL]]
    height = max(t.shape[0] for t in tiles)
    gap = np.full((height, 1, 3), 255, np.uint8)
    strip = np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1)
    factor = max(1, math.ceil(UPSCALE_TO_PX / max(height, 1)))
    return strip.repeat(factor, axis=0).repeat(factor, axis=1)


def prompt_grid_figure(columns: list[tuple[Panel, np.ndarray | None, dict | None]]) -> Figure:
    """One row per prompt (its text once, above the row), one column per arm (``columns``
    in order: the trials' panels, then the teacher's), each cell that arm's first
    :data:`TILES_PER_CELL` images of the prompt. The figure's width grows with the columns
    and its fonts with it, so that printed at :data:`COLUMN_WIDTH_IN` every text is at
    least :data:`MIN_FONT_PT`."""
    prompts: list[str] = []
    for _, _, layout in columns:
        prompts += [p for p in (layout or {}).get("prompts", []) if p not in prompts]
    n_cols = len(columns)
    width = max(COLUMN_WIDTH_IN, 0.8 * n_cols)
    font = MIN_FONT_PT * width / COLUMN_WIDTH_IN
    # Characters per line: a text character is about half the font size wide.
    wrap = max(10, int(width * 72 / (0.55 * font)))
    cell_width = width / n_cols
    strips = {(c, p): _tiles(image, layout["cells"][layout["prompts"].index(p)])
              for c, (_, image, layout) in enumerate(columns)
              if layout is not None and image is not None for p in layout["prompts"]}
    aspect = float(np.median([s.shape[0] / s.shape[1] for s in strips.values()]))
    line = font * 1.35 / 72
    heights = [cell_width * aspect + line * (textwrap.fill(p, wrap).count("\n") + 1.6)
               for p in prompts]
    header = line * 2.4  # the arms' names above the first row, up to two lines
    fig = Figure(figsize=(width, sum(heights) + header), layout="constrained")
    subfigs = fig.subfigures(len(prompts), 1, squeeze=False,
                             height_ratios=[h + (header if r == 0 else 0)
                                            for r, h in enumerate(heights)])[:, 0]
    for r, (subfig, prompt) in enumerate(zip(subfigs, prompts)):
        subfig.suptitle(textwrap.fill(prompt, wrap), fontsize=font, x=0.0, ha="left")
        for c, ax in enumerate(subfig.subplots(1, n_cols, squeeze=False)[0]):
            ax.set_axis_off()
            panel, _, _ = columns[c]
            if r == 0:
                # The teacher's sampler and κ are in the table; here its name suffices.
                teacher = panel.run is not None and panel.run["role"] == "teacher"
                title = "Teacher" if teacher else panel.title
                ax.set_title(textwrap.fill(title, max(6, int(wrap / n_cols))), fontsize=font)
            if (c, prompt) in strips:
                ax.imshow(strips[c, prompt], interpolation="nearest")
            elif r == 0:
                ax.text(0.5, 0.5, panel.note or "no grid", ha="center", va="center",
                        fontsize=font, transform=ax.transAxes)
    return fig


def _load(fetch, run, image_module) -> tuple[np.ndarray | None, dict | None]:
    """The run's grid as RGB pixels and its layout (None where either is missing)."""
    if run is None:
        return None, None
    path = fetch(run["run_id"])
    if path is None:
        return None, None
    with image_module.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    layout_path = path.with_suffix(".json")
    layout = json.loads(layout_path.read_text()) if layout_path.is_file() else None
    return pixels, layout


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """``stem``.png (150 dpi) and ``stem``.pdf, without timestamps in the PDF so the same
    runs give the same bytes."""
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    fig.savefig(png, dpi=150)
    fig.savefig(pdf, metadata={"CreationDate": None})
    return [png, pdf]


def trend_figure(runs: pd.DataFrame, result) -> tuple[str, Figure] | None:
    """(``metrics_vs_<axis>``, figure): each seed's value of each compared metric against
    the trend axis, with the fitted line (a parabola where the plan declares one) and its 95%
    confidence band, per block; log-scale metrics fitted on the log scale and drawn back on
    their own, so the band stays above zero. ``result``: a :class:`results.trend.TrendResult`."""
    from results.trend import ols

    axis = result.trend.axis
    trials = runs[(runs["role"] == "trial") & (runs["status"] == "finished")]
    keys = list(dict.fromkeys(f.key for f in result.findings))
    if not keys or axis not in trials:
        return None
    degree = 2 if result.trend.model == "quadratic" else 1
    blocks = result.blocks
    fig = Figure(figsize=(4.0 * len(keys), 3.4), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    teacher = _teacher_agg(runs, keys)
    combos_ = combos(trials, blocks)
    spacing = np.ptp(trials[axis].to_numpy(float)) / 120 if len(combos_) > 1 else 0.0
    for ax, key in zip(axes, keys):
        metric = metric_of(key)
        for index, block in enumerate(combos_):
            rows = trials
            for param, value in zip(blocks, block):
                rows = rows[rows[param].map(str) == str(value)]
            rows = rows.dropna(subset=[key, axis])
            x, y = rows[axis].to_numpy(float), rows[key].to_numpy(float)
            colour = _colour(blocks, block, index)
            label = ", ".join(short_text(k, v) for k, v in zip(blocks, block)) or "seeds"
            # Blocks sit side by side at each value, so their seeds do not hide each other.
            offset = (index - (len(combos_) - 1) / 2) * spacing
            ax.scatter(x + offset, y * metric.scale, s=14, color=colour, alpha=0.75,
                       label=label, zorder=3)
            finding = next((f for f in result.findings if f.key == key
                            and tuple(v for _, v in f.block) == tuple(block)), None)
            positive = not metric.log_scale or (y > 0).all()
            if finding is None or not finding.slope.testable or not positive:
                continue
            on_scale = np.log(y) if metric.log_scale else y
            fit = ols(x, on_scale, degree)
            grid = np.linspace(x.min(), x.max(), 60)
            design = np.column_stack([(grid - x.mean()) ** d for d in range(degree + 1)])
            band = fit.get_prediction(design).summary_frame(alpha=0.05)
            centre, low, high = (band[c].to_numpy(float)
                                 for c in ("mean", "mean_ci_lower", "mean_ci_upper"))
            if metric.log_scale:
                centre, low, high = np.exp(centre), np.exp(low), np.exp(high)
            ax.plot(grid, centre * metric.scale, color=colour, linewidth=1.5,
                    label=f"{'parabola' if degree == 2 else 'line'}, 95% band"
                    if index == 0 else None)
            ax.fill_between(grid, low * metric.scale, high * metric.scale, color=colour,
                            alpha=0.15, linewidth=0)
        for _, row in teacher.iterrows():
            shown = shown_interval(row, key)[0] if f"{key}_mean" in row else math.nan
            if math.isfinite(shown):
                ax.axhline(shown * metric.scale, color="0.4", linestyle="--",
                           linewidth=1, label=teacher_label(row))
        said = [f for f in result.findings if f.key == key and f.slope.testable]
        if len(said) == 1:
            ax.set_title(f"{said[0].word}: {said[0].effect(said[0].slope.estimate)} per unit",
                         fontsize=9)
        ax.set_xlabel("guidance scale κ" if axis == "kappa" else PARAM_HEADERS.get(axis, axis))
        ax.set_ylabel(metric.header(key, result.protocol))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return f"metrics_vs_{axis}", fig
