"""The trend and interaction families (results/trend.py, results/interaction.py): slope,
interval, p, flatness, lack of fit, Kendall's τ and the optimum against hand-computed
values; the error rate and power of the words by simulation; the crossed model against
statsmodels' formula interface; the plan's ``compare.trend`` and its refusals."""

from __future__ import annotations

import gc
import itertools
import math
import os
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from scipy import stats
from test_latex import PDFLATEX, _compile, _require_pdflatex
from test_stats import _frame

from distill import metrics as registry
from results import families
from results.comparison import ComparisonError, Trend, parse
from results.interaction import analyse as interaction
from results.stats import ALPHA, holm
from results.tables import to_latex
from results.trend import (
    analyse,
    detectable_slope,
    fit_slope,
    lack_of_fit,
    optimum,
    seeds_per_value,
    slope_power,
    word,
)

KAPPAS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
SWEEP_AXES = [("kappa", KAPPAS)]

# --------------------------------------------------------------------------- by hand

# Four values, two seeds each: y = 1 + 0.5 x plus a pattern of errors.
X = np.array([0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0])
Y = np.array([1.1, 0.8, 1.6, 1.3, 2.2, 1.9, 2.4, 2.6])


def test_slope_interval_p_and_flatness_match_the_formulas():
    n = len(X)
    sxx = float(np.sum((X - X.mean()) ** 2))  # 10
    slope = float(np.sum((X - X.mean()) * (Y - Y.mean())) / sxx)
    residual = Y - (Y.mean() + slope * (X - X.mean()))
    se = math.sqrt(float(np.sum(residual ** 2)) / (n - 2) / sxx)
    t975 = stats.t.ppf(0.975, n - 2)
    s = fit_slope(X, Y, delta=0.1)
    assert s.estimate == pytest.approx(slope) and s.estimate == pytest.approx(0.525)
    assert s.se == pytest.approx(se)
    assert (s.low, s.high) == pytest.approx((slope - t975 * se, slope + t975 * se))
    assert s.p == pytest.approx(2 * stats.t.sf(slope / se, n - 2))
    # Flat within ±0.1: the worse of the two one-sided tests; far from flat here.
    assert s.p_flat == pytest.approx(stats.t.cdf((slope - 0.1) / se, n - 2))
    assert s.df == n - 2 and s.values == 4 and s.n == n
    assert s.sigma == pytest.approx(se * math.sqrt(sxx))
    # Inside a wide margin it is flat (p_flat small), and the word says so.
    wide = fit_slope(X, Y, delta=2.0)
    assert wide.p_flat == pytest.approx(max(stats.t.sf((slope + 2.0) / se, n - 2),
                                            stats.t.cdf((slope - 2.0) / se, n - 2)))
    assert word(wide, wide.p, wide.p_flat) == "flat"
    assert word(s, s.p, s.p_flat) == "rises"
    assert word(fit_slope(X, -Y, 0.1), s.p, s.p_flat) == "falls"


def test_lack_of_fit_against_the_cell_means_by_hand():
    s = fit_slope(X, Y, delta=0.1)
    means = {v: Y[v == X].mean() for v in np.unique(X)}
    pure = sum((y - means[x]) ** 2 for x, y in zip(X, Y))  # 4 x 0.045
    fitted = Y.mean() + s.estimate * (X - X.mean())
    residual = float(np.sum((Y - fitted) ** 2))
    f = ((residual - pure) / (4 - 2)) / (pure / (8 - 4))
    assert s.lack_of_fit.f == pytest.approx(f)
    assert (s.lack_of_fit.df_model, s.lack_of_fit.df_error) == (2, 4)
    assert s.lack_of_fit.p == pytest.approx(stats.f.sf(f, 2, 4))
    # No replicates: no pure error, no test.
    assert lack_of_fit(np.arange(5.0), np.arange(5.0) ** 2, 1.0, 2) is None


def test_kendall_tau_b_by_counting_pairs():
    s = fit_slope(X, Y, delta=0.1)
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(X)), 2):
        dx, dy = X[i] - X[j], Y[i] - Y[j]
        ties_x += dx == 0
        ties_y += dy == 0
        if dx * dy > 0:
            concordant += 1
        elif dx * dy < 0:
            discordant += 1
    pairs = len(X) * (len(X) - 1) / 2
    tau_b = (concordant - discordant) / math.sqrt((pairs - ties_x) * (pairs - ties_y))
    assert s.tau == pytest.approx(tau_b)


def test_a_log_scale_metric_is_a_ratio_per_unit():
    rng = np.random.default_rng(3)
    x = np.repeat(KAPPAS, 3)
    y = 8.0 * np.exp(-0.2 * x + rng.normal(0, 0.05, len(x)))
    s = fit_slope(x, y, delta=0.1, log_scale=True)
    on_logs = fit_slope(x, np.log(y), delta=math.log1p(0.1))
    assert s.estimate == pytest.approx(on_logs.estimate) and s.p == pytest.approx(on_logs.p)
    assert s.margin == pytest.approx(math.log1p(0.1)) and s.log_scale
    assert math.expm1(s.estimate) == pytest.approx(math.expm1(-0.2), abs=0.02)


def test_untestable_inputs_say_why():
    assert fit_slope([1, 1, 2, 2], [1, 2, 3, 4], 0.1).why == "< 3 values of the axis"
    assert fit_slope([1, 2, 3], [5, 5, 5], 0.1).why == "no spread"
    assert "≤ 0" in fit_slope([1, 2, 3], [1, 0, 2], 0.1, log_scale=True).why
    assert word(fit_slope([1, 2, 3], [5, 5, 5], 0.1), 0.0, 0.0) == "untestable"


def test_the_optimum_of_a_parabola_and_fieller_interval():
    # y = (x - 1.8)^2 + errors: the fitted minimum near 1.8, inside the range.
    x = np.repeat(KAPPAS, 3)
    errors = np.tile([-0.02, 0.0, 0.02], len(KAPPAS)) * np.repeat([1, -1, 1, -1, 1, -1], 3)
    y = (x - 1.8) ** 2 + errors
    b2, b1, _ = np.polyfit(x, y, 2)
    best = optimum(x, y, lower_is_better=True)
    assert best.inside and best.at == pytest.approx(-b1 / (2 * b2))
    assert best.low < best.at < best.high
    # Fieller's bounds are where the t statistic of a - θ b (a = -b1, b = 2 b2 about the
    # centre) reaches the 97.5% point: check that property at both ends.
    import statsmodels.api as sm

    centre = x.mean()
    fit = sm.OLS(y, np.column_stack([np.ones_like(x), x - centre, (x - centre) ** 2])).fit()
    cov = np.asarray(fit.cov_params())
    a, b = -fit.params[1], 2 * fit.params[2]
    t975 = stats.t.ppf(0.975, fit.df_resid)
    for bound in (best.low, best.high):
        theta = bound - centre
        variance = cov[1, 1] - 2 * theta * (-2 * cov[1, 2]) + theta ** 2 * 4 * cov[2, 2]
        assert abs(a - theta * b) / math.sqrt(variance) == pytest.approx(t975)
    # The same parabola asked for a maximum has none inside: its best end is the far one.
    worst = optimum(x, y, lower_is_better=False)
    assert not worst.inside and worst.at == 0.5
    # A monotone metric is best at an end.
    assert optimum(x, 2 * x + errors, lower_is_better=False).at == 3.0


def test_power_detectable_slope_and_seeds_per_value():
    se, df = 0.1, 16
    d = detectable_slope(se, df, 0.05)
    assert slope_power(d, se, df, 0.05) == pytest.approx(0.8, abs=1e-6)
    assert slope_power(0.0, se, df, 0.05) == pytest.approx(0.05)
    # Large-sample check: z-approximation (1.96 + 0.84) sigma.
    assert detectable_slope(1.0, 10_000, 0.05) == pytest.approx(1.96 + 0.8416, abs=0.01)
    levels = np.array(KAPPAS)
    n = seeds_per_value(0.01, 0.05, levels, 2, 0.05 / 3)
    spread = float(np.sum((levels - levels.mean()) ** 2))

    def power(seeds):
        return slope_power(0.01, 0.05 / math.sqrt(seeds * spread), seeds * 6 - 2, 0.05 / 3)

    assert power(n) >= 0.8 > power(n - 1)


# --------------------------------------------------------------------------- simulation

DRAWS = 3000
MOST = 0.05 + 3 * math.sqrt(0.05 * 0.95 / DRAWS)
# Spreads like the embedded sweep's: FD-CLIP log-normal (sd of logs 0.3), CLIP sd 0.05,
# adherence sd 0.07.
SPREADS = ((registry.FID, 0.3), (registry.CLIP_SCORE, 0.05), (registry.ADHERENCE, 0.07))


@pytest.fixture
def frozen_gc():
    gc.freeze()
    yield
    gc.unfreeze()


def _verdicts(rng, slope_in_sd: float):
    """One simulated sweep (six values x three seeds, the three metrics): the words."""
    x = np.repeat(KAPPAS, 3)
    slopes = []
    for metric, sd in SPREADS:
        y = slope_in_sd * sd * x + rng.normal(0, sd, len(x))
        values = np.exp(np.log(4.0) + y) if metric.log_scale else 0.5 + y
        slopes.append(fit_slope(x, values, metric.delta, metric.log_scale, power=False))
    p, p_flat = holm([s.p for s in slopes]), holm([s.p_flat for s in slopes])
    p_tau = holm([s.p_tau for s in slopes])
    return [word(s, a, b) for s, a, b in zip(slopes, p, p_flat)], p_tau


@pytest.mark.slow
def test_no_true_trend_is_called_rising_or_falling_at_most_5_percent(frozen_gc):
    rng = np.random.default_rng(11)
    claims = rank_claims = 0
    for _ in range(DRAWS):
        words, p_tau = _verdicts(rng, 0.0)
        claims += any(w in ("rises", "falls") for w in words)
        rank_claims += any(p < ALPHA for p in p_tau)
    assert claims / DRAWS <= MOST
    assert rank_claims / DRAWS <= MOST


@pytest.mark.slow
def test_the_reported_power_is_what_the_simulation_finds(frozen_gc):
    """With a true slope of one seed-sd per unit (one metric, so α is not split), the share
    of sweeps called "rises" is the power the family computes, and at its detectable slope
    the share is 80%."""
    x = np.repeat(KAPPAS, 3)
    se = 1.0 / math.sqrt(float(np.sum((x - x.mean()) ** 2)))
    predicted = slope_power(1.0, se, len(x) - 2, ALPHA)
    detectable = detectable_slope(se, len(x) - 2, ALPHA)
    rng = np.random.default_rng(5)
    for slope, expected in ((1.0, predicted), (detectable, 0.8)):
        rises = 0
        for _ in range(DRAWS):
            s = fit_slope(x, slope * x + rng.normal(0, 1.0, len(x)), 0.01, power=False)
            rises += word(s, s.p, s.p_flat) == "rises"
        margin = 3 * math.sqrt(expected * (1 - expected) / DRAWS)
        assert abs(rises / DRAWS - expected) <= margin


# --------------------------------------------------------------------------- the family


def _sweep_runs(comparison, clip=lambda k, seed: 0.4 + 0.05 * k + 0.01 * (seed - 1),
                strategies=("lsg",)):
    rows = [{"strategy": s, "kappa": k, "seed": seed,
             "fid2k": 8.0 * math.exp(-0.1 * k + 0.1 * ((seed * 7 + int(2 * k)) % 3 - 1)),
             "clip_score": clip(k, seed) + (0.03 * k if s == "cfg" else 0.0),
             "colour_shape_size_acc": 0.3 + 0.02 * ((seed + int(2 * k)) % 3)}
            for s in strategies for k in KAPPAS for seed in range(3)]
    return _frame(rows, comparison=comparison)


def test_a_plan_without_compare_gets_the_trend_of_its_six_valued_axis():
    from results.comparison import from_plan

    comparison = from_plan(None, SWEEP_AXES)
    assert comparison.trend == Trend("kappa", declared=False)
    result = analyse(_sweep_runs(comparison), comparison)
    line = result.lines()[0]
    assert line.startswith("trend over κ (least squares")
    assert "CLIP rises with κ: +0.050 per unit [" in line
    assert "FD-CLIP " in line and "% per unit [" in line
    assert "adherence " in line and " pts per unit [" in line
    clip = next(f for f in result.findings if f.metric is registry.CLIP_SCORE)
    assert clip.word == "rises" and result.family == 3
    # Holm over the family: the smallest p times 3, as multipletests does.
    assert clip.p_holm == pytest.approx(holm([f.slope.p for f in result.findings])[1])


def test_trend_off_and_a_declared_quadratic():
    off = parse({"trend": False}, SWEEP_AXES)
    assert off.trend_off and analyse(_sweep_runs(off), off) is None
    curved = parse({"trend": {"axis": "kappa", "model": "quadratic",
                              "delta": {"clip": 0.02}}}, SWEEP_AXES)
    assert curved.trend.delta_of("clip") == 0.02 and curved.trend.delta_of("fid") == 0.1
    runs = _sweep_runs(curved, clip=lambda k, seed: 0.5 - 0.04 * (k - 2.0) ** 2
                       + 0.005 * (seed - 1))
    result = analyse(runs, curved)
    clip = next(f for f in result.findings if f.metric is registry.CLIP_SCORE)
    assert clip.slope.optimum.inside and clip.slope.optimum.at == pytest.approx(2.0, abs=0.05)
    assert clip.slope.lack_of_fit.p < 0.05  # a parabola is not a line
    line = result.lines()[0]
    assert "not a line: the slope averages a curve" in line
    assert "highest at κ = 2.00 [" in line


def test_comparison_json_keeps_the_trend():
    from results.comparison import Comparison

    declared = parse({"trend": {"axis": "kappa", "model": "quadratic"}}, SWEEP_AXES)
    assert Comparison.from_json(declared.to_json()) == declared
    off = parse({"trend": False}, SWEEP_AXES)
    assert Comparison.from_json(off.to_json()) == off
    legacy = '{"arms": ["kappa"], "reference": [2.0], "metrics": ["clip"], "delta": {"clip": 0.01}}'
    old = Comparison.from_json(legacy)
    assert old.trend is None and not old.trend_off  # the default rule, applied to the runs
    assert analyse(_sweep_runs(old), old).trend.axis == "kappa"


@pytest.mark.parametrize("trend, key, says", [
    ({"axis": "strategy"}, "compare.trend.axis", "is not numeric"),
    ("strategy", "compare.trend.axis", "is not numeric"),
    ({"axis": "alpha"}, "compare.trend.axis", "has 2 distinct values"),
    ({"axis": "nope"}, "compare.trend.axis", "is not an axis of the plan"),
    ({"axis": "kappa", "delta": {"clip": 0}}, "compare.trend.delta.clip", "finite number > 0"),
    ({"axis": "kappa", "delta": {"clip": -0.1}}, "compare.trend.delta.clip", "> 0"),
    ({"axis": "kappa", "model": "cubic"}, "compare.trend.model", "line, quadratic"),
    ({"axis": "kappa", "slope": 1}, "compare.trend.slope", "unknown key"),
])
def test_bad_trend_declarations_name_the_key(trend, key, says):
    axes = [("kappa", KAPPAS), ("strategy", ("lsg", "cfg")), ("alpha", (0.5, 1.0))]
    with pytest.raises(ComparisonError) as error:
        parse({"arms": ["strategy"], "trend": trend}, axes)
    assert str(error.value).startswith(key + ":") and says in str(error.value)


def test_interaction_difference_of_slopes_against_the_formula_model():
    import statsmodels.formula.api as smf

    comparison = parse({"arms": ["strategy"], "reference": {"strategy": "lsg"}},
                       [("strategy", ("lsg", "cfg")), ("kappa", KAPPAS)])
    runs = _sweep_runs(comparison, strategies=("lsg", "cfg"))
    result = interaction(runs, comparison)
    assert result.groups == ["strategy"] and result.reference == ("lsg",)
    clip = next(f for f in result.findings if f.metric is registry.CLIP_SCORE)
    trials = runs.assign(x=runs["kappa"] - np.mean(KAPPAS))
    fit = smf.ols("clip_score ~ C(strategy, Treatment(reference='lsg')) * x", trials).fit()
    term = "C(strategy, Treatment(reference='lsg'))[T.cfg]:x"
    assert clip.contrast.slope_difference == pytest.approx(fit.params[term])
    low, high = fit.conf_int().loc[term]
    assert (clip.contrast.low, clip.contrast.high) == pytest.approx((low, high))
    assert clip.contrast.p == pytest.approx(fit.pvalues[term])
    assert clip.contrast.slope_difference == pytest.approx(0.03)
    assert clip.word == "differs"
    line = result.lines()[0]
    assert "CLIP slope over κ of cfg minus lsg's: +0.030 per unit [" in line
    power = result.power()
    assert "ANOVA (type II) of CLIP" in power and "group:x" in power
    # FD-CLIP moves alike in both strategies: the difference is exactly zero, inside ±10%.
    fid = next(f for f in result.findings if f.metric is registry.FID)
    assert fid.contrast.slope_difference == pytest.approx(0.0, abs=1e-12)


def test_the_families_reach_the_tables_and_latex(tmp_path):
    comparison = parse({"arms": ["strategy"], "reference": {"strategy": "lsg"},
                        "trend": {"axis": "kappa", "model": "quadratic"}},
                       [("strategy", ("lsg", "cfg")), ("kappa", KAPPAS)])
    runs = _sweep_runs(comparison, strategies=("lsg", "cfg"))
    answered = {a.family.name: a for a in families.answers(runs, comparison)}
    assert list(answered) == ["pairwise", "matched", "trend", "interaction"]
    for name, rows in (("trend", 6), ("interaction", 3)):
        table = answered[name].table("tradeoff")
        assert isinstance(table.csv, pd.DataFrame) and len(table.csv) == rows
        if PDFLATEX or os.environ.get("CI"):
            _require_pdflatex()
            folder = tmp_path / name
            folder.mkdir()
            _compile(folder, to_latex(table))
    stem, figure = answered["trend"].figure(runs)
    assert stem == "metrics_vs_kappa" and len(figure.axes) == 3
    # Each strategy's 18 seeds are drawn, and the band around its fitted FD-CLIP curve stays
    # above zero (fitted on the log scale, drawn back on FD-CLIP's own).
    fid_axis = figure.axes[0]
    points = [c for c in fid_axis.collections if isinstance(c, PathCollection)]
    assert sorted(len(c.get_offsets()) for c in points) == [18, 18]
    bands = [c for c in fid_axis.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    for band in bands:
        assert (band.get_paths()[0].vertices[:, 1] > 0).all()


def test_ablate_tables_prints_each_metrics_trend_for_a_plan_without_compare(tmp_path, capsys):
    """A real SQLite store, a plan with no compare: section and no plan file logged (so the
    default rule applies to its runs), κ over six values × three seeds: `ablate tables`
    prints the trend line of every metric in the issue's form, and writes the trend table,
    power.md's trend section and the figure."""
    from mlflow import MlflowClient
    from test_results import _log_run

    from orchestrator import cli
    from results import schema

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(schema.EXPERIMENT_PREFIX + "dose",
                                          artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, run_name="dose-parent", tags={
        schema.ROLE: "parent", schema.PLAN: "dose", schema.PROFILE: "embedded"}).info.run_id
    client.set_terminated(parent)
    for row in _sweep_runs(None).to_dict("records"):
        _log_run(client, experiment, parent, "trial", f"k{row['kappa']}s{row['seed']}",
                 {"strategy": "lsg", "kappa": row["kappa"], "seed": row["seed"]}, "finished",
                 {k: row[k] for k in ("fid2k", "clip_score", "colour_shape_size_acc")},
                 tmp_path / "staging")
    capsys.readouterr()
    assert cli.main(["tables", "--plan", "dose", "--tracking-uri", uri,
                     "--out", str(tmp_path / "tables")]) == 0
    out = capsys.readouterr().out
    line = next(text for text in out.splitlines() if text.startswith("trend over κ"))
    assert "CLIP rises with κ: +0.050 per unit [+0.0" in line
    assert re.search(r"FD-CLIP (rises|falls|flat|unresolved) with κ: [-+]\d+\.\d% per unit "
                     r"\[[-+]\d+\.\d%, [-+]\d+\.\d%\]", line)
    assert re.search(r"adherence (rises|falls|flat|unresolved) with κ: [-+]\d+\.\d pts per "
                     r"unit \[[-+]\d+\.\d, [-+]\d+\.\d\]", line)
    folder = tmp_path / "tables" / "dose"
    assert {"trend.md", "trend.tex", "trend.csv", "metrics_vs_kappa.png"} <= {
        p.name for p in folder.iterdir()}
    power = (folder / "power.md").read_text()
    assert "## Trend over κ" in power and "| — | CLIP | +0.050 [" in power
    assert "**Table (tab:ablate-dose-trend).**" in out
