"""Metrics against iterations: the order of the arms per evaluation, seeds agreeing with it,
where it settles, and the curve figure's series and bands. Frames are built by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from results.convergence import ARM, curve, ordering, ordering_table, settled_at
from results.plots import curve_figure

# FID per (strategy, seed) at steps 50, 100, 150. At 50, cfg leads on the mean; from 100 on,
# lsg < cfg < none on the mean. Seed 2 has lsg and cfg swapped at 150.
FID = {
    ("lsg", 0): [9.0, 4.0, 3.0], ("lsg", 1): [9.0, 5.0, 3.5], ("lsg", 2): [8.5, 4.5, 6.0],
    ("cfg", 0): [6.0, 6.0, 5.0], ("cfg", 1): [7.0, 6.5, 5.5], ("cfg", 2): [8.0, 6.0, 5.0],
    ("none", 0): [12.0, 8.0, 7.0], ("none", 1): [11.0, 9.0, 8.0], ("none", 2): [13.0, 8.5, 7.5],
}


def _history() -> pd.DataFrame:
    """In the shape results.convergence.load_history returns, arms named by strategy."""
    history = pd.DataFrame([{"run_id": f"{s}{seed}", "step": step, ARM: s,
                             "seed": seed, "fid2k": values[i]}
                            for (s, seed), values in FID.items()
                            for i, step in enumerate((50, 100, 150))])
    history.attrs["arms"] = ["strategy"]
    return history


def test_order_per_step_seeds_agreeing_and_settling():
    orders = ordering(_history(), "fid2k")
    assert list(orders["step"]) == [50, 100, 150]
    # Means at 50: lsg 8.83, cfg 7.0, none 12.0 -> cfg < lsg < none.
    assert orders["order"][0] == ("cfg", "lsg", "none")
    # Seed 0: cfg 6 < lsg 9 < none 12; seed 1: cfg 7 < lsg 9 < none 11; seed 2: cfg 8 <
    # lsg 8.5 < none 13: all agree.
    assert (orders["seeds_agreeing"][0], orders["seeds"][0]) == (3, 3)
    assert orders["order"][1] == orders["order"][2] == ("lsg", "cfg", "none")
    # At 150 seed 2 has cfg 5.0 < lsg 6.0: two of three seeds agree.
    assert (orders["seeds_agreeing"][2], orders["seeds"][2]) == (2, 3)
    assert settled_at(orders) == 100


def test_a_late_flip_moves_the_settling_point():
    history = _history()
    # At 150 the none mean drops below everything: the order changes at the last step.
    history.loc[(history[ARM] == "none") & (history["step"] == 150), "fid2k"] = 1.0
    assert settled_at(ordering(history, "fid2k")) == 150


def test_higher_is_better_metrics_order_descending():
    history = _history().rename(columns={"fid2k": "clip_score"})
    orders = ordering(history, "clip_score")
    assert orders["order"][2] == ("none", "cfg", "lsg")


def test_curve_means_and_intervals_and_table_text():
    points = curve(_history(), "fid2k")
    lsg_150 = points[(points[ARM] == "lsg") & (points["step"] == 150)].iloc[0]
    # lsg at 150: 3, 3.5, 6: mean 4.1667, std 1.6073, t_{0.975,2} = 4.3027: ± 3.993.
    assert lsg_150["mean"] == pytest.approx(25 / 6)
    assert lsg_150["ci95"] == pytest.approx(4.302652729749464 * 1.607275126 / 3 ** 0.5)
    assert lsg_150["n"] == 3
    # What the figure draws for FID (log scale): the geometric mean of 3, 3.5, 6 and the
    # exp of the t-interval of the logs, above zero where mean - ci95 (0.17) nearly is not.
    logs = np.log([3.0, 3.5, 6.0])
    half = 4.302652729749464 * logs.std(ddof=1) / 3 ** 0.5
    assert lsg_150["centre"] == pytest.approx(np.exp(logs.mean()))
    assert (lsg_150["low"], lsg_150["high"]) == pytest.approx(
        (np.exp(logs.mean() - half), np.exp(logs.mean() + half)))
    clip = curve(_history().rename(columns={"fid2k": "clip_score"}), "clip_score")
    row = clip[(clip[ARM] == "lsg") & (clip["step"] == 150)].iloc[0]
    assert (row["low"], row["high"]) == pytest.approx((row["mean"] - row["ci95"],
                                                       row["mean"] + row["ci95"]))
    text = ordering_table(_history(), ["fid2k"])
    assert "| 50 | cfg < lsg < none (3/3) |" in text
    assert "| 150 | lsg < cfg < none (2/3) |" in text
    assert "FID from iteration 100" in text


def test_curve_figure_has_a_line_and_band_per_arm():
    fig = curve_figure(_history(), ["fid2k"])
    (ax,) = fig.axes
    lines = [line for line in ax.get_lines()]
    assert [line.get_label() for line in lines] == ["lsg", "cfg", "none"]
    assert list(lines[0].get_xdata()) == [50, 100, 150]
    assert len(ax.collections) == 3
    one_step = _history()[_history()["step"] == 150]
    assert curve_figure(one_step, ["fid2k"]) is None
