"""The one-line verdict: significant differences named with their direction, the rest called
not significant, and no claim at all from one seed. Frames are built by hand in the shape
results.load_runs returns; expected t statistics are worked out in the comments."""

from __future__ import annotations

import pandas as pd
import pytest

from results.stats import seeds_for_power
from results.verdict import power_table, verdict


def _runs(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame([{"role": "trial", "status": "finished", **row} for row in rows])
    frame.attrs["param_columns"] = [c for c in ("strategy", "kappa", "seed") if c in frame]
    return frame


def _lsg_plan(fid: dict, clip: dict, adherence: dict) -> pd.DataFrame:
    return _runs([{"strategy": s, "kappa": 2.0, "seed": i, "fid2k": fid[s][i],
                   "clip_score": clip[s][i], "colour_shape_size_acc": adherence[s][i]}
                  for s in fid for i in range(len(fid[s]))])


def test_lsg_verdict_names_significant_differences_and_calls_the_rest_not_significant():
    runs = _lsg_plan(
        # FID lsg vs cfg: means 12 vs 21, variances 4 and 1: t = 9 / sqrt(5/3) = 6.97 on
        # 2.9 Welch df, p ~ 0.007: lsg better. Adherence: 90% vs 60%, t = 3.67, df 4, p ~ 0.02.
        fid={"lsg": [10.0, 12.0, 14.0], "cfg": [20.0, 21.0, 22.0], "none": [11.0, 13.0, 12.0]},
        # CLIP: the same three values in another order: t = 0, p = 1.
        clip={"lsg": [0.30, 0.31, 0.32], "cfg": [0.32, 0.30, 0.31], "none": [0.31, 0.32, 0.30]},
        adherence={"lsg": [0.8, 0.9, 1.0], "cfg": [0.5, 0.6, 0.7], "none": [0.9, 0.8, 1.0]})
    line = verdict("lsg", runs)
    assert "\n" not in line
    assert line.startswith("verdict (two-sided Welch t-test, p < 0.05, up to 3 finished seeds")
    cfg, none = line.split(" | ")
    assert "lsg vs cfg: lsg better on FID (-9.00, p=0.0" in cfg
    assert "adherence (+30.0 pts, p=0.0" in cfg
    assert "not significant: CLIP (p=1)" in cfg
    # lsg and none hold the same values: nothing can be called different.
    assert none.startswith("lsg vs none: no significant difference: FID (p=1), CLIP (p=1), "
                           "adherence (p=1)")


def test_lsg_worse_is_said_as_worse():
    runs = _lsg_plan(fid={"lsg": [20.0, 21.0, 22.0], "cfg": [10.0, 12.0, 14.0]},
                     clip={"lsg": [0.3, 0.3, 0.3], "cfg": [0.3, 0.3, 0.3]},
                     adherence={"lsg": [0.5, 0.6, 0.7], "cfg": [0.5, 0.6, 0.7]})
    line = verdict("lsg", runs)
    assert "lsg vs cfg: lsg worse on FID (+9.00, p=0.0" in line
    # No spread on either side: Welch's test is undefined, so no claim either way.
    assert "untestable (< 2 finished seeds or no spread): CLIP" in line


def test_one_seed_claims_nothing():
    runs = _lsg_plan(fid={"lsg": [3.0], "cfg": [8.0]}, clip={"lsg": [0.6], "cfg": [0.5]},
                     adherence={"lsg": [0.9], "cfg": [0.5]})
    line = verdict("lsg", runs)
    assert line.startswith("verdict: one seed per row") and "--seeds 0,1,2" in line
    assert "better" not in line


def test_diverged_seeds_do_not_count():
    runs = _lsg_plan(fid={"lsg": [10.0, 12.0, 14.0], "cfg": [20.0, 21.0, 22.0]},
                     clip={"lsg": [0.3, 0.31, 0.32], "cfg": [0.3, 0.31, 0.32]},
                     adherence={"lsg": [0.8, 0.9, 1.0], "cfg": [0.8, 0.9, 1.0]})
    runs.loc[(runs["strategy"] == "cfg") & (runs["seed"] > 0), "status"] = "diverged"
    line = verdict("lsg", runs)
    # cfg keeps one finished seed: every comparison with it is untestable.
    assert "lsg vs cfg: untestable (< 2 finished seeds or no spread): FID, CLIP, adherence" in line


def test_kappa_verdict_names_the_best_and_what_it_beats():
    fid = {1.0: [5.0, 5.5, 6.0], 2.0: [3.0, 3.2, 3.1], 3.0: [3.1, 3.5, 2.9]}
    # CLIP rises with κ; κ = 3 best, and 0.1 apart with spread 0.01 is significant for all.
    clip = {1.0: [0.40, 0.41, 0.42], 2.0: [0.50, 0.51, 0.52], 3.0: [0.60, 0.61, 0.62]}
    runs = _runs([{"strategy": "lsg", "kappa": k, "seed": i, "fid2k": fid[k][i],
                   "clip_score": clip[k][i]} for k in fid for i in range(3)])
    line = verdict("kappa", runs)
    # κ=2 vs κ=1: means 3.1 vs 5.5, t = 2.4 / sqrt(0.01/3 + 0.25/3) = 14.1: significant.
    # κ=2 vs κ=3: means 3.1 vs 3.167, p ~ 0.8: level.
    assert ("FID best at κ=2 (3.10), significantly better than κ=1, not significantly "
            "better than κ=3") in line
    assert "CLIP best at κ=3 (0.610), significantly better than κ=1, κ=2" in line


@pytest.mark.parametrize("effect, seeds", [(2.0, 6), (1.0, 17), (0.8, 26), (0.5, 64)])
def test_seeds_for_power_matches_the_two_sample_t_test_tables(effect, seeds):
    # Cohen's tables for a two-sided two-sample t-test at alpha 0.05, power 0.8: d = 0.5 needs
    # 64 per group, 0.8 needs 26, 1.0 needs 17.
    assert seeds_for_power(effect * 3.0, 3.0, 3.0) == seeds
    # Unequal spreads pool as the root mean square: sds 1 and 7 pool to 5.
    assert seeds_for_power(effect * 5.0, 1.0, 7.0) == seeds


def test_seeds_for_power_edge_cases():
    assert seeds_for_power(0.0, 1.0, 1.0) is None
    assert seeds_for_power(1.0, float("nan"), 1.0) is None
    assert seeds_for_power(1.0, 0.0, 0.0) == 2
    assert seeds_for_power(1e-6, 1.0, 1.0, most=50) == 51


def test_power_table_rows_per_arm_and_metric():
    runs = _lsg_plan(fid={"lsg": [10.0, 12.0, 14.0], "cfg": [20.0, 21.0, 22.0]},
                     clip={"lsg": [0.30, 0.31, 0.32], "cfg": [0.32, 0.30, 0.31]},
                     adherence={"lsg": [0.8, 0.9, 1.0], "cfg": [0.5, 0.6, 0.7]})
    text = power_table(runs)
    # FID: Δ +9, sds 2 and 1 pool to sqrt(2.5) = 1.58, d = 5.7: 2 seeds per arm suffice.
    assert "| cfg − lsg | FID | +9.00 | 2.00 | 1.00 | p=0.0065 | 2 |" in text
    # CLIP: equal means, no difference to detect.
    assert "| cfg − lsg | CLIP | +0.000 | 0.010 | 0.010 | p=1 | — |" in text
    # Adherence: Δ -30 pts, sd 10 each, d = 3: 4 seeds per arm.
    assert "| cfg − lsg | adherence | -30.0 pts | 10.0 | 10.0 | p=0.021 | 4 |" in text
    one_seed = _lsg_plan(fid={"lsg": [3.0], "cfg": [8.0]}, clip={"lsg": [0.6], "cfg": [0.5]},
                         adherence={"lsg": [0.9], "cfg": [0.5]})
    assert power_table(one_seed) is None
