"""Seed statistics: mean, std, n and a 95% t-interval per metric, with the
outcome counts beside them so a diverged or failed trial is visible, never averaged in.

Only finished runs enter the statistics; a diverged run's last FID (often NaN or
huge) would otherwise drag a mean without anyone noticing.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from results import schema
from results.load import INCOMPLETE, ResultsError

# evaluation.fid_key puts the image count in the key: fid64, fid2k, fid30k.
FID_KEY = re.compile(r"^fid(\d+(?:\.\d+)?)(k?)$")
# Final metrics in the order tables show them (FID first, then the schema's own).
OTHER_METRICS = (schema.CLIP_SCORE, schema.ADHERENCE, schema.COLOUR_ACC, schema.SHAPE_ACC)
OUTCOMES = ("finished", "diverged", "failed", INCOMPLETE)
# Metrics where a smaller value is better; every other final metric is "higher is better".
LOWER_IS_BETTER = "fid"


def fid_num_images(key: str) -> int:
    """How many generated images an FID key was computed on: fid2k -> 2000."""
    match = FID_KEY.match(key)
    if not match:
        raise ValueError(f"{key!r} is not an FID metric key (fid<count>[k])")
    return round(float(match.group(1)) * (1000 if match.group(2) else 1))


def fid_column(df: pd.DataFrame) -> str | None:
    """The one FID key the finished runs carry (None if none does). Two different keys
    (fid2k and fid30k, say) measure different things, so they are refused, not mixed."""
    finished = df[df["status"] == "finished"] if "status" in df else df
    keys = [c for c in df.columns if FID_KEY.match(str(c)) and finished[c].notna().any()]
    if len(keys) > 1:
        counts = {k: int(finished[k].notna().sum()) for k in keys}
        raise ResultsError(
            f"runs carry different FID keys {counts} (runs per key): FIDs on different "
            "numbers of images are not comparable; report one evaluation protocol per table "
            "(re-evaluate, or pick the parent run whose trials share eval_num_images)")
    return keys[0] if keys else None


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The final metrics present: the FID key (if any), then CLIP and adherence metrics."""
    fid = fid_column(df)
    return ([fid] if fid else []) + [m for m in OTHER_METRICS if m in df.columns]


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER)


def ci95_half_width(std: float, n: int) -> float:
    """Half-width of the two-sided 95% t-interval of a mean of n values (NaN for n < 2)."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def finished_values(df: pd.DataFrame, metric: str) -> np.ndarray:
    values = df.loc[df["status"] == "finished", metric]
    return values.dropna().to_numpy(dtype=float)


def welch_p_value(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch t-test p-value; NaN when either side has fewer than 2 values or
    both have no spread (the test is undefined there, so no significance is claimed)."""
    if len(a) < 2 or len(b) < 2 or (np.var(a) == 0 and np.var(b) == 0):
        return math.nan
    with warnings.catch_warnings():
        # A metric that does not move across seeds on one side (CLIP to 3 decimals, say)
        # is a legitimate input; scipy's "nearly identical data" warning is noise here.
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def aggregate(df: pd.DataFrame, by: list[str], metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per group of ``by`` (plus ``role`` when the frame mixes trials and the
    teacher baseline, so they never share a group), in sorted group order.

    Columns: the group keys; ``n_runs`` and ``n_<outcome>`` for each outcome in
    :data:`OUTCOMES`; then per metric ``<m>_mean``, ``<m>_std`` (sample std, ddof 1),
    ``<m>_n`` (finished runs with a value) and ``<m>_ci95`` (half-width of the 95%
    t-interval), all over finished runs only.
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
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(df.attrs, group_keys=keys, metrics=metrics)
    return out


def seeds_for_power(delta: float, sd_a: float, sd_b: float, alpha: float = 0.05,
                    power: float = 0.8, most: int = 10_000) -> int | None:
    """Seeds per arm a two-sided two-sample t-test needs to detect a true difference
    ``delta`` between arms with these per-seed spreads at level ``alpha`` with ``power``.

    Equal seeds per arm; the noncentral t distribution with the pooled spread (exact for
    the equal-variance test, and Welch's test is close to it with equal n). None when the
    difference is 0 or the spreads are unknown; ``most`` + 1 stands for "more than ``most``".
    """
    sd = math.sqrt((sd_a ** 2 + sd_b ** 2) / 2)
    if not (math.isfinite(delta) and math.isfinite(sd)) or delta == 0:
        return None
    if sd == 0:
        return 2  # no spread: the smallest sample with a variance already tells them apart
    effect = abs(delta) / sd
    for n in range(2, most + 1):
        df = 2 * n - 2
        critical = stats.t.ppf(1 - alpha / 2, df)
        noncentrality = effect * math.sqrt(n / 2)
        achieved = (1 - stats.nct.cdf(critical, df, noncentrality)
                    + stats.nct.cdf(-critical, df, noncentrality))
        if achieved >= power:
            return n
    return most + 1
