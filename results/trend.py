"""The trend family: how a numeric axis (κ) moves each metric, as one fit over every seed.

A sweep's question is a dose-response question. Testing each κ against κ = 2 spends the data
on fifteen separate comparisons; one least-squares line over all finished trials asks it once
per metric. For each metric (and each block: a value of the other params that vary, e.g. a
strategy in a crossed plan) the family gives

- the **slope per unit** of the axis on the metric's registered scale (log-scale metrics
  such as FID as "% per unit"), its 95% t-interval and exactly one word: **rises** or
  **falls** (the test of a zero slope rejects after Holm's correction over the family),
  **flat** (both one-sided tests put the slope inside ±δ per unit, Holm-corrected), or
  **unresolved**, with the slope these seeds detect at 80% power and the seeds per value
  that would detect δ; **untestable** with fewer than three values of the axis or no spread;
- **lack of fit**: the F test of the line against the cell means (one mean per value).
  Where it rejects, the slope is an average over a curve and the line says so;
- a **rank test** that assumes no line: Kendall's τ-b between the axis and the metric over
  every trial (Holm-corrected over the family); the line says when it disagrees;
- with ``model: quadratic`` declared, the **optimum**: the axis value where the fitted
  parabola is best, with Fieller's 95% interval, or the end of the range where it is best
  when the parabola has no best point inside it.

The fits are statsmodels' OLS (``tests/test_trend.py`` checks slope, interval, p, lack of
fit and optimum against hand-computed values, and the error rate and power by simulation).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, stats

from distill import metrics as registry
from results.arms import (
    PARAM_HEADERS,
    combos,
    param_text,
    select_rows,
    short_text,
    varying_params,
)
from results.comparison import TREND_LEAST_VALUES as LEAST_VALUES
from results.comparison import Comparison, Trend, numeric_values
from results.stats import ALPHA, MOST_SEEDS, POWER, eval_protocol, holm, metric_key

WORDS = ("rises", "falls", "flat", "unresolved", "untestable")


# --------------------------------------------------------------------------- one fit


@dataclass(frozen=True)
class LackOfFit:
    """The F test of a fitted model against the cell means (one mean per axis value)."""

    f: float
    df_model: int  # values − parameters of the model
    df_error: int  # trials − values (pure error)
    p: float


@dataclass(frozen=True)
class Optimum:
    """Where a fitted parabola is best. ``inside``: at ``at`` within the range, with
    Fieller's 95% interval [low, high] (NaN, NaN when the curvature is not resolved, so the
    interval is unbounded); otherwise ``at`` is the end of the range where the fit is best."""

    at: float
    inside: bool
    low: float = math.nan
    high: float = math.nan
    lack_of_fit: LackOfFit | None = None  # of the parabola


@dataclass(frozen=True)
class Slope:
    """One metric's trend over the axis, on the scale the test runs on (the log scale for
    ``log_scale`` metrics: ``estimate`` is then the log of the ratio per unit).

    ``p``: the two-sided test of a zero slope; ``p_flat``: the larger p of the two one-sided
    tests against ±``margin`` per unit; ``detectable``: the slope these trials detect with
    80% power at ``power_alpha``; ``seeds_needed``: seeds per axis value that detect a slope
    of ``margin``; ``tau``/``p_tau``: Kendall's τ-b and its two-sided p.
    """

    n: int
    values: int  # distinct axis values
    estimate: float
    low: float
    high: float
    se: float
    df: int
    p: float
    p_flat: float
    sigma: float  # the residual sd of the line (seed-to-seed spread plus lack of fit)
    detectable: float
    seeds_needed: int | None
    margin: float
    log_scale: bool
    lack_of_fit: LackOfFit | None
    tau: float
    p_tau: float
    optimum: Optimum | None = None
    why: str = ""

    @property
    def testable(self) -> bool:
        return not self.why


def _untestable(why: str, n: int, values: int, margin: float, log_scale: bool) -> Slope:
    nan = math.nan
    return Slope(n, values, nan, nan, nan, nan, 0, nan, nan, nan, nan, None, margin,
                 log_scale, None, nan, nan, why=why)


def slope_power(slope: float, se: float, df: float, alpha: float) -> float:
    """Power of the two-sided t-test of a zero slope at ``alpha`` when the true slope is
    ``slope`` and its standard error ``se`` (noncentral t with ``df`` degrees of freedom)."""
    if not (se > 0 and df > 0):
        return math.nan
    critical = stats.t.ppf(1 - alpha / 2, df)
    ncp = slope / se
    power = float(stats.nct.sf(critical, df, ncp) + stats.nct.cdf(-critical, df, ncp))
    if not math.isfinite(power):  # scipy's noncentral t fails far in the tail at large df,
        # where the t is a normal to many digits
        power = float(stats.norm.sf(critical - ncp) + stats.norm.cdf(-critical - ncp))
    return power


def detectable_slope(se: float, df: float, alpha: float) -> float:
    """The slope detected with 80% power at ``alpha`` (two-sided) given its standard error."""
    if not (se > 0 and df > 0 and math.isfinite(se)):
        return math.nan
    ncp = optimize.brentq(lambda d: slope_power(d, 1.0, df, alpha) - POWER, 0.0, 1e3)
    return float(ncp * se)


def seeds_per_value(margin: float, sigma: float, levels: np.ndarray, parameters: int,
                    alpha: float) -> int | None:
    """Seeds per axis value (the same ``levels``) that detect a slope of ``margin`` with 80%
    power at ``alpha``; MOST_SEEDS + 1 stands for more than MOST_SEEDS."""
    if not (margin > 0 and sigma > 0 and math.isfinite(sigma)):
        return None
    spread = float(np.sum((levels - levels.mean()) ** 2))

    def enough(seeds: int) -> bool:
        se = sigma / math.sqrt(seeds * spread)
        return slope_power(margin, se, seeds * len(levels) - parameters, alpha) >= POWER

    if not enough(MOST_SEEDS):
        return MOST_SEEDS + 1
    low, high = 1, MOST_SEEDS  # power grows with seeds: bisect for the first that is enough
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return max(2, high)


def lack_of_fit(x: np.ndarray, y: np.ndarray, residual_ss: float, parameters: int
                ) -> LackOfFit | None:
    """The model's residual sum of squares against the cell means': F = (lack-of-fit SS /
    (values − parameters)) / (pure-error SS / (trials − values)). None without a value to
    spare or without replicates."""
    levels = np.unique(x)
    df_model, df_error = len(levels) - parameters, len(x) - len(levels)
    if df_model < 1 or df_error < 1:
        return None
    pure = float(sum(np.sum((y[x == v] - y[x == v].mean()) ** 2) for v in levels))
    if pure <= 0:
        return None
    f = ((residual_ss - pure) / df_model) / (pure / df_error)
    return LackOfFit(float(f), df_model, df_error, float(stats.f.sf(f, df_model, df_error)))


def ols(x: np.ndarray, y: np.ndarray, degree: int):
    """statsmodels OLS of y on 1, (x − x̄), ..., (x − x̄)^degree (centred: the linear term of a
    parabola is then its slope at the middle of the data, and the columns stay well
    conditioned)."""
    import statsmodels.api as sm

    centred = x - x.mean()
    design = np.column_stack([centred ** d for d in range(degree + 1)])
    return sm.OLS(y, design).fit()


def optimum(x: np.ndarray, y: np.ndarray, lower_is_better: bool) -> Optimum:
    """Where the parabola fitted to (x, y) is best (its minimum when ``lower_is_better``),
    with Fieller's 95% interval for the ratio −b₁ / (2 b₂) (Fieller 1954; the interval is
    bounded only when the curvature b₂ is itself resolved at 95%)."""
    fit = ols(x, y, 2)
    centre = float(x.mean())
    b1, b2 = float(fit.params[1]), float(fit.params[2])
    cov = np.asarray(fit.cov_params())
    lof = lack_of_fit(x, y, float(fit.ssr), 3)
    low_end, high_end = float(x.min()), float(x.max())
    has_best = b2 > 0 if lower_is_better else b2 < 0
    at = centre - b1 / (2 * b2) if b2 != 0 else math.nan
    if not has_best or not low_end <= at <= high_end:
        ends = np.array([low_end, high_end])
        fitted = fit.params[0] + b1 * (ends - centre) + b2 * (ends - centre) ** 2
        best = int(np.argmin(fitted) if lower_is_better else np.argmax(fitted))
        return Optimum(float(ends[best]), False, lack_of_fit=lof)
    # θ = a / b with a = −b₁, b = 2 b₂: the θ with (a − θ b)² ≤ t² Var(a − θ b).
    t2 = float(stats.t.ppf(1 - ALPHA / 2, fit.df_resid)) ** 2
    a, b = -b1, 2 * b2
    var_a, var_b, cov_ab = cov[1, 1], 4 * cov[2, 2], -2 * cov[1, 2]
    qa, qb, qc = b * b - t2 * var_b, a * b - t2 * cov_ab, a * a - t2 * var_a
    disc = qb * qb - qa * qc
    if qa <= 0 or disc < 0:
        return Optimum(float(at), True, lack_of_fit=lof)
    roots = sorted(((qb - math.sqrt(disc)) / qa + centre, (qb + math.sqrt(disc)) / qa + centre))
    return Optimum(float(at), True, roots[0], roots[1], lof)


def fit_slope(x: np.ndarray, y: np.ndarray, delta: float, log_scale: bool = False,
              power_alpha: float = ALPHA, quadratic: bool = False,
              lower_is_better: bool | None = None, power: bool = True) -> Slope:
    """The trend of ``y`` (finished trials' values) over ``x`` (their axis values).
    ``delta``: the smallest slope of interest per unit, in the metric's units or as a ratio
    per unit for ``log_scale``. ``power_alpha``: the level behind ``detectable`` and
    ``seeds_needed`` (the family passes α over its size, Holm's strictest step).
    ``quadratic``: also locate the optimum (needs ``lower_is_better``). ``power`` False
    leaves ``detectable`` and ``seeds_needed`` unset (the words do not depend on them)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    margin = math.log1p(delta) if log_scale else delta
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    values = len(np.unique(x))
    if log_scale:
        if (y <= 0).any():
            return _untestable("a value ≤ 0 on a log-scale metric", len(y), values, margin,
                               log_scale)
        y = np.log(y)
    if values < LEAST_VALUES:
        return _untestable(f"< {LEAST_VALUES} values of the axis", len(y), values, margin,
                           log_scale)
    if np.ptp(y) == 0:
        return _untestable("no spread", len(y), values, margin, log_scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a perfect fit's divide-by-zero is handled below
        fit = ols(x, y, 1)
        tau, p_tau = stats.kendalltau(x, y)
    df = int(fit.df_resid)
    estimate, se = float(fit.params[1]), float(fit.bse[1])
    if not (se > 0 and math.isfinite(se)):
        return _untestable("the points lie on a line exactly", len(y), values, margin,
                           log_scale)
    half = float(stats.t.ppf(1 - ALPHA / 2, df)) * se
    p_flat = max(float(stats.t.sf((estimate + margin) / se, df)),
                 float(stats.t.cdf((estimate - margin) / se, df)))
    sigma = math.sqrt(float(fit.ssr) / df)
    best = optimum(x, y, bool(lower_is_better)) if quadratic and values > 3 else None
    detectable, needed = ((detectable_slope(se, df, power_alpha),
                           seeds_per_value(margin, sigma, np.unique(x), 2, power_alpha))
                          if power else (math.nan, None))
    return Slope(len(y), values, estimate, estimate - half, estimate + half, se, df,
                 float(fit.pvalues[1]), p_flat, sigma, detectable, needed, margin, log_scale,
                 lack_of_fit(x, y, float(fit.ssr), 2), float(tau), float(p_tau), best)


# --------------------------------------------------------------------------- the family


def per_unit(metric: registry.Metric, log_scale: bool, value: float, unit: bool = True) -> str:
    """A slope as printed: '+0.057', '+6.7 pts', '-14.0%' (a ratio per unit)."""
    if not math.isfinite(value):
        return "—"
    if log_scale:
        return f"{100 * math.expm1(value):+.1f}%"
    text = metric.signed(value)
    return text if unit else text[:len(text) - len(metric.unit)]


def word(slope: Slope, p_holm: float, p_flat_holm: float) -> str:
    if not slope.testable:
        return "untestable"
    if p_flat_holm < ALPHA:
        return "flat"
    if p_holm < ALPHA:
        return "rises" if slope.estimate > 0 else "falls"
    return "unresolved"


def rank_word(slope: Slope, p_tau_holm: float) -> str:
    """What the rank test alone says: rises, falls, or '' (no monotone trend shown)."""
    if not (slope.testable and p_tau_holm < ALPHA):
        return ""
    return "rises" if slope.tau > 0 else "falls"


@dataclass(frozen=True)
class TrendFinding:
    block: tuple[tuple[str, object], ...]  # the other varying params' (param, value) pairs
    key: str
    metric: registry.Metric
    delta: float  # per unit, in the metric's units (a ratio per unit for log-scale metrics)
    slope: Slope
    p_holm: float
    p_flat_holm: float
    p_tau_holm: float
    word: str
    rank: str  # rank_word

    def name(self, protocol: str | None) -> str:
        return self.metric.short_for(protocol)

    def effect(self, value: float, unit: bool = True) -> str:
        return per_unit(self.metric, self.slope.log_scale, value, unit)

    def interval(self) -> str:
        low, high = (self.effect(v, unit=False) for v in (self.slope.low, self.slope.high))
        return f"[{low}, {high}]"

    def delta_text(self) -> str:
        return (f"±{100 * self.delta:g}%" if self.slope.log_scale
                else f"±{self.metric.number(self.delta)}{self.metric.unit}") + " per unit"

    def detectable_text(self) -> str:
        d = self.slope.detectable
        if not math.isfinite(d):
            return "—"
        return (f"±{100 * math.expm1(d):.1f}%" if self.slope.log_scale
                else f"±{self.metric.number(d)}{self.metric.unit}") + " per unit"

    def seeds_text(self) -> str:
        n = self.slope.seeds_needed
        return "—" if n is None else (f"> {MOST_SEEDS}" if n > MOST_SEEDS else str(n))

    @property
    def disagrees(self) -> bool:
        """The rank test and the slope's word name different directions (or one none)."""
        moving = self.word in ("rises", "falls")
        return self.slope.testable and (moving or bool(self.rank)) and (
            self.rank != (self.word if moving else ""))

    def text(self, axis: str, protocol: str | None) -> str:
        """'CLIP rises with κ: +0.057 per unit [+0.029, +0.086]' and what qualifies it."""
        name, param = self.name(protocol), PARAM_HEADERS.get(axis, axis)
        if not self.slope.testable:
            return f"{name} untestable with {param} ({self.slope.why})"
        text = (f"{name} {self.word} with {param}: {self.effect(self.slope.estimate)} per unit "
                f"{self.interval()}")
        notes = []
        lof = self.slope.lack_of_fit
        if lof is not None and lof.p < ALPHA:
            notes.append(f"not a line: the slope averages a curve (lack of fit F({lof.df_model}, "
                         f"{lof.df_error}) = {lof.f:.2f}, p = {p_text(lof.p)})")
        if self.word == "flat":
            notes.append(f"within {self.delta_text()}")
        if self.word == "unresolved":
            notes.append(f"δ {self.delta_text()}; detectable {self.detectable_text()}; "
                         f"{self.seeds_text()} seeds per value for δ")
        if self.disagrees:
            said = f"{self.rank}" if self.rank else "no monotone trend"
            notes.append(f"the rank test disagrees: {said} (Kendall's τ {self.slope.tau:+.2f}, "
                         f"p Holm {p_text(self.p_tau_holm)})")
        best = self.slope.optimum
        if best is not None:
            notes.append(optimum_text(best, axis, self.metric))
        return text + (f" ({'; '.join(notes)})" if notes else "")


def optimum_text(best: Optimum, axis: str, metric: registry.Metric) -> str:
    param = PARAM_HEADERS.get(axis, axis)
    which = "lowest" if metric.lower_is_better else "highest"
    if not best.inside:
        return f"{which} at the end of the range, {param} = {param_text(axis, best.at)}"
    if not math.isfinite(best.low):
        return (f"{which} at {param} = {best.at:.2f}, interval unbounded (the curvature is "
                "not resolved)")
    return f"{which} at {param} = {best.at:.2f} [{best.low:.2f}, {best.high:.2f}]"


def p_text(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.2g}" if value >= 0.001 else "<0.001"


@dataclass(frozen=True)
class TrendResult:
    """The trend family of a plan's runs (:func:`analyse`)."""

    trend: Trend
    findings: list[TrendFinding]
    family: int  # testable slopes Holm corrects over
    protocol: str | None
    blocks: list[str] = field(default_factory=list)

    def head(self) -> str:
        param = PARAM_HEADERS.get(self.trend.axis, self.trend.axis)
        model = "a line" if self.trend.model == "line" else "a line, and a parabola for the optimum"
        logs = sorted({f.name(self.protocol) for f in self.findings if f.slope.log_scale})
        parts = [f"least squares over every finished trial, {model}",
                 f"Holm over {self.family} slopes, α = {ALPHA:g}"]
        if logs:
            parts.append(f"{', '.join(logs)} on the log scale (% per unit)")
        parts.append("flat: inside ±δ per unit by two one-sided tests")
        parts.append("rank check: Kendall's τ-b")
        return f"trend over {param} ({'; '.join(parts)})"

    def lines(self) -> list[str]:
        """One line: per block, each metric's slope, interval and word."""
        by_block: dict[tuple, list[str]] = {}
        for f in self.findings:
            by_block.setdefault(f.block, []).append(f.text(self.trend.axis, self.protocol))
        parts = []
        for block, texts in by_block.items():
            prefix = ", ".join(short_text(k, v) for k, v in block)
            parts.append((f"{prefix}: " if prefix else "") + "; ".join(texts))
        return [f"{self.head()}: " + " | ".join(parts)]

    def power(self) -> str:
        """Markdown for power.md: every slope with its test, check and power."""
        lines = [f"## Trend over {PARAM_HEADERS.get(self.trend.axis, self.trend.axis)}", "",
                 "| block | metric | slope per unit [95% CI] | residual sd | p | p Holm "
                 "| flat p Holm | δ per unit | verdict | detectable (80%) | seeds per value for δ "
                 "| lack of fit | Kendall's τ (p Holm) |" + (
                     " optimum [95% CI] |" if self.trend.model == "quadratic" else ""),
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + (
                     "---|" if self.trend.model == "quadratic" else "")]
        for f in self.findings:
            s = f.slope
            block = ", ".join(short_text(k, v) for k, v in f.block) or "—"
            if not s.testable:
                lines.append(f"| {block} | {f.name(self.protocol)} | untestable ({s.why}) |"
                             + " |" * (10 + (self.trend.model == "quadratic")))
                continue
            lof = s.lack_of_fit
            lof_text = (f"F({lof.df_model}, {lof.df_error}) = {lof.f:.2f}, p = {p_text(lof.p)}"
                        if lof else "—")
            sd = f"{s.sigma:.3f} (log)" if s.log_scale else f.metric.number(s.sigma)
            row = (f"| {block} | {f.name(self.protocol)} | {f.effect(s.estimate)} "
                   f"{f.interval()} | {sd} | {p_text(s.p)} | {p_text(f.p_holm)} "
                   f"| {p_text(f.p_flat_holm)} "
                   f"| {f.delta_text()} | {f.word} | {f.detectable_text()} | {f.seeds_text()} "
                   f"| {lof_text} | {s.tau:+.2f} ({p_text(f.p_tau_holm)}) |")
            if self.trend.model == "quadratic":
                row += (f" {optimum_text(s.optimum, self.trend.axis, f.metric)} |"
                        if s.optimum else " — |")
            lines.append(row)
        return "\n".join(lines) + (
            f"\n\n{self.head()}. Slope: ordinary least squares of the metric on "
            f"{self.trend.axis} over every finished trial (seeds unpaired), its 95% t-interval "
            f"on n − 2 degrees of freedom. Detectable: the smallest true slope these trials "
            f"detect with 80% power at α/{self.family} (Holm's strictest step), from the "
            "residual spread, not from the observed slope. Lack of fit: the line against one "
            "mean per value (p < 0.05: the metric does not move along a line, and the slope "
            "is an average). Kendall's τ-b: a rank test of a monotone trend that assumes no "
            "line; it is Holm-corrected over the same family.\n")

    def table_rows(self) -> list[list[str]]:
        """(block, metric, slope per unit, 95% interval, p Holm, verdict) per finding."""
        rows = []
        for f in self.findings:
            block = ", ".join(short_text(k, v) for k, v in f.block)
            if not f.slope.testable:
                rows.append([block, f.name(self.protocol), "—", "", "", "untestable"])
                continue
            unit = "" if f.slope.log_scale else f.metric.unit.strip()
            rows.append([block, f.name(self.protocol) + (f" ({unit})" if unit else ""),
                         f.effect(f.slope.estimate, unit=False), f.interval(),
                         p_text(f.p_holm), f.word])
        return rows

    def metrics(self) -> dict[str, float]:
        """Parent-run metrics: ``trend.<block>.<metric>.slope`` and its interval bounds, on
        the test scale (log of the ratio per unit for log-scale metrics)."""
        out = {}
        for f in self.findings:
            if not f.slope.testable:
                continue
            block = "_".join(f"{k}{param_text(k, v)}" if k != "strategy" else str(v)
                             for k, v in f.block)
            stem = ".".join(p for p in ("trend", block, f.metric.name) if p)
            out.update({f"{stem}.slope": f.slope.estimate, f"{stem}.slope_low": f.slope.low,
                        f"{stem}.slope_high": f.slope.high})
        return out


def trend_of(comparison: Comparison | None, trials: pd.DataFrame, params: list[str]
             ) -> Trend | None:
    """The plan's declared trend, or the default rule over the trials: the first numeric
    param of the comparison's arms, then of the other params that tell configurations apart
    (never the seed, nor κ₁…κ₄, which follow from strategy and κ), with three or more
    values."""
    if comparison is None or comparison.trend_off:
        return None
    if comparison.trend is not None:
        return comparison.trend if comparison.trend.axis in trials else None
    varying = varying_params(trials, params)
    order = [*(a for a in comparison.arms if a in varying),
             *(p for p in varying if p not in comparison.arms)]
    for param in order:
        values = trials[param].dropna().tolist() if param in trials else []
        if values and numeric_values(tuple(values)) \
                and len(set(map(float, values))) >= LEAST_VALUES:
            return Trend(param, declared=False)
    return None


def scope(runs: pd.DataFrame, comparison: Comparison | None
          ) -> tuple[Trend, pd.DataFrame, list[str]] | None:
    """What the trend and interaction families fit: the trend, the finished trials and the
    params besides the trend axis that vary over the trials (the trend's blocks, the
    interaction's groups); None when the plan has no trend axis or nothing finished."""
    trials = runs[runs["role"] == "trial"]
    params = [p for p in runs.attrs.get("param_columns", trials.columns) if p in trials]
    trend = trend_of(comparison, trials, params)
    finished = trials[trials["status"] == "finished"]
    if trend is None or comparison is None or finished.empty:
        return None
    return trend, finished, [p for p in varying_params(trials, params) if p != trend.axis]


def analyse(runs: pd.DataFrame, comparison: Comparison | None) -> TrendResult | None:
    """The trend family of a plan's runs; None when the plan has no trend axis."""
    found = scope(runs, comparison)
    if found is None or comparison is None:
        return None
    trend, finished, blocks = found
    metrics = [(m, k) for m in (registry.by_name(n) for n in comparison.metrics)
               if m is not None and (k := metric_key(finished, m)) is not None]
    jobs = []
    for block in combos(finished, blocks):
        in_block = select_rows(finished, blocks, block)
        for metric, key in metrics:
            rows = in_block.dropna(subset=[key, trend.axis])
            jobs.append((tuple(zip(blocks, block)), metric, key,
                         rows[trend.axis].to_numpy(float), rows[key].to_numpy(float)))
    if not jobs:
        return None
    quadratic = trend.model == "quadratic"
    # The power solve needs the family size, which needs to know what is testable: fit once
    # to count, then again at α over the family (cheap: a handful of small fits).
    first = [fit_slope(x, y, trend.delta_of(m.name), m.log_scale, power=False)
             for _, m, _, x, y in jobs]
    family = max(1, sum(s.testable for s in first))
    slopes = [fit_slope(x, y, trend.delta_of(m.name), m.log_scale, ALPHA / family, quadratic,
                        bool(m.lower_is_better)) for _, m, _, x, y in jobs]
    p_holm = holm([s.p for s in slopes])
    p_flat = holm([s.p_flat for s in slopes])
    p_tau = holm([s.p_tau for s in slopes])
    findings = [TrendFinding(block, key, metric, trend.delta_of(metric.name), slope, ph, pf, pt,
                             word(slope, ph, pf), rank_word(slope, pt))
                for (block, metric, key, _, _), slope, ph, pf, pt
                in zip(jobs, slopes, p_holm, p_flat, p_tau)]
    return TrendResult(trend, findings, family, eval_protocol(finished), blocks)
