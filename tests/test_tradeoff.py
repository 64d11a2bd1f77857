"""FID at matched CLIP (results/tradeoff.py): the interpolation by hand, the levels from the
common CLIP range, and the verdict words on curves built to differ or to agree."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from results.comparison import Comparison
from results.tradeoff import crossing, matched

KAPPAS = (1.5, 2.0, 3.0, 4.5)
CLIP = {"lsg": (0.50, 0.60, 0.70, 0.80), "cfg": (0.55, 0.62, 0.69, 0.75)}
COMPARISON = Comparison(("strategy",), ("lsg",), ("fid", "clip"),
                        (("fid", 0.1), ("clip", 0.01)))


def test_crossing_interpolates_log_fid_linearly_in_clip():
    clip, log_fid = np.array([0.5, 0.6, 0.7]), np.array([1.0, 2.0, 4.0])
    assert crossing(clip, log_fid, 0.65) == pytest.approx(3.0)
    assert crossing(clip, log_fid, 0.6) == pytest.approx(2.0)
    assert math.isnan(crossing(clip, log_fid, 0.45))
    # Not monotone: the first bracketing pair in κ order (0.5 -> 0.7), 3/4 of the way.
    assert crossing(np.array([0.5, 0.7, 0.6]), log_fid, 0.65) == pytest.approx(1.75)


def _runs(fid_of) -> pd.DataFrame:
    """lsg and cfg over κ for three seeds; FID from ``fid_of(strategy, clip, seed)``."""
    rows = [{"run_id": f"{s}{k}{seed}", "role": "trial", "status": "finished",
             "eval_protocol": "embedded-16px-clip", "strategy": s, "kappa": k, "seed": seed,
             "clip_score": CLIP[s][i], "fid2k": fid_of(s, CLIP[s][i], seed)}
            for s in CLIP for i, k in enumerate(KAPPAS) for seed in range(3)]
    frame = pd.DataFrame(rows)
    frame.attrs["param_columns"] = ["strategy", "kappa", "seed"]
    return frame


def test_levels_come_from_the_range_every_curve_covers():
    result = matched(_runs(lambda s, c, seed: 4.0 + 10 * c), COMPARISON)
    # lsg covers 0.50-0.80, cfg 0.55-0.75: the common range is 0.55-0.75, its quartiles
    # and midpoint 0.60, 0.65, 0.70.
    assert result.levels == pytest.approx((0.60, 0.65, 0.70))


def test_a_worse_trade_off_is_worse_at_every_matched_clip():
    # FID grows exponentially with CLIP on one curve shared by the arms, and cfg sits 50%
    # above it (times 1 + 1% per seed): at any CLIP, cfg / lsg = 1.5 x (1 + 0.01 seed), so the
    # paired log differences are log 1.5 + log(1.00, 1.01, 1.02): +51.5% on average.
    result = matched(_runs(lambda s, c, seed: math.exp(5 * c) * (
        1.5 * (1 + 0.01 * seed) if s == "cfg" else 1.0)), COMPARISON)
    assert [f.word for f in result.findings] == ["worse"] * 3
    expected = 100 * (math.exp(np.mean(np.log([1.5, 1.515, 1.53]))) - 1)
    assert result.findings[0].effect(result.findings[0].diff.estimate) == f"+{expected:.1f}%"
    line = result.line("embedded-16px-clip")
    assert line.startswith("FD-CLIP at matched CLIP (paired by seed, ratio on the log scale; "
                           "Holm over 3 tests) vs lsg: CLIP 0.600: cfg: +51.5% [")


def test_the_same_trade_off_is_equivalent():
    # The same curve, cfg within ±0.5% of lsg seed by seed: inside ±10%.
    result = matched(_runs(lambda s, c, seed: math.exp(5 * c) * (
        1 + 0.005 * (seed - 1) if s == "cfg" else 1.0)), COMPARISON)
    assert [f.word for f in result.findings] == ["equivalent"] * 3


def test_only_plans_that_sweep_kappa_across_arms_get_it():
    runs = _runs(lambda s, c, seed: 4.0)
    one_kappa = runs[runs["kappa"] == 2.0].copy()
    one_kappa.attrs.update(runs.attrs)
    assert matched(one_kappa, COMPARISON) is None
    by_kappa = Comparison(("kappa",), (2.0,), ("fid",), (("fid", 0.1),))
    assert matched(runs, by_kappa) is None
