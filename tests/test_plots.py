"""Figures: the right number of series with the right points and CI bars, saved as
PNG and PDF files that parse (Agg and matplotlib's PDF backend, no pyplot)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer
from PIL import Image
from test_results import (
    GRID_PROMPTS,
    SKEWED_GMEAN,
    SKEWED_HIGH,
    SKEWED_LOW,
    T975_DF1,
    T975_DF2,
    TILE,
    shared_store,
    skewed_runs,
)

from results.load import load_runs
from results.plots import (
    COLUMN_WIDTH_IN,
    MIN_FONT_PT,
    UPSCALE_TO_PX,
    Panel,
    sample_grid_figure,
    sample_panels,
    save_figure,
    sweep_figure,
    tradeoff_figure,
)
from results.report import fetch_grid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def kappa_runs(store):
    return load_runs("kappa", store["uri"])


def _errorbars(ax) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def _check_files(paths, size_at_least=(200, 200)):
    png, pdf = paths
    with Image.open(png) as image:
        image.verify()  # a truncated or corrupt PNG raises here
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size >= size_at_least
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert b"/Type /Page" in data


def _series_lines(ax):
    """The κ plot's per-series lines (solid), not the teacher's dashed reference."""
    return [line for line in ax.get_lines() if line.get_linestyle() == "-"]


def _bands(ax):
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def _kappa_figure(runs):
    """The sweep figure as the report draws it for a plan compared over κ."""
    from results.comparison import Comparison
    from results.verdict import compare

    comparison = Comparison(("kappa",), (2.0,), ("fid", "clip"), (("fid", 0.1), ("clip", 0.01)))
    swept = sweep_figure(runs, compare(runs, comparison))
    if swept is None:
        return None
    assert swept[0] == "kappa"
    return swept[1]


def test_metrics_vs_kappa_one_series_per_strategy_with_ci_bands(kappa_runs, tmp_path):
    fig = _kappa_figure(kappa_runs)
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["FD-CLIP (2k) ↓, geometric mean", "CLIP ↑",
                                                "Adherence (%) ↑"]
    for ax in axes:
        # lsg and cfg, each with its band
        assert len(_series_lines(ax)) == 2 and len(_bands(ax)) == 2
        # Teacher baseline: one dashed horizontal reference line per axis.
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(dashed) == 1
    fid_ax = axes[0]
    lsg, cfg = _series_lines(fid_ax)
    assert lsg.get_label() == "lsg (diverged 1/6)" and cfg.get_label() == "cfg"
    x, y = lsg.get_data()
    # lsg FID: κ=1 -> 14, 15; κ=2 -> 18, 19; κ=3 -> 22 (seed 1 diverged); drawn as the
    # table shows it, by geometric mean.
    assert list(x) == [1.0, 2.0, 3.0]
    assert list(y) == pytest.approx([math.sqrt(14 * 15), math.sqrt(18 * 19), 22.0])
    # The band at κ=1 spans √210 · (15/14)^(∓t/2), t = t_{0.975,1} (the t-interval of the
    # logs: their sd is log(15/14)/√2); at κ=3 one finished seed has no interval, so the
    # band closes to the value.
    band = _bands(fid_ax)[0].get_paths()[0].vertices
    at = {round(float(vx), 6): [] for vx in (1.0, 3.0)}
    for vx, vy in band:
        if round(float(vx), 6) in at:
            at[round(float(vx), 6)].append(float(vy))
    assert min(at[1.0]) == pytest.approx(math.sqrt(210) * (15 / 14) ** (-T975_DF1 / 2))
    assert max(at[1.0]) == pytest.approx(math.sqrt(210) * (15 / 14) ** (T975_DF1 / 2))
    assert min(at[3.0]) == pytest.approx(22.0) and max(at[3.0]) == pytest.approx(22.0)
    _check_files(save_figure(fig, tmp_path / "kappa"))


def test_tradeoff_curve_per_strategy_and_teacher_point(kappa_runs, tmp_path):
    fig = tradeoff_figure(kappa_runs)
    (ax,) = fig.axes
    bars = _errorbars(ax)
    assert [b.get_label() for b in bars] == ["lsg (diverged 1/6)", "cfg",
                                             "Teacher (ddim, 25 steps, κ = 2)"]
    x, y = bars[1].lines[0].get_data()  # cfg, sorted by κ: CLIP up, FID up
    assert list(x) == pytest.approx([0.2705, 0.2905, 0.3105])
    # FID 19, 20 / 23, 24 / 27, 28: geometric means, as the table shows them.
    assert list(y) == pytest.approx([math.sqrt(19 * 20), math.sqrt(23 * 24), math.sqrt(27 * 28)])
    tx, ty = bars[2].lines[0].get_data()
    assert (list(tx), list(ty)) == ([0.31], [6.0])
    # Every point names its κ in its curve's colour (the curve is in the legend), the
    # second curve's labels below its points; the teacher's star is named too.
    texts = {(t.get_text(), t.get_color(), t.xyann[1]) for t in ax.texts}
    lsg_colour, cfg_colour = (b.lines[0].get_color() for b in bars[:2])
    assert texts == {*((f"κ={k}", lsg_colour, 4) for k in (1, 2, 3)),
                     *((f"κ={k}", cfg_colour, -10) for k in (1, 2, 3)), ("teacher", "0.3", 4)}
    _check_files(save_figure(fig, tmp_path / "tradeoff"))


def _bar_ends(bar: ErrorbarContainer, vertical: bool) -> list[tuple[float, float]]:
    """(low, high) of each of an errorbar's bars along y (``vertical``) or x, as drawn
    (matplotlib draws a point's x bars first, then its y bars)."""
    assert bar.has_xerr and bar.has_yerr
    axis = 1 if vertical else 0
    return [(float(seg[:, axis].min()), float(seg[:, axis].max()))
            for seg in map(np.asarray, bar.lines[2][axis].get_segments())]


def _skewed_with_teacher():
    """test_results.skewed_runs (FID 2, 4, 16 for lsg at κ = 1) and two teacher runs
    scoring FID 2 and 8."""
    runs = skewed_runs()
    teacher = [{"run_id": f"t{i}", "run_name": "", "role": "teacher", "status": "finished",
                "trial_id": "", "sampler": "ddim", "kappa": 2.0, "seed": i, "fid2k": fid,
                "clip_score": 0.33} for i, fid in enumerate((2.0, 8.0))]
    both = pd.concat([runs, pd.DataFrame(teacher)], ignore_index=True)
    both.attrs.update(runs.attrs)
    return both


def test_log_scale_bars_and_bands_are_geometric_and_stay_above_zero():
    runs = _skewed_with_teacher()
    # The premise: lsg's FID at κ = 1 has an arithmetic 95% interval reaching below zero.
    fids = np.array([2.0, 4.0, 16.0])
    assert fids.mean() - T975_DF2 * fids.std(ddof=1) / math.sqrt(3) < 0
    (ax,) = tradeoff_figure(runs).axes
    assert ax.get_ylabel() == "FID (2k) ↓, geometric mean" and ax.get_xlabel() == "CLIP ↑"
    lsg, cfg, teacher = _errorbars(ax)
    _, y = lsg.lines[0].get_data()
    assert list(y) == pytest.approx([SKEWED_GMEAN, (6 * 6.5 * 7) ** (1 / 3)])
    # The FID bar at κ = 1 is the geometric interval (test_results: 2^(7/3 ∓ t·√7/3)).
    assert _bar_ends(lsg, vertical=True)[0] == pytest.approx((SKEWED_LOW, SKEWED_HIGH))
    # CLIP 0.30, 0.31, 0.32 is not on the log scale: mean ± half-width, symmetric.
    half = T975_DF2 * 0.01 / math.sqrt(3)
    assert _bar_ends(lsg, vertical=False)[0] == pytest.approx((0.31 - half, 0.31 + half))
    # The teacher's star: FID 2 and 8, geometric mean 4, interval 4 · 2^(∓t), t = t_{0.975,1}.
    assert list(teacher.lines[0].get_data()[1]) == pytest.approx([4.0])
    (teacher_ends,) = _bar_ends(teacher, vertical=True)
    assert teacher_ends == pytest.approx((4.0 / 2 ** T975_DF1, 4.0 * 2 ** T975_DF1))
    assert all(low > 0 for bar in (lsg, cfg, teacher)
               for low, _ in _bar_ends(bar, vertical=True))
    # The sweep figure's FID band: the same interval, above zero everywhere.
    fid_ax = _kappa_figure(runs).axes[0]
    assert fid_ax.get_ylabel() == "FID (2k) ↓, geometric mean"
    band = _bands(fid_ax)[0].get_paths()[0].vertices  # lsg
    at_one = [float(vy) for vx, vy in band if vx == 1.0]
    assert (min(at_one), max(at_one)) == pytest.approx((SKEWED_LOW, SKEWED_HIGH))
    assert all(b.get_paths()[0].vertices[:, 1].min() > 0 for b in _bands(fid_ax))


def test_kappa_figure_absent_when_kappa_fixed(store):
    lsg_runs = load_runs("lsg", store["uri"])
    assert _kappa_figure(lsg_runs) is None
    ax = tradeoff_figure(lsg_runs).axes[0]
    assert len(_errorbars(ax)) == 4  # lsg, cfg, none as single points, plus the teacher
    assert sorted(t.get_text() for t in ax.texts) == ["cfg", "lsg", "none", "teacher"]


def test_sample_grid_layout_and_images(store, kappa_runs, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(store["uri"])

    def fetch(run_id):
        return fetch_grid(client, run_id, tmp_path / run_id)

    layout = sample_panels(kappa_runs)
    # strategies x κ; the lsg κ=3 panel shows the finished seed 0 (seed 1 diverged).
    assert [[panel.title for panel in row] for row in layout] == [
        ["lsg, κ=1", "lsg, κ=2", "lsg, κ=3"], ["cfg, κ=1", "cfg, κ=2", "cfg, κ=3"],
        ["Teacher (ddim, 25 steps, κ = 2)"]]
    assert layout[0][2].run["seed"] == 0
    fig = sample_grid_figure(kappa_runs, fetch)
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    # The kappa teacher logged no grid: its panel is left out; 6 trial images remain.
    assert len(images) == 6 and len(fig.axes) == 6
    assert np.asarray(images[0])[0, 0].tolist() == [200, 30, 30]  # lsg's red grid
    assert np.asarray(images[3])[0, 0].tolist() == [30, 200, 30]  # cfg's green grid

    lsg_runs = load_runs("lsg", store["uri"])
    lsg_layout = sample_panels(lsg_runs)
    assert [[panel.title for panel in row] for row in lsg_layout] == [
        ["lsg", "cfg", "none", "Teacher (ddim, 25 steps, κ = 2)"]]


def test_samples_with_layouts_have_one_row_per_prompt_readable_at_column_width(store,
                                                                               tmp_path):
    """The lsg plan's grids come with their layout: one row per prompt, the prompt written
    once above it at >= 8 pt once the figure is printed at column width, one column per arm
    plus the teacher, the tiles enlarged by an integer factor with nearest neighbour."""
    from mlflow import MlflowClient

    client = MlflowClient(store["uri"])
    fig = sample_grid_figure(load_runs("lsg", store["uri"]),
                             lambda run_id: fetch_grid(client, run_id, tmp_path / run_id))
    width = fig.get_size_inches()[0]
    assert width >= COLUMN_WIDTH_IN
    print_scale = COLUMN_WIDTH_IN / width  # how much the figure shrinks at column width
    rows = fig.subfigs
    assert [row.texts[0].get_text() for row in rows] == list(GRID_PROMPTS)  # once per row
    first = rows[0].axes
    assert [ax.get_title() for ax in first] == ["lsg", "cfg", "none", "Teacher"]
    assert not any(ax.get_title() for row in rows[1:] for ax in row.axes)
    for text in [row.texts[0] for row in rows] + [ax.title for ax in first]:
        assert text.get_fontsize() * print_scale >= MIN_FONT_PT - 1e-9
    # Each cell: the prompt's 2 tiles (8 px, one white pixel apart) x 16 (8 px -> 128 px).
    factor = UPSCALE_TO_PX // TILE
    lsg_first, lsg_second = (np.asarray(row.axes[0].images[0].get_array()) for row in rows)
    assert lsg_first.shape == (TILE * factor, (2 * TILE + 1) * factor, 3)
    assert all(ax.images[0].get_interpolation() == "nearest" for row in rows for ax in row.axes)
    # Nearest neighbour: every source pixel is a uniform block; rows keep their prompts
    # (the second prompt's tiles are the darker ones), the gap stays white.
    assert lsg_first[0, 0].tolist() == [200, 30, 30] and lsg_second[0, 0].tolist() == [100, 15, 15]
    assert lsg_first[:, TILE * factor:(TILE + 1) * factor].min() == 255
    teacher = np.asarray(rows[0].axes[3].images[0].get_array())
    assert teacher[0, 0].tolist() == [128, 128, 128]
    _check_files(save_figure(fig, tmp_path / "samples"))


def test_sample_grid_panel_explains_a_group_without_finished_runs(store, kappa_runs, tmp_path):
    from mlflow import MlflowClient

    runs = kappa_runs.copy()
    dead = (runs["strategy"] == "cfg") & (runs["kappa"] == 2.0)
    runs.loc[dead, "status"] = "failed"
    fig = sample_grid_figure(runs, lambda run_id: None)
    assert fig is None  # no image anywhere: no figure rather than a page of notes
    layout = sample_panels(runs)
    assert layout[1][1] == Panel("cfg, κ=2", None, "failed 2/2")
    # A κ that one strategy never ran leaves a gap, so the columns stay aligned.
    without = runs[~((runs["strategy"] == "lsg") & (runs["kappa"] == 1.0))].copy()
    without.attrs.update(runs.attrs)
    gapped = sample_panels(without)
    assert gapped[0][0] is None and gapped[0][1].title == "lsg, κ=2"
    client = MlflowClient(store["uri"])
    fig = sample_grid_figure(without, lambda run_id: fetch_grid(client, run_id,
                                                                tmp_path / run_id))
    assert len(fig.axes) == 6  # 2 strategies x 3 κ; the kappa teacher logged no grid
    assert not fig.axes[0].images and not fig.axes[0].get_title()  # the gap
    assert [t.get_text() for t in fig.axes[4].texts] == ["failed 2/2"]  # cfg κ=2
    assert sum(1 for ax in fig.axes if ax.images) == 4
    # In the κ plot the failed point is a gap (NaN), and the legend says why.
    cfg = _series_lines(_kappa_figure(runs).axes[0])[1]
    assert cfg.get_label() == "cfg (failed 2/6)"
    fid = cfg.get_data()[1]
    assert fid[0] == pytest.approx(math.sqrt(19 * 20)) and math.isnan(fid[1])
    assert fid[2] == pytest.approx(math.sqrt(27 * 28))


def test_same_runs_give_the_same_bytes(kappa_runs, tmp_path):
    first = save_figure(_kappa_figure(kappa_runs), tmp_path / "a")
    second = save_figure(_kappa_figure(kappa_runs), tmp_path / "b")
    for one, two in zip(first, second):
        assert one.read_bytes() == two.read_bytes(), one.name


def test_single_strategy_sweep_is_one_named_series(kappa_runs):
    """The default κ sweep runs lsg only: one series, still named and coloured as lsg."""
    lsg_only = kappa_runs[kappa_runs["strategy"] != "cfg"].copy()
    lsg_only.attrs.update(kappa_runs.attrs)
    for ax in _kappa_figure(lsg_only).axes:
        (series,) = _series_lines(ax)
        assert series.get_label() == "lsg (diverged 1/6)"
        assert series.get_color() == "C0"  # lsg keeps its colour (its place in STRATEGIES)
