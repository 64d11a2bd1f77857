"""The interaction family: in a crossed plan, does one factor change how the trend axis moves
a metric? ("Does LSG change how κ moves FID?")

Twelve tests at separate κ do not ask that; one linear model with the interaction does. Per
metric, on its registered scale (log for FID), over every finished trial:

    metric ~ group + axis + group × axis

where ``group`` is the combination of the other params that vary (the strategy in
``ablations/tradeoff.yaml``), coded against a reference level (the comparison's reference
where the group is its arm param, else the first level), and ``axis`` is centred on the
middle of its values. For each non-reference level the family gives

- the **difference of slopes** per unit of the axis (level minus reference), its 95%
  interval and one word: **differs** (the test of equal slopes rejects, Holm over the
  family), **parallel** (both one-sided tests put the difference inside ±δ per unit, the
  trend's δ), **unresolved** or **untestable**;
- the **main effect** at the centre of the axis (level minus reference there) and each
  level's slope, in power.md, with statsmodels' ANOVA table (``anova_lm``, type II).

Slopes share one residual variance (ordinary least squares); ``results/trend.py`` gives each
level's own slope with its own spread.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from distill import metrics as registry
from results.arms import PARAM_HEADERS, arm_text, combos
from results.comparison import Comparison, Trend, same_value
from results.stats import ALPHA, eval_protocol, holm, metric_key
from results.trend import p_text, per_unit, scope

WORDS = ("differs", "parallel", "unresolved", "untestable")


@dataclass(frozen=True)
class Contrast:
    """One level against the reference level, on one metric, on the test scale."""

    slope_difference: float
    low: float
    high: float
    p: float
    p_parallel: float
    main_effect: float  # level minus reference at the centre of the axis
    main_low: float
    main_high: float
    main_p: float
    slope: float  # the level's own slope in the joint model
    reference_slope: float
    df: int
    why: str = ""

    @property
    def testable(self) -> bool:
        return not self.why


def untestable(why: str) -> Contrast:
    nan = math.nan
    return Contrast(nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, 0, why=why)


@dataclass(frozen=True)
class InteractionFinding:
    level: tuple  # the group's values
    key: str
    metric: registry.Metric
    delta: float  # per unit (a ratio per unit for log-scale metrics)
    contrast: Contrast
    p_holm: float
    p_parallel_holm: float
    word: str

    @property
    def log_scale(self) -> bool:
        return self.metric.log_scale

    def effect(self, value: float, unit: bool = True) -> str:
        return per_unit(self.metric, self.log_scale, value, unit)


@dataclass(frozen=True)
class MetricModel:
    """One metric's joint model: its ANOVA table (Markdown) and centre of the axis."""

    key: str
    metric: registry.Metric
    anova: str
    centre: float
    n: int


@dataclass(frozen=True)
class InteractionResult:
    trend: Trend
    groups: list[str]
    reference: tuple
    findings: list[InteractionFinding]
    models: list[MetricModel]
    family: int
    protocol: str | None

    def names(self, level: tuple) -> str:
        return arm_text(self.groups, level)

    def head(self) -> str:
        param = PARAM_HEADERS.get(self.trend.axis, self.trend.axis)
        factor = " × ".join(PARAM_HEADERS.get(g, g) for g in self.groups)
        return (f"{factor} × {param} interaction (one least-squares model per metric, "
                f"metric ~ {factor} * {param}; Holm over {self.family} slope differences, "
                f"α = {ALPHA:g}; parallel: inside ±δ per unit by two one-sided tests)")

    def text(self, f: InteractionFinding) -> str:
        name = f.metric.short_for(self.protocol)
        param = PARAM_HEADERS.get(self.trend.axis, self.trend.axis)
        ref = self.names(self.reference)
        if not f.contrast.testable:
            return f"{name} untestable ({f.contrast.why})"
        c = f.contrast
        low, high = (f.effect(v, unit=False) for v in (c.low, c.high))
        extra = ""
        if f.word == "parallel":
            delta = (f"±{100 * f.delta:g}%" if f.log_scale
                     else f"±{f.metric.number(f.delta)}{f.metric.unit}")
            extra = f" within {delta} per unit"
        return (f"{name} slope over {param} of {self.names(f.level)} minus {ref}'s: "
                f"{f.effect(c.slope_difference)} per unit [{low}, {high}] {f.word}{extra}")

    def lines(self) -> list[str]:
        return [f"{self.head()}: " + "; ".join(self.text(f) for f in self.findings)]

    def power(self) -> str:
        param = PARAM_HEADERS.get(self.trend.axis, self.trend.axis)
        ref = self.names(self.reference)
        lines = [f"## Interaction: {' × '.join(self.groups)} × {self.trend.axis}", "",
                 f"| level vs {ref} | metric | slope difference per unit [95% CI] | p | p Holm "
                 "| parallel p Holm | verdict | level's slope | reference slope "
                 f"| main effect at the centre [95% CI] | main p |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for f in self.findings:
            c = f.contrast
            name = f.metric.short_for(self.protocol)
            if not c.testable:
                lines.append(f"| {self.names(f.level)} | {name} | untestable ({c.why}) |"
                             + " |" * 8)
                continue
            lines.append(
                f"| {self.names(f.level)} | {name} | {f.effect(c.slope_difference)} "
                f"[{f.effect(c.low, False)}, {f.effect(c.high, False)}] | {p_text(c.p)} "
                f"| {p_text(f.p_holm)} | {p_text(f.p_parallel_holm)} | {f.word} "
                f"| {f.effect(c.slope)} "
                f"| {f.effect(c.reference_slope)} | {main_text(f)} | {p_text(c.main_p)} |")
        for model in self.models:
            lines += ["", f"ANOVA (type II) of {model.metric.short_for(self.protocol)}"
                      f"{' (log scale)' if model.metric.log_scale else ''}, {model.n} trials; "
                      f"{param} centred at {model.centre:g}:", "", model.anova]
        return "\n".join(lines) + (
            f"\n\n{self.head()}. Slope difference: the interaction coefficient, the level's "
            f"slope over {param} minus {ref}'s, per unit; main effect: the level minus {ref} "
            f"at the centre of {param}'s values. One residual variance is shared by every "
            "level (ordinary least squares).\n")

    def metrics(self) -> dict[str, float]:
        out = {}
        for f in self.findings:
            if f.contrast.testable:
                level = "_".join(str(v) for v in f.level)
                stem = f"interaction.{level}.{f.metric.name}"
                out.update({f"{stem}.slope_difference": f.contrast.slope_difference,
                            f"{stem}.slope_difference_low": f.contrast.low,
                            f"{stem}.slope_difference_high": f.contrast.high})
        return out


def main_text(f: InteractionFinding) -> str:
    c = f.contrast
    if f.log_scale:
        return (f"{100 * math.expm1(c.main_effect):+.1f}% [{100 * math.expm1(c.main_low):+.1f}%, "
                f"{100 * math.expm1(c.main_high):+.1f}%]")
    text = f.metric.signed(c.main_effect)
    low, high = (f.metric.signed(v)[:len(f.metric.signed(v)) - len(f.metric.unit)]
                 for v in (c.main_low, c.main_high))
    return f"{text} [{low}, {high}]"


def _anova_markdown(table: pd.DataFrame) -> str:
    lines = ["| term | sum of squares | df | F | p |", "|---|---|---|---|---|"]
    for term, row in table.iterrows():
        f = row.get("F", math.nan)
        p = row.get("PR(>F)", math.nan)
        lines.append(f"| {term} | {row['sum_sq']:.4g} | {row['df']:g} "
                     f"| {'' if not math.isfinite(f) else f'{f:.2f}'} | {p_text(p)} |")
    return "\n".join(lines)


def contrasts(x: np.ndarray, y: np.ndarray, group: np.ndarray, levels: list[str],
              reference: str, margin: float) -> tuple[dict[str, Contrast], pd.DataFrame | None]:
    """Each level's contrast with ``reference`` in ``y ~ group * x`` (x centred), and the
    model's type II ANOVA table; ``margin`` bounds "parallel" on the test scale."""
    import statsmodels.api as sm
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    others = [lv for lv in levels if lv != reference]
    centre = float(np.mean(np.unique(x)))
    xc = x - centre
    columns = [np.ones_like(xc), xc]
    for level in others:
        indicator = (group == level).astype(float)
        columns += [indicator, indicator * xc]
    design = np.column_stack(columns)
    df = len(y) - design.shape[1]
    nan_result = {lv: untestable("too few trials for the model") for lv in others}
    if df < 1 or any(len(np.unique(x[group == lv])) < 2 for lv in levels):
        return nan_result, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.OLS(y, design).fit()
        data = pd.DataFrame({"y": y, "x": xc, "g": group})
        table = anova_lm(smf.ols(f"y ~ C(g, Treatment(reference={reference!r})) * x",
                                 data=data).fit(), typ=2)
    if not fit.ssr > 0:
        return {lv: untestable("no residual spread") for lv in others}, table
    t = float(stats.t.ppf(1 - ALPHA / 2, df))
    out = {}
    for i, level in enumerate(others):
        main, inter = 2 + 2 * i, 3 + 2 * i
        b, se = float(fit.params[inter]), float(fit.bse[inter])
        m, mse = float(fit.params[main]), float(fit.bse[main])
        p_parallel = max(float(stats.t.sf((b + margin) / se, df)),
                         float(stats.t.cdf((b - margin) / se, df)))
        out[level] = Contrast(b, b - t * se, b + t * se, float(fit.pvalues[inter]), p_parallel,
                              m, m - t * mse, m + t * mse, float(fit.pvalues[main]),
                              float(fit.params[1]) + b, float(fit.params[1]), df)
    table = table.rename(index=lambda term: str(term).replace(
        f"C(g, Treatment(reference={reference!r}))", "group"))
    return out, table


def analyse(runs: pd.DataFrame, comparison: Comparison | None) -> InteractionResult | None:
    """The interaction family of a crossed plan (a trend axis and another varying param);
    None for any other plan."""
    found = scope(runs, comparison)
    if found is None or comparison is None or not found[2]:
        return None
    trend, finished, groups = found
    levels = combos(finished, groups)
    if len(levels) < 2:
        return None
    reference = levels[0]
    if list(comparison.arms) == groups:
        for level in levels:
            if all(same_value(a, b) for a, b in zip(level, comparison.reference)):
                reference = level
    findings_in: list[tuple] = []
    models: list[MetricModel] = []
    for metric in (registry.by_name(n) for n in comparison.metrics):
        key = metric_key(finished, metric) if metric is not None else None
        if metric is not None and key is not None:
            contrasts_of, model = _metric(finished, metric, key, trend, groups, levels,
                                          reference)
            findings_in += contrasts_of
            models += [model] if model is not None else []
    if not findings_in:
        return None
    p_holm = holm([c.p for *_, c in findings_in])
    p_parallel = holm([c.p_parallel for *_, c in findings_in])
    findings = [InteractionFinding(level, key, metric, delta, c, ph, pp, _word(c, ph, pp))
                for (level, key, metric, delta, c), ph, pp
                in zip(findings_in, p_holm, p_parallel)]
    family = sum(f.contrast.testable for f in findings)
    return InteractionResult(trend, groups, reference, findings, models, family,
                             eval_protocol(finished))


def _metric(finished: pd.DataFrame, metric: registry.Metric, key: str, trend: Trend,
            groups: list[str], levels: list[tuple], reference: tuple
            ) -> tuple[list[tuple], MetricModel | None]:
    """One metric's contrasts (level, key, metric, δ, contrast) and its model's ANOVA."""
    labels = {level: arm_text(groups, level) for level in levels}
    rows = finished.dropna(subset=[key, trend.axis])
    group = np.array([arm_text(groups, tuple(row[g] for g in groups))
                      for _, row in rows.iterrows()])
    x, y = rows[trend.axis].to_numpy(float), rows[key].to_numpy(float)
    delta = trend.delta_of(metric.name)
    others = [level for level in levels if level != reference]
    margin = delta
    if metric.log_scale:
        if (y <= 0).any():
            why = untestable("a value ≤ 0 on a log-scale metric")
            return [(level, key, metric, delta, why) for level in others], None
        y, margin = np.log(y), math.log1p(delta)
    result, table = contrasts(x, y, group, [labels[lv] for lv in levels], labels[reference],
                              margin)
    model = None if table is None else MetricModel(
        key, metric, _anova_markdown(table), float(np.mean(np.unique(x))), len(y))
    return [(level, key, metric, delta, result[labels[level]]) for level in others], model


def _word(c: Contrast, p_holm: float, p_parallel_holm: float) -> str:
    if not c.testable:
        return "untestable"
    if p_parallel_holm < ALPHA:
        return "parallel"
    if p_holm < ALPHA:
        return "differs"
    return "unresolved"
