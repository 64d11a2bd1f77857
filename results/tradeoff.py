"""FID at matched CLIP: the test the paper's trade-off claim needs.

Raising κ buys CLIP score with FID; a method is better on the trade-off when, at the same
CLIP, its FID is lower. Comparing arms at equal κ does not answer that (two arms reach
different CLIP at one κ). So, for each arm and seed, the (CLIP, log FID) points over κ form a
curve; at a CLIP level, log FID is interpolated linearly along it (between the two κ whose
CLIP brackets the level, the first such pair in κ order). The arms are then compared seed by
seed (paired: a seed gives every arm the same noise, distill/streams.py) with the verdict's
machinery (:func:`results.verdict.judge`: Holm over every level and arm, δ from the plan).

The levels are fixed by a rule, not picked after looking: the quartiles and the midpoint of
the CLIP range every curve covers (from the highest of the curves' lowest CLIP to the lowest
of their highest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from distill import metrics as registry
from results.arms import arm_text, combos, select_rows
from results.comparison import Comparison
from results.stats import metric_key
from results.verdict import Finding, judge

LEVELS = (0.25, 0.5, 0.75)  # where in the common CLIP range FID is compared
SWEPT = "kappa"


def crossing(clip: np.ndarray, log_fid: np.ndarray, level: float) -> float:
    """log FID where the curve (points in κ order) first reaches CLIP ``level``, linearly
    interpolated; NaN if it never does."""
    for i in range(len(clip) - 1):
        a, b = clip[i], clip[i + 1]
        if min(a, b) <= level <= max(a, b):
            if a == b:
                return float(log_fid[i])
            w = (level - a) / (b - a)
            return float(log_fid[i] + w * (log_fid[i + 1] - log_fid[i]))
    return math.nan


@dataclass(frozen=True)
class Matched:
    """FID at matched CLIP: the levels, and per (level, arm) the finding against the
    reference arm (its block holds the level as ('clip', level))."""

    levels: tuple[float, ...]
    findings: list[Finding]
    arms: list[str]
    reference: tuple
    reason: str = ""

    def line(self, protocol: str | None = None) -> str:
        name = registry.FID.short_for(protocol)
        if self.reason:
            return f"{name} at matched CLIP: {self.reason}"
        reference = arm_text(self.arms, self.reference)
        parts = []
        for level in self.levels:
            mine = [f for f in self.findings if f.block == (("clip", level),)]
            text = "; ".join(
                f"{arm_text(self.arms, f.arm)}: {f.effect(f.diff.estimate)} {f.interval()} "
                f"{f.word}" + (f" (detectable {f.detectable_text()})"
                               if f.word == "unresolved" else "") for f in mine)
            parts.append(f"CLIP {level:.3f}: {text}")
        return (f"{name} at matched CLIP (paired by seed, ratio on the log scale; Holm over "
                f"{len(self.findings)} tests) vs {reference}: " + " | ".join(parts))


Curve = tuple[np.ndarray, np.ndarray]  # (CLIP, log FID) over κ, in κ order


def _curves(trials: pd.DataFrame, arms: list[str], fid: str,
            clip: str) -> dict[tuple, dict[int, Curve]]:
    """arm -> seed -> (CLIP, log FID) over κ, in κ order (seeds with two or more points)."""
    curves: dict[tuple, dict[int, Curve]] = {}
    for arm in combos(trials, arms):
        for seed, group in select_rows(trials, arms, arm).groupby("seed"):
            points = group.sort_values(SWEPT).dropna(subset=[fid, clip])
            if len(points) >= 2 and (points[fid] > 0).all():
                curves.setdefault(tuple(arm), {})[seed] = (
                    points[clip].to_numpy(float), np.log(points[fid].to_numpy(float)))
    return curves


def matched(runs: pd.DataFrame, comparison: Comparison | None) -> Matched | None:
    """FID at matched CLIP for plans that compare arms across a κ sweep (κ a block param
    with three or more values); None for any other plan."""
    trials = runs[(runs["role"] == "trial") & (runs["status"] == "finished")]
    if comparison is None or SWEPT in comparison.arms or SWEPT not in trials \
            or trials[SWEPT].nunique() < 3:
        return None
    fid, clip = metric_key(trials, registry.FID), metric_key(trials, registry.CLIP_SCORE)
    if fid is None or clip is None:
        return None
    arms = [a for a in comparison.arms if a in trials]
    curves = _curves(trials, arms, fid, clip)
    reference = tuple(comparison.reference)
    empty = Matched((), [], arms, reference)
    if reference not in curves or len(curves) < 2:
        return replace(empty, reason="no reference curve and another to compare")
    low = max(c.min() for arm in curves.values() for c, _ in arm.values())
    high = min(c.max() for arm in curves.values() for c, _ in arm.values())
    if not low < high:
        return replace(empty, reason="the arms' curves share no CLIP range")
    levels = tuple(round(low + q * (high - low), 6) for q in LEVELS)
    tests, keys = [], []
    for level in levels:
        for arm, by_seed in curves.items():
            if arm == reference:
                continue
            seeds = sorted(set(by_seed) & set(curves[reference]))
            mine = np.array([crossing(*by_seed[s], level) for s in seeds])
            ref = np.array([crossing(*curves[reference][s], level) for s in seeds])
            keep = np.isfinite(mine) & np.isfinite(ref)
            tests.append((registry.FID, np.exp(mine[keep]), np.exp(ref[keep])))
            keys.append(((("clip", level),), arm))
    delta = (comparison.delta_of("fid") if "fid" in comparison.metrics
             else float(registry.FID.delta or 0.0))
    paired = Comparison(comparison.arms, comparison.reference, ("fid",), (("fid", delta),),
                        paired=True)
    judged = judge(tests, paired)
    findings = [Finding(block, arm, fid, registry.FID, paired.delta_of("fid"), *result)
                for (block, arm), result in zip(keys, judged)]
    return Matched(levels, findings, arms, reference)
