"""The pilot table on a hand-built history: spreads, same-seed correlation, paired spread."""

from __future__ import annotations

import math

import pandas as pd

from results.convergence import ARM
from results.pilot import pilot_table, readings


def _history() -> pd.DataFrame:
    # CLIP per seed at 150 and 200. cfg = lsg + 0.01 at 150 (perfectly correlated seeds);
    # at 200 cfg is lsg reversed (perfectly anti-correlated).
    lsg = {0: (0.50, 0.60), 1: (0.55, 0.62), 2: (0.60, 0.64)}
    rows = []
    for seed, (a, b) in lsg.items():
        rows += [{"run_id": f"l{seed}", "step": 150, ARM: "lsg", "seed": seed, "clip_score": a},
                 {"run_id": f"l{seed}", "step": 200, ARM: "lsg", "seed": seed, "clip_score": b},
                 {"run_id": f"c{seed}", "step": 150, ARM: "cfg", "seed": seed,
                  "clip_score": a + 0.01},
                 {"run_id": f"c{seed}", "step": 200, ARM: "cfg", "seed": seed,
                  "clip_score": lsg[2 - seed][1]}]
    return pd.DataFrame(rows)


def test_readings_cover_one_evaluation_and_windows():
    names = [r.name for r in readings([25, 50, 75, 100, 125, 150, 175, 200])]
    assert names == ["one evaluation at 150", "one evaluation at 200",
                     "mean of the last 3 (150–200)", "mean of the last 5 (100–200)"]


def test_spread_correlation_and_paired_differences_by_hand():
    text = pilot_table(_history(), ["clip_score"], lambda r: 100.0 * max(r.steps),
                       ("lsg", "cfg"))
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines()[2:]}
    at150 = rows["one evaluation at 150"]
    # sd of (0.50, 0.55, 0.60) = 0.05 in both arms; correlation +1; paired differences all
    # -0.01: sd 0; unpaired sqrt(2) x 0.05 = 0.0707.
    assert at150[2] == "0.05" and at150[3] == "+1.00" and float(at150[4]) < 1e-12
    assert at150[5] == f"{math.sqrt(2) * 0.05:.3g}" and at150[6] == "15000 |"
    at200 = rows["one evaluation at 200"]
    # 0.60, 0.62, 0.64 against 0.64, 0.62, 0.60: correlation -1, differences -0.04, 0, 0.04.
    assert at200[3] == "-1.00" and at200[4] == "0.04"
    # Windows of 3 and 5 need that many evaluations: two give no window row.
    assert set(rows) == {"one evaluation at 150", "one evaluation at 200"}


def test_machine_table_compares_the_same_trials_across_machines():
    from results.pilot import machine_table

    same = _history()
    moved = same.assign(clip_score=same["clip_score"] + [0.01, -0.01] * (len(same) // 2))
    text = machine_table({"a": same, "b": moved}, ["clip_score"])
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines()[2:]}
    # Every trial moved by ±0.01 between machines: between-machine variance 0.01² / 2, sd
    # 0.00707; seed-to-seed sd at 150 stays ~0.05 in both arms.
    at150 = rows["one evaluation at 150"]
    assert at150[3] == f"{0.01 / math.sqrt(2):.3g}"
    assert machine_table({"a": same, "b": same}, ["clip_score"]).count("| 0% |") == 2


def test_the_budget_table_chooses_the_most_precise_trained_setting_that_fits(monkeypatch):
    from results import pilot

    # FD-CLIP per (arm, seed) at 50, 100, 150. At 50 both arms are far from their best
    # (the transient); at 100 and 150 within 1.5x of it. Seeds spread 1.0 apart at 150 but
    # only 0.1 at 100, so on the log scale one evaluation at 100 is the tighter reading.
    rows = []
    for arm, best in (("lsg", 4.0), ("cfg", 3.0)):
        for seed, offset in enumerate((-1, 0, 1)):
            for step, value in ((50, 20.0 + offset), (100, best + 0.1 * offset),
                                (150, best + 1.0 + offset)):
                rows.append({"run_id": f"{arm}{seed}", "step": step, ARM: arm, "seed": seed,
                             "fid2k": value})
    history = pd.DataFrame(rows)
    assert pilot._trained_steps(history, ["fid2k"]) == {100, 150}
    # Every setting fits the time: the rule picks by precision among the trained ones.
    monkeypatch.setattr(pilot, "PLAN_CPU_SECONDS", 1e9)
    text, chosen = pilot.budget_table([history], ["fid2k"], pilot.Setting(150, (150,)))
    assert chosen == pilot.Setting(100, (100,))
    # Precision per CPU-second of 100 against 150: (sd150 / sd100)^2 x cost150 / cost100,
    # with sd the pooled per-arm sd of log FD and cost lsg's and cfg's mean iteration
    # seconds x budget + one 11 s evaluation.
    sd = {s: math.sqrt(pd.DataFrame({a: [math.log(v) for v in vals] for a, vals in (
        ("lsg", [4.0 + d for d in ds]), ("cfg", [3.0 + d for d in ds]))}).var(ddof=1).mean())
        for s, ds in ((100, (-0.1, 0, 0.1)), (150, (0.0, 1.0, 2.0)))}
    cost = {b: b * (1.353 + 0.973) / 2 + 11 for b in (100, 150)}
    gain = (sd[150] / sd[100]) ** 2 * cost[150] / cost[100]
    row = next(line for line in text.splitlines() if line.startswith("| 100 | 100 |"))
    assert f"| {gain:.2f}× |" in row
    # A time limit below the 100-iteration plan leaves nothing trained that fits.
    monkeypatch.setattr(pilot, "PLAN_CPU_SECONDS", 500.0)
    assert pilot.budget_table([history], ["fid2k"], pilot.Setting(150, (150,)))[1] is None


def test_the_lever_table_by_hand():
    from scipy import stats

    from results.pilot import lever_table

    # Two settings, lsg and cfg on seeds 0-2. Plain: CLIP 0.50/0.55/0.60 in both arms (sd
    # 0.05); the lever halves the spread (0.525/0.55/0.575, sd 0.025): 4x the precision at
    # the same cost; pooled df 2 x 2 = 4 each, so the F-test's p is that of a ratio of 4.
    rows = []
    for setting, values in (({"ema_halflife_kimg": 0.5}, (0.50, 0.55, 0.60)),
                            ({"ema_halflife_kimg": 1.0}, (0.525, 0.55, 0.575))):
        for arm in ("lsg", "cfg"):
            for seed, value in enumerate(values):
                rows.append({ARM: arm, "seed": seed, "clip_score": value, "iterations": 100,
                             "batch_size": 16, "lr_anneal_fraction": 0.0, **setting})
    text = lever_table(pd.DataFrame(rows), ["clip_score"], ("lsg", "cfg"))
    plain, lever = (line.split(" | ") for line in text.splitlines()[2:])
    assert plain[1] == "0.05" and plain[2] == "+1.00" and plain[4] == "1.00×"
    assert lever[1] == "0.025" and lever[4] == "4.00×"
    p = 2 * (1 - stats.f.cdf(4.0, 4, 4))
    assert lever[5] == f"{p:.2f} |"
