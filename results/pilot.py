"""The pilot table: how precise each way of reading a trial's metric is, on seeds that are
never reported (``ablations/pilot.yaml``), before the reported plans' settings are chosen.

A trial's metric can be one evaluation at one iteration (what the ablations report today)
or the mean over a window of its last evaluations; the window averages out the oscillation
of the trajectory between evaluations. For each reading and metric the table gives the
per-seed spread within an arm (pooled over the arms), the correlation of the same seed's
values between the two arms (common random numbers make a seed pair the arms; a positive
correlation is what a paired test gains from), the spread of the paired differences against
the unpaired one, and the CPU-seconds a trial of that reading costs.

The budget table then chooses the reported plans' setting: every (iteration budget,
window of the last K evaluations) the pilot's evaluations allow, its per-seed sd pooled over
the arms and over every store given (seeds and machines together), its precision per
CPU-second against today's reading, and whether the LSG plan at that setting fits
``make ablation-lsg``'s time. The rule, fixed on the pilot before the reported seeds were
run: among the settings that fit and whose every evaluation is past the transient (each
arm's mean FD-CLIP within ``TRAINED_RATIO`` of its best over the pilot; precision alone
would pick 25 iterations, a generator that has hardly left its initialisation), the one
with the highest geometric mean of the three metrics' precision per CPU-second.

``python -m results.pilot --plan pilot [--tracking-uri URI] [--other-store URI]
[--threads-store URI] [--levers-store URI]`` prints them.
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
# CPU-seconds of one iteration per strategy on one thread, idle (the same table: 203, 146
# and 122 s per 150 iterations); the pilot's own trials ran under load.
ITERATION_SECONDS = {"lsg": 1.353, "cfg": 0.973, "none": 0.813}
# The LSG plan's trials (3 strategies x 3 seeds) must fit make ablation-lsg's 15 minutes:
# 900 s less ~145 s of install and ~50 s of Ray start and report is ~700 s of wall, at the
# ~1.77 busy cores two trial slots keep (BENCHMARKS.md): ~1250 CPU-seconds.
PLAN_CPU_SECONDS = 1250.0
LSG_PLAN_SEEDS = 3
TRAINED_RATIO = 1.5


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


@dataclass(frozen=True)
class Setting:
    """A candidate for the reported plans: train ``budget`` iterations, report the mean of
    the evaluations at ``steps`` (the last K, ending at the budget)."""

    budget: int
    steps: tuple[int, ...]

    @property
    def plan_cpu_seconds(self) -> float:
        per_seed = sum(self.budget * s + EVAL_SECONDS * len(self.steps)
                       for s in ITERATION_SECONDS.values())
        return LSG_PLAN_SEEDS * per_seed

    @property
    def trial_cpu_seconds(self) -> float:
        """lsg's and cfg's mean: the pilot's arms."""
        return (self.budget * (ITERATION_SECONDS["lsg"] + ITERATION_SECONDS["cfg"]) / 2
                + EVAL_SECONDS * len(self.steps))


def settings(evaluated: list[int]) -> list[Setting]:
    """Every budget at an evaluated step, with every window of the evaluations up to it."""
    steps = sorted(evaluated)
    return [Setting(b, tuple(steps[i - k + 1:i + 1]))
            for i, b in enumerate(steps) for k in range(1, i + 2)]


def _pooled_sd(histories: list[pd.DataFrame], key: str, steps: tuple[int, ...]) -> float:
    """Per-seed sd of the reading, pooled over arms; each store's trials are further units
    (a seed on another machine is another draw of what a user meets)."""
    tables = [_values(h, key, Reading("", steps)) for h in histories]
    table = pd.concat(tables, ignore_index=True)
    return math.sqrt(float(table.var(ddof=1).mean()))


def _trained_steps(history: pd.DataFrame, metrics: list[str]) -> set[int]:
    """The steps past the transient: every arm's mean FD-CLIP there is within TRAINED_RATIO
    of that arm's best mean over the pilot."""
    fid = next(k for k in metrics if metric_of(k).log_scale)
    means = history.groupby([ARM, "step"])[fid].mean().unstack(ARM)
    return {int(step) for step, row in means.iterrows()
            if (row <= TRAINED_RATIO * means.min()).all()}


def budget_table(histories: list[pd.DataFrame], metrics: list[str],
                 reference: Setting) -> tuple[str, Setting | None]:
    """Markdown: each setting's pooled per-seed sd and precision per CPU-second (1 / (sd² ×
    trial CPU-s)) relative to ``reference``, their geometric mean, the LSG plan's CPU-s;
    and the chosen setting (the module's rule)."""
    common = sorted(set.intersection(*(set(h["step"]) for h in histories)))
    shorts = [metric_of(k).short_for("embedded-") for k in metrics]
    lines = ["| budget | evaluations | " + " | ".join(f"{s} sd" for s in shorts) + " | "
             + " | ".join(f"{s} precision/CPU-s" for s in shorts)
             + " | geometric mean | LSG plan CPU-s | qualifies |",
             "|---" * (5 + 2 * len(metrics)) + "|"]

    def precision(setting: Setting, key: str) -> float:
        return 1 / (_pooled_sd(histories, key, setting.steps) ** 2 * setting.trial_cpu_seconds)

    base = {k: precision(reference, k) for k in metrics}
    trained = _trained_steps(pd.concat(histories), metrics)
    best, best_score = None, 0.0
    for setting in settings(common):
        gains = [precision(setting, k) / base[k] for k in metrics]
        score = math.prod(gains) ** (1 / len(gains))
        fits = setting.plan_cpu_seconds <= PLAN_CPU_SECONDS and set(setting.steps) <= trained
        if fits and score > best_score:
            best, best_score = setting, score
        sds = [_pooled_sd(histories, k, setting.steps) for k in metrics]
        lines.append(f"| {setting.budget} | {', '.join(map(str, setting.steps))} | "
                     + " | ".join(f"{v:.3g}" for v in sds) + " | "
                     + " | ".join(f"{g:.2f}×" for g in gains)
                     + f" | {score:.2f}× | {setting.plan_cpu_seconds:.0f} | "
                     + ("yes" if fits else "no") + " |")
    return "\n".join(lines) + "\n", best


# What a lever of ablations/pilot-levers.yaml changes; absent in older stores = the default.
LEVER_PARAMS = {"ema_halflife_kimg": 0.5, "lr_anneal_fraction": 0.0, "batch_size": 16}


def _lever_name(row: pd.Series) -> str:
    return (f"EMA {row['ema_halflife_kimg']:g} kimg, lr annealed over the last "
            f"{row['lr_anneal_fraction']:.0%}, batch {row['batch_size']:g} × "
            f"{row['iterations']:g} iterations")


def _variance_ratio_p(a: tuple[float, int], b: tuple[float, int]) -> float:
    """Two-sided F-test p of two pooled sds (sd, degrees of freedom): is the spread of one
    setting different from the other's beyond what so few pilot seeds show by chance?"""
    from scipy import stats

    (sd_a, df_a), (sd_b, df_b) = a, b
    f = stats.f.cdf(sd_a ** 2 / sd_b ** 2, df_a, df_b)
    return float(min(1.0, 2 * min(f, 1 - f)))


def lever_table(trials: pd.DataFrame, metrics: list[str], arms: tuple[str, str]) -> str:
    """Markdown: per lever (a distinct setting of LEVER_PARAMS and iterations; one row per
    finished trial in ``trials``, with its arm in ARM, its seed and its final metrics), the
    pooled per-seed sd and the same-seed correlation between ``arms`` of each metric, the
    CPU-seconds of a trial, and the geometric mean of precision per CPU-second against the
    first row (the plain setting)."""
    trials = trials.copy()
    for key, default in LEVER_PARAMS.items():
        trials[key] = trials[key].astype(float).fillna(default) if key in trials else default
    trials["lever"] = trials.apply(_lever_name, axis=1)
    shorts = [metric_of(k).short_for("embedded-") for k in metrics]
    lines = ["| setting | " + " | ".join(f"{s} sd | {s} corr" for s in shorts)
             + " | CPU-s per trial | precision/CPU-s (geometric mean) | F-test p per metric |",
             "|---" * (4 + 2 * len(metrics)) + "|"]
    base = base_sds = None
    for lever, group in trials.groupby("lever", sort=False):
        row = group.iloc[0]
        cost = float(np.mean([row["iterations"] * ITERATION_SECONDS[a] * row["batch_size"] / 16
                              for a in arms])) + EVAL_SECONDS
        cells, precisions, sds = [], [], []
        for key in metrics:
            values = group.assign(v=np.log(group[key]) if metric_of(key).log_scale
                                  else group[key]).pivot(index="seed", columns=ARM, values="v")
            table = values[list(arms)].dropna()
            sd = math.sqrt(float(table.var(ddof=1).mean()))
            corr = float(np.corrcoef(table[arms[0]], table[arms[1]])[0, 1])
            cells.append(f"{sd:.3g} | {corr:+.2f}")
            precisions.append(1 / (sd ** 2 * cost))
            sds.append((sd, len(arms) * (len(table) - 1)))
        base, base_sds = base or precisions, base_sds or sds
        gain = math.prod(p / b for p, b in zip(precisions, base, strict=True)) ** (
            1 / len(precisions))
        tests = ", ".join(f"{_variance_ratio_p(a, b):.2f}" for a, b in zip(sds, base_sds,
                                                                            strict=True))
        lines.append(f"| {lever} | " + " | ".join(cells) + f" | {cost:.0f} | {gain:.2f}× "
                     f"| {tests if sds is not base_sds else '—'} |")
    return "\n".join(lines) + "\n"


def _machine_tables(args: argparse.Namespace, history: pd.DataFrame,
                    metrics: list[str]) -> list[pd.DataFrame]:
    """Print the machine tables the stores given allow; return the other capability's
    history, which the budget table pools (the thread layout's single evaluation is not a
    curve the budget could be chosen on)."""
    others = []
    if args.other_store:
        other = load_history(load_runs(args.plan, args.other_store), metrics, ["strategy"])
        print(machine_table({"this store": history, "the other": other}, metrics))
        others.append(other)
    if args.threads_store:
        threads = load_history(load_runs(args.threads_plan, args.threads_store), metrics,
                               ["strategy"])
        print(machine_table({"1 thread": history, "2 threads": threads}, metrics))
    return others


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", default="pilot")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--arms", default="lsg,cfg", help="two strategies (default lsg,cfg)")
    parser.add_argument("--other-store", metavar="URI",
                        help="the same pilot run elsewhere (another CPU, capability or thread "
                             "layout): also print how much of a trial's variance is the "
                             "machine's")
    parser.add_argument("--levers-store", metavar="URI",
                        help="the store of ablations/pilot-levers.yaml: also print each "
                             "lever against the plain setting at the chosen budget")
    parser.add_argument("--levers-plan", default="pilot-levers")
    parser.add_argument("--threads-store", metavar="URI",
                        help="the store of ablations/pilot-threads.yaml (two torch threads per "
                             "trial): also print how much of a trial's variance the thread "
                             "layout moves, at the evaluation both runs share")
    parser.add_argument("--threads-plan", default="pilot-threads")
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
    histories = [history, *_machine_tables(args, history, metrics)]
    table, chosen = budget_table(histories, metrics, Setting(150, (150,)))
    print(table)
    print("chosen: " + (f"{chosen.budget} iterations, evaluated at "
                        f"{', '.join(map(str, chosen.steps))}" if chosen else
                        f"nothing fits {PLAN_CPU_SECONDS:.0f} CPU-s"))
    if args.levers_store and chosen:
        # The plain setting: this store's trials read at the chosen budget.
        plain = history[history["step"] == chosen.budget].assign(
            iterations=chosen.budget, **LEVER_PARAMS)
        levers = load_runs(args.levers_plan, args.levers_store)
        levers = levers[(levers["role"] == "trial") & (levers["status"] == "finished")]
        levers = levers.assign(**{ARM: levers["strategy"]})
        print(lever_table(pd.concat([plain, levers], ignore_index=True), metrics,
                          tuple(args.arms.split(","))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
