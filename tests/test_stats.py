"""The verdict's statistics: each library call checked against hand-computed values, the
words it gives, the family-wise error it keeps under equal arms (simulated), and the
comparison a plan declares reaching the table and the verdict whatever the plan is named.

Frames are built by hand in the shape results.load_runs returns."""

from __future__ import annotations

import gc
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from distill import metrics as registry
from results.comparison import Comparison
from results.stats import detectable_effect, difference, holm, seeds_needed
from results.verdict import compare, judge, power_table

REPO = Path(__file__).resolve().parent.parent
PROTOCOL = "embedded-16px-clip"


def _frame(rows: list[dict], params=("strategy", "kappa", "seed"), comparison=None):
    frame = pd.DataFrame([{"run_id": f"r{i}", "run_name": "", "role": "trial",
                           "status": "finished", "trial_id": "", "eval_protocol": PROTOCOL,
                           **row} for i, row in enumerate(rows)])
    frame.attrs.update(parent_run_id="p", param_columns=[c for c in params if c in frame])
    if comparison is not None:
        frame.attrs["comparison"] = comparison
    return frame


# --------------------------------------------------------------------------- by hand


def test_welch_difference_interval_and_p_match_the_formulas():
    arm, ref = np.array([20.0, 21.0, 22.0]), np.array([10.0, 12.0, 14.0])
    d = difference(arm, ref, delta=0.5)
    # Δ = 21 - 12 = 9; se = sqrt(1/3 + 4/3) = 1.2910; Welch–Satterthwaite
    # df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 2.9412; t = 6.971.
    se, df = math.sqrt(5 / 3), (5 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)
    assert d.estimate == 9.0 and df == pytest.approx(2.9412, abs=1e-4)
    half = scipy_stats.t.ppf(0.975, df) * se
    assert (d.low, d.high) == pytest.approx((9 - half, 9 + half))
    assert d.p == pytest.approx(2 * scipy_stats.t.sf(9 / se, df)) == pytest.approx(0.0065,
                                                                                   abs=1e-4)
    assert (d.sd_arm, d.sd_reference) == (1.0, 2.0)


def test_two_one_sided_tests_by_hand_equivalent_and_not():
    ref = np.array([0.60, 0.61, 0.62])
    arm = ref + 0.001  # Δ = 0.001, sd 0.01 on each side: se = sqrt(2 x 0.0001 / 3) = 0.008165
    se = math.sqrt(2 * 0.0001 / 3)
    # Margin 0.05: t1 = (0.001 + 0.05) / se = 6.246, t2 = (0.001 - 0.05) / se = -6.001, df 4:
    # the larger one-sided p is P(T4 < -6.001) = 0.00194: equivalent within ±0.05.
    wide = difference(arm, ref, delta=0.05)
    expected = max(scipy_stats.t.sf((0.001 + 0.05) / se, 4),
                   scipy_stats.t.cdf((0.001 - 0.05) / se, 4))
    assert wide.p_equivalence == pytest.approx(expected, rel=1e-6)
    assert wide.p_equivalence == pytest.approx(0.00194, abs=2e-5)
    # Margin 0.01 (CLIP's default): t1 = 1.347, t2 = -1.102: p = P(T4 < -1.102) = 0.166. The
    # 95% interval 0.001 ± 2.776 x 0.008165 = [-0.0217, +0.0237] is wider than ±0.01.
    narrow = difference(arm, ref, delta=0.01)
    assert narrow.p_equivalence == pytest.approx(scipy_stats.t.cdf(-0.009 / se, 4), rel=1e-6)
    assert narrow.p_equivalence == pytest.approx(0.166, abs=1e-3)
    assert (narrow.low, narrow.high) == pytest.approx((-0.0217, 0.0237), abs=1e-4)


def test_paired_difference_is_the_one_sample_test_of_the_differences():
    ref = np.array([4.0, 6.0, 5.0, 7.0])
    arm = ref + np.array([1.0, 1.5, 0.5, 1.0])  # differences: mean 1.0, sd 0.4082
    d = difference(arm, ref, delta=0.5, paired=True)
    sd = float(np.std([1.0, 1.5, 0.5, 1.0], ddof=1))
    t = 1.0 / (sd / 2)  # n = 4: t = 4.899 on 3 df
    assert d.estimate == pytest.approx(1.0) and d.paired
    assert d.p == pytest.approx(2 * scipy_stats.t.sf(t, 3))
    half = scipy_stats.t.ppf(0.975, 3) * sd / 2
    assert (d.low, d.high) == pytest.approx((1.0 - half, 1.0 + half))
    # Unpaired, the same values are far less certain (the seed-to-seed spread of 1.3 enters).
    assert difference(arm, ref, delta=0.5).p > 10 * d.p


def test_log_scale_compares_the_ratio_of_geometric_means():
    ref = np.array([4.0, 5.0, 6.0])
    d = difference(ref * 1.2, ref, delta=0.1, log_scale=True)
    assert d.estimate == pytest.approx(math.log(1.2))
    assert d.margin == pytest.approx(math.log(1.1))
    # Equal spreads of the logs: the interval is symmetric around log 1.2 on the log scale.
    assert d.high - d.estimate == pytest.approx(d.estimate - d.low)
    assert not difference(np.array([0.0, 1.0]), ref, 0.1, log_scale=True).testable


def test_holm_by_hand_and_untestable_entries_left_out():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06
    # (the adjusted values never decrease).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, math.nan, 0.04])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.04)


@pytest.mark.parametrize("effect, seeds", [(0.5, 64), (0.8, 26), (1.0, 17)])
def test_power_matches_the_two_sample_t_test_tables(effect, seeds):
    # Cohen's tables, two-sided two-sample t-test, α 0.05, power 0.8.
    assert seeds_needed(effect, paired=False, alpha=0.05) == seeds
    assert detectable_effect(seeds, seeds, False, 0.05) == pytest.approx(effect, abs=0.01)


def test_power_paired_and_edge_cases():
    # One-sample (paired differences) t-test, d = 0.5: n = 33.4 -> 34.
    assert seeds_needed(0.5, paired=True, alpha=0.05) == 34
    assert seeds_needed(0.0, paired=False, alpha=0.05) is None
    assert seeds_needed(1e-6, paired=False, alpha=0.05) == 10_001  # "more than 10,000"
    # The detectable difference comes from the spread, never from the observed difference.
    ref = np.array([1.0, 2.0, 3.0])
    a, b = difference(ref + 0.1, ref, 0.5), difference(ref + 5.0, ref, 0.5)
    assert a.detectable == pytest.approx(b.detectable)


# --------------------------------------------------------------------------- words


def _lsg_runs(fid: dict, clip: dict, adherence: dict, comparison=None) -> pd.DataFrame:
    return _frame([{"strategy": s, "kappa": 2.0, "seed": i, "fid2k": fid[s][i],
                    "clip_score": clip[s][i], "colour_shape_size_acc": adherence[s][i]}
                   for s in fid for i in range(len(fid[s]))], comparison=comparison)


LSG = Comparison(("strategy",), ("lsg",), ("fid", "clip", "adherence"),
                 (("fid", 0.1), ("clip", 0.01), ("adherence", 0.03)))


def test_words_better_worse_equivalent_unresolved_untestable():
    runs = _lsg_runs(
        # FD-CLIP: cfg far worse than lsg (log-scale Welch p ~ 1e-5, x 6 still tiny).
        fid={"lsg": [4.0, 4.1, 4.2], "cfg": [9.0, 9.1, 9.2], "none": [4.0, 4.1, 4.2]},
        # CLIP: none equal to lsg within 0.0005, spread 0.001: TOST at ±0.01 passes.
        clip={"lsg": [0.600, 0.601, 0.602], "cfg": [0.5, 0.7, 0.6],
              "none": [0.6003, 0.6013, 0.6023]},
        # Adherence: cfg's spread swamps any claim; none has no spread on either side.
        adherence={"lsg": [0.7, 0.7, 0.7], "cfg": [0.5, 0.9, 0.7], "none": [0.7, 0.7, 0.7]},
        comparison=LSG)
    result = compare(runs, LSG)
    assert result.test == "welch"  # strategies are no sweep: Welch, Holm over every test
    words = {(f.arm[0], f.metric.name): f.word for f in result.findings}
    assert words == {("cfg", "fid"): "worse", ("cfg", "clip"): "unresolved",
                     ("cfg", "adherence"): "unresolved", ("none", "fid"): "equivalent",
                     ("none", "clip"): "equivalent", ("none", "adherence"): "untestable"}
    line = result.line()
    assert "\n" not in line
    assert line.startswith("verdict (Welch t-tests; Holm over 6 tests, α = 0.05; FD-CLIP as a "
                           "ratio (log scale); equivalent: inside ±δ by two one-sided tests; "
                           "up to 3 seeds per arm) vs lsg: ")
    assert "cfg: FD-CLIP +122.0% [+110.9%, +133.7%] worse" in line  # 9.1 / 4.1 (geometric)
    assert "none: FD-CLIP +0.0% [" in line and "equivalent within ±10%" in line
    assert "adherence untestable (no spread on either side)" in line


def test_an_interval_wider_than_delta_is_unresolved_with_its_detectable_effect():
    runs = _lsg_runs(fid={"lsg": [4.0, 5.0, 6.0], "cfg": [4.2, 5.1, 6.3]},
                     clip={"lsg": [0.60, 0.61, 0.62], "cfg": [0.601, 0.611, 0.621]},
                     adherence={"lsg": [0.6, 0.7, 0.8], "cfg": [0.6, 0.7, 0.8]}, comparison=LSG)
    result = compare(runs, LSG)
    clip = next(f for f in result.findings if f.metric.name == "clip")
    # The two-one-sided-tests example above: [-0.0217, +0.0237] is wider than ±0.01.
    assert clip.word == "unresolved"
    assert clip.interval() == "[-0.022, +0.024]"
    assert clip.diff.detectable > 0.01
    assert "CLIP +0.001 [-0.022, +0.024] unresolved (δ ±0.010; detectable ±" in result.line()
    assert "seeds per arm for δ)" in result.line()


def test_one_seed_claims_nothing():
    runs = _lsg_runs(fid={"lsg": [3.0], "cfg": [8.0]}, clip={"lsg": [0.6], "cfg": [0.5]},
                     adherence={"lsg": [0.9], "cfg": [0.5]}, comparison=LSG)
    line = compare(runs, LSG).line()
    assert line.startswith("verdict: one seed per arm") and "--seeds 0,1,2" in line
    assert "better" not in line and "worse" not in line


def test_paired_comparison_uses_the_seeds_both_arms_finished():
    paired = Comparison(("strategy",), ("lsg",), ("clip",), (("clip", 0.01),), paired=True)
    runs = _lsg_runs(fid={"lsg": [4.0] * 4, "cfg": [4.0] * 4},
                     clip={"lsg": [0.60, 0.70, 0.50, 0.65], "cfg": [0.62, 0.72, 0.53, 0.9]},
                     adherence={"lsg": [0.5] * 4, "cfg": [0.5] * 4}, comparison=paired)
    runs.loc[(runs["strategy"] == "cfg") & (runs["seed"] == 3), "status"] = "diverged"
    result = compare(runs, paired)
    (finding,) = result.findings
    # Seeds 0-2 on both sides; the differences 0.02, 0.02, 0.03 vary little, so pairing
    # tells them apart where the seed-to-seed spread (0.1) would not.
    assert finding.diff.paired and finding.diff.n_arm == finding.diff.n_reference == 3
    assert finding.diff.estimate == pytest.approx(0.07 / 3)
    assert finding.word == "better"
    assert result.line().startswith("verdict (paired t-tests;")


# --------------------------------------------------------------------------- sweeps

KAPPA = Comparison(("kappa",), (2.0,), ("fid", "clip"), (("fid", 0.1), ("clip", 0.01)))
# Four κ, three seeds each; κ = 4 raises CLIP by 0.04 and FD-CLIP by about 30%.
SWEEP_CLIP = {1.0: [0.600, 0.612, 0.618], 2.0: [0.610, 0.620, 0.630],
              3.0: [0.615, 0.621, 0.633], 4.0: [0.650, 0.658, 0.672]}
SWEEP_FID = {1.0: [3.6, 4.0, 4.5], 2.0: [3.9, 4.2, 4.8], 3.0: [4.4, 4.6, 5.3],
             4.0: [5.0, 5.9, 6.4]}


def _sweep_runs(comparison=KAPPA, strategies=("lsg",)) -> pd.DataFrame:
    return _frame([{"strategy": s, "kappa": k, "seed": i, "fid2k": SWEEP_FID[k][i],
                    "clip_score": SWEEP_CLIP[k][i]}
                   for s in strategies for k in SWEEP_CLIP for i in range(3)],
                  comparison=comparison)


def test_a_numeric_sweep_is_judged_by_dunnett_with_bonferroni_over_metrics():
    result = compare(_sweep_runs(), KAPPA)
    assert (result.test, result.groups, result.family) == ("dunnett", 2, 6)
    for metric, values, log in (("clip", SWEEP_CLIP, False), ("fid", SWEEP_FID, True)):
        scale = np.log if log else np.asarray
        direct = scipy_stats.dunnett(*(scale(values[k]) for k in (1.0, 3.0, 4.0)),
                                     control=scale(values[2.0]), alternative="two-sided",
                                     rng=np.random.default_rng(0))
        interval = direct.confidence_interval(0.95)
        mine = [f for f in result.findings if f.metric.name == metric]
        assert [f.arm for f in mine] == [(1.0,), (3.0,), (4.0,)]
        for j, f in enumerate(mine):
            assert f.diff.p == pytest.approx(direct.pvalue[j], rel=1e-12)
            assert f.p_holm == pytest.approx(min(1.0, 2 * direct.pvalue[j]), rel=1e-12)
            assert (f.diff.low, f.diff.high) == pytest.approx(
                (interval.low[j], interval.high[j]), rel=1e-12)
            assert f.diff.estimate == pytest.approx(
                np.mean(scale(values[f.arm[0]])) - np.mean(scale(values[2.0])))
    clip4 = result.find({}, (4.0,), "clip_score")
    # CLIP at κ = 4: +0.040; the sd pooled over the four arms is 0.00990 on 12 - 4 = 8 df,
    # so the interval is 0.040 ± c x 0.00990 x sqrt(2/3) with c = 2.88, Dunnett's two-sided
    # 95% critical value for three arms on 8 df (his 1964 table).
    half = (clip4.diff.high - clip4.diff.low) / 2
    assert clip4.diff.estimate == pytest.approx(0.04)
    assert half / (0.0098995 * math.sqrt(2 / 3)) == pytest.approx(2.88, abs=0.01)
    # p = 0.0031, x 2 metrics = 0.0061: better. Welch on these two arms alone gives p = 0.010,
    # which Holm over the six tests takes to 0.060: the same data, unresolved.
    assert clip4.p_holm == pytest.approx(0.0061, abs=2e-4) and clip4.word == "better"
    welch = judge([(f.metric, np.array(SWEEP_CLIP[f.arm[0]] if f.metric.name == "clip"
                                       else SWEEP_FID[f.arm[0]]),
                    np.array(SWEEP_CLIP[2.0] if f.metric.name == "clip" else SWEEP_FID[2.0]))
                   for f in result.findings], KAPPA)
    assert welch[result.findings.index(clip4)][3] == "unresolved"
    # FD-CLIP at κ = 4: +33.9%, Dunnett p = 0.030, x 2 = 0.059: unresolved, though the
    # interval (95% over the metric's three arms, not over both metrics) leaves out zero.
    assert result.find({}, (4.0,), "fid2k").word == "unresolved"
    assert result.line().startswith(
        "verdict (Dunnett many-to-one within each metric, Bonferroni over 2 metrics, "
        "α = 0.05; FD-CLIP as a ratio (log scale); equivalent: inside ±δ by two one-sided "
        "Welch tests; up to 3 seeds per arm) vs κ=2: ")
    assert "κ=4: FD-CLIP +33.9% [+3.3%, +73.6%] unresolved" in result.line()
    assert "CLIP +0.040 [+0.017, +0.063] better" in result.line()
    table = power_table(result)
    assert "| p Dunnett | p Bonferroni |" in table and "Welch-based" in table


def test_dunnett_only_for_a_many_to_one_sweep_of_numbers_fixed_before_the_scores():
    # κ crossed with strategy: one Dunnett test per block and metric.
    crossed = compare(_sweep_runs(strategies=("lsg", "cfg")), KAPPA)
    assert (crossed.test, crossed.groups) == ("dunnett", 4)
    assert "within each block and metric, Bonferroni over 4 block × metric groups" \
        in crossed.head()
    # An arm that finished nothing still counts (the rule reads the launched trials) and
    # stays out of its group's test, untestable; the others match Dunnett's over two arms.
    runs = _sweep_runs()
    runs.loc[runs["kappa"] == 3.0, "status"] = "failed"
    failed = compare(runs, KAPPA)
    assert failed.test == "dunnett"
    assert failed.find({}, (3.0,), "clip_score").word == "untestable"
    direct = scipy_stats.dunnett(SWEEP_CLIP[1.0], SWEEP_CLIP[4.0], control=SWEEP_CLIP[2.0],
                                 rng=np.random.default_rng(0))
    assert failed.find({}, (4.0,), "clip_score").diff.p == pytest.approx(direct.pvalue[1])
    # One arm besides the reference: no sweep, Welch as before.
    two = _sweep_runs()
    two = two[two["kappa"].isin([2.0, 4.0])]
    assert compare(two, KAPPA).test == "welch"
    # Paired seeds: paired t-tests, whatever the arms are.
    paired = Comparison(KAPPA.arms, KAPPA.reference, KAPPA.metrics, KAPPA.delta, paired=True)
    assert compare(_sweep_runs(paired), paired).test == "paired"
    # Two arm params: no many-to-one sweep of one axis.
    both = Comparison(("strategy", "kappa"), ("lsg", 2.0), ("clip",), (("clip", 0.01),))
    assert compare(_sweep_runs(both, ("lsg", "cfg")), both).test == "welch"
    with pytest.raises(ValueError, match="paired"):
        judge([(registry.CLIP_SCORE, np.ones(3), np.ones(3))], paired, groups=[0])


# --------------------------------------------------------------------------- equal arms


def _false_claims(draws: int, arms: int, metrics: list, seed: int) -> float:
    """The share of experiments with equal arms in which the verdict calls anything better
    or worse: arms x metrics tests per verdict, each arm three seeds."""
    comparison = Comparison(("kappa",), (0,), tuple(m.name for m, _ in metrics),
                            tuple((m.name, m.delta) for m, _ in metrics))
    rng = np.random.default_rng(seed)
    claims = 0
    for _ in range(draws):
        tests = []
        reference = [draw(rng) for _, draw in metrics]
        for _ in range(arms - 1):
            tests += [(m, draw(rng), ref) for (m, draw), ref in zip(metrics, reference)]
        claims += any(word in ("better", "worse")
                      for *_, word in judge(tests, comparison, power=False))
    return claims / draws


# Spreads like the embedded runs': FD-CLIP log-normal around 4 (sd of logs 0.3), CLIP
# 0.62 ± 0.02, adherence 68% ± 4 points.
FD = (registry.FID, lambda rng: np.exp(rng.normal(math.log(4.0), 0.3, 3)))
CLIP = (registry.CLIP_SCORE, lambda rng: rng.normal(0.62, 0.02, 3))
ADHERENCE = (registry.ADHERENCE, lambda rng: rng.normal(0.68, 0.04, 3))
DRAWS = 3000
# 5% plus three Monte-Carlo standard errors of a 5% rate over DRAWS experiments.
MOST = 0.05 + 3 * math.sqrt(0.05 * 0.95 / DRAWS)


@pytest.fixture
def frozen_gc():
    """statsmodels' multipletests calls gc.collect(); with pandas and MLflow loaded that
    is most of a draw. Freezing what exists now keeps the collections small."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.mark.slow
def test_six_equal_arms_three_seeds_are_called_different_at_most_5_percent(frozen_gc):
    # The old "best arm vs the rest" rule: ~22% per metric. Against a declared reference,
    # Holm over the family: at most 5%.
    for metric in (FD, CLIP):
        assert _false_claims(DRAWS, 6, [metric], seed=1) <= MOST


@pytest.mark.slow
def test_three_equal_arms_three_metrics_are_called_different_at_most_5_percent(frozen_gc):
    assert _false_claims(DRAWS, 3, [FD, CLIP, ADHERENCE], seed=2) <= MOST


def _sweep_words(draws: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Six κ of three seeds on CLIP, the fourth raised by ``shift`` seed-sds, each κ against
    the first: per draw, the five arms' words under Dunnett's test and under Holm on
    Welch's (the verdict's two decisions, on the same draws)."""
    comparison = Comparison(("kappa",), (0,), ("clip",), (("clip", CLIP[0].delta),))
    rng = np.random.default_rng(seed)
    dunnett, welch = [], []
    for _ in range(draws):
        reference, *arms = (CLIP[1](rng) for _ in range(6))
        arms[2] = arms[2] + shift * 0.02
        tests = [(CLIP[0], arm, reference) for arm in arms]
        dunnett.append([w for *_, w in judge(tests, comparison, power=False, groups=[0] * 5)])
        if shift:
            welch.append([w for *_, w in judge(tests, comparison, power=False)])
    return np.array(dunnett), np.array(welch)


SWEEP_DRAWS = 300


@pytest.mark.slow
def test_a_sweep_of_six_equal_arms_is_called_different_at_most_5_percent_by_dunnett(
        frozen_gc):
    dunnett, _ = _sweep_words(SWEEP_DRAWS, 0.0, seed=3)
    claims = np.isin(dunnett, ("better", "worse")).any(axis=1).mean()
    assert claims <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / SWEEP_DRAWS)


@pytest.mark.slow
def test_dunnett_finds_a_sweeps_true_difference_more_often_than_holm_on_welch(frozen_gc):
    # One κ 1.5 seed-sds above the rest: Dunnett's pooled variance (12 df) against Welch's
    # two to four df, Holm over five tests.
    dunnett, welch = _sweep_words(SWEEP_DRAWS // 2, 1.5, seed=4)
    found_dunnett, found_welch = [(words[:, 2] == "better").mean() for words in (dunnett, welch)]
    assert found_dunnett > found_welch


# --------------------------------------------------------------------------- any plan


ALPHA_PLAN = """\
name: alpha-study
base: {kappa: 2.0}
axes:
  alpha: [0.5, 1.0, 1.2]
seeds: [0, 1, 2]
"""
ALPHA_COMPARE = """\
compare:
  reference: {alpha: 1.0}
  metrics: [fid, clip]
  delta: {fid: 0.2, clip: 0.02}
"""
# CLIP falls with α away from 1; FD-CLIP does not move.
ALPHA_CLIP = {0.5: [0.50, 0.51, 0.52], 1.0: [0.60, 0.61, 0.62], 1.2: [0.601, 0.611, 0.621]}


def _alpha_runs(comparison) -> pd.DataFrame:
    return _frame([{"alpha": a, "kappa": 2.0, "seed": i, "fid2k": 4.0 + 0.1 * i,
                    "clip_score": ALPHA_CLIP[a][i]} for a in ALPHA_CLIP for i in range(3)],
                  params=("alpha", "kappa", "seed"), comparison=comparison)


def test_a_plan_named_anything_gets_its_declared_comparison(tmp_path):
    from orchestrator.plan import load_plan
    from results.tables import build_table, to_markdown

    path = tmp_path / "alpha.yaml"
    path.write_text(ALPHA_PLAN + ALPHA_COMPARE)
    comparison = load_plan(path).comparison
    assert comparison.reference == (1.0,) and comparison.delta_of("clip") == 0.02
    table = build_table("alpha-study", _alpha_runs(comparison))
    assert table.label_headers == ["α"]
    assert table.headers == ["FD-CLIP (2k) ↓", "Δ FD-CLIP (%)", "CLIP ↑", "Δ CLIP", "Seeds"]
    rows = {r.label[0].text: r.cells for r in table.blocks[0].rows}
    assert list(rows) == ["0.5", "1 (ref.)", "1.2"]
    # Three numeric α against one: a sweep, so Dunnett's test within each metric,
    # Bonferroni over the two metrics.
    assert table.verdict.test == "dunnett" and table.verdict.groups == 2
    # α = 0.5: CLIP 0.1 below the reference, sd 0.01 pooled over the three arms on 6 df:
    # t = -0.1 / 0.008165 = -12.2, Dunnett p = 4.9e-6, x 2 metrics; the simultaneous
    # interval is 0.1 ± 2.86 x 0.008165 (Dunnett's critical value, two arms, 6 df).
    assert rows["0.5"][3].markdown() == "-0.100† [-0.123, -0.077] worse"
    # α = 1.2: CLIP 0.001 above, sd 0.01 each: TOST at ±0.02 gives t2 = -0.019 / 0.008165
    # = -2.327 on 4 df, p = 0.040; Holm over the four equivalence tests ranks it third of
    # four (the two FD-CLIP ones, p = 0.0004, come first): x 2 = 0.081: unresolved.
    assert rows["1.2"][3].note == "unresolved"
    # FD-CLIP is the same in every arm (4.0, 4.1, 4.2): equivalent within ±20%.
    assert rows["1.2"][1].text == "+0.0%" and rows["1.2"][1].note == "equivalent"
    markdown = to_markdown(table)
    assert "Δ vs α=1 with its 95% CI and verdict" in markdown
    line = table.verdict.line()
    assert " vs α=1: " in line and "α=0.5: FD-CLIP +0.0% [" in line
    assert "CLIP -0.100 [-0.123, -0.077] worse" in line


def test_without_compare_the_first_value_of_the_first_axis_is_the_reference(tmp_path):
    from orchestrator.plan import load_plan
    from results.tables import build_table

    path = tmp_path / "alpha.yaml"
    path.write_text(ALPHA_PLAN)
    comparison = load_plan(path).comparison
    assert (comparison.arms, comparison.reference, comparison.declared) == (
        ("alpha",), (0.5,), False)
    assert comparison.metrics == registry.names("verdict")
    table = build_table("alpha-study", _alpha_runs(comparison))
    assert [r.label[0].text for r in table.blocks[0].rows] == ["0.5 (ref.)", "1", "1.2"]
    assert table.verdict.line().split(" vs ", 1)[1].startswith("α=0.5: ")


def test_a_copy_of_lsg_yaml_under_another_name_gives_the_same_table(tmp_path):
    from orchestrator.plan import load_plan
    from results.tables import build_table, to_latex, to_markdown

    copy = tmp_path / "my-guidance-study.yaml"
    shutil.copy(REPO / "ablations" / "lsg.yaml", copy)
    copy.write_text(copy.read_text().replace("name: lsg", "name: my-guidance-study"))
    fid = {"lsg": [4.0, 4.4, 3.7], "cfg": [5.1, 5.9, 4.7], "none": [5.3, 10.6, 15.8]}
    clip = {"lsg": [0.626, 0.612, 0.607], "cfg": [0.624, 0.620, 0.622],
            "none": [0.536, 0.390, 0.445]}
    adherence = {"lsg": [0.715, 0.693, 0.705], "cfg": [0.672, 0.664, 0.714],
                 "none": [0.548, 0.329, 0.336]}
    tables = []
    for path, name in ((REPO / "ablations" / "lsg.yaml", "lsg"), (copy, "my-guidance-study")):
        plan = load_plan(path)
        assert plan.name == name
        tables.append(build_table(name, _lsg_runs(fid, clip, adherence, plan.comparison)))
    original, renamed = tables
    assert to_markdown(renamed) == to_markdown(original).replace(
        "tab:ablate-lsg", "tab:ablate-my-guidance-study")
    assert to_latex(renamed) == to_latex(original).replace(
        "tab:ablate-lsg", "tab:ablate-my-guidance-study")
    assert "Δ FD-CLIP (%)" in original.headers
    assert renamed.verdict.line() == original.verdict.line()


# --------------------------------------------------------------------------- the registry


def test_a_metric_registered_in_one_place_reaches_table_verdict_and_curves():
    from results.comparison import parse
    from results.convergence import curve_metrics
    from results.tables import build_table

    sharpness = registry.Metric("sharpness", "edge_sharpness", "Sharpness", "sharpness",
                                lower_is_better=False, digits=2, final=True, table=True,
                                curve=True, verdict=True, delta=0.05)
    with registry.registered(sharpness):
        comparison = parse({}, [("strategy", ("lsg", "cfg"))])
        assert "sharpness" in comparison.metrics  # the default verdict metrics
        runs = _frame([{"strategy": s, "kappa": 2.0, "seed": i, "fid2k": 4.0 + i,
                        "clip_score": 0.6, "edge_sharpness": (1.0 if s == "lsg" else 0.5)
                        + 0.01 * i} for s in ("lsg", "cfg") for i in range(3)],
                      comparison=comparison)
        table = build_table("any", runs)
        assert "Sharpness ↑" in table.headers and "Δ Sharpness" in table.headers
        assert "sharpness -0.50 [" in table.verdict.line()
        assert "edge_sharpness_mean" in table.csv
        assert "edge_sharpness" in curve_metrics(runs)
    assert registry.by_name("sharpness") is None  # gone after the block
    with pytest.raises(ValueError, match="clashes"):
        registry.register(registry.Metric("clip", "other", "x", "x"))
