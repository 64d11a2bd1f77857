"""The verdict: each arm against the reference arm of its block, on each metric the plan's
comparison names, in words that cannot mislead.

For every (block, arm, metric) the verdict gives the difference from the reference with its
95% interval and exactly one word:

- **better** / **worse**: the test of no difference rejects after its correction (below),
  and equivalence is not shown;
- **equivalent** (within ±δ): both one-sided tests against the declared smallest effect of
  interest δ reject, Holm-corrected over the verdict's equivalence tests (a difference
  inside ±δ is equivalent even when it is not zero);
- **unresolved**: neither; the line states the interval, the smallest difference the seeds
  could detect with 80% power and the seeds per arm that would detect δ;
- **untestable**: fewer than two finished seeds on a side, or no spread.

The test of no difference follows from the plan's design, never from the scores. A
**many-to-one sweep** (one arm param, its values numbers in the trials, at least two arms
besides the reference in a block, seeds not paired: ablations/kappa.yaml) gets Dunnett's
test (scipy): within each (block, metric) group, every arm against the reference on the
variance pooled over the group's arms (N − k degrees of freedom, where Welch's at three seeds
has two to four) with simultaneous 95% intervals, and its p-values times the number of groups
(Bonferroni, at most 1). Holm over a sweep's every Welch test (15 for six κ on three metrics)
would leave nothing resolved. Any other comparison (strategies lsg/cfg/none:
ablations/lsg.yaml) gets Welch's t-tests, or paired t-tests when the plan declares
``paired``, Holm-corrected over every test of the verdict (one family). Equivalence, the
detectable effect and the seeds needed are Welch's (or paired) under either.

Under Dunnett a finding's ``diff`` carries Dunnett's interval and p (adjusted over its
group's arms, not over the groups) and ``p_holm`` that p times the groups; under Welch,
``diff`` is Welch's and ``p_holm`` Holm's. Metrics flagged ``log_scale`` in the registry
(FID, right-skewed across seeds) are compared as the ratio of geometric means, so their δ is
a ratio too. :func:`compare` computes the findings once; the table's Δ cells, the verdict
line, ``power.md`` and the parent run's summary read them.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from distill import metrics as registry
from results.arms import Layout, arm_text, combos, layout, select_rows, short_text
from results.comparison import Comparison, same_value
from results.dunnett import design_test, many_to_one
from results.stats import (
    ALPHA,
    MOST_SEEDS,
    Difference,
    difference,
    eval_protocol,
    holm,
    metric_key,
)


@dataclass(frozen=True)
class Finding:
    block: tuple[tuple[str, Any], ...]  # the block's (param, value) pairs
    arm: tuple[Any, ...]  # the arm's values of the layout's arm params
    key: str  # the metric's column (fid2k, clip_score, ...)
    metric: registry.Metric
    delta: float  # the declared smallest effect of interest (a ratio for log-scale metrics)
    diff: Difference
    p_holm: float  # the p that decides better/worse: Holm's, or Dunnett's times the groups
    p_equivalence_holm: float
    word: str

    def effect(self, value: float, unit: bool = True) -> str:
        """A difference as printed: '+0.012', '-3.4 pts', or '+27.0%' for a ratio."""
        if not math.isfinite(value):
            return "—"
        if self.diff.log_scale:
            return f"{100 * math.expm1(value):+.1f}%"
        text = self.metric.signed(value)
        return text if unit else text[:len(text) - len(self.metric.unit)]

    def interval(self) -> str:
        """'[-0.50, +2.70]', '[-12.0, +3.0] pts', '[-10.0%, +79.0%]'."""
        if not self.diff.testable:
            return ""
        low, high = (self.effect(v, unit=False) for v in (self.diff.low, self.diff.high))
        unit = "" if self.diff.log_scale else self.metric.unit
        return f"[{low}, {high}]{unit}"

    def delta_text(self) -> str:
        return f"±{100 * self.delta:g}%" if self.diff.log_scale else \
            f"±{self.metric.number(self.delta)}{self.metric.unit}"

    def detectable_text(self) -> str:
        d = self.diff.detectable
        if not math.isfinite(d):
            return "—"
        return f"±{100 * math.expm1(d):.0f}%" if self.diff.log_scale else \
            f"±{self.metric.number(d)}{self.metric.unit}"

    def seeds_text(self) -> str:
        n = self.diff.seeds_needed
        return "—" if n is None else (f"> {MOST_SEEDS}" if n > MOST_SEEDS else str(n))


@dataclass(frozen=True)
class Verdict:
    layout: Layout
    findings: list[Finding]
    family: int  # tests of the verdict (Holm corrects over them under Welch)
    most_seeds: int  # finished seeds of the best-covered arm
    protocol: str | None
    reason: str = ""  # why there are no findings
    test: str = "welch"  # the test of no difference: 'welch', 'paired' or 'dunnett'
    groups: int = 0  # Dunnett's (block, metric) groups, Bonferroni's factor

    def find(self, block: dict, arm: tuple, key: str) -> Finding | None:
        for f in self.findings:
            if f.key == key and _same(f.arm, arm) and _same(
                    [v for _, v in f.block], [block[k] for k, _ in f.block]):
                return f
        return None

    def head(self) -> str:
        logs = sorted({f.metric.short_for(self.protocol) for f in self.findings
                       if f.diff.log_scale})
        if self.test == "dunnett":
            within, groups = ("each block and metric", f"{self.groups} block × metric groups") \
                if self.layout.blocks else \
                ("each metric", f"{self.groups} metric{'s' if self.groups != 1 else ''}")
            parts = [f"Dunnett many-to-one within {within}, Bonferroni over {groups}, "
                     f"α = {ALPHA:g}"]
        else:
            parts = ["paired t-tests" if self.test == "paired" else "Welch t-tests",
                     f"Holm over {self.family} tests, α = {ALPHA:g}"]
        if logs:
            parts.append(f"{', '.join(logs)} as a ratio (log scale)")
        parts.append("equivalent: inside ±δ by two one-sided "
                     + ("Welch tests" if self.test == "dunnett" else "tests"))
        parts.append(f"up to {self.most_seeds} seeds per arm")
        return f"verdict ({'; '.join(parts)})"

    def line(self) -> str:
        """One line: per block and arm, each metric's difference, interval and word."""
        if self.reason:
            return f"verdict: {self.reason}"
        # block -> arm -> the metrics' texts, in the findings' order.
        blocks: dict[tuple, dict[str, list[str]]] = {}
        for f in self.findings:
            arm = arm_text(self.layout.arms, f.arm)
            blocks.setdefault(f.block, {}).setdefault(arm, []).append(
                _finding_text(f, self.protocol))
        reference = arm_text(self.layout.arms, self.layout.reference)
        parts = []
        for block, arms in blocks.items():
            prefix = ", ".join(short_text(k, v) for k, v in block)
            parts.append((f"{prefix}: " if prefix else "")
                         + "; ".join(f"{arm}: {', '.join(texts)}" for arm, texts in arms.items()))
        return f"{self.head()} vs {reference}: " + " | ".join(parts)


def _same(a, b) -> bool:
    return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))


def _finding_text(f: Finding, protocol: str | None) -> str:
    name = f.metric.short_for(protocol)
    if not f.diff.testable:
        return f"{name} untestable ({f.diff.why})"
    text = f"{name} {f.effect(f.diff.estimate, unit=False)} {f.interval()} {f.word}"
    if f.word == "equivalent":
        return f"{text} within {f.delta_text()}"
    if f.word == "unresolved":
        return (f"{text} (δ {f.delta_text()}; detectable {f.detectable_text()}; "
                f"{f.seeds_text()} seeds per arm for δ)")
    return text


def _word(diff: Difference, p_holm: float, p_equivalence_holm: float,
          lower_is_better: bool) -> str:
    if not diff.testable:
        return "untestable"
    if p_equivalence_holm < ALPHA:
        return "equivalent"
    if p_holm < ALPHA:
        return "better" if (diff.estimate < 0) == lower_is_better else "worse"
    return "unresolved"


def _values(runs: pd.DataFrame, key: str) -> pd.Series:
    """Finished runs' values of ``key`` by seed (NaN dropped)."""
    done = runs[runs["status"] == "finished"]
    values = done.set_index("seed")[key] if "seed" in done else done[key]
    return values.dropna().astype(float)


def _jobs(trials: pd.DataFrame, lay: Layout, comparison: Comparison,
          finished: pd.DataFrame) -> list[tuple]:
    """(block, arm, metric, key, arm values, reference values) of every test of the verdict;
    values by seed, restricted to the seeds both sides finished when seeds are paired."""
    metrics = [(m, k) for m in (registry.by_name(n) for n in comparison.metrics)
               if m is not None and (k := metric_key(finished, m)) is not None]
    jobs = []
    for block in combos(trials, lay.blocks):
        scope = select_rows(trials, lay.blocks, block)
        reference = select_rows(scope, lay.arms, lay.reference)
        if reference.empty:
            continue
        for arm in combos(scope, lay.arms):
            if lay.is_reference(arm):
                continue
            mine = select_rows(scope, lay.arms, arm)
            for metric, key in metrics:
                a, r = _values(mine, key), _values(reference, key)
                if comparison.paired:
                    common = a.index.intersection(r.index)
                    a, r = a.loc[common].sort_index(), r.loc[common].sort_index()
                jobs.append((tuple(zip(lay.blocks, block)), arm, metric, key, a, r))
    return jobs


def compare(runs: pd.DataFrame, comparison: Comparison | None) -> Verdict:
    """Every arm against its block's reference on every metric of ``comparison``."""
    trials = runs[runs["role"] == "trial"]
    params = [p for p in runs.attrs.get("param_columns", trials.columns) if p in trials]
    lay = layout(comparison, trials, params)
    finished = trials[trials["status"] == "finished"]
    protocol = eval_protocol(finished)
    test = "welch" if comparison is None else design_test(trials, lay, comparison)

    def empty(reason: str, most: int = 0) -> Verdict:
        return Verdict(lay, [], 0, most, protocol, reason, test)

    if finished.empty:
        return empty("no finished trials")
    if comparison is None:
        return empty("one configuration, nothing to compare")
    seeds = finished.groupby(lay.arms + lay.blocks, dropna=False).size() \
        if lay.arms + lay.blocks else pd.Series([len(finished)])
    most = int(seeds.max())
    if most < 2:
        return empty("one seed per arm, so no difference can be tested; rerun with "
                     "--seeds 0,1,2", most)
    if lay.reference is None:
        return empty(f"no trial of the reference arm ({comparison.reference_text()}) "
                     "among the runs", most)
    jobs = _jobs(trials, lay, comparison, finished)
    if not jobs:
        return empty("no arm besides the reference to compare", most)
    groups = [(block, metric.name) for block, _, metric, *_ in jobs] \
        if test == "dunnett" else None
    judged = judge([(metric, mine.to_numpy(), ref.to_numpy())
                    for _, _, metric, _, mine, ref in jobs], comparison, groups=groups)
    findings = [Finding(block, arm, key, metric, comparison.delta_of(metric.name), *result)
                for (block, arm, metric, key, _, _), result in zip(jobs, judged)]
    return Verdict(lay, findings, len(jobs), most, protocol, test=test,
                   groups=len(set(groups)) if groups else 0)


def judge(tests: list[tuple[registry.Metric, np.ndarray, np.ndarray]],
          comparison: Comparison, power: bool = True, groups: Sequence[Hashable] | None = None
          ) -> list[tuple[Difference, float, float, str]]:
    """The verdict's decision, on arrays: each (metric, arm values, reference values) of one
    family tested, corrected and given its word. Returns (difference, p that decides,
    Holm equivalence p, word) per test.

    ``groups`` None: Welch's (or paired) tests, Holm over the family. Otherwise each test's
    (block, metric) group for Dunnett's many-to-one test, Bonferroni over the groups; the
    tests of a group share one metric and one reference's values. ``power`` False gives the
    words alone: no detectable effect, seeds needed or (Dunnett) simultaneous interval,
    which cost more than the test (the interval is a root search over Dunnett's integral)
    and which the words do not depend on; the interval is then NaN."""
    if groups is not None and comparison.paired:
        raise ValueError("Dunnett's test compares independent arms; paired seeds get paired "
                         "t-tests")
    family = len(tests)
    diffs = [difference(mine, ref, comparison.delta_of(metric.name), comparison.paired,
                        metric.log_scale, power_alpha=ALPHA / family, power=power)
             for metric, mine, ref in tests]
    if groups is None:
        p_decide = holm([d.p for d in diffs])
    else:
        diffs, p_decide = many_to_one(tests, diffs, groups, interval=power)
    p_equivalence_holm = holm([d.p_equivalence for d in diffs])
    return [(diff, p, pe, _word(diff, p, pe, bool(metric.lower_is_better)))
            for (metric, _, _), diff, p, pe in zip(tests, diffs, p_decide, p_equivalence_holm)]


def verdict(runs: pd.DataFrame, comparison: Comparison | None) -> str:
    """The one-line verdict of a plan's runs (see the module docstring)."""
    return compare(runs, comparison).line()


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.2g}" if value >= 0.001 else "<0.001"


def _sd(f: Finding, value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.3f} (log)" if f.diff.log_scale else f.metric.number(value)


def power_table(result: Verdict) -> str | None:
    """Markdown: every finding with its interval, spreads, the test's p-value and the one
    that decides (Holm's, or Dunnett's times the groups), the word, the smallest difference
    the seeds could detect with 80% power and the seeds per arm that would detect δ. None
    without findings."""
    if not result.findings:
        return None
    reference = arm_text(result.layout.arms, result.layout.reference)
    dunnett = result.test == "dunnett"
    p_heads = "p Dunnett | p Bonferroni" if dunnett else "p | p Holm"
    lines = [f"| block | arm | metric | difference [95% CI] | sd arm | sd ref | {p_heads} "
             "| equivalence p Holm | δ | verdict | detectable (80%) | seeds per arm for δ |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in result.findings:
        block = ", ".join(short_text(k, v) for k, v in f.block) or "—"
        lines.append(
            f"| {block} | {arm_text(result.layout.arms, f.arm)} vs {reference} "
            f"| {f.metric.short_for(result.protocol)} "
            f"| {f.effect(f.diff.estimate, unit=False)} {f.interval()} | {_sd(f, f.diff.sd_arm)} "
            f"| {_sd(f, f.diff.sd_reference)} | {_p(f.diff.p)} | {_p(f.p_holm)} "
            f"| {_p(f.p_equivalence_holm)} | {f.delta_text()} | {f.word} "
            f"| {f.detectable_text()} | {f.seeds_text()} |")
    if dunnett:
        return "\n".join(lines) + (
            f"\n\n{result.head()}. Difference: Dunnett's simultaneous 95% interval over the "
            "arms of its block and metric; p Dunnett: adjusted over those arms; p Bonferroni: "
            f"times the {result.groups} groups. Detectable and seeds per arm for δ are "
            "Welch-based (the arm's and the reference's seeds alone, not Dunnett's pooled "
            "spread): the smallest true difference Welch's t-test on these seeds detects with "
            f"80% power at α/{result.family} (Bonferroni over every comparison), from the "
            "seed-to-seed spread, not from the observed difference, and how many seeds per arm "
            "would detect a true difference of δ at that level.\n")
    return "\n".join(lines) + (
        f"\n\n{result.head()}. Detectable: the smallest true difference these seeds detect "
        f"with 80% power at α/{result.family} (Holm's strictest step), from the seed-to-seed "
        "spread, not from the observed difference. Seeds per arm for δ: how many would "
        "detect a true difference of δ at that level.\n")

