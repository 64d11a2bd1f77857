"""End to end: a smoke plan through real Ray Tune into a real SQLite MLflow store.

One plan of two trials covers the structure checks and two fault cases at once
(Ray start-up and trial compute are the expensive parts on 2 cores). Each trial asks for
every CPU Ray has, so they run one after the other and the second is seen waiting:
  - a trial made to crash once at iteration 6 through the test-only fault hook (retried
    from its checkpoint at 4), which must end with the final metrics of the same config
    distilled uninterrupted in this process,
  - a trial with an absurd learning rate, which must end marked diverged.
"""

from __future__ import annotations

import io
import json
import textwrap
import threading
from pathlib import Path

import pytest

from distill import metrics as registry
from distill.config import ConfigError, trial_id
from distill.guidance import guidance_scales
from orchestrator import runner, tracking
from orchestrator.faults import FAULTS_ENV
from orchestrator.plan import expand, load_plan
from results import schema

# Ray, end-to-end plans or minutes of compute: `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow

PLAN = """\
    name: e2e
    description: Two trials, one crashing once and one diverging.
    base: {strategy: lsg, kappa: 2.0}
    axes:
      lr_generator: [1.0e-4, 1.0e+8]
    seeds: [0]
    resources: {cpu: CPUS}
    max_failures: 1
    evaluation:
      eval_every: 6
      teacher_baseline: {steps: 2, guidance_scale: 2.0}
    sizes:
      smoke: {iterations: 12, batch_size: 4, micro_batch_size: 4, log_every: 2,
              checkpoint_every: 4, eval_num_images: 48}
"""


@pytest.fixture(scope="module")
def ablate_home(local_ray) -> Path:
    """One output folder for every Ray test: the smoke teacher and CLIP train once."""
    return local_ray


@pytest.fixture(scope="module")
def ray_session(local_ray):
    """The test process's local Ray (tests/conftest.py): its start-up is slow, paid once."""
    import ray

    yield ray


@pytest.fixture(scope="module")
def e2e(ablate_home, ray_session, tmp_path_factory):
    """Run the plan once; the tests below read what it left behind."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ABLATE_HOME", str(ablate_home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("ABLATE_STORAGE", raising=False)
        plan_path = tmp_path_factory.mktemp("plans") / "e2e.yaml"
        cpus = int(ray_session.cluster_resources()["CPU"])
        plan_path.write_text(textwrap.dedent(PLAN).replace("CPUS", str(cpus)))
        trials = expand(load_plan(plan_path), "smoke")
        mp.setenv(FAULTS_ENV, json.dumps({trials[0].trial_id: 6}))
        out = io.StringIO()
        uri = tracking.tracking_uri()
        with _StatusSnapshots(uri) as snapshots:
            outcome = runner.run_plan(plan_path, size="smoke", out=out)
        yield {"outcome": outcome, "out": out.getvalue(), "trials": trials, "uri": uri,
               "plan_path": plan_path, "client": tracking.client(uri),
               "storage": ablate_home, "cpus": cpus, "snapshots": snapshots.seen}


class _StatusSnapshots:
    """Polls the store while the plan runs: every distinct {trial id: status} it saw."""

    def __init__(self, uri: str):
        self.client = tracking.client(uri)
        self.seen: list[dict[str, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(0.3):
            try:
                experiment = self.client.get_experiment_by_name(schema.EXPERIMENT_PREFIX + "e2e")
                runs = self.client.search_runs([experiment.experiment_id]) if experiment else []
            except Exception:  # noqa: BLE001 - the store is busy being written: look again
                continue
            statuses = {r.data.tags[schema.TRIAL_ID]: r.info.status for r in runs
                        if r.data.tags.get(schema.ROLE) == "trial"}
            if statuses and (not self.seen or statuses != self.seen[-1]):
                self.seen.append(statuses)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _runs(client, experiment="e2e"):
    import mlflow

    mlflow.set_tracking_uri(client.tracking_uri)
    exp = client.get_experiment_by_name(schema.EXPERIMENT_PREFIX + experiment)
    return mlflow.search_runs([exp.experiment_id], output_format="pandas")


def test_plan_runs_with_parent_child_structure(e2e):
    outcome, trials = e2e["outcome"], e2e["trials"]
    assert outcome.exit_code == 0, e2e["out"]
    runs = _runs(e2e["client"])
    parents = runs[runs[f"tags.{schema.ROLE}"] == "parent"]
    assert len(parents) == 1 and parents["status"].iloc[0] == "FINISHED"
    parent_id = parents["run_id"].iloc[0]
    assert outcome.parent_run_id == parent_id
    children = runs[runs["tags.mlflow.parentRunId"] == parent_id]
    assert sorted(children[f"tags.{schema.ROLE}"]) == ["teacher", "trial", "trial"]
    assert set(children["status"]) == {"FINISHED"}
    trial_runs = children[children[f"tags.{schema.ROLE}"] == "trial"]
    assert sorted(trial_runs[f"tags.{schema.TRIAL_ID}"]) == sorted(t.trial_id for t in trials)
    assert sorted(trial_runs["tags.mlflow.runName"]) == sorted(t.name for t in trials)
    outcomes = dict(zip(trial_runs["tags.mlflow.runName"], trial_runs[f"tags.{schema.STATUS}"]))
    crashed, absurd = (t.name for t in trials)
    assert outcomes == {crashed: "finished", absurd: "diverged"}
    assert outcome.trial_status == {t.trial_id: s for t, s in
                                    zip(trials, ("finished", "diverged"))}


def test_child_runs_carry_params_and_tags(e2e):
    runs = _runs(e2e["client"])
    trial = e2e["trials"][0]
    row = runs[runs[f"tags.{schema.TRIAL_ID}"] == trial.trial_id].iloc[0]
    scales = guidance_scales("lsg", 2.0)
    assert (scales.kappa1, scales.kappa2, scales.kappa3, scales.kappa4) == (2.0,) * 4
    for key in ("kappa1", "kappa2", "kappa3", "kappa4", "kappa"):
        assert row[f"params.{key}"] == "2.0"
    assert row["params.strategy"] == "lsg" and row["params.seed"] == "0"
    assert row["params.iterations"] == "12" and row["params.size"] == "smoke"
    assert row["params.eval_num_images"] == "48" and row["params.lr_generator"] == "0.0001"
    for tag in (schema.GIT_COMMIT, schema.TEACHER_HASH, schema.PROMPT_SET_HASH,
                schema.EVAL_PROTOCOL):
        assert isinstance(row[f"tags.{tag}"], str) and len(row[f"tags.{tag}"]) >= 8
    assert row[f"tags.{schema.TEACHER_ID}"].startswith("smoke-")
    assert row[f"tags.{schema.PLAN}"] == "e2e"
    assert trial.trial_id == trial_id(trial.config)
    teacher = runs[runs[f"tags.{schema.ROLE}"] == "teacher"].iloc[0]
    assert (teacher["params.sampler_steps"], teacher["params.kappa"]) == ("2", "2.0")
    assert teacher["metrics.fid48"] > 0


def test_curves_evaluations_and_artifacts(e2e):
    client = e2e["client"]
    runs = _runs(client)
    for trial in e2e["trials"][:1]:
        run_id = runs[runs[f"tags.{schema.TRIAL_ID}"] == trial.trial_id]["run_id"].iloc[0]
        # log_every 2 over 12 iterations: steps 2..12, each once, also for the retried trial.
        for key in (registry.LOSS_FAKE_SCORE.key, registry.LOSS_GENERATOR.key,
                    registry.IMAGES_PER_SECOND.key):
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            assert sorted(steps) == [2, 4, 6, 8, 10, 12], (trial.name, key, steps)
        # eval_every 6: evaluated at 6 and at the end.
        for key in ("fid48", registry.CLIP_SCORE.key, registry.ADHERENCE.key):
            assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [6, 12]
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert schema.CONFIG_ARTIFACT in artifacts
        grids = {a.path for a in client.list_artifacts(run_id, "samples")}
        assert grids == {"samples/grid_6.png", schema.GRID_FINAL, schema.GRID_FINAL_LAYOUT}
        config = json.loads(Path(client.download_artifacts(run_id, schema.CONFIG_ARTIFACT))
                            .read_text())
        assert config["trial_id"] == trial.trial_id and config["config"]["iterations"] == 12


def test_crash_once_is_retried_to_the_same_final_metrics(e2e, tmp_path):
    """(a) The trial that crashed at iteration 6 resumed from its checkpoint at 4 and ends
    where the same config distilled without a crash ends."""
    import torch

    from distill.loop import distill
    from evaluation.suite import build_suite

    storage = e2e["storage"] / "trials" / "e2e"
    crashed, absurd = e2e["trials"]
    result = json.loads((storage / crashed.trial_id / "result.json").read_text())
    assert (storage / crashed.trial_id / ".fault-injected").exists()
    assert not (storage / absurd.trial_id / ".fault-injected").exists()
    assert result["status"] == "finished" and result["iterations"] == 12
    assert "CRASHED" in e2e["out"] and "RETRYING" in e2e["out"]
    # The uninterrupted run: the same config, threads and evaluation, in this process.
    suite = build_suite("embedded", "smoke", crashed.config.eval_num_images)
    threads = torch.get_num_threads()
    torch.set_num_threads(e2e["cpus"])  # the plan's resources.cpu
    try:
        uninterrupted = distill(crashed.config, tmp_path,
                                evaluate=lambda fn, step: suite.evaluate_sample_fn(fn, seed=0))
    finally:
        torch.set_num_threads(threads)
    expected, metrics = uninterrupted.final_metrics, result["final_metrics"]
    assert set(expected) >= {"fid48", "clip_score", "loss_generator"}
    assert set(metrics) == set(expected)
    # In one process the core's resume is bit-identical (tests/test_loop.py). Across
    # processes MKL/oneDNN kernels may round differently (seen: 1e-6 relative in
    # loss_generator), so the same numbers are required to float32 precision.
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    runs = _runs(e2e["client"]).set_index(f"tags.{schema.TRIAL_ID}")
    assert runs.loc[crashed.trial_id, "metrics.fid48"] == metrics["fid48"]


def test_diverging_trial_is_marked_and_others_finish(e2e):
    """(c) lr 1e8 makes the losses non-finite: the trial ends 'diverged', the plan succeeds."""
    _, absurd = e2e["trials"]
    record = json.loads((e2e["storage"] / "trials" / "e2e" / absurd.trial_id / "result.json")
                        .read_text())
    assert record["status"] == "diverged" and record["iterations"] < 12
    assert f"DIVERGED {absurd.name}" in e2e["out"]


def test_status_lines_are_concise_and_the_end_says_where_results_are(e2e):
    out = e2e["out"]
    assert "╭" not in out and "Trial status" not in out and "Traceback" not in out
    for trial in e2e["trials"]:
        assert f"{trial.name} STARTED" in out.replace("  ", " ") or trial.name in out
    assert f"MLflow: {e2e['uri']}" in out
    assert f"Dashboard: ablate mlflow-ui --tracking-uri {e2e['uri']}" in out
    # The trial list before anything runs, and the done/running/pending line after each.
    head = out.split("STARTED", 1)[0]
    assert "plan e2e (size smoke, profile embedded): 2 trials, 2 to run" in head
    assert all(t.name in head for t in e2e["trials"])
    assert "1 done, " in out and "2 done, 0 running, 0 pending" in out
    assert "Tables: " in out and "| Teacher" in out


def test_rerun_of_a_finished_plan_runs_nothing(e2e):
    before = _runs(e2e["client"])
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ABLATE_HOME", str(e2e["storage"]))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        outcome = runner.run_plan(e2e["plan_path"], size="smoke", out=out)
    assert outcome.exit_code == 0
    assert outcome.parent_run_id == e2e["outcome"].parent_run_id
    assert "already finished" in out.getvalue()
    assert len(_runs(e2e["client"])) == len(before)


def test_a_finished_plan_rerun_with_a_new_compare_section_is_reported_the_new_way(e2e):
    """What to compare is analysis: a compare: section declared after the trials finished
    (a trend: line, say) reaches the finished parent run's comparison on the rerun."""
    client, parent = e2e["client"], e2e["outcome"].parent_run_id

    def compared(plan_path: Path) -> dict:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ABLATE_HOME", str(e2e["storage"]))
            mp.delenv("MLFLOW_TRACKING_URI", raising=False)
            assert runner.run_plan(plan_path, size="smoke", out=io.StringIO()).exit_code == 0
        folder = plan_path.parent / f"compared-{plan_path.stem}"
        folder.mkdir(exist_ok=True)
        return json.loads(Path(client.download_artifacts(
            parent, "plan/comparison.json", str(folder))).read_text())

    changed = e2e["plan_path"].parent / "changed" / "e2e.yaml"
    changed.parent.mkdir(exist_ok=True)
    changed.write_text(e2e["plan_path"].read_text() + "compare: {delta: {clip: 0.02}}\n")
    try:
        assert compared(changed)["delta"]["clip"] == 0.02
    finally:
        assert compared(e2e["plan_path"])["declared"] is False  # as the other tests read it


def test_rerun_after_the_teacher_changed_is_refused_not_reused(e2e):
    """A finished trial distilled from another teacher (e.g. before `make teacher`) would
    come back as a current result; the driver refuses, naming the folder and the fix."""
    trial = e2e["trials"][0]
    workdir = e2e["storage"] / "trials" / "e2e" / trial.trial_id
    original = (workdir / "result.json").read_text()
    record = json.loads(original)
    assert len(record["teacher_hash"]) >= 12  # recorded by the trial
    record["teacher_hash"] = "0" * 16
    (workdir / "result.json").write_text(json.dumps(record))
    before = _runs(e2e["client"])
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ABLATE_HOME", str(e2e["storage"]))
            mp.delenv("MLFLOW_TRACKING_URI", raising=False)
            with pytest.raises(ConfigError, match="finished with teacher 0000") as info:
                runner.run_plan(e2e["plan_path"], size="smoke", out=io.StringIO())
        assert str(workdir) in str(info.value) and "delete" in str(info.value)
        assert len(_runs(e2e["client"])) == len(before)  # no new parent or child run
    finally:
        (workdir / "result.json").write_text(original)


def test_a_trial_not_started_is_scheduled_not_running(e2e):
    """The two trials run one after the other: while one runs, the other waits as SCHEDULED
    (at the end both are FINISHED: test_the_dashboard_shows_the_answer)."""
    seen = [sorted(s.values()) for s in e2e["snapshots"] if len(s) == 2]
    assert ["RUNNING", "SCHEDULED"] in seen, seen
    assert ["RUNNING", "RUNNING"] not in seen, seen


def test_the_dashboard_shows_the_answer(e2e):
    """Parent = the report (description, plan artifacts); children carry plain tags, a
    description, cost metrics and an image at each evaluation; the experiment the plan's
    description; the teacher's point sits at the trials' last iteration."""
    client, runs = e2e["client"], _runs(e2e["client"])
    experiment = client.get_experiment_by_name(schema.EXPERIMENT_PREFIX + "e2e")
    assert experiment.tags[schema.DESCRIPTION] == "Two trials, one crashing once and one diverging."
    parent = runs[runs[f"tags.{schema.ROLE}"] == "parent"].iloc[0]
    description = parent[f"tags.{schema.DESCRIPTION}"]
    assert description.startswith("**verdict") and "| Teacher" in description
    # One finished arm (the other diverged): its FID, a geometric mean over its one seed,
    # is a metric of the parent row.
    crashed_fid = json.loads((e2e["storage"] / "trials" / "e2e" / e2e["trials"][0].trial_id
                              / "result.json").read_text())["final_metrics"]["fid48"]
    assert any(k.endswith(".fid48.gmean") and parent[k] == pytest.approx(crashed_fid)
               for k in parent.index if k.startswith("metrics.")), parent.filter(like="metrics.")
    assert {a.path for a in client.list_artifacts(parent["run_id"], "plan")} == {
        "plan/e2e.yaml", "plan/trials.json", "plan/comparison.json"}
    # What the tables compared: the plan has no compare:, so its first axis's first value.
    comparison = json.loads(Path(client.download_artifacts(
        parent["run_id"], "plan/comparison.json", str(e2e["storage"]))).read_text())
    assert comparison["declared"] is False and comparison["arms"] == ["lr_generator"]
    assert comparison["reference"] == [1.0e-4]
    crashed = e2e["trials"][0]
    row = runs[runs[f"tags.{schema.TRIAL_ID}"] == crashed.trial_id].iloc[0]
    assert {k: row[f"tags.{k}"] for k in schema.GROUP_TAGS} == {
        "strategy": "lsg", "kappa": "2", "seed": "0", "plan": "e2e", "size": "smoke",
        "profile": "embedded"}
    assert row[f"tags.{schema.DESCRIPTION}"].startswith("lsg at κ = 2, seed 0: 12 iterations")
    assert row[f"metrics.{registry.UNET_PASSES_PER_IMAGE.key}"] == 15  # lsg: 8 forward + 7 backward
    assert row[f"metrics.{registry.TRAIN_SECONDS.key}"] > 0
    assert row[f"metrics.{registry.DEVICE_HOURS.key}"] == pytest.approx(
        row[f"metrics.{registry.TRAIN_SECONDS.key}"] / 3600)
    images = {a.path for a in client.list_artifacts(row["run_id"], "images")}
    assert len(images) >= 2, images  # the evaluations at 6 and 12
    teacher = runs[runs[f"tags.{schema.ROLE}"] == "teacher"].iloc[0]
    assert [m.step for m in client.get_metric_history(teacher["run_id"], "fid48")] == [12]
    # The teacher's grid, laid out as the trials', for samples.png's teacher column.
    assert {a.path for a in client.list_artifacts(teacher["run_id"], "samples")} == {
        schema.GRID_FINAL, schema.GRID_FINAL_LAYOUT}
    assert set(runs["status"]) <= {"FINISHED"}


def test_a_trial_another_plan_finished_is_adopted_not_rerun(e2e):
    """A plan that holds a trial another plan in the same storage finished (same resolved
    config and seed, so the same trial id) links it in: nothing runs, its child run carries
    the same final metrics and the sample grids, and the other plan's folder is untouched."""
    plan = textwrap.dedent(PLAN).replace("CPUS", str(e2e["cpus"])).replace(
        "name: e2e", "name: e2e-again").replace("[1.0e-4, 1.0e+8]", "[1.0e-4]")
    plan_path = e2e["plan_path"].with_name("e2e-again.yaml")
    plan_path.write_text(plan)
    (trial,) = expand(load_plan(plan_path), "smoke")
    assert trial.trial_id == e2e["trials"][0].trial_id
    source = e2e["storage"] / "trials" / "e2e" / trial.trial_id
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ABLATE_HOME", str(e2e["storage"]))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        outcome = runner.run_plan(plan_path, size="smoke", out=out)
    assert outcome.exit_code == 0, out.getvalue()
    assert "1 trials, 0 to run" in out.getvalue()
    assert f"computed by plan e2e as {e2e['trials'][0].name}" in out.getvalue()
    adopted = e2e["storage"] / "trials" / "e2e-again" / trial.trial_id
    record = json.loads((adopted / "result.json").read_text())
    assert record["adopted_from"] == {"plan": "e2e", "trial_id": trial.trial_id,
                                      "name": e2e["trials"][0].name}
    assert record["final_metrics"] == json.loads((source / "result.json").read_text())[
        "final_metrics"]
    assert sorted(p.relative_to(adopted) for p in adopted.rglob("*")) == before
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before
    client = e2e["client"]
    runs = _runs(client, "e2e-again")
    child = runs[runs["tags." + schema.ROLE] == "trial"].iloc[0]
    original = _runs(client)
    original = original[original["tags." + schema.TRIAL_ID] == trial.trial_id].iloc[0]
    assert child["status"] == "FINISHED" and child["run_id"] != original["run_id"]
    for key in (registry.CLIP_SCORE.key, registry.ADHERENCE.key):
        assert child["metrics." + key] == original["metrics." + key]
    grids = {f.path for f in client.list_artifacts(child["run_id"], "samples")}
    assert schema.GRID_FINAL in grids
