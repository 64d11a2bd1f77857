"""Metrics against training iterations, from plans that evaluate during training
(``evaluation.eval_every > 0``): the curve, and from which iteration the arms' order settles.

The arms are the plan's comparison's (:mod:`results.comparison`). The order of the arms on a
metric at an iteration is the order
of their means over seeds there. An iteration budget is only trustworthy once that order
has stopped changing, so :func:`settled_at` gives the first evaluated iteration from which
the order equals the final one at every later evaluation, and :func:`ordering_table`
shows, per iteration, the order and how many seeds agree with it on their own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from results.arms import arm_text
from results.load import _client
from results.stats import (
    ci95_half_width,
    geometric_interval,
    lower_is_better,
    metric_columns,
    metric_of,
)

ARM = "arm"  # the history's column naming a run's arm ('lsg', 'κ=2', 'strategy=lsg, κ=2')


def curve_metrics(runs: pd.DataFrame) -> list[str]:
    """The keys of the registry's curve metrics that the finished trials carry."""
    trials = runs[(runs["role"] == "trial") & (runs["status"] == "finished")]
    return [k for k in metric_columns(trials, "curve") if trials[k].notna().any()]


def load_history(runs: pd.DataFrame, metrics: list[str], arms: list[str]) -> pd.DataFrame:
    """Every logged value of ``metrics`` of the finished trials: one row per (run, step),
    with the run's arm (its values of the ``arms`` params, as text) and ``seed``."""
    client = _client(runs.attrs["tracking_uri"])
    trials = runs[(runs["role"] == "trial") & (runs["status"] == "finished")]
    rows = []
    for _, run in trials.iterrows():
        values: dict[int, dict[str, float]] = {}
        for metric in metrics:
            for point in client.get_metric_history(run["run_id"], metric):
                values.setdefault(point.step, {})[metric] = point.value
        arm = arm_text(arms, [run.get(k) for k in arms])
        for step, by_metric in values.items():
            rows.append({"run_id": run["run_id"], "step": step, ARM: arm,
                         "seed": run.get("seed"), **by_metric})
    history = pd.DataFrame(rows, columns=["run_id", "step", ARM, "seed", *metrics])
    history.attrs["arms"] = list(arms)
    return history


def curve(history: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (arm, step): mean, 95% t-interval half-width and seed count of ``metric``, and
    what a figure shows (``centre``, ``low``, ``high``): the mean and its interval, or for a
    log-scale metric (FID) its geometric mean and interval, which never reach below zero."""
    key = ARM
    log_scale = metric_of(metric).log_scale
    rows = []
    for (arm, step), group in history.groupby([key, "step"], sort=True):
        values = group[metric].dropna().to_numpy(dtype=float)
        std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        mean = float(values.mean()) if len(values) else float("nan")
        half = ci95_half_width(std, len(values))
        shown = geometric_interval(values) if log_scale else (mean, mean - half, mean + half)
        rows.append({key: arm, "step": int(step), "mean": mean, "ci95": half,
                     "n": len(values), **dict(zip(("centre", "low", "high"), shown))})
    return pd.DataFrame(rows)


def _order(means: dict, metric: str) -> tuple:
    """Arms best first (ties keep their given order)."""
    sign = 1 if lower_is_better(metric) else -1
    return tuple(sorted(means, key=lambda arm: sign * means[arm]))


def ordering(history: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per evaluated step: the order of the arms' means, best first, and how many seeds
    order the arms that way on their own values."""
    key = ARM
    rows = []
    for step, at in history.groupby("step", sort=True):
        means = at.groupby(key)[metric].mean().to_dict()
        order = _order(means, metric)
        agree = total = 0
        for _, seed_rows in at.groupby("seed"):
            mine = seed_rows.set_index(key)[metric].to_dict()
            if set(mine) != set(means):
                continue  # this seed lacks an arm at this step
            total += 1
            agree += _order(mine, metric) == order
        rows.append({"step": int(step), "order": order, "seeds_agreeing": agree,
                     "seeds": total})
    return pd.DataFrame(rows)


def settled_at(order_by_step: pd.DataFrame) -> int | None:
    """The first step from which the order equals the final one at every later step."""
    if order_by_step.empty:
        return None
    orders = list(order_by_step["order"])
    steps = list(order_by_step["step"])
    final = orders[-1]
    first = len(orders) - 1
    while first > 0 and orders[first - 1] == final:
        first -= 1
    return steps[first]


def _order_text(order: tuple, metric: str) -> str:
    return (" < " if lower_is_better(metric) else " > ").join(
        f"{arm:g}" if isinstance(arm, float) else str(arm) for arm in order)


def ordering_table(history: pd.DataFrame, metrics: list[str],
                   protocol: str | None = None) -> str:
    """Markdown: per evaluated iteration, each metric's order (mean over seeds) with the
    number of seeds that agree, then the iteration from which each order has settled."""
    key = ", ".join(history.attrs.get("arms", [])) or ARM
    names = [metric_of(m).short_for(protocol) for m in metrics]
    orders = {m: ordering(history, m) for m in metrics}
    lines = [f"| iteration | {' | '.join(f'{n} order ({key}; seeds agreeing)' for n in names)} |",
             "|---|" + "---|" * len(metrics)]
    steps = sorted(history["step"].unique())
    for step in steps:
        cells = []
        for metric in metrics:
            row = orders[metric][orders[metric]["step"] == step].iloc[0]
            cells.append(f"{_order_text(row['order'], metric)} "
                         f"({row['seeds_agreeing']}/{row['seeds']})")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    settled = ", ".join(f"{n} from iteration {settled_at(orders[m])}"
                        for n, m in zip(names, metrics))
    lines.append("")
    lines.append(f"Order of the means settled (equal to the final order at every later "
                 f"evaluation): {settled}.")
    return "\n".join(lines) + "\n"


def has_curve(history: pd.DataFrame) -> bool:
    """True when the trials were evaluated at two or more iterations."""
    return not history.empty and history["step"].nunique() > 1
