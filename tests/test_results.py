"""results: reading runs from a real SQLite MLflow store, aggregation, the CLI.

The store is built by hand with the MLflow client, exactly as results/schema.py says
the orchestrator writes it; expected numbers below are computed by hand.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill import metrics as registry
from results import schema

# Student t quantiles t_{0.975, df}, from tables (not from scipy, which the code uses).
REPO = Path(__file__).resolve().parent.parent
T975_DF1 = 12.706204736174696
T975_DF2 = 4.302652729749464

# plan lsg, latest parent: (strategy, seed) -> (status, fid2k, clip_score, colour_shape_size_acc)
LSG_TRIALS = {
    ("lsg", 0): ("finished", 10.0, 0.30, 0.8),
    ("lsg", 1): ("finished", 12.0, 0.31, 0.9),
    ("lsg", 2): ("finished", 14.0, 0.32, 1.0),
    ("cfg", 0): ("finished", 20.0, 0.28, 0.5),
    ("cfg", 1): ("finished", 21.0, 0.28, 0.6),
    ("cfg", 2): ("finished", 22.0, 0.28, 0.7),
    ("none", 0): ("finished", 30.0, 0.25, 0.2),
    ("none", 1): ("finished", 34.0, 0.27, 0.4),
    ("none", 2): ("diverged", 500.0, 0.10, 0.0),  # must never reach a mean
}
KAPPAS = (1.0, 2.0, 3.0)
# plan lsg: device-hours per seed (one device) and UNet passes per image (8+7, 6+5, 5+4).
# Means over finished seeds: lsg 1.1, cfg 0.8, none 0.65 (the diverged seed's 0.1 left out).
LSG_COST = {"lsg": ((1.0, 1.1, 1.2), 15), "cfg": ((0.8, 0.8, 0.8), 11),
            "none": ((0.6, 0.7, 0.1), 9)}
# The lsg plan's grids: 2 prompts x 2 images of 8x8 pixels, with a layout beside them.
GRID_PROMPTS = ("a red circle", "a small blue square on the left")
TILE = 8


def _kappa_trial(strategy: str, kappa: float, seed: int):
    """plan kappa: FID grows with κ, CLIP too (the paper's trend); lsg κ=3 seed 1 diverged."""
    if (strategy, kappa, seed) == ("lsg", 3.0, 1):
        return "diverged", math.nan, math.nan, math.nan
    offset = 0.0 if strategy == "lsg" else 5.0
    return ("finished", 10.0 + 4.0 * kappa + offset + seed, 0.25 + 0.02 * kappa + 0.001 * seed,
            0.5 + 0.1 * kappa - 0.1 * (strategy == "cfg"))


def _grid_png(path: Path, colour: tuple[int, int, int]) -> Path:
    image = np.zeros((32, 16, 3), np.uint8)
    image[:] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def _prompt_grid(path: Path, colour: tuple[int, int, int]) -> None:
    """A grid as evaluation.sample_grid lays it out (a label strip, then the tiles of each
    prompt in a row), and its layout: the prompts and each tile's box. The second prompt's
    tiles are darker, so a test can tell the rows apart."""
    label, pad = 20, 2
    image = np.full((pad + 2 * (TILE + pad), label + 2 * (TILE + pad) + pad, 3), 255, np.uint8)
    cells = []
    for r in range(len(GRID_PROMPTS)):
        top = pad + r * (TILE + pad)
        boxes = []
        for c in range(2):
            left = label + pad + c * (TILE + pad)
            image[top:top + TILE, left:left + TILE] = [v // (r + 1) for v in colour]
            boxes.append([left, top, left + TILE, top + TILE])
        cells.append(boxes)
    Image.fromarray(image).save(path)
    path.with_suffix(".json").write_text(json.dumps({"prompts": list(GRID_PROMPTS),
                                                     "cells": cells}))


def _log_run(client, experiment_id, parent_id, role, name, params, status, metrics,
             tmp: Path, grid_colour=None, layout=False):
    from mlflow.entities import Metric, Param, RunTag

    tags = {"mlflow.parentRunId": parent_id, schema.ROLE: role,
            schema.EVAL_PROTOCOL: "embedded-16px-clip"}
    if status is not None:
        tags[schema.STATUS] = status
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    metric_list = []
    for key, value in metrics.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        # An intermediate evaluation first (step 50, a worse value), then the final one:
        # the table must show the value of the last step.
        metric_list.append(Metric(key, value * 3 + 1, 0, 50))
        metric_list.append(Metric(key, value, 0, 100))
    client.log_batch(run_id, metrics=metric_list,
                     params=[Param(k, str(v)) for k, v in params.items()],
                     tags=[RunTag(schema.TRIAL_ID, name)])
    if grid_colour is not None:
        grid = _grid_png(tmp / run_id / "grid_final.png", grid_colour)
        if layout:
            _prompt_grid(grid, grid_colour)
            client.log_artifact(run_id, str(grid.with_suffix(".json")), "samples")
        client.log_artifact(run_id, str(grid), "samples")
    if status is not None:
        client.set_terminated(run_id, "FINISHED" if status == "finished" else "FAILED")
    return run_id


def build_store(root: Path) -> dict:
    """A real SQLite MLflow store with plans lsg (an older and a latest parent run, profile
    embedded, with cost metrics and grid layouts), kappa (strategy x κ x 2 seeds, profile
    sd15: the paper's rows for κ 2 and 3), broken (no finished trial) and mixed (two FID
    keys)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    tmp = root / "staging"
    ids = {"uri": uri}

    def experiment(plan):
        return client.create_experiment(schema.EXPERIMENT_PREFIX + plan,
                                        artifact_location=str(root / "artifacts" / plan))

    def parent(experiment_id, plan, profile="embedded"):
        run = client.create_run(experiment_id, run_name=f"{plan}-parent",
                                tags={schema.ROLE: "parent", schema.PLAN: plan,
                                      schema.PROFILE: profile})
        client.set_terminated(run.info.run_id)
        return run.info.run_id

    def trial_params(strategy, kappa, seed):
        # docs/algorithm.md, "Guidance strategies": lsg guides all four, cfg the teacher
        # only (κ4), none nothing.
        k1, k2, k3, k4 = {"lsg": (kappa,) * 4, "cfg": (1.0, 1.0, 1.0, kappa),
                          "none": (1.0,) * 4}[strategy]
        return {"strategy": strategy, "kappa": kappa, "kappa1": k1, "kappa2": k2,
                "kappa3": k3, "kappa4": k4, "seed": seed, "iterations": 200,
                "teacher": "embedded:smoke"}

    colours = {"lsg": (200, 30, 30), "cfg": (30, 200, 30), "none": (30, 30, 200)}
    lsg = experiment("lsg")
    old = parent(lsg, "lsg")
    ids["lsg_old_parent"] = old
    _log_run(client, lsg, old, "trial", "old-lsg", trial_params("lsg", 2.0, 0), "finished",
             {"fid2k": 99.0, "clip_score": 0.1, "colour_shape_size_acc": 0.1}, tmp)
    ids["lsg_parent"] = latest = parent(lsg, "lsg")
    for (strategy, seed), (status, fid, clip, acc) in LSG_TRIALS.items():
        hours, passes = LSG_COST[strategy][0][seed], LSG_COST[strategy][1]
        _log_run(client, lsg, latest, "trial", f"strategy={strategy},seed={seed}",
                 trial_params(strategy, 2.0, seed), status,
                 {"fid2k": fid, "clip_score": clip, "colour_shape_size_acc": acc,
                  "loss_generator": 0.5, registry.TRAIN_SECONDS.key: hours * 3600,
                  registry.DEVICE_HOURS.key: hours, registry.UNET_PASSES_PER_IMAGE.key: passes},
                 tmp, grid_colour=colours[strategy], layout=True)
    # As the driver logs it: the plan file under plan/ (this parent predates
    # plan/comparison.json, so results reads the plan file's compare: section).
    client.log_artifact(latest, str(REPO / "ablations" / "lsg.yaml"), "plan")
    _log_run(client, lsg, latest, "teacher", "teacher", {"sampler": "ddim", "sampler_steps": 25,
                                                         "kappa": 2.0},
             "finished", {"fid2k": 5.0, "clip_score": 0.33, "colour_shape_size_acc": 0.95}, tmp,
             grid_colour=(128, 128, 128), layout=True)

    kappa = experiment("kappa")
    ids["kappa_parent"] = kp = parent(kappa, "kappa", profile="sd15")
    # The κ sweep crossed with strategy, compared by κ against κ = 2 within each strategy.
    client.log_dict(kp, {"arms": ["kappa"], "reference": [2.0], "metrics": ["fid", "clip"],
                         "delta": {"fid": 0.1, "clip": 0.01}, "paired": False},
                    "plan/comparison.json")
    for strategy in ("lsg", "cfg"):
        for k in KAPPAS:
            for seed in (0, 1):
                status, fid, clip, acc = _kappa_trial(strategy, k, seed)
                _log_run(client, kappa, kp, "trial", f"{strategy},{k},{seed}",
                         trial_params(strategy, k, seed), status,
                         {"fid2k": fid, "clip_score": clip, "colour_shape_size_acc": acc}, tmp,
                         grid_colour=colours[strategy])
    _log_run(client, kappa, kp, "teacher", "teacher",
             {"sampler": "ddim", "sampler_steps": 25, "kappa": 2.0}, "finished",
             {"fid2k": 6.0, "clip_score": 0.31, "colour_shape_size_acc": 0.9}, tmp)

    broken = experiment("broken")
    ids["broken_parent"] = bp = parent(broken, "broken")
    _log_run(client, broken, bp, "trial", "a", trial_params("lsg", 2.0, 0), "diverged",
             {"fid2k": math.nan}, tmp)
    _log_run(client, broken, bp, "trial", "b", trial_params("cfg", 2.0, 0), "failed", {}, tmp)
    _log_run(client, broken, bp, "trial", "c", trial_params("none", 2.0, 0), None, {}, tmp)

    mixed = experiment("mixed")
    mp = parent(mixed, "mixed")
    _log_run(client, mixed, mp, "trial", "a", trial_params("lsg", 2.0, 0), "finished",
             {"fid2k": 10.0}, tmp)
    _log_run(client, mixed, mp, "trial", "b", trial_params("cfg", 2.0, 0), "finished",
             {"fid30k": 9.0}, tmp)
    return ids


_SHARED: dict = {}


def shared_store(tmp_path_factory) -> dict:
    """One store per test session (building it is the slow part): test_latex and
    test_plots import this. Tests only add report artifacts to it, never change runs."""
    if not _SHARED:
        _SHARED.update(build_store(tmp_path_factory.mktemp("mlflow")))
    return _SHARED


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return shared_store(tmp_path_factory)


# --------------------------------------------------------------------------- loading


def test_load_runs_reads_latest_parent_with_typed_params_and_final_metrics(store):
    from results import load_runs

    df = load_runs("lsg", store["uri"])
    assert df.attrs["parent_run_id"] == store["lsg_parent"]
    assert sorted(df["role"].value_counts().items()) == [("teacher", 1), ("trial", 9)]
    trials = df[df["role"] == "trial"]
    # Params come back as numbers, metrics as their last-step value (not step 50's).
    assert trials["kappa"].tolist() == [2.0] * 9
    assert trials["seed"].tolist() == [0, 1, 2] * 3
    row = trials[(trials["strategy"] == "cfg") & (trials["seed"] == 1)].iloc[0]
    assert row["fid2k"] == 21.0 and row["clip_score"] == 0.28 and row["status"] == "finished"
    assert (trials["status"] == "diverged").sum() == 1
    assert 99.0 not in df["fid2k"].tolist()  # the older parent's trial is not mixed in
    assert df["eval_protocol"].unique().tolist() == ["embedded-16px-clip"]


def test_load_runs_named_parent_and_wrong_ids(store):
    from results import ResultsError, load_runs

    old = load_runs("lsg", store["uri"], parent_run_id=store["lsg_old_parent"])
    assert old["fid2k"].tolist() == [99.0]
    with pytest.raises(ResultsError, match="belongs to plan 'kappa', not 'lsg'"):
        load_runs("lsg", store["uri"], parent_run_id=store["kappa_parent"])
    child = load_runs("lsg", store["uri"])["run_id"].iloc[0]
    with pytest.raises(ResultsError, match="is not a parent run"):
        load_runs("lsg", store["uri"], parent_run_id=child)
    with pytest.raises(ResultsError, match=r"no runs of plan 'nope'.*broken, kappa, lsg, mixed"):
        load_runs("nope", store["uri"])


def test_missing_store_is_a_clear_error_not_an_empty_new_store(tmp_path):
    from results import ResultsError, load_runs

    db = tmp_path / "absent.db"
    with pytest.raises(ResultsError, match=r"no MLflow store at .*absent.db"):
        load_runs("lsg", f"sqlite:///{db}")
    assert not db.exists()


@pytest.mark.parametrize("damage, named", [
    ("empty", "is empty, so it holds no MLflow runs"),
    ("random", "is not an SQLite database"),
    ("truncated", "cannot be read ((sqlite3.DatabaseError) database disk image is malformed)"),
])
def test_damaged_store_exits_2_and_is_left_as_it_was(store, damage, named, tmp_path,
                                                      monkeypatch, capsys):
    import shutil

    from orchestrator.cli import main

    db = tmp_path / "mlflow.db"
    if damage == "empty":
        db.write_bytes(b"")
    elif damage == "random":
        db.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    else:
        shutil.copy(store["uri"].removeprefix("sqlite:///"), db)
        with db.open("r+b") as f:
            f.truncate(db.stat().st_size // 2)
    before = db.read_bytes()
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path))
    assert main(["tables", "--tracking-uri", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err and err.count("\n") == 1, err
    assert db.read_bytes() == before  # a read that failed wrote nothing


# --------------------------------------------------------------------------- aggregation


def test_aggregate_means_cis_and_outcome_counts_match_hand_computation(store):
    from results import aggregate, load_runs

    df = load_runs("lsg", store["uri"])
    agg = aggregate(df[df["role"] == "trial"], ["strategy"]).set_index("strategy")

    lsg = agg.loc["lsg"]  # fid 10, 12, 14: mean 12, sample std 2
    assert lsg["fid2k_mean"] == pytest.approx(12.0)
    assert lsg["fid2k_std"] == pytest.approx(2.0)
    assert lsg["fid2k_n"] == 3
    assert lsg["fid2k_ci95"] == pytest.approx(T975_DF2 * 2.0 / math.sqrt(3))
    assert lsg["colour_shape_size_acc_mean"] == pytest.approx(0.9)
    assert lsg["colour_shape_size_acc_ci95"] == pytest.approx(T975_DF2 * 0.1 / math.sqrt(3))

    cfg = agg.loc["cfg"]  # clip 0.28 x3: no spread, interval of width 0
    assert cfg["clip_score_std"] == pytest.approx(0.0, abs=1e-12)
    assert cfg["clip_score_ci95"] == pytest.approx(0.0, abs=1e-12)

    # none: 30 and 34 finished, the diverged run's 500 is left out (not averaged in).
    none = agg.loc["none"]
    counts = (none["n_runs"], none["n_finished"], none["n_diverged"], none["n_failed"])
    assert counts == (3, 2, 1, 0)
    assert none["fid2k_mean"] == pytest.approx(32.0)
    assert none["fid2k_std"] == pytest.approx(math.sqrt(8.0))
    assert none["fid2k_ci95"] == pytest.approx(T975_DF1 * math.sqrt(8.0) / math.sqrt(2))
    assert none["clip_score_mean"] == pytest.approx(0.26)


def test_aggregate_keeps_teacher_apart_and_single_seed_has_no_interval(store):
    from results import aggregate, load_runs

    df = load_runs("lsg", store["uri"])
    agg = aggregate(df, ["strategy"])
    assert agg.attrs["group_keys"] == ["role", "strategy"]
    teacher = agg[agg["role"] == "teacher"].iloc[0]
    assert teacher["fid2k_mean"] == 5.0 and teacher["fid2k_n"] == 1
    assert math.isnan(teacher["fid2k_std"]) and math.isnan(teacher["fid2k_ci95"])
    with pytest.raises(Exception, match=r"cannot group by \['alpha'\]"):
        aggregate(df, ["alpha"])


def test_aggregate_adds_the_geometric_mean_and_its_interval_for_log_scale_metrics():
    from results import aggregate

    seeds = [("a", 2.0, "finished"), ("a", 8.0, "finished"), ("b", 5.0, "finished"),
             ("b", 500.0, "diverged"), ("c", 0.0, "finished"), ("c", 3.0, "finished")]
    runs = _frame([{"strategy": s, "seed": i % 2, "fid2k": fid, "clip_score": 0.3,
                    "status": status} for i, (s, fid, status) in enumerate(seeds)])
    agg = aggregate(runs, ["strategy"]).set_index("strategy")
    # a: FID 2 and 8. Logs log 2 and 3 log 2: mean log 4 (geometric mean 4), sd log(4)/√2,
    # so the interval is exp(log 4 ∓ t·log(4)/2) = 4 / 2^t .. 4 · 2^t, t = t_{0.975,1}.
    a = agg.loc["a"]
    assert a["fid2k_gmean"] == pytest.approx(4.0)
    assert a["fid2k_glow"] == pytest.approx(4.0 / 2 ** T975_DF1)
    assert a["fid2k_ghigh"] == pytest.approx(4.0 * 2 ** T975_DF1)
    # The arithmetic columns stay (the CSV keeps them): 5 ± 3t, which reaches below zero.
    assert a["fid2k_mean"] == pytest.approx(5.0)
    assert a["fid2k_ci95"] == pytest.approx(3 * T975_DF1)
    assert a["fid2k_mean"] - a["fid2k_ci95"] < 0 < a["fid2k_glow"]
    # b: one finished seed (the diverged 500 left out): the value, and no interval.
    b = agg.loc["b"]
    assert b["fid2k_gmean"] == pytest.approx(5.0)
    assert math.isnan(b["fid2k_glow"]) and math.isnan(b["fid2k_ghigh"])
    # c: a value of 0 has no log: nothing geometric, as the test of the difference refuses it.
    c = agg.loc["c"]
    assert all(math.isnan(c[f"fid2k_{stat}"]) for stat in ("gmean", "glow", "ghigh"))
    assert c["fid2k_mean"] == pytest.approx(1.5)
    # CLIP is not on the log scale: no geometric columns.
    assert not any(col.startswith("clip_score_g") for col in agg.columns)


def test_mixed_fid_keys_are_refused(store):
    from results import ResultsError, aggregate, load_runs

    df = load_runs("mixed", store["uri"])
    with pytest.raises(ResultsError, match=r"different FID keys \{'fid2k': 1, 'fid30k': 1\}"):
        aggregate(df, ["strategy"])


# --------------------------------------------------------------------------- tables


def _geometric_ratio_percent(arm, reference) -> str:
    """The Δ of a log-scale metric: the ratio of geometric means, as a signed percent."""
    return f"{100 * (np.exp(np.mean(np.log(arm)) - np.mean(np.log(reference))) - 1):+.1f}%"


def test_lsg_table_rows_deltas_and_diverged_shown(store):
    from results.load import load_runs
    from results.tables import build_table, to_markdown

    runs = load_runs("lsg", store["uri"])
    # This parent logged only the plan file: its compare: section says what to compare.
    assert runs.attrs["comparison"].arms == ("strategy",)
    table = build_table("lsg", runs)
    md = to_markdown(table)
    rows = {r.label[0].text.split(":")[0]: r for b in table.blocks for r in b.rows}
    assert list(rows) == ["lsg", "cfg", "none", "Teacher (ddim, 25 steps, κ = 2)"]
    # The embedded protocol's Fréchet distance is in CLIP features: FD-CLIP, not FID.
    assert table.headers == ["FD-CLIP (2k) ↓", "Δ FD-CLIP (%)", "CLIP ↑", "Δ CLIP",
                             "Adherence (%) ↑", "Δ Adherence (pts)", "Cost ×", "Seeds"]
    lsg, cfg, none = rows["lsg"].cells, rows["cfg"].cells, rows["none"].cells
    assert rows["lsg"].label[0].text.endswith("(ref.)")
    # FD-CLIP is shown on the log scale it is tested on: 10, 12, 14 have the geometric mean
    # 1680^(1/3) = 11.888 and the interval exp(mean log ∓ t_{0.975,2}·sd log/√3).
    logs = np.log([10, 12, 14])
    half = T975_DF2 * np.std(logs, ddof=1) / math.sqrt(3)
    assert lsg[0].markdown() == (f"**{1680 ** (1 / 3):.2f}** [{np.exp(logs.mean() - half):.2f}, "
                                 f"{np.exp(logs.mean() + half):.2f}]") == "**11.89** [7.82, 18.06]"
    # CLIP is not on the log scale: mean ± half-width (0.30, 0.31, 0.32).
    assert lsg[2].markdown() == f"**0.310** ± {T975_DF2 * 0.01 / math.sqrt(3):.3f}"
    assert lsg[1].text == "—"  # the reference row has no Δ
    # cfg vs lsg, FD-CLIP on the log scale: geometric means 1680^(1/3) = 11.887 and
    # 9240^(1/3) = 20.984, ratio 1.765: +76.5%. Welch on the logs gives p = 0.021, but six
    # tests share the family: Holm multiplies the smallest p by 6, the next by 5, ...
    assert cfg[1].text == _geometric_ratio_percent([20, 21, 22], [10, 12, 14]) == "+76.5%"
    assert cfg[1].note == "unresolved" and not cfg[1].mark
    # none: FD-CLIP 30, 34 vs 10, 12, 14: log-scale Welch p = 0.0035, x 6 = 0.021 < 0.05.
    assert none[1].text == _geometric_ratio_percent([30, 34], [10, 12, 14])
    assert none[1].note == "worse" and none[1].mark
    assert none[5].text == "-60.0" and none[5].interval.endswith(" pts")
    assert none[-1].text == "diverged 1/3"
    assert "diverged 1/3" in md
    # Best CLIP is lsg's 0.310 (the teacher's 0.330 is a reference, not a contender).
    assert rows["lsg"].cells[2].bold and not rows["Teacher (ddim, 25 steps, κ = 2)"].cells[2].bold
    csv = table.csv.set_index("strategy")
    assert csv.loc["cfg", "fid2k_p"] == pytest.approx(0.0214, abs=5e-4)
    assert csv.loc["none", "fid2k_p_holm"] == pytest.approx(6 * csv.loc["none", "fid2k_p"])
    assert csv.loc["cfg", "fid2k_verdict"] == "unresolved"
    assert csv.loc["none", "n_diverged"] == 1
    # The teacher's Δ is on the same scale, untested: 5 over lsg's geometric mean.
    assert rows["Teacher (ddim, 25 steps, κ = 2)"].cells[1].text == _geometric_ratio_percent(
        [5.0], [10, 12, 14])


def test_kappa_table_blocks_per_strategy_and_generic_fallback(store):
    from results.load import load_runs
    from results.tables import build_table

    runs = load_runs("kappa", store["uri"])
    # plan/comparison.json: arms κ, reference κ = 2, FID and CLIP only.
    table = build_table("kappa", runs)
    assert table.label_headers == ["κ"]
    titles = [b.title for b in table.blocks]
    assert titles == ["lsg: LSG kept (paper)", "cfg: LSG removed, teacher guidance only",
                      "Reference", "Published (Zhou et al., Table 1)"]
    assert "Δ Adherence (pts)" not in table.headers  # not among compare.metrics
    lsg_rows = table.blocks[0].rows
    assert [r.label[0].text for r in lsg_rows] == ["1", "2 (ref.)", "3"]
    # lsg κ=1: fid 14, 15 -> geometric mean √210 = 14.49; sd of the logs log(15/14)/√2, so
    # the interval is √210 · (15/14)^(∓t/2), t = 12.706: [9.35, 22.46].
    assert lsg_rows[0].cells[0].markdown() == (
        f"**{math.sqrt(210):.2f}** [{math.sqrt(210) * (15 / 14) ** (-T975_DF1 / 2):.2f}, "
        f"{math.sqrt(210) * (15 / 14) ** (T975_DF1 / 2):.2f}]") == "**14.49** [9.35, 22.46]"
    assert lsg_rows[2].cells[0].markdown() == "22.00" and lsg_rows[2].cells[-1].text == (
        "diverged 1/2")
    assert lsg_rows[2].cells[1].note == "untestable"  # one finished seed
    # The same runs under another plan name: the same comparison, the same table.
    other = build_table("custom", runs)
    assert [[c.markdown() for c in r.label + r.cells] for b in other.blocks for r in b.rows] \
        == [[c.markdown() for c in r.label + r.cells] for b in table.blocks for r in b.rows]


# --------------------------------------------------------------------------- report + CLI


def test_cli_all_plans_writes_every_output_logs_to_parent_and_prints_markdown(
        store, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from orchestrator.cli import main

    monkeypatch.setenv("ABLATE_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    assert main(["tables"]) == 0  # --plan all: plans that cannot be reported are skipped
    out = capsys.readouterr()
    assert out.out.startswith("**Table (tab:ablate-kappa).**")
    assert "**Table (tab:ablate-lsg).**" in out.out and "| none: SiD alone |" in out.out
    assert "skipped broken: plan 'broken'" in out.err
    assert "skipped mixed: runs carry different FID keys" in out.err
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["kappa", "lsg"]
    folder = tmp_path / "tables" / "lsg"
    names = sorted(p.name for p in folder.iterdir())
    # Every run logged an evaluation at step 50 and the final one at 100: the report adds
    # the metrics-vs-iteration curve and the order of the arms per evaluation.
    # power.md: seeds per arm for 80% power of each comparison with lsg.
    assert names == ["convergence.md", "fid_clip_tradeoff.pdf", "fid_clip_tradeoff.png",
                     "metrics_vs_iteration.pdf", "metrics_vs_iteration.png", "power.md",
                     "runs.csv", "samples.pdf", "samples.png", "table-narrow.tex",
                     "table-wide.tex", "table.csv", "table.md", "table.tex"]
    assert (tmp_path / "tables" / "kappa" / "metrics_vs_kappa.pdf").is_file()
    power = (folder / "power.md").read_text()
    assert "| — | cfg vs lsg | FD-CLIP | +76.5% [" in power and "| unresolved |" in power
    # Step 50 holds 3x+1 of each final value, so FID's order is the same at both steps:
    # lsg (mean 12) < cfg (21) < none (32, its diverged seed left out).
    convergence = (folder / "convergence.md").read_text()
    assert "| 50 | lsg < cfg < none (2/2) |" in convergence
    assert "FD-CLIP from iteration 50" in convergence
    # The verdict closes the printed report.
    assert out.out.rstrip().splitlines()[-1].startswith("verdict (Welch t-tests; Holm over")
    logged = {f.path for f in MlflowClient(store["uri"]).list_artifacts(store["lsg_parent"],
                                                                        "report")}
    assert logged == {f"report/{n}" for n in names}


def test_cli_no_finished_runs_exits_2_with_one_line(store, tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main

    monkeypatch.setenv("ABLATE_HOME", str(tmp_path))
    assert main(["tables", "--plan", "broken", "--tracking-uri", store["uri"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "plan 'broken'" in err
    assert "no finished trials (diverged 1, failed 1, incomplete 1)" in err
    assert not (tmp_path / "tables" / "broken").exists()
    assert main(["tables", "--plan", "lsg", "--tracking-uri",
                 f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err


def test_unset_param_is_its_own_configuration_not_dropped():
    """A param that is None for some trials (MLflow's "None" -> NaN) still separates them;
    pandas' string conversion would treat NaN as missing and merge or lose those rows."""
    import pandas as pd

    from results.tables import build_table, to_markdown

    rows = [{"run_id": f"r{i}", "run_name": "", "role": "trial", "status": "finished",
             "trial_id": "", "fault_inject_at_iteration": fault, "seed": 0, "fid48": fid}
            for i, (fault, fid) in enumerate([(None, 9.0), (6, 12.0), (None, 9.0)])]
    rows[2]["seed"], rows[2]["fid48"] = 1, 16.0
    runs = pd.DataFrame(rows)
    runs.attrs.update(parent_run_id="p", param_columns=["fault_inject_at_iteration", "seed"])
    table = build_table("e2e", runs)
    got = [(r.label[0].text, r.cells[0].markdown(), r.cells[-1].text)
           for r in table.blocks[0].rows]
    # Unset: fid 9 and 16 over seeds 0, 1 -> geometric mean 12; sd of the logs
    # log(16/9)/√2, so the interval is 12 · (4/3)^(∓t), t = t(0.975, 1): [0.31, 464.17].
    # Equal values as printed: a tie for best, so neither is bold.
    # The first value in order (6, then unset) is the reference the other is compared with.
    interval = f"[{12 * (4 / 3) ** -T975_DF1:.2f}, {12 * (4 / 3) ** T975_DF1:.2f}]"
    assert interval == "[0.31, 464.17]"
    assert got == [("6 (ref.)", "12.00", "1"), ("None", f"12.00 {interval}", "2")]
    assert f"| None | 12.00 {interval} | — untestable | 2 |" in to_markdown(table)


def test_mixed_evaluation_protocols_are_refused():
    import pandas as pd

    from results import ResultsError
    from results.tables import build_table

    runs = pd.DataFrame([
        {"run_id": f"r{i}", "run_name": "", "role": "trial", "status": "finished",
         "trial_id": "", "eval_protocol": protocol, "strategy": s, "seed": 0, "fid2k": 9.0}
        for i, (s, protocol) in enumerate([("lsg", "embedded-16px-clip"),
                                           ("cfg", "coco2014-30k-256")])])
    runs.attrs.update(parent_run_id="p", param_columns=["strategy", "seed"])
    with pytest.raises(ResultsError, match=r"different protocols \(coco2014-30k-256, embedded"):
        build_table("lsg", runs)


def test_registering_the_tables_command_imports_no_heavy_libraries():
    """`ablate` imports results.cli for every command; --help must not wait for pandas,
    scipy, matplotlib or MLflow."""
    import subprocess
    import sys

    code = ("import sys, argparse, results.cli; results.cli.register(argparse.ArgumentParser()"
            ".add_subparsers()); print(sorted(m for m in ('pandas', 'scipy', 'matplotlib', "
            "'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_seeds_vary_gives_one_row_with_all_trials():
    import pandas as pd

    from results.tables import build_table, to_latex

    runs = pd.DataFrame([
        {"run_id": f"r{seed}", "run_name": "", "role": "trial", "status": status,
         "trial_id": "", "seed": seed, "clip_score": clip}
        for seed, status, clip in [(0, "finished", 0.30), (1, "finished", 0.32),
                                   (2, "failed", None)]])
    runs.attrs.update(parent_run_id="p", param_columns=["seed"])
    table = build_table("single", runs)
    (row,) = table.blocks[0].rows
    # 0.30, 0.32: mean 0.31, std 0.01414, CI = 12.706 * 0.01414 / sqrt(2) = 0.127
    assert [c.markdown() for c in row.label + row.cells] == [
        "all trials", "0.310 ± 0.127", "failed 1/3"]
    assert table.label_headers == ["Configuration"]
    # The interval under the mean, smaller: a nested tabular (no package needed).
    assert ("all trials & \\begin{tabular}[t]{@{}r@{}}0.310\\\\{\\scriptsize$\\pm$0.127}"
            "\\end{tabular}") in to_latex(table)


def test_delta_cells_carry_the_interval_and_the_verdict_word():
    from results.tables import build_table, to_latex

    # CLIP: lsg 0.30, 0.31, 0.32 vs cfg 0.20, 0.21, 0.22: Welch t = 0.1 / 0.00816 = 12.2 on
    # 4 df, p = 2.6e-4; x 2 tests (Holm) = 5.2e-4: worse. The interval: 0.1 +- 2.776 x
    # 0.00816 = [-0.123, -0.077].
    rows = [{"strategy": s, "kappa": 2.0, "seed": i, "fid2k": 10.0 + i,
             "clip_score": (0.30 if s == "lsg" else 0.20) + 0.01 * i,
             "eval_protocol": "embedded-16px-clip"}
            for s in ("lsg", "cfg") for i in range(3)]
    table = build_table("anything", _frame(rows))
    cfg = table.blocks[0].rows[1].cells
    clip = table.headers.index("Δ CLIP")
    assert cfg[clip].markdown() == "-0.100† [-0.123, -0.077] worse"
    # FD-CLIP: the same values in both arms: a zero difference, yet not "equivalent" with
    # three seeds: the interval (±14%) is wider than ±10%.
    fid = table.headers.index("Δ FD-CLIP (%)")
    assert cfg[fid].text == "+0.0%" and cfg[fid].note == "unresolved"
    assert cfg[clip].latex() == (
        "\\begin{tabular}[t]{@{}r@{}}$-$0.100$^{\\dagger}$\\\\{\\scriptsize [$-$0.123, $-$0.077]}"
        "\\\\{\\scriptsize worse}\\end{tabular}")
    assert "worse" in to_latex(table)


# --------------------------------------------------------------------------- issue 13 rules


def _frame(rows: list[dict], plan_params=("strategy", "kappa", "seed"), **attrs):
    import pandas as pd

    frame = pd.DataFrame([{"run_id": f"r{i}", "run_name": "", "role": "trial",
                           "status": "finished", "trial_id": "", **row}
                          for i, row in enumerate(rows)])
    frame.attrs.update(parent_run_id="p", param_columns=[c for c in plan_params if c in frame],
                       **attrs)
    return frame


# FID 2, 4, 16 (logs log 2 · (1, 2, 4)): geometric mean 2^(7/3) = 5.04 against a mean of
# 7.33 ± 18.8 (t_{0.975,2} · 7.57 / √3) that reaches below zero; the sd of the logs is
# log 2 · √(7/3), so the interval is 2^(7/3 ∓ t_{0.975,2} · √7 / 3) = [0.36, 69.93].
SKEWED_FID = (2.0, 4.0, 16.0)
SKEWED_GMEAN = 2 ** (7 / 3)
SKEWED_LOW = 2 ** (7 / 3 - T975_DF2 * math.sqrt(7) / 3)
SKEWED_HIGH = 2 ** (7 / 3 + T975_DF2 * math.sqrt(7) / 3)


def skewed_runs():
    """lsg: the skewed FIDs above; cfg: 6, 6.5, 7 (mean 6.5, geometric mean 6.49). lsg is
    the better by geometric mean, cfg by arithmetic mean. test_plots draws them too."""
    return _frame([{"strategy": s, "kappa": k, "seed": i, "fid2k": fid,
                    "clip_score": 0.30 + 0.01 * i}
                   for s, k, fids in (("lsg", 1.0, SKEWED_FID), ("lsg", 2.0, (6.0, 6.5, 7.0)),
                                      ("cfg", 1.0, (6.0, 6.5, 7.0)), ("cfg", 2.0, SKEWED_FID))
                   for i, fid in enumerate(fids)])


def test_a_log_scale_metric_shows_its_geometric_mean_and_interval_never_below_zero():
    from results.tables import build_table, to_latex, to_markdown

    runs = skewed_runs()
    table = build_table("lsg", runs[runs["kappa"] == 1.0])
    cells = {row.label[0].text.split(":")[0]: row.cells[0] for row in table.blocks[0].rows}
    lsg, cfg = cells["lsg"], cells["cfg"]
    assert (lsg.text, lsg.interval, lsg.ci) == (
        f"{SKEWED_GMEAN:.2f}", f"[{SKEWED_LOW:.2f}, {SKEWED_HIGH:.2f}]", "")
    assert (lsg.text, lsg.interval) == ("5.04", "[0.36, 69.93]")
    assert "-" not in lsg.interval
    # Bold goes by the value shown: lsg's geometric 5.04 beats cfg's 6.49, though cfg's
    # arithmetic mean (6.5 against 7.33) is the lower.
    assert lsg.bold and not cfg.bold and cfg.text == f"{(6 * 6.5 * 7) ** (1 / 3):.2f}"
    assert "| **5.04** [0.36, 69.93] |" in to_markdown(table)
    # LaTeX: the bounds on two lines under the value (one line would widen the column).
    assert (r"\textbf{5.04}\\{\scriptsize [0.36,}\\{\scriptsize 69.93]}"
            in to_latex(table))
    csv = table.csv.set_index("strategy")
    assert csv.loc["lsg", "fid2k_mean"] - csv.loc["lsg", "fid2k_ci95"] < 0  # arithmetic
    assert (csv.loc["lsg", "fid2k_gmean"], csv.loc["lsg", "fid2k_glow"],
            csv.loc["lsg", "fid2k_ghigh"]) == pytest.approx(
        (SKEWED_GMEAN, SKEWED_LOW, SKEWED_HIGH))
    assert "clip_score_gmean" not in csv
    assert "Mean ± 95% CI over seeds (FID geometric);" in table.caption
    assert any("FID, on the log scale: the geometric mean with its 95% interval [low, high], "
               "asymmetric: the t-interval of the mean of the logs, exponentiated" in note
               for note in table.notes)


def test_cost_column_is_device_hours_relative_to_the_reference(store):
    from results.load import load_runs
    from results.tables import build_table, to_markdown

    table = build_table("lsg", load_runs("lsg", store["uri"]))
    rows = {r.label[0].text.split(":")[0]: r for b in table.blocks for r in b.rows}
    cost = table.headers.index("Cost ×")
    # Mean device-hours over finished seeds: lsg 1.1, cfg 0.8, none 0.65 (diverged left out).
    assert [rows[s].cells[cost].text for s in ("lsg", "cfg", "none")] == ["1.00", "0.73", "0.59"]
    assert rows["Teacher (ddim, 25 steps, κ = 2)"].cells[cost].text == "—"
    assert "Cost ×: device-hours vs lsg" in table.caption
    csv = table.csv.set_index("strategy")
    assert csv.loc["cfg", "cost_vs_reference"] == pytest.approx(0.8 / 1.1)
    assert csv.loc["lsg", "device_hours_mean"] == pytest.approx(1.1)
    assert csv.loc["none", "unet_passes_per_image_mean"] == 9
    assert "| **11.89** [7.82, 18.06] | — |" in to_markdown(table)  # lsg: no Δ against itself


def test_cost_falls_back_to_unet_passes_and_is_absent_without_cost_metrics():
    from results.tables import build_table

    passes = {"lsg": 15, "cfg": 11, "none": 9}
    rows = [{"strategy": s, "kappa": 2.0, "seed": seed, "fid2k": 10.0 + seed,
             "unet_passes_per_image": passes[s],
             # One run without device-hours: the column must not mix two units.
             "device_hours": None if (s, seed) == ("cfg", 0) else 1.0}
            for s in passes for seed in (0, 1)]
    table = build_table("lsg", _frame(rows))
    cost = table.headers.index("Cost ×")
    # 11 / 15 = 0.733, 9 / 15 = 0.6
    assert [r.cells[cost].text for r in table.blocks[0].rows] == ["1.00", "0.73", "0.60"]
    assert "Cost ×: UNet passes per image vs lsg" in table.caption
    for row in rows:
        del row["unet_passes_per_image"], row["device_hours"]
    plain = build_table("lsg", _frame(rows))
    assert "Cost ×" not in plain.headers and "Cost" not in plain.caption


def test_no_negative_zero_anywhere(tmp_path):
    from results.arms import param_text
    from results.tables import build_table, to_latex, to_markdown

    assert registry.CLIP_SCORE.number(-0.0001) == "0.000"
    assert registry.FID.number(-0.004) == "0.00"
    assert registry.FID.number(-0.006) == "-0.01"
    assert param_text("kappa", -0.0) == "0"
    # cfg's CLIP is 0.0001 below lsg's: Δ and means round to zero; κ is a negative zero.
    rows = [{"strategy": s, "kappa": -0.0, "seed": seed, "fid2k": 10.0 + seed,
             "clip_score": (0.3 if s == "lsg" else 0.2999) + 0.01 * seed,
             "colour_shape_size_acc": -0.0}
            for s in ("lsg", "cfg") for seed in (0, 1)]
    table = build_table("lsg", _frame(rows))
    table.csv.to_csv(tmp_path / "t.csv", index=False)
    texts = [to_markdown(table), (tmp_path / "t.csv").read_text(), table.caption,
             *(to_latex(table, v) for v in ("table", "table-wide", "table-narrow"))]
    for text in texts:
        assert not re.search(r"(-|\$-\$|−)0(\.0+)?(?![0-9.]*[1-9])", text), text


def test_published_rows_only_for_the_sd_profiles():
    from results.tables import build_table, to_markdown

    rows = [{"strategy": "lsg", "kappa": k, "seed": seed, "fid30k": 9.0 + k + seed,
             "clip_score": 0.3} for k in (1.5, 2.5, 3.0) for seed in (0, 1)]
    table = build_table("kappa", _frame(rows, profile="sd21base"))
    block = table.blocks[-1]
    assert block.title == "Published (Zhou et al., Table 1)"
    # SD2.1-base: κ 1.5 -> 9.52 / 0.308, κ 3 -> 13.50 / 0.321; the paper has no κ 2.5.
    assert [[c.text for c in r.label + r.cells] for r in block.rows] == [
        ["1.5", "9.52", "—", "0.308", "—", "paper"], ["3", "13.50", "—", "0.321", "—", "paper"]]
    assert table.caption.endswith("; published: Zhou et al., Table 1.")
    assert any("Long and Short Guidance in Score identity Distillation" in n
               and "SD2.1-base" in n for n in table.notes)
    assert "| 1.5 | 9.52 | — | 0.308 | — | paper |" in to_markdown(table)
    assert not any(r.cells[0].bold for r in block.rows)  # a reference, never the best
    lsg = build_table("lsg", _frame([{**r, "strategy": s, "kappa": 2.0} for r in rows[:2]
                                     for s in ("lsg", "cfg")], profile="sd15"))
    assert [c.text for c in lsg.blocks[-1].rows[0].label] == ["SiD-LSG, κ = 2"]
    assert lsg.blocks[-1].rows[0].cells[0].text == "9.56"  # SD1.5, κ 2: 9.56 / 0.313
    for profile in ("embedded", None):
        table = build_table("kappa", _frame(rows, profile=profile))
        assert not any((b.title or "").startswith("Published") for b in table.blocks)


def test_profile_tag_is_read_and_shared_with_the_orchestrator(store):
    from orchestrator import tracking
    from results.load import load_runs

    assert tracking.PROFILE == schema.PROFILE
    assert load_runs("lsg", store["uri"]).attrs["profile"] == "embedded"
    assert load_runs("kappa", store["uri"]).attrs["profile"] == "sd15"


def test_summary_metrics_per_arm_with_interval_bounds(store):
    from results import summary_metrics
    from results.load import load_runs
    from results.tables import build_table

    summary = summary_metrics(build_table("lsg", load_runs("lsg", store["uri"])))
    # FID, on the log scale: the geometric mean and its interval, as the table shows it.
    logs = np.log([10, 12, 14])  # lsg
    half = T975_DF2 * np.std(logs, ddof=1) / math.sqrt(3)
    assert summary["lsg.fid2k.gmean"] == pytest.approx(1680 ** (1 / 3))
    assert summary["lsg.fid2k.ci_low"] == pytest.approx(np.exp(logs.mean() - half))
    assert summary["lsg.fid2k.ci_high"] == pytest.approx(np.exp(logs.mean() + half))
    assert not any(key.endswith("fid2k.mean") for key in summary)
    assert summary["none.fid2k.gmean"] == pytest.approx(math.sqrt(30 * 34))  # 500 diverged
    # Other metrics: the mean and the symmetric t-interval (adherence 0.8, 0.9, 1.0).
    assert summary["lsg.colour_shape_size_acc.mean"] == pytest.approx(0.9)
    assert summary["lsg.colour_shape_size_acc.ci_low"] == pytest.approx(
        0.9 - T975_DF2 * 0.1 / math.sqrt(3))
    assert summary["cfg.clip_score.mean"] == pytest.approx(0.28)
    assert summary["cfg.cost_vs_reference"] == pytest.approx(0.8 / 1.1)
    assert summary["teacher.fid2k.gmean"] == 5.0 and "teacher.fid2k.ci_low" not in summary
    assert all(re.fullmatch(r"[A-Za-z0-9_\-. /]+", key) for key in summary)
    kappa = summary_metrics(build_table("kappa", load_runs("kappa", store["uri"])))
    assert kappa["lsg_kappa1.fid2k.gmean"] == pytest.approx(math.sqrt(14 * 15))
    assert kappa["cfg_kappa3.fid2k.gmean"] == pytest.approx(math.sqrt(27 * 28))


def test_report_returns_table_verdict_and_summary_for_the_parent_run(store, tmp_path):
    from results import summary_metrics, verdict_line, write_report
    from results.load import load_runs
    from results.tables import build_table

    report = write_report("lsg", tmp_path, store["uri"])
    line = verdict_line("lsg", store["uri"], store["lsg_parent"])
    assert line == report.verdict and line.startswith("verdict (Welch t-tests; Holm over 6")
    assert report.table_markdown.startswith("**Table (tab:ablate-lsg).**")
    assert report.markdown_text.startswith(report.table_markdown)
    assert report.markdown_text.rstrip().endswith(line)
    assert report.summary == summary_metrics(build_table("lsg", load_runs("lsg", store["uri"])))
    assert report.latex_wide.name == "table-wide.tex"
    assert report.latex_narrow.name == "table-narrow.tex"
    # The run id is a note, not part of the caption.
    assert f"MLflow parent run {store['lsg_parent']}." not in report.table_markdown.split(
        "\n")[0]
    assert f"MLflow parent run {store['lsg_parent']}." in report.table_markdown


def test_tables_compare_reports_existing_runs_with_a_plan_files_comparison(
        store, tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main

    monkeypatch.setenv("ABLATE_HOME", str(tmp_path))
    plan = tmp_path / "against-cfg.yaml"
    plan.write_text("name: x\naxes: {strategy: [lsg, cfg, none]}\n"
                    "compare: {reference: {strategy: cfg}, metrics: [clip]}\n")
    assert main(["tables", "--plan", "lsg", "--tracking-uri", store["uri"], "--compare",
                 str(plan)]) == 0
    verdict = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert " vs cfg: lsg: CLIP +0.030 [" in verdict and "Holm over 2 tests" in verdict
    plan.write_text("name: x\naxes: {strategy: [lsg, cfg]}\ncompare: {delta: {clip: -1}}\n")
    assert main(["tables", "--plan", "lsg", "--tracking-uri", store["uri"], "--compare",
                 str(plan)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(plan) in err and "compare.delta.clip" in err
