"""The pilot table: how precise each way of reading a trial's metric is, on seeds that are
never reported (``ablations/pilot.yaml``), before the reported plans' settings are chosen.

A trial's metric can be one evaluation at one iteration (what the ablations report today)
or the mean over a window of its last evaluations; the window averages out the oscillation
of the trajectory between evaluations. For each reading and metric the table gives the
per-seed spread within an arm (pooled over the arms), the correlation of the same seed's
values between the two arms (common random numbers make a seed pair the arms; a positive
correlation is what a paired test gains from), the spread of the paired differences against
the unpaired one, and the CPU-seconds a trial of that reading costs.

``python -m results.pilot --plan pilot [--tracking-uri URI]`` prints it.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from distill import metrics as registry
from results.convergence import ARM, curve_metrics, load_history
from results.load import load_runs
from results.stats import metric_of

# One 2000-image evaluation on one core (BENCHMARKS.md, "Where the time goes": 11 s).
EVAL_SECONDS = 11.0


@dataclass(frozen=True)
class Reading:
    """How a trial's metric is read: the mean of its evaluations at ``steps``."""

    name: str
    steps: tuple[int, ...]


def readings(evaluated: list[int]) -> list[Reading]:
    """One evaluation at 150 and at the last step, and windows of the last 3 and 5."""
    last = max(evaluated)
    out = [Reading(f"one evaluation at {s}", (s,)) for s in (150, last) if s in evaluated]
    for k in (3, 5):
        steps = tuple(sorted(evaluated)[-k:])
        if len(steps) == k:
            out.append(Reading(f"mean of the last {k} ({steps[0]}–{steps[-1]})", steps))
    return out


def _values(history: pd.DataFrame, key: str, reading: Reading) -> pd.DataFrame:
    """Per (arm, seed): the reading of ``key`` (log for log-scale metrics), NaN if a step
    is missing."""
    at = history[history["step"].isin(reading.steps)]
    log = metric_of(key).log_scale
    values = at.assign(v=np.log(at[key]) if log else at[key])
    table = values.groupby([ARM, "seed"])["v"].agg(["mean", "count"])
    table.loc[table["count"] < len(reading.steps), "mean"] = math.nan
    return table["mean"].unstack(ARM)


def pilot_table(history: pd.DataFrame, metrics: list[str], cpu_seconds,
                arms: tuple[str, str]) -> str:
    """Markdown: per reading and metric, the pooled per-seed sd, the same-seed correlation
    between ``arms``, the sd of their paired differences against sqrt(2) x the pooled sd
    (what an unpaired difference has), and CPU-seconds per trial (``cpu_seconds(reading)``)."""
    lines = ["| reading | metric | per-seed sd | same-seed correlation "
             f"{arms[0]} vs {arms[1]} | sd of paired differences | unpaired (√2 × sd) "
             "| CPU-s per trial |", "|---|---|---|---|---|---|---|"]
    steps = sorted(history["step"].unique())
    for reading in readings(steps):
        for key in metrics:
            table = _values(history, key, reading)[list(arms)].dropna()
            if len(table) < 3:
                continue
            sd = math.sqrt(table.var(ddof=1).mean())
            corr = float(np.corrcoef(table[arms[0]], table[arms[1]])[0, 1])
            paired = float((table[arms[0]] - table[arms[1]]).std(ddof=1))
            unit = " (log)" if metric_of(key).log_scale else ""
            lines.append(
                f"| {reading.name} | {metric_of(key).short_for('embedded-')}{unit} "
                f"| {sd:.3g} | {corr:+.2f} | {paired:.3g} | {math.sqrt(2) * sd:.3g} "
                f"| {cpu_seconds(reading):.0f} |")
    return "\n".join(lines) + "\n"


def machine_table(histories: dict[str, pd.DataFrame], metrics: list[str]) -> str:
    """Markdown: the same pilot run on two machines (or CPU capabilities, or thread layouts):
    per reading and metric, the seed-to-seed sd within a machine (pooled), the sd between
    machines of one (arm, seed) trial, and the ratio of the two variances (near 100%: rounding
    alone moves a trial as much as a new seed does)."""
    (name_a, a), (name_b, b) = histories.items()
    lines = [f"| reading | metric | seed-to-seed sd | sd between {name_a} and {name_b} "
             "| between-machine / seed-to-seed variance |", "|---|---|---|---|---|"]
    steps = sorted(set(a["step"]) & set(b["step"]))
    for reading in readings(steps):
        for key in metrics:
            va, vb = _values(a, key, reading), _values(b, key, reading)
            arms = [c for c in va.columns if c in vb.columns]
            pairs = pd.concat([va[arms].stack(), vb[arms].stack()], axis=1).dropna()
            if len(pairs) < 3:
                continue
            # Within a machine: the arms' seed-to-seed variances, pooled over arms and machines.
            seed_var = float(np.mean([t[arm].dropna().var(ddof=1)
                                      for t in (va, vb) for arm in arms]))
            machine_var = float(((pairs[0] - pairs[1]) ** 2).mean() / 2)
            unit = " (log)" if metric_of(key).log_scale else ""
            lines.append(f"| {reading.name} | {metric_of(key).short_for('embedded-')}{unit} "
                         f"| {math.sqrt(seed_var):.3g} | {math.sqrt(machine_var):.3g} "
                         f"| {machine_var / seed_var:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", default="pilot")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--arms", default="lsg,cfg", help="two strategies (default lsg,cfg)")
    parser.add_argument("--other-store", metavar="URI",
                        help="the same pilot run elsewhere (another CPU, capability or thread "
                             "layout): also print how much of a trial's variance is the "
                             "machine's")
    args = parser.parse_args(argv)
    runs = load_runs(args.plan, args.tracking_uri)
    trials = runs[(runs["role"] == "trial") & (runs["status"] == "finished")]
    metrics = curve_metrics(runs)
    history = load_history(runs, metrics, ["strategy"])
    # CPU-seconds of a trial under a reading (one thread per trial: seconds of one core):
    # its training up to the reading's last step, pro rata, plus only the evaluations the
    # reading needs. The pilot's span holds all its evaluations; EVAL_SECONDS each are
    # taken out to get the training alone.
    iterations = float(trials["iterations"].max())
    evals = history["step"].nunique()
    train = float(trials[registry.TRAIN_SECONDS.key].mean()) - EVAL_SECONDS * evals

    def cpu(reading: Reading) -> float:
        return train * max(reading.steps) / iterations + EVAL_SECONDS * len(reading.steps)

    print(pilot_table(history, metrics, cpu, tuple(args.arms.split(","))))
    if args.other_store:
        other = load_runs(args.plan, args.other_store)
        print(machine_table({"this store": history,
                             "the other": load_history(other, metrics, ["strategy"])}, metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
