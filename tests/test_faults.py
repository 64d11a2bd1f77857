"""Faults: concurrent SQLite writers, a driver SIGKILLed mid-plan, stale runs.

The crash-once-and-retry and diverging-trial cases run inside the end-to-end plan of
tests/test_orchestrator.py, which shares their Ray start-up and trial compute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator import tracking
from results import schema

# Ray, end-to-end plans or minutes of compute: `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

WRITER = textwrap.dedent("""\
    import pathlib, sys, time
    from orchestrator import tracking
    uri, run_id = sys.argv[1], sys.argv[2]
    barrier, steps = pathlib.Path(sys.argv[3]), int(sys.argv[4])
    logger = tracking.RunLogger(uri, run_id)
    (barrier / run_id).touch()
    while not (barrier / "go").exists():  # all four writers hit the file at the same moment
        time.sleep(0.005)
    for step in range(1, steps + 1):
        # One call per step, as a trial reports: the worst case for lock contention.
        logger.log_metrics({"loss_generator": step * 0.5, "loss_fake_score": -step,
                            "images_per_second": 1.0 / step}, step)
""")


@pytest.fixture(scope="module")
def store_home(tmp_path_factory) -> Path:
    """One SQLite store for this module: creating one costs seconds of schema migrations."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture
def uri(store_home, monkeypatch) -> str:
    monkeypatch.setenv("ABLATE_HOME", str(store_home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.tracking_uri()
    assert uri == f"sqlite:///{store_home / schema.TRACKING_DB}"
    return uri


def test_four_concurrent_writers_lose_no_metric(uri, tmp_path):
    client = tracking.client(uri)
    exp = tracking.experiment_id(client, "concurrency")
    parent = tracking.open_parent(client, exp, plan_name="concurrency", trial_set="x",
                                  size="smoke", profile="embedded", reopen=None)
    runs = [tracking.create_child(client, exp, parent, run_name=f"w{i}",
                                  tags={schema.ROLE: "trial", schema.TRIAL_ID: f"t{i}"},
                                  params={"writer": i}) for i in range(4)]
    steps = 40
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([PYTHON, "-c", WRITER, uri, run, str(tmp_path), str(steps)],
                              env=env, stderr=subprocess.PIPE, text=True) for run in runs]
    try:
        deadline = time.monotonic() + 600  # imports are slow when other jobs share the cores
        while not all((tmp_path / run).exists() for run in runs):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                [p.communicate()[1] for p in procs if p.poll() is not None]
            time.sleep(0.05)
        (tmp_path / "go").touch()
        errors = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:  # a failed wait must not leave writers behind
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    for run in runs:
        history = client.get_metric_history(run, "loss_generator")
        assert sorted(m.step for m in history) == list(range(1, steps + 1))
        assert sum(m.value for m in history) == 0.5 * steps * (steps + 1) / 2
        for key in ("loss_fake_score", "images_per_second"):
            assert len(client.get_metric_history(run, key)) == steps


def test_retry_locked_retries_only_lock_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking.retry_locked(flaky) == "ok" and len(calls) == 3

    def broken():
        calls.append(1)
        raise RuntimeError("no such table: runs")

    calls.clear()
    with pytest.raises(RuntimeError, match="no such table"):
        tracking.retry_locked(broken)
    assert len(calls) == 1


def test_run_logger_writes_each_step_once_across_restarts(uri):
    """A trial retried from a checkpoint at step 4 after reaching step 6 re-reports 5..6."""
    client = tracking.client(uri)
    exp = tracking.experiment_id(client, "restart")
    run = client.create_run(exp).info.run_id
    first = tracking.RunLogger(uri, run)
    for step in range(1, 7):
        first.log_metrics({"loss_generator": float(step)}, step)
    retried = tracking.RunLogger(uri, run)  # a new process: knows only what MLflow holds
    for step in range(5, 9):
        retried.log_metrics({"loss_generator": float(step), "clip_score": 0.25}, step)
    history = client.get_metric_history(run, "loss_generator")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 9))
    assert [m.step for m in client.get_metric_history(run, "clip_score")] == [5, 6, 7, 8]


def test_stale_running_parent_is_reopened_not_duplicated(uri):
    """A driver killed with SIGKILL leaves its parent RUNNING; the rerun reuses it."""
    client = tracking.client(uri)
    exp = tracking.experiment_id(client, "stale")
    kwargs = {"plan_name": "stale", "trial_set": "abc", "size": "smoke", "profile": "embedded"}
    first = tracking.open_parent(client, exp, reopen=None, **kwargs)
    latest = tracking.latest_parent(client, exp, "abc")
    assert latest.info.run_id == first and latest.info.status == "RUNNING"
    tracking.finish(client, first, "KILLED")
    again = tracking.open_parent(client, exp, reopen=tracking.latest_parent(client, exp, "abc"),
                                 **kwargs)
    assert again == first and client.get_run(first).info.status == "RUNNING"
    assert tracking.latest_parent(client, exp, "other") is None


KILLED_PLAN = """\
    name: killed
    axes:
      strategy: [lsg, cfg, none]
    resources: {cpu: 1}
    evaluation: {teacher_baseline: off}
    sizes:
      smoke: {iterations: 10, batch_size: 4, micro_batch_size: 4, log_every: 2,
              checkpoint_every: 2, eval_num_images: 48}
"""


@pytest.fixture(scope="module")
def ray_home(local_ray):
    """The output folder and local Ray shared with tests/test_orchestrator.py."""
    return local_ray


def test_driver_sigkilled_mid_plan_then_rerun_ends_with_one_finished_child_per_trial(
        ray_home, tmp_path, monkeypatch):
    """(b) SIGKILL leaves RUNNING runs and half-done trials; the same command finishes the
    plan, reusing the parent and each trial's child run."""
    import ray

    from distill.teacher import ensure_teacher
    from evaluation.clip_model import ensure_clip
    from orchestrator import cli
    from orchestrator.plan import expand, load_plan

    monkeypatch.setenv("ABLATE_HOME", str(ray_home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # Trained once (or found in the shared cache) here, so the driver's clock below measures
    # its start-up and trials, not the first-time training of the smoke models.
    ensure_teacher("smoke", progress=False)
    ensure_clip("smoke", progress=False)
    plan_path = tmp_path / "killed.yaml"
    plan_path.write_text(textwrap.dedent(KILLED_PLAN))
    trials = expand(load_plan(plan_path), "smoke")
    trial_dirs = [ray_home / "trials" / "killed" / t.trial_id for t in trials]
    env = {**os.environ, "ABLATE_HOME": str(ray_home), "PYTHONPATH": str(REPO),
           # The driver joins this test's Ray (the cluster path) instead of starting its own.
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([PYTHON, "-m", "orchestrator.cli", "run", str(plan_path),
                               "--size", "smoke"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600  # generous: other jobs may share the 2 cores
        while not any((d / "checkpoint").exists() for d in trial_dirs):
            assert driver.poll() is None, (sorted(map(str, ray_home.rglob("trials/*/*/*"))),
                                           (tmp_path / "driver.log").read_text())
            assert time.monotonic() < deadline, "no trial reached its first checkpoint"
            time.sleep(0.2)
    finally:
        driver.send_signal(signal.SIGKILL)  # the fault under test, and cleanup on failure
        driver.wait()
    assert not all((d / "result.json").exists() for d in trial_dirs), "killed too late"

    client = tracking.client()
    exp = client.get_experiment_by_name(schema.EXPERIMENT_PREFIX + "killed").experiment_id
    stale = client.search_runs([exp])
    assert "RUNNING" in {r.info.status for r in stale}  # nothing could close them
    # Ray ends a dead driver's trials; wait until their CPUs are free again.
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)

    assert cli.main(["run", str(plan_path), "--size", "smoke"]) == 0
    runs = client.search_runs([exp])
    parents = [r for r in runs if r.data.tags[schema.ROLE] == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags[schema.ROLE] == "trial"]
    assert sorted(r.data.tags[schema.TRIAL_ID] for r in children) == sorted(
        t.trial_id for t in trials)  # one per trial: no duplicates
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags[tracking.PARENT_RUN_ID] for r in children} == {parents[0].info.run_id}
    assert all((d / "result.json").exists() for d in trial_dirs)
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss_generator")]
        assert sorted(steps) == [2, 4, 6, 8, 10]  # resumed trials did not log a step twice


BASELINE_PLAN = """\
    name: sigterm
    axes:
      strategy: [lsg, cfg]
    seeds: [0]
    resources: {cpu: 1}
    sizes:
      smoke: {iterations: 10, batch_size: 4, micro_batch_size: 4, log_every: 2,
              checkpoint_every: 2, eval_num_images: 48}
"""


def _own_driver(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """An output folder, the baseline plan and the environment of a driver that starts its
    own local Ray and SQLite store there."""
    home = tmp_path / "home"
    plan_path = tmp_path / "sigterm.yaml"
    plan_path.write_text(textwrap.dedent(BASELINE_PLAN))
    env = {**os.environ, "ABLATE_HOME": str(home), "PYTHONPATH": str(REPO)}
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "ABLATE_STORAGE"):
        env.pop(key, None)
    return home, plan_path, env


def _ours(home: Path) -> list[str]:
    """Processes still running with the output folder in their command line (its Ray)."""
    import psutil

    left = []
    for proc in psutil.process_iter(["cmdline"]):
        with_home = str(home) in " ".join(proc.info["cmdline"] or [])
        if with_home and proc.pid != os.getpid():
            left.append(" ".join(proc.info["cmdline"])[:120])
    return left


def _interrupt(argv: list[str], env: dict[str, str], log_path: Path, marker: str,
               signum: signal.Signals, delay: float = 0.0, timeout: float = 120) -> str:
    """Start the driver, wait until its output shows ``marker`` (then ``delay`` seconds),
    send ``signum`` as a user would (SIGINT to the process group, as Ctrl-C does; SIGTERM to
    the driver), and check the interrupt rule: exit 130 or 143, the last line says which
    signal, no traceback or abort, at most three lines after the signal. Returns them."""
    with log_path.open("w") as log:
        driver = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while marker not in log_path.read_text():
            assert driver.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"{marker!r} never came"
            time.sleep(0.05)
        time.sleep(delay)
        before = len(log_path.read_text())
        if signum == signal.SIGINT:
            os.killpg(driver.pid, signum)
        else:
            driver.send_signal(signum)
        code = driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    after = log_path.read_text()[before:]
    assert code == 128 + signum, after
    lines = [line for line in after.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"interrupted ({signum.name})"), after
    assert "Traceback" not in after and "SIGABRT" not in after and len(lines) <= 3, after
    return after


@pytest.mark.slow
def test_sigterm_during_the_teacher_baseline_ends_in_one_line_and_resumes(tmp_path):
    """SIGTERM to a driver running its own Ray while the teacher baseline computes beside
    the trials: exit 143, one line after the signal, no run left RUNNING or SCHEDULED,
    nothing of its Ray left running; the same command then finishes the plan. Then SIGINT
    and SIGTERM during the report of the finished plan (one plan: Ray's start and the
    trials are paid once for every phase)."""
    home, plan_path, env = _own_driver(tmp_path)
    argv = [PYTHON, "-m", "orchestrator.cli", "run", str(plan_path), "--size", "smoke"]
    _interrupt(argv, env, tmp_path / "driver.log", "teacher baseline:", signal.SIGTERM,
               timeout=600)
    time.sleep(2)  # Ray's processes are stopped by the driver; give the kernel a moment
    assert _ours(home) == []

    client = tracking.client(f"sqlite:///{home / schema.TRACKING_DB}")
    exp = client.get_experiment_by_name(schema.EXPERIMENT_PREFIX + "sigterm").experiment_id
    statuses = {r.info.status for r in client.search_runs([exp])}
    assert not statuses & {"RUNNING", "SCHEDULED"}, statuses

    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600,
                           check=False)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    runs = client.search_runs([exp])
    children = [r for r in runs if r.data.tags[schema.ROLE] == "trial"]
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    teacher = [r for r in runs if r.data.tags[schema.ROLE] == "teacher"]
    assert [r.info.status for r in teacher] == ["FINISHED"]
    # The finished plan run again goes straight to its report: SIGINT there exits 130 and
    # SIGTERM 143, each in one line (the report takes seconds - its imports, figures and
    # uploads - so 0.5 s lands inside it), and the next run writes the report whole.
    for signum in (signal.SIGINT, signal.SIGTERM):
        _interrupt(argv, env, tmp_path / f"report-{signum.name}.log", "already finished",
                   signum, delay=0.5)
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300,
                           check=False)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert (home / "tables" / "sigterm" / "table.md").is_file()


@pytest.mark.slow
def test_ctrl_c_while_ray_starts_exits_130_in_one_line(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) a second after the
    trial list, while Ray starts and the teacher and suites load: exit 130 within seconds
    with one line, no traceback, nothing of its Ray left running."""
    home, plan_path, env = _own_driver(tmp_path)
    argv = [PYTHON, "-m", "orchestrator.cli", "run", str(plan_path), "--size", "smoke"]
    _interrupt(argv, env, tmp_path / "driver.log", "to run", signal.SIGINT, delay=1.0)
    time.sleep(2)
    assert _ours(home) == []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ctrl_c_mid_trials_on_a_tracking_server_exits_130_in_one_line(tmp_path):
    """The same interrupt rule with an MLflow tracking server as the store (MLflow's HTTP
    client and its retries in the way): Ctrl-C while the trials run exits 130 with one
    line, and the server holds no run RUNNING or SCHEDULED afterwards."""
    home, plan_path, env = _own_driver(tmp_path)
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    root = tmp_path / "server"
    root.mkdir()
    server = subprocess.Popen(
        [str(Path(PYTHON).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
         str(port), "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--serve-artifacts", "--artifacts-destination", str(root / "mlartifacts"),
         "--workers", "1"], stdout=(root / "server.log").open("w"),
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while tracking.probe(uri) is not None:
            assert server.poll() is None and time.monotonic() < deadline, "no mlflow server"
            time.sleep(0.5)
        argv = [PYTHON, "-m", "orchestrator.cli", "run", str(plan_path), "--size", "smoke"]
        _interrupt(argv, {**env, "MLFLOW_TRACKING_URI": uri}, tmp_path / "driver.log",
                   "RUNNING   it", signal.SIGINT, timeout=600)
        client = tracking.client(uri)
        exp = client.get_experiment_by_name(schema.EXPERIMENT_PREFIX + "sigterm").experiment_id
        statuses = {r.info.status for r in client.search_runs([exp])}
        assert "KILLED" in statuses and not statuses & {"RUNNING", "SCHEDULED"}, statuses
        time.sleep(2)
        assert _ours(home) == []
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
