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
