"""Dunnett's many-to-one test for the pairwise family of a sweep (results/verdict.py), and
the design rule that picks it: one arm param whose values are numbers, at least two arms
besides the reference in a block, seeds not paired (ablations/README.md, "compare").

Within each (block, metric) group every arm is tested against the reference on the variance
pooled over the group's arms (scipy's ``dunnett``, N − k degrees of freedom where Welch's at
three seeds has two to four), with simultaneous 95% intervals; the p that decides is that p
times the number of groups (Bonferroni, at most 1).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
from scipy import stats

from distill import metrics as registry
from results.arms import Layout, combos, select_rows
from results.comparison import Comparison, numeric_values
from results.stats import ALPHA, Difference

# Dunnett's p and interval are integrals of a multivariate t, computed by randomised
# quasi-Monte Carlo: a fixed seed makes the same runs give the same verdict every time.
DUNNETT_SEED = 0


def design_test(trials: pd.DataFrame, lay: Layout, comparison: Comparison) -> str:
    """The test of no difference the design calls for (the module docstring's rule), from the
    arms the plan launched, whatever they finished or scored: a rule chosen after seeing the
    data would inflate false claims."""
    if comparison.paired:
        return "paired"
    if len(lay.arms) != 1 or lay.reference is None:
        return "welch"
    values = tuple(trials[lay.arms[0]].tolist())
    # An unset value (NaN) is no dose on the axis.
    if not numeric_values(values) or not all(math.isfinite(v) for v in values):
        return "welch"
    for block in combos(trials, lay.blocks):
        scope = select_rows(trials, lay.blocks, block)
        if not select_rows(scope, lay.arms, lay.reference).empty \
                and len(combos(scope, lay.arms)) >= 3:
            return "dunnett"
    return "welch"


def many_to_one(tests: list[tuple[registry.Metric, np.ndarray, np.ndarray]],
             diffs: list[Difference], groups: Sequence[Hashable], interval: bool
             ) -> tuple[list[Difference], list[float]]:
    """Dunnett's many-to-one test within each group, on the metric's test scale: ``diffs``
    with Dunnett's p (adjusted over the group's arms) and simultaneous 95% interval (NaN
    without ``interval``), and the p that decides, that p times the number of groups
    (Bonferroni, at most 1). An arm Welch's rules call untestable (< 2 seeds, no spread on
    either side, a value ≤ 0 on the log scale) stays out of its group's test, untestable."""
    members: dict[Hashable, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    out, decide = list(diffs), [math.nan] * len(tests)
    for indices in members.values():
        testable = [i for i in indices if diffs[i].testable]
        if not testable:
            continue
        metric, _, reference = tests[testable[0]]
        samples = [np.asarray(tests[i][1], dtype=float) for i in testable]
        control = np.asarray(reference, dtype=float)
        if metric.log_scale:
            samples, control = [np.log(s) for s in samples], np.log(control)
        result = stats.dunnett(*samples, control=control, alternative="two-sided",
                               rng=np.random.default_rng(DUNNETT_SEED))
        low = high = np.full(len(testable), math.nan)
        if interval:
            bounds = result.confidence_interval(1 - ALPHA)
            low, high = bounds.low, bounds.high
        for j, i in enumerate(testable):
            p = float(result.pvalue[j])
            out[i] = replace(diffs[i], low=float(low[j]), high=float(high[j]), p=p)
            decide[i] = min(1.0, len(members) * p)
    return out, decide
