"""Adoption of trials a finished trial in the same storage already computed
(orchestrator/storage.py), and the equivalence it rests on (distill.guidance.computation_key)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from distill import checkpoint
from distill.config import DistillConfig
from distill.guidance import computation_key
from distill.loop import distill
from orchestrator.plan import Trial, expand, load_plan
from orchestrator.storage import adopt_finished, trial_workdir
from orchestrator.trial import read_result

REPO = Path(__file__).resolve().parent.parent


def _finished(storage: Path, plan: str, trial: Trial, status: str = "finished") -> Path:
    folder = storage / "trials" / plan / trial.trial_id
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "state.json").write_text("{}")
    (folder / "result.json").write_text(json.dumps(
        {"trial_id": trial.trial_id, "name": trial.name, "status": status, "run_id": "r1",
         "config": dataclasses.asdict(trial.config), "final_metrics": {"clip_score": 0.5}}))
    return folder


def _by(trials: list[Trial], **values) -> list[Trial]:
    return [t for t in trials if all(getattr(t.config, k) == v for k, v in values.items())]


def test_the_kappa_sweep_adopts_what_the_lsg_plan_computed(tmp_path):
    lsg_plan, kappa_plan = (load_plan(REPO / "ablations" / f"{n}.yaml") for n in ("lsg", "kappa"))
    lsg, kappa = expand(lsg_plan, "smoke"), expand(kappa_plan, "smoke")
    same_id = _by(lsg, strategy="lsg", seed=0)[0]     # κ = 2 under lsg: the same trial id
    every_scale_1 = _by(lsg, strategy="none", seed=0)[0]  # none: lsg at κ = 1
    unfinished = _by(lsg, strategy="lsg", seed=1)[0]
    diverged = _by(lsg, strategy="none", seed=1)[0]
    sources = [_finished(tmp_path, "lsg", t) for t in (same_id, every_scale_1)]
    (tmp_path / "trials" / "lsg" / unfinished.trial_id / "checkpoint").mkdir(parents=True)
    _finished(tmp_path, "lsg", diverged, status="diverged")
    own = _by(kappa, kappa=2.0, seed=2)[0]
    _finished(tmp_path, "lsg", _by(lsg, strategy="lsg", seed=2)[0])
    (trial_workdir(tmp_path, kappa_plan, own) / "checkpoint").mkdir(parents=True)

    adopted = adopt_finished(tmp_path, kappa_plan, kappa)

    at_2, at_1 = _by(kappa, kappa=2.0, seed=0)[0], _by(kappa, kappa=1.0, seed=0)[0]
    assert at_2.trial_id == same_id.trial_id
    assert adopted == {at_2.trial_id: f"computed by plan lsg as {same_id.name}",
                       at_1.trial_id: f"computed by plan lsg as {every_scale_1.name}"}
    for trial, source in zip((at_2, at_1), sources, strict=True):
        folder = trial_workdir(tmp_path, kappa_plan, trial)
        assert os.path.samefile(folder / "checkpoint" / "state.json",
                                source / "checkpoint" / "state.json")  # a hard link
        record = read_result(folder)
        assert record["config"] == dataclasses.asdict(trial.config)  # this trial's, not lsg's
        assert record["trial_id"] == trial.trial_id and record["name"] == trial.name
        assert record["adopted_from"]["plan"] == "lsg" and record["run_id"] == "r1"
        assert record["final_metrics"] == {"clip_score": 0.5}
        assert read_result(source)["config"]["kappa"] == 2.0  # the source is untouched
    assert not (trial_workdir(tmp_path, kappa_plan, own) / "result.json").exists()
    assert not list((tmp_path / "trials" / "kappa").glob(".adopting-*"))
    assert adopt_finished(tmp_path, kappa_plan, kappa) == {}  # already there: nothing to do


def test_another_revisions_trial_is_not_adopted(tmp_path):
    """A folder is named by the trial id, which hashes the loop's revision: a record whose
    config hashes to another id was computed by another loop."""
    plan = load_plan(REPO / "ablations" / "kappa.yaml")
    trials = expand(plan, "smoke")
    source = _finished(tmp_path, "old", trials[0])
    source.rename(source.with_name("0123456789ab"))
    assert adopt_finished(tmp_path, plan, trials) == {}


def test_a_fresh_storage_adopts_nothing(tmp_path):
    plan = load_plan(REPO / "ablations" / "lsg.yaml")
    assert adopt_finished(tmp_path, plan, expand(plan, "smoke")) == {}


@pytest.mark.usefixtures("one_thread")
def test_configs_with_one_computation_key_compute_the_same_numbers(teacher, tmp_path):
    """What adoption rests on: lsg at κ = 1 and none at κ = 2 (every scale 1) give the same
    losses, metrics and weights bit for bit; lsg at κ = 2 has another key and other numbers."""
    base = {"teacher": "embedded:smoke", "batch_size": 4, "micro_batch_size": 2,
            "iterations": 3, "log_every": 1, "checkpoint_every": 3, "eval_num_images": 8,
            "seed": 5}
    configs = {"lsg1": DistillConfig(**base, strategy="lsg", kappa=1.0),
               "none2": DistillConfig(**base, strategy="none", kappa=2.0),
               "lsg2": DistillConfig(**base, strategy="lsg", kappa=2.0)}
    assert computation_key(configs["lsg1"]) == computation_key(configs["none2"])
    assert computation_key(configs["lsg1"]) != computation_key(configs["lsg2"])
    results = {name: distill(c, tmp_path / name, teacher=teacher) for name, c in configs.items()}
    assert results["lsg1"].final_metrics == results["none2"].final_metrics
    assert results["lsg1"].final_metrics != results["lsg2"].final_metrics
    weights = {name: checkpoint.load(r.checkpoint_dir)[0] for name, r in results.items()}
    assert weights["lsg1"].keys() == weights["none2"].keys()
    assert all(torch.equal(weights["lsg1"][k], weights["none2"][k]) for k in weights["lsg1"])
