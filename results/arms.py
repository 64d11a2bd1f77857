"""Arms and blocks: which runs a comparison puts together, in which order, under which name.

A plan's :class:`~results.comparison.Comparison` names the params that form an arm and the
reference arm. Params that also vary across the trials but are not arms (κ in a strategy ×
κ plan compared by strategy) split the runs into blocks: arms are compared with the
reference of their own block, never averaged across blocks. Seeds are replicates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from distill.config import STRATEGIES, STRATEGY_DESCRIPTIONS
from results.comparison import Comparison, same_value

# Params shown first in a row key when several vary; the rest follow by name.
PRIMARY_PARAMS = ("strategy", "kappa")
# Replicates, not configurations: runs differing only here are averaged together.
REPLICATE_PARAMS = ("seed",)
PARAM_HEADERS = {"kappa": "κ", "strategy": "Strategy", "alpha": "α"}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def sort_key(value) -> tuple:
    """Strategies in the paper's order, then numbers, then text, then unset values."""
    if value in STRATEGIES:
        return (0, STRATEGIES.index(value), "")
    if _missing(value):
        return (3, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (2, 0, str(value))


def ordered_values(values) -> list:
    """Distinct values (NaN once), in :func:`sort_key` order."""
    return sorted({str(v): v for v in values}.values(), key=sort_key)


def combos(df: pd.DataFrame, keys: list[str]) -> list[tuple]:
    """Distinct value tuples of ``keys`` (NaN equal to NaN), sorted position by position."""
    if not keys:
        return [()]
    distinct = {tuple(map(str, t)): tuple(t) for t in df[keys].itertuples(index=False)}
    return sorted(distinct.values(), key=lambda t: tuple(map(sort_key, t)))


def select_rows(runs: pd.DataFrame, keys: list[str], values) -> pd.DataFrame:
    """Runs whose params equal ``values`` (numbers by value, the rest as text)."""
    for key, value in zip(keys, values):
        runs = runs[runs[key].map(lambda v, value=value: same_value(v, value))]
    return runs


def _ngroups(df: pd.DataFrame, keys: list[str]) -> int:
    return df.groupby(keys, dropna=False).ngroups if keys else 1


def varying_params(trials: pd.DataFrame, params: list[str]) -> list[str]:
    """Params that tell configurations apart: they vary across trials, are not replicate
    ids (seed), and are not implied by the ones already chosen (kappa1..kappa4 follow
    from strategy and κ; adding them would not split any group, so they are left out)."""
    candidates = [p for p in params if p not in REPLICATE_PARAMS
                  and trials[p].map(str).nunique() > 1]
    candidates.sort(key=lambda p: (PRIMARY_PARAMS.index(p) if p in PRIMARY_PARAMS
                                   else len(PRIMARY_PARAMS), p))
    seeds_vary = "seed" in trials and trials["seed"].nunique() > 1
    chosen: list[str] = []
    for param in candidates:
        keys = [*chosen, param]
        if _ngroups(trials, keys) <= _ngroups(trials, chosen):
            continue
        # A param with a different value for every seed (a run name, an output folder)
        # identifies runs, not configurations: grouping by it would average nothing.
        one_per_group = _ngroups(trials, keys) == _ngroups(trials, [*keys, "seed"]) == len(trials)
        if seeds_vary and one_per_group:
            continue
        chosen.append(param)
    return chosen


def param_text(param: str, value) -> str:
    """A param's value as a row label: strategies with what they are, numbers short."""
    if param == "strategy" and value in STRATEGY_DESCRIPTIONS:
        return f"{value}: {STRATEGY_DESCRIPTIONS[value]}"
    if _missing(value):
        return "None"  # what the config said (e.g. ema_rampup_ratio: null)
    if isinstance(value, float):
        return f"{value + 0.0:g}"  # + 0.0 turns -0.0 into 0.0
    return str(value)


def short_text(param: str, value) -> str:
    """A value in running text: 'lsg' for a strategy, 'κ=2' for anything else."""
    if param == "strategy":
        return str(value)
    return f"{PARAM_HEADERS.get(param, param)}={param_text(param, value)}"


def arm_text(keys: list[str] | tuple[str, ...], values) -> str:
    return ", ".join(short_text(k, v) for k, v in zip(keys, values)) or "all"


@dataclass(frozen=True)
class Layout:
    """How a comparison lays the trials out: arms (the table's rows), blocks (params that
    vary besides the arms), and the reference arm's values (None: nothing to compare)."""

    arms: list[str]
    blocks: list[str]
    reference: tuple[Any, ...] | None
    comparison: Comparison | None

    def is_reference(self, values) -> bool:
        return self.reference is not None and all(
            same_value(v, r) for v, r in zip(values, self.reference))


def infer(trials: pd.DataFrame, params: list[str]) -> Comparison | None:
    """For runs that carry no comparison (neither ``plan/comparison.json`` nor a plan file):
    the first param that varies, in :data:`PRIMARY_PARAMS` then name order, against its first
    value in :func:`sort_key` order; None when nothing varies."""
    from results.comparison import default

    varying = varying_params(trials, params)
    if not varying:
        return None
    return default([(varying[0], tuple(ordered_values(trials[varying[0]])))])


def layout(comparison: Comparison | None, trials: pd.DataFrame, params: list[str]) -> Layout:
    """The rows and blocks of ``comparison`` over ``trials``. An arm param that does not
    vary across the trials (a plan run with one strategy) is a row key without a
    reference; with no comparison, rows are every varying param."""
    varying = varying_params(trials, params)
    if comparison is None:
        return Layout(varying, [], None, None)
    arms = [a for a in comparison.arms if a in trials]
    blocks = [p for p in varying if p not in arms]
    present = (len(arms) == len(comparison.arms)
               and not select_rows(trials, arms, comparison.reference).empty)
    reference = comparison.reference if present else None
    return Layout(arms, blocks, reference, comparison)
