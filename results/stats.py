"""Seed statistics: per-arm means and 95% t-intervals (for log-scale metrics also the
geometric mean and its interval), and the difference between two arms with its interval,
its test, its equivalence test and the effect the seeds could detect.

Only finished runs enter the statistics; a diverged run's last FID (often NaN or
huge) would otherwise drag a mean without anyone noticing.

The tests are statsmodels' and scipy's (``tests/test_stats.py`` checks how they are called
against hand-computed values): Welch's t-test (scipy) or the paired t-test, the two
one-sided tests of equivalence (statsmodels ``ttost_ind`` / ``ttost_paired``), Holm's
correction (``multipletests``) and t-test power (``TTestIndPower`` / ``TTestPower``).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from distill import metrics as registry
from results.load import INCOMPLETE, ResultsError

OUTCOMES = ("finished", "diverged", "failed", INCOMPLETE)
ALPHA = 0.05  # every test's level: two-sided, and each one-sided test of equivalence
POWER = 0.8  # the power behind "detectable" and "seeds needed"
MOST_SEEDS = 10_000  # "seeds needed" above this is reported as more than it
# aggregate's columns of a log-scale metric: geometric mean, 95% interval low and high.
GEOMETRIC_STATS = ("gmean", "glow", "ghigh")


def fid_column(df: pd.DataFrame) -> str | None:
    """The one FID key the finished runs carry (None if none does). Two different keys
    (fid2k and fid30k, say) measure different things, so they are refused, not mixed."""
    finished = df[df["status"] == "finished"] if "status" in df else df
    keys = [c for c in df.columns if registry.FID.matches(str(c)) and finished[c].notna().any()]
    if len(keys) > 1:
        counts = {k: int(finished[k].notna().sum()) for k in keys}
        raise ResultsError(
            f"runs carry different FID keys {counts} (runs per key): FIDs on different "
            "numbers of images are not comparable; report one evaluation protocol per table "
            "(re-evaluate, or pick the parent run whose trials share eval_num_images)")
    return keys[0] if keys else None


def metric_key(df: pd.DataFrame, metric: registry.Metric) -> str | None:
    """The column of ``df`` that holds ``metric`` (FID: its one key), None if absent."""
    if metric.family is not None:
        if metric is registry.FID:
            return fid_column(df)
        keys = [c for c in df.columns if metric.matches(str(c))]
        return keys[0] if keys else None
    return metric.key if metric.key in df.columns else None


def eval_protocol(runs: pd.DataFrame) -> str | None:
    """The evaluation protocol the runs were scored under (the first, if they mix), which
    names FID's features (FD-CLIP in the embedded world); None when no run recorded one."""
    protocols = runs["eval_protocol"].dropna().unique() if "eval_protocol" in runs else []
    return str(protocols[0]) if len(protocols) else None


def metric_columns(df: pd.DataFrame, where: str = "final") -> list[str]:
    """The keys present in ``df`` of the registered metrics flagged ``where`` ('final',
    'table', 'curve', 'verdict'), in the registry's order."""
    keys = [metric_key(df, m) for m in registry.all_metrics() if getattr(m, where)]
    return [k for k in keys if k is not None]


def metric_of(key: str) -> registry.Metric:
    """The registered metric behind a column; unregistered keys get a neutral entry."""
    return registry.for_key(key) or registry.Metric(key, key, key, key)


def lower_is_better(key: str) -> bool:
    return bool(metric_of(key).lower_is_better)


def ci95_half_width(std: float, n: int) -> float:
    """Half-width of the two-sided 95% t-interval of a mean of n values (NaN for n < 2)."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def geometric_interval(values: np.ndarray) -> tuple[float, float, float]:
    """(geometric mean, low, high) of positive ``values``: exp of the mean of their logs and
    of that mean's 95% t-interval. The scale a log-scale metric is tested on, drawn back on
    the metric's own: the interval is asymmetric and never reaches zero, where mean ± t·sd of
    a right-skewed FID can. Bounds NaN for fewer than 2 values; all three NaN without values
    or when one is ≤ 0 (no log), as :func:`difference` then tests nothing."""
    if not len(values) or (values <= 0).any():
        return math.nan, math.nan, math.nan
    if len(values) == 1:  # the value itself: exp(log x) can miss x in the last digit
        return float(values[0]), math.nan, math.nan
    logs = np.log(values)
    centre = float(logs.mean())
    half = ci95_half_width(float(np.std(logs, ddof=1)), len(logs))
    return math.exp(centre), math.exp(centre - half), math.exp(centre + half)


def shown_interval(agg: pd.Series | pd.DataFrame, key: str) -> tuple:
    """(centre, low, high) of metric ``key`` in an :func:`aggregate` row (floats) or frame
    (columns), as tables, figures and the parent run show it: a log-scale metric's geometric
    mean and its interval, any other metric's mean ∓ the 95% half-width (bounds NaN for one
    seed)."""
    if metric_of(key).log_scale:
        return agg[f"{key}_gmean"], agg[f"{key}_glow"], agg[f"{key}_ghigh"]
    mean, half = agg[f"{key}_mean"], agg[f"{key}_ci95"]
    return mean, mean - half, mean + half


def finished_values(df: pd.DataFrame, metric: str) -> np.ndarray:
    values = df.loc[df["status"] == "finished", metric]
    return values.dropna().to_numpy(dtype=float)


def aggregate(df: pd.DataFrame, by: list[str], metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per group of ``by`` (plus ``role`` when the frame mixes trials and the
    teacher baseline, so they never share a group), in sorted group order.

    Columns: the group keys; ``n_runs`` and ``n_<outcome>`` for each outcome in
    :data:`OUTCOMES`; then per metric ``<m>_mean``, ``<m>_std`` (sample std, ddof 1),
    ``<m>_n`` (finished runs with a value) and ``<m>_ci95`` (half-width of the 95%
    t-interval), all over finished runs only. A metric on the log scale (``log_scale`` in
    the registry: FID) also gets ``<m>_gmean``, ``<m>_glow`` and ``<m>_ghigh``, its geometric
    mean and 95% interval (:func:`geometric_interval`), which tables and figures show.
    """
    missing = [k for k in by if k not in df.columns]
    if missing:
        raise ResultsError(f"cannot group by {missing}: no such param; the runs have "
                           f"{sorted(df.attrs.get('param_columns', df.columns))}")
    keys = list(by)
    if "role" in df.columns and "role" not in keys and df["role"].nunique() > 1:
        keys = ["role", *keys]
    metrics = metric_columns(df) if metrics is None else list(metrics)
    rows = []
    for key_values, group in df.groupby(keys, sort=True, dropna=False) if keys else [((), df)]:
        group_values = key_values if isinstance(key_values, tuple) else (key_values,)
        row = dict(zip(keys, group_values))
        row["n_runs"] = len(group)
        for outcome in OUTCOMES:
            row[f"n_{outcome}"] = int((group["status"] == outcome).sum())
        for metric in metrics:
            values = finished_values(group, metric)
            n = len(values)
            std = float(np.std(values, ddof=1)) if n >= 2 else math.nan
            row[f"{metric}_mean"] = float(values.mean()) if n else math.nan
            row[f"{metric}_std"] = std
            row[f"{metric}_n"] = n
            row[f"{metric}_ci95"] = ci95_half_width(std, n)
            if metric_of(metric).log_scale:
                for stat, value in zip(GEOMETRIC_STATS, geometric_interval(values)):
                    row[f"{metric}_{stat}"] = value
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(df.attrs, group_keys=keys, metrics=metrics)
    return out




# --------------------------------------------------------------------------- two arms


@dataclass(frozen=True)
class Difference:
    """Arm minus reference on one metric, on the scale the test runs on (the log scale for
    ``log_scale`` metrics: ``estimate`` is then the log of the ratio of geometric means).

    ``low``/``high``: the 95% interval; ``p``: the two-sided test of no difference;
    ``p_equivalence``: the larger p of the two one-sided tests against ±``margin`` (below
    the level: the difference lies inside the margin); ``detectable``: the smallest true
    difference these seeds detect with 80% power at ``power_alpha``; ``seeds_needed``: seeds
    per arm that detect a difference of ``margin`` with 80% power (None: not computable).
    ``why`` says why nothing could be tested (then every number is NaN).
    """

    n_arm: int
    n_reference: int
    estimate: float
    low: float
    high: float
    p: float
    p_equivalence: float
    detectable: float
    seeds_needed: int | None
    margin: float
    paired: bool
    log_scale: bool
    sd_arm: float = math.nan
    sd_reference: float = math.nan
    why: str = ""

    @property
    def testable(self) -> bool:
        return not self.why


def margin_on_test_scale(delta: float, log_scale: bool) -> float:
    """The equivalence margin where the test runs: δ itself, or log(1 + δ) for a ratio."""
    return math.log1p(delta) if log_scale else delta


def _untestable(why: str, n_arm: int, n_ref: int, margin: float, paired: bool,
                log_scale: bool) -> Difference:
    nan = math.nan
    return Difference(n_arm, n_ref, nan, nan, nan, nan, nan, nan, None, margin, paired,
                      log_scale, why=why)


def difference(arm: np.ndarray, reference: np.ndarray, delta: float, paired: bool = False,
               log_scale: bool = False, power_alpha: float = ALPHA,
               power: bool = True) -> Difference:
    """Compare ``arm`` with ``reference`` (finished seeds' values; for ``paired``, aligned
    seed by seed). ``delta``: the smallest effect of interest in the metric's units, or as a
    ratio for ``log_scale`` (0.1: ±10%). ``power_alpha``: the level behind ``detectable``
    and ``seeds_needed`` (the verdict passes α over its family size, Holm's strictest step);
    ``power`` False leaves both unset (NaN, None).
    """
    from statsmodels.stats.weightstats import ttost_ind, ttost_paired

    a, r = np.asarray(arm, dtype=float), np.asarray(reference, dtype=float)
    margin = margin_on_test_scale(delta, log_scale)
    if log_scale:
        if (a <= 0).any() or (r <= 0).any():
            return _untestable("a value ≤ 0 on a log-scale metric", len(a), len(r), margin,
                               paired, log_scale)
        a, r = np.log(a), np.log(r)
    if paired and len(a) != len(r):
        raise ValueError(f"paired comparison needs aligned seeds, got {len(a)} and {len(r)}")
    if len(a) < 2 or len(r) < 2:
        return _untestable("< 2 finished seeds", len(a), len(r), margin, paired, log_scale)
    sd_a, sd_r = float(np.std(a, ddof=1)), float(np.std(r, ddof=1))
    with warnings.catch_warnings():
        # A metric that does not move across seeds on one side is a legitimate input;
        # scipy's "nearly identical data" and statsmodels' solver warnings are noise here.
        warnings.simplefilter("ignore")
        if paired:
            d = a - r
            n, sd = len(d), float(np.std(d, ddof=1))
            if np.ptp(d) == 0:
                return _untestable("no spread of the paired differences", len(a), len(r),
                                   margin, paired, log_scale)
            estimate, se, df = float(d.mean()), sd / math.sqrt(n), float(n - 1)
            p = float(stats.ttest_rel(a, r).pvalue)
            p_equivalence = float(ttost_paired(a, r, -margin, margin)[0])
        else:
            if np.ptp(a) == 0 and np.ptp(r) == 0:  # identical values (std may round to 1e-16)
                return _untestable("no spread on either side", len(a), len(r), margin, paired,
                                   log_scale)
            va, vr = sd_a ** 2 / len(a), sd_r ** 2 / len(r)
            estimate, se = float(a.mean() - r.mean()), math.sqrt(va + vr)
            # Welch–Satterthwaite degrees of freedom.
            df = (va + vr) ** 2 / (va ** 2 / (len(a) - 1) + vr ** 2 / (len(r) - 1))
            p = float(stats.ttest_ind(a, r, equal_var=False).pvalue)
            p_equivalence = float(ttost_ind(a, r, -margin, margin, usevar="unequal")[0])
            sd = math.sqrt((sd_a ** 2 + sd_r ** 2) / 2)  # pooled: the power calculation's σ
        detectable, needed = math.nan, None
        if power:
            detectable = detectable_effect(len(a), len(r), paired, power_alpha) * sd
            needed = seeds_needed(margin / sd, paired, power_alpha)
    half = float(stats.t.ppf(1 - ALPHA / 2, df)) * se
    return Difference(len(a), len(r), estimate, estimate - half, estimate + half, p,
                      p_equivalence, detectable, needed, margin, paired, log_scale,
                      sd_a, sd_r)


@functools.lru_cache(maxsize=256)
def detectable_effect(n_arm: int, n_reference: int, paired: bool, alpha: float) -> float:
    """The standardised difference (Cohen's d; for paired seeds, of the differences) that
    these seeds detect with 80% power at ``alpha``, two-sided (statsmodels' t-test power).
    Cached: a report asks it for the same seed counts many times."""
    from statsmodels.stats.power import TTestIndPower, TTestPower

    if paired:
        return _solve(lambda: TTestPower().solve_power(nobs=n_arm, alpha=alpha, power=POWER))
    return _solve(lambda: TTestIndPower().solve_power(
        nobs1=n_reference, ratio=n_arm / n_reference, alpha=alpha, power=POWER))


def seeds_needed(effect: float, paired: bool, alpha: float) -> int | None:
    """Seeds per arm (equal arms) that detect a standardised difference ``effect`` with 80%
    power at ``alpha``, two-sided; MOST_SEEDS + 1 stands for more than MOST_SEEDS."""
    from statsmodels.stats.power import TTestIndPower, TTestPower

    if not math.isfinite(effect) or effect <= 0:
        return None
    if paired:
        return _seeds(lambda: TTestPower().solve_power(effect_size=effect, alpha=alpha,
                                                       power=POWER))
    return _seeds(lambda: TTestIndPower().solve_power(effect_size=effect, ratio=1.0,
                                                      alpha=alpha, power=POWER))


def _solve(call) -> float:
    try:
        value = float(np.asarray(call()).item())
    except (ValueError, RuntimeError, ZeroDivisionError):
        return math.nan
    return value if math.isfinite(value) and value > 0 else math.nan


def _seeds(call) -> int | None:
    """Seeds per arm from a power solve; MOST_SEEDS + 1 stands for 'more than that'."""
    value = _solve(call)
    if not math.isfinite(value):
        return None
    return min(max(2, math.ceil(value - 1e-9)), MOST_SEEDS + 1)


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values of one family (statsmodels ``multipletests``); NaN entries
    (untestable comparisons) are not members of the family and stay NaN."""
    from statsmodels.stats.multitest import multipletests

    finite = [i for i, p in enumerate(p_values) if math.isfinite(p)]
    out = [math.nan] * len(p_values)
    if finite:
        adjusted = multipletests([p_values[i] for i in finite], alpha=ALPHA, method="holm")[1]
        for i, value in zip(finite, adjusted):
            out[i] = float(value)
    return out
