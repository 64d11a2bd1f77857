"""The driver of ``ablate run``: plan -> trials -> Ray Tune -> MLflow -> report.

Order matters: everything that can be wrong with a plan, the machine or the
tracking store is checked before Ray starts, so a bad plan costs a second, not
a Ray start-up. Resume needs no Tune state: a finished trial has ``result.json``
in its stable workdir, an unfinished one has the core's checkpoint there, and
the MLflow runs are found again by their tags.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from distill.config import ConfigError
from distill.paths import output_root
from orchestrator import preflight, profiles, tracking
from orchestrator.plan import (
    MAX_TRIALS,
    Plan,
    Trial,
    expand,
    load_plan,
    trial_set_hash,
    with_seeds,
)
from orchestrator.trainable import run_trial
from orchestrator.trial import read_result
from results import schema

# Unix socket paths are limited to 107 bytes and Ray nests its sockets 62+ bytes deep
# under the temp dir (session_<date>_<time>_<us>_<pid>/sockets/plasma_store.<n>), so a
# longer output folder gets its Ray files under /tmp/ablate-ray-<hash> instead.
MAX_RAY_TEMP_DIR_CHARS = 35
RAY_START_ATTEMPTS = 3


DATA_PARALLEL_DRIVER_MEMORY = 64 * 1024**2  # bytes; Ray's logical memory resource


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    parent_run_id: str | None
    trial_status: dict[str, str]  # trial id -> finished / diverged / failed / killed
    report_markdown: str


def storage_root(storage: str | None) -> Path:
    """Where trial workdirs and Tune's files go: --storage, $ABLATE_STORAGE or the output folder."""
    chosen = storage or os.environ.get("ABLATE_STORAGE")
    root = Path(chosen).expanduser().resolve() if chosen else output_root()
    where = "--storage" if storage else "ABLATE_STORAGE"
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{where}={chosen}: {root} is a file, not a folder; give a folder "
                          "for trial workdirs and checkpoints")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{where}={chosen}: cannot create {root} ({exc.strerror or exc}); "
                          "give a writable folder") from None
    return root


def trial_workdir(storage: Path, plan: Plan, trial: Trial) -> Path:
    return storage / "trials" / plan.name / trial.trial_id


def ray_temp_dir() -> Path:
    preferred = output_root() / "ray"
    if len(str(preferred)) <= MAX_RAY_TEMP_DIR_CHARS:
        return preferred
    digest = hashlib.sha256(str(output_root()).encode()).hexdigest()[:8]
    return Path("/tmp") / f"ablate-ray-{digest}"


def _check_local_resources(plan: Plan) -> None:
    """A trial that asks for more than the machine has would wait forever in Ray's queue."""
    cpus = os.cpu_count() or 1
    if plan.resources.cpu > cpus:
        raise ConfigError(f"{plan.source}: resources.cpu: {plan.resources.cpu} exceeds the "
                          f"{cpus} CPUs of this machine; lower it or set RAY_ADDRESS to a cluster")
    if plan.resources.gpu > 0:
        import torch

        gpus = torch.cuda.device_count()
        if plan.resources.gpu > gpus:
            raise ConfigError(f"{plan.source}: resources.gpu: {plan.resources.gpu} exceeds the "
                              f"{gpus} GPUs of this machine; set gpu: 0 or use a GPU machine")


def _check_cluster_resources(plan: Plan) -> None:
    import ray

    available = ray.cluster_resources()
    for key, ray_key in (("cpu", "CPU"), ("gpu", "GPU")):
        wanted = getattr(plan.resources, key)
        if wanted > available.get(ray_key, 0):
            raise ConfigError(
                f"{plan.source}: resources.{key}: {wanted} exceeds the Ray cluster's "
                f"{available.get(ray_key, 0):g} {ray_key}s (RAY_ADDRESS="
                f"{os.environ.get('RAY_ADDRESS', 'local')})")


def start_ray() -> bool:
    """Connect to RAY_ADDRESS or start a local Ray; False if this process already had one."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Trials write to MLflow and our status line; Ray's per-worker log forwarding would
    # interleave every worker's stderr with it.
    kwargs = {"log_to_driver": False, "logging_level": logging.WARNING,
              "configure_logging": True}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
        return True
    temp_dir = ray_temp_dir()
    temp_dir.mkdir(parents=True, exist_ok=True)
    # Ray gives its raylet a fixed 30 s to come up; on a laptop whose cores are busy with
    # other jobs that can pass, so a timed-out start is tried again before giving up.
    attempt = 1
    while True:
        try:
            ray.init(include_dashboard=False, _temp_dir=str(temp_dir), **kwargs)
            return True
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == RAY_START_ATTEMPTS:
                raise
        ray.shutdown()
        attempt += 1


def trial_params(trial: Trial, size: str, profile: str) -> dict:
    from distill.guidance import guidance_scales

    scales = guidance_scales(trial.config.strategy, trial.config.kappa)
    return {**dataclasses.asdict(trial.config), **dataclasses.asdict(scales), "size": size,
            "profile": profile}


def _quiet_model_loading() -> None:
    """Loading a teacher or CLIP prints per-file progress bars and advice (install
    accelerate) that would bury the status lines; warnings and errors still show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


class _Interrupted(KeyboardInterrupt):
    """SIGTERM handled like Ctrl-C: finally blocks end the runs KILLED, exit code 130."""


def _raise_interrupted(signum, frame):
    raise _Interrupted(signal.Signals(signum).name)


def run_plan(plan_path: str | Path, size: str = "default", profile: str = "embedded",
             storage: str | None = None, out: TextIO = sys.stdout,
             seeds: tuple[int, ...] | None = None, max_trials: int = MAX_TRIALS) -> RunOutcome:
    """Run every unfinished trial of a plan; return the exit code and where results are.

    ``seeds`` replaces the plan's ``seeds`` (``ablate run --seeds``); a plan of more than
    ``max_trials`` trials is refused (``--max-trials``)."""
    plan = load_plan(plan_path, max_trials)
    if seeds is not None:
        plan = with_seeds(plan, seeds, max_trials)
    selected = profiles.load_profile(profile)
    trials = profiles.apply_profile(plan, expand(plan, size), size, selected)
    # Every missing weight, prompt, caption and metric file at once, before anything starts.
    preflight.check(selected, max(t.config.eval_num_images for t in trials))
    _quiet_model_loading()
    if not os.environ.get("RAY_ADDRESS"):
        _check_local_resources(plan)
    uri = tracking.tracking_uri()
    storage_dir = storage_root(storage)
    done = {t.trial_id: read_result(trial_workdir(storage_dir, plan, t)) for t in trials}
    pending = [t for t in trials if done[t.trial_id] is None]
    started_ray = False
    # Ray's shutdown (~1.4 s of waiting for its processes) runs beside the final report
    # once Tune is done, and at the latest on the way out.
    shutdown = threading.Thread(target=_shutdown_ray, name="ray-shutdown")
    try:
        # Ray's start (~3 s, mostly waiting for its processes) runs beside the driver's own
        # set-up, which needs no Ray: the MLflow check (creating a new SQLite store runs
        # its schema migrations, 2-3 s), the teacher and the evaluation suites. An
        # unreachable store still exits 2 before any trial starts.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            prepared = pool.submit(_prepare, trials, selected, size, uri)
            try:
                if pending:
                    started_ray = start_ray()
                    if os.environ.get("RAY_ADDRESS"):
                        _check_cluster_resources(plan)
            finally:
                setup = prepared.result()  # its error, if any, wins: it names the fix
        return _drive(plan, trials, done, selected, size, profile, uri, storage_dir, out, setup,
                      release_ray=shutdown.start if started_ray else lambda: None)
    finally:
        if started_ray:
            if shutdown.ident is None:  # not started by _drive (an error on the way)
                shutdown.start()
            shutdown.join()


@dataclass(frozen=True)
class _Setup:
    teachers: dict  # teacher spec -> loaded Teacher
    prompt_hashes: dict[str, str]
    suites: dict  # eval_num_images -> EvalSuite


def _prepare(trials: list[Trial], selected: profiles.Profile, size: str, uri: str) -> _Setup:
    """The driver's set-up that needs no Ray (run_plan runs it beside Ray's start)."""
    from distill import world
    from distill.loop import load_config_teacher, load_prompts

    tracking.check_reachable(uri)
    # Loaded (and for embedded sizes trained) once here, not by each trial at once.
    teachers = {spec: load_config_teacher(spec) for spec in sorted({t.config.teacher
                                                                     for t in trials})}
    prompt_hashes = {spec: world.prompt_set_hash(load_prompts(spec))
                     for spec in {t.config.prompts for t in trials}}
    # Built once here so reference statistics are cached before trials share them.
    suites = {key: profiles.build_suite(selected, size, key)
              for key in sorted({t.config.eval_num_images for t in trials})}
    return _Setup(teachers, prompt_hashes, suites)


def _shutdown_ray() -> None:
    import ray

    ray.shutdown()


def _drive(plan: Plan, trials: list[Trial], done: dict[str, dict | None],
           selected: profiles.Profile, size: str, profile: str, uri: str, storage_dir: Path,
           out: TextIO, setup: _Setup, release_ray=lambda: None) -> RunOutcome:
    """run_plan after its checks and set-up: MLflow runs, teacher baseline, Tune, report.

    ``done``: each trial's result.json as run_plan read it (None if unfinished).
    ``release_ray`` is called once Ray is no longer needed (before the report)."""
    teachers, prompt_hashes, suites = setup.teachers, setup.prompt_hashes, setup.suites
    mlflow_client = tracking.client(uri)
    exp_id = tracking.experiment_id(mlflow_client, plan.name)
    trial_set = trial_set_hash(trials)
    _check_finished_teachers(plan, trials, done, teachers, mlflow_client, storage_dir)
    pending = [t for t in trials if done[t.trial_id] is None]
    latest = tracking.latest_parent(mlflow_client, exp_id, trial_set)
    if not pending and latest is not None and latest.info.status == "FINISHED":
        print(f"all {len(trials)} trials of {plan.name} ({size}) already finished; "
              f"delete {storage_dir / 'trials' / plan.name} to rerun them", file=out)
        return _finish_report(plan, trials, latest.info.run_id, uri, done, 0, out)
    reopen = latest if latest is not None and latest.info.status != "FINISHED" else None
    parent_id = tracking.open_parent(mlflow_client, exp_id, plan_name=plan.name,
                                     trial_set=trial_set, size=size, profile=profile,
                                     reopen=reopen)
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupted)}
    child_ids: dict[str, str] = {}
    parent_status = "KILLED"
    try:
        existing = tracking.children(mlflow_client, exp_id, parent_id)
        commit = tracking.git_commit()
        for t in trials:
            teacher = teachers[t.config.teacher]
            tags = {schema.ROLE: "trial", schema.PLAN: plan.name, schema.TRIAL_ID: t.trial_id,
                    schema.GIT_COMMIT: commit, schema.TEACHER_ID: teacher.teacher_id,
                    schema.TEACHER_HASH: teacher.teacher_hash,
                    schema.PROMPT_SET_HASH: prompt_hashes[t.config.prompts],
                    schema.EVAL_PROTOCOL: suites[t.config.eval_num_images].protocol}
            if t.trial_id in existing:
                child_ids[t.trial_id] = existing[t.trial_id].info.run_id
            else:
                child_ids[t.trial_id] = tracking.create_child(
                    mlflow_client, exp_id, parent_id, run_name=t.name, tags=tags,
                    params={**trial_params(t, size, profile), "workers": selected.workers,
                            # With eval_num_images, so runs under different protocols
                            # are told apart in the params as well as the tag.
                            "eval_protocol": suites[t.config.eval_num_images].protocol})
                tracking.RunLogger(uri, child_ids[t.trial_id]).log_dict(
                    {"trial_id": t.trial_id, "name": t.name, "config": dataclasses.asdict(t.config)},
                    schema.CONFIG_ARTIFACT)
            record = done[t.trial_id]
            if record is not None:
                _close_finished_child(mlflow_client, uri, child_ids[t.trial_id], record, existing,
                                      t.trial_id)
        baseline_done = None
        tune_done, cancel, reported = threading.Event(), threading.Event(), threading.Event()
        if plan.evaluation.teacher_baseline is not None:
            args = (mlflow_client, uri, exp_id, parent_id, plan, trials, teachers, suites,
                    existing, out)
            if pending and plan.resources.gpu == 0:
                # Beside the trials rather than before them: it starts once a trial has
                # reported (the workers are past their start-up, which it would slow) and
                # shares the CPUs with them, so no core waits for it at either end. Not on
                # GPUs, where it would compete with the trials for memory.
                baseline_done = _in_daemon_thread(_baseline_beside_trials, plan, reported,
                                                  tune_done, cancel, args)
            else:
                _teacher_baseline_run(*args)
        failed: dict[str, str] = {}
        try:
            if pending:
                failed = _tune(plan, size, pending, storage_dir, uri, child_ids, out, selected,
                               reported)
        except BaseException:
            cancel.set()  # SIGTERM or an error: a baseline not yet started stays unstarted
            raise
        finally:
            tune_done.set()
        release_ray()
        done = {t.trial_id: read_result(trial_workdir(storage_dir, plan, t)) for t in trials}
        # Tune stops on Ctrl-C by itself and returns normally with trials left unfinished.
        unfinished = [t for t in pending if done[t.trial_id] is None and t.trial_id not in failed]
        if baseline_done is not None:
            if unfinished:
                cancel.set()  # not waited for: an interrupted run exits now
            else:
                baseline_done.result()  # re-raises the baseline's error, if any
        for trial_id, error in failed.items():
            tracking.finish(mlflow_client, child_ids[trial_id], "FAILED", outcome="failed")
            tracking.retry_locked(mlflow_client.set_tag, child_ids[trial_id], "ablate.error",
                                  error[:5000])
        if unfinished:
            print(f"interrupted: {len(unfinished)} trial(s) unfinished; run the same command "
                  "again to resume them", file=out)
            return RunOutcome(130, parent_id, {t.trial_id: "unfinished" for t in unfinished}, "")
        parent_status = "FAILED" if failed else "FINISHED"
        return _finish_report(plan, trials, parent_id, uri, done, 1 if failed else 0, out,
                              failed=failed)
    finally:
        # Whatever happened (error, Ctrl-C, SIGTERM), no run of this invocation stays RUNNING.
        for run_id in child_ids.values():
            run = tracking.retry_locked(mlflow_client.get_run, run_id)
            if run.info.status == "RUNNING":
                tracking.finish(mlflow_client, run_id, "KILLED")
        tracking.finish(mlflow_client, parent_id, parent_status)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _check_finished_teachers(plan: Plan, trials: list[Trial], done: dict, teachers: dict,
                             mlflow_client, storage_dir: Path) -> None:
    """A finished trial is reused on rerun, so it must have been distilled from the teacher
    its config names *now*: the trial id hashes the config ("embedded:default"), not the
    weights, and after `make teacher` (or a new checkout) the old numbers would come back
    as if current. Results from before result.json recorded the hash are checked against
    their MLflow run's tag."""
    for t in trials:
        record = done[t.trial_id]
        if record is None:
            continue
        recorded = record.get("teacher_hash")
        if recorded is None and record.get("run_id"):
            try:
                run = mlflow_client.get_run(record["run_id"])
                recorded = run.data.tags.get(schema.TEACHER_HASH)
            except Exception:  # noqa: BLE001 - another store, or the run is gone: cannot tell
                recorded = None
        current = teachers[t.config.teacher].teacher_hash
        if recorded is not None and recorded != current:
            raise ConfigError(
                f"{trial_workdir(storage_dir, plan, t)}: trial {t.name} finished with teacher "
                f"{recorded}, but {t.config.teacher} is now teacher {current}; move or delete "
                f"{storage_dir / 'trials' / plan.name} (or set ABLATE_HOME to a new folder) to "
                "rerun the plan with the current teacher")


def _close_finished_child(mlflow_client, uri, run_id, record, existing, trial_id) -> None:
    """A trial finished in an earlier invocation: make its child run FINISHED with its result.

    Either the driver died after the trial wrote result.json but before its run was
    closed (reopened run), or this is a new parent for a trial set that was finished
    earlier (new run, filled from result.json so every parent has every trial).
    """
    run = existing.get(trial_id)
    if run is not None and run.info.status == "FINISHED":
        return
    tracking.RunLogger(uri, run_id).log_metrics(record["final_metrics"], record["iterations"])
    tracking.finish(mlflow_client, run_id, "FINISHED", outcome=record["status"])


def _baseline_beside_trials(plan: Plan, reported: threading.Event,
                            tune_done: threading.Event, cancel: threading.Event,
                            args: tuple) -> None:
    """The teacher baseline, once a trial has reported or Tune is done; not at all if
    ``cancel`` is set first (the run was interrupted)."""
    while not (reported.wait(0.5) or tune_done.is_set()):
        pass
    if not cancel.is_set():
        _teacher_baseline_run(*args)


def _teacher_baseline_run(mlflow_client, uri, exp_id, parent_id, plan, trials, teachers,
                          suites, existing, out) -> None:
    """One teacher-baseline child per parent; the numbers are computed once and cached.

    On ``resources.cpu`` torch threads, like one more trial, wherever it runs: a fixed
    count, because the numbers depend on it at the 1e-6 level and the same config must
    give the same numbers; and beside the trials, a second thread on a core a trial
    already uses makes both spin-wait (up to 60x slower on a 2-core machine).
    """
    import evaluation

    if "teacher" in existing and existing["teacher"].info.status == "FINISHED":
        return
    baseline = plan.evaluation.teacher_baseline
    teacher = teachers[trials[0].config.teacher]
    suite = suites[trials[0].config.eval_num_images]
    key = json.dumps([teacher.teacher_hash, suite.protocol, trials[0].config.eval_num_images,
                      baseline.steps, baseline.guidance_scale, 0])
    cache = output_root() / "cache" / "teacher-baseline" / (
        hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")
    if cache.is_file():
        metrics = json.loads(cache.read_text())
    else:
        print(f"teacher baseline: {baseline.steps} steps at guidance {baseline.guidance_scale:g}"
              " (computed once, then cached)", file=out, flush=True)
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(max(1, plan.resources.cpu))
        started = time.perf_counter()
        try:
            metrics = evaluation.teacher_baseline(teacher, suite, num_steps=baseline.steps,
                                                  guidance_scale=baseline.guidance_scale, seed=0)
        finally:
            torch.set_num_threads(previous)
        print(f"teacher baseline: done in {time.perf_counter() - started:.0f} s", file=out,
              flush=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(metrics, sort_keys=True, default=str))
        os.replace(tmp, cache)
    if "teacher" in existing:
        run_id = existing["teacher"].info.run_id
    else:
        run_id = tracking.create_child(
            mlflow_client, exp_id, parent_id, run_name="teacher",
            tags={schema.ROLE: "teacher", schema.PLAN: plan.name,
                  schema.TEACHER_ID: teacher.teacher_id, schema.TEACHER_HASH: teacher.teacher_hash,
                  schema.EVAL_PROTOCOL: suite.protocol},
            params={"sampler": "ddim", "sampler_steps": baseline.steps,
                    "kappa": baseline.guidance_scale})
    tracking.RunLogger(uri, run_id).log_metrics(metrics, 0)
    tracking.finish(mlflow_client, run_id, "FINISHED", outcome="finished")


def _in_daemon_thread(fn, *args) -> concurrent.futures.Future:
    """``fn(*args)`` in a daemon thread. An interrupted run then exits at once instead of
    waiting minutes for a teacher baseline whose numbers nobody will read (a pool's worker
    thread is joined at exit: SIGTERM used to leave the driver alive until it finished).
    Nothing is half-written: the baseline caches and logs its metrics only once complete."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=run, name="teacher-baseline", daemon=True).start()
    return future


class _SetEvent:
    """Sets a threading.Event when called; picklable, because Tune pickles its callbacks
    into the experiment state (the pickled copy does nothing when called)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self) -> None:
        if self.event is not None:
            self.event.set()

    def __getstate__(self) -> dict:
        return {"event": None}


def _tune(plan: Plan, size: str, pending: list[Trial], storage_dir: Path, uri: str,
          child_ids: dict[str, str], out: TextIO, selected: profiles.Profile,
          reported: threading.Event) -> dict[str, str]:
    """Run the pending trials with Ray Tune; return {trial id: error} for trials that failed.

    ``reported`` is set at the first result any trial reports."""
    import logging

    # The classic output engine honours verbose=0; the newer one prints a result table
    # per trial regardless, which StatusLine replaces.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    # Tune logs each crash with a full traceback; StatusLine prints its last line instead.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)

    from orchestrator.status import StatusLine

    specs = [{"trial_id": t.trial_id, "name": t.name, "config": dataclasses.asdict(t.config),
              "workdir": str(trial_workdir(storage_dir, plan, t)), "tracking_uri": uri,
              "run_id": child_ids[t.trial_id], "cpu": plan.resources.cpu,
              "ablate_home": str(output_root()), "size": size,
              "profile": selected.to_dict(), "workers": selected.workers,
              "gpu": plan.resources.gpu} for t in pending]
    # A data-parallel trial's Tune function only drives a TorchTrainer whose workers hold
    # the plan's resources each (orchestrator/data_parallel.py). It holds no CPU itself, so
    # N workers of 1 CPU fit N CPUs; Tune needs some resource, hence a token of memory.
    resources = ({"cpu": plan.resources.cpu, "gpu": plan.resources.gpu} if selected.workers == 1
                 else {"cpu": 0, "gpu": 0, "memory": DATA_PARALLEL_DRIVER_MEMORY})
    tuner = tune.Tuner(
        tune.with_resources(run_trial, resources),
        param_space={"spec": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(
            num_samples=1, max_concurrent_trials=0,
            # One worker process runs trial after trial: imports, teacher and evaluation
            # suite are paid once per process (trial.py caches them), not per trial.
            reuse_actors=True,
            trial_name_creator=lambda trial: trial.config["spec"]["name"],
            trial_dirname_creator=lambda trial: trial.config["spec"]["trial_id"]),
        run_config=tune.RunConfig(
            name=f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(storage_dir / "tune"),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            callbacks=[StatusLine(out, {s["trial_id"]: s["config"]["iterations"] for s in specs},
                                  on_result=_SetEvent(reported))],
            verbose=0, log_to_file=True),
    )
    grid = tuner.fit()
    failed = {}
    for result in grid:
        if result.error is not None:
            trial_id = result.config["spec"]["trial_id"]
            failed[trial_id] = f"{type(result.error).__name__}: {result.error}"
    return failed


def _finish_report(plan: Plan, trials: list[Trial], parent_id: str, uri: str,
                   done: dict[str, dict | None], exit_code: int, out: TextIO,
                   failed: dict[str, str] | None = None) -> RunOutcome:
    failed = failed or {}
    status = {}
    for t in trials:
        record = done.get(t.trial_id)
        status[t.trial_id] = ("failed" if t.trial_id in failed else
                              record["status"] if record else "unfinished")
    tables = output_root() / "tables" / plan.name
    markdown = _report_markdown(plan, trials, done, status, tables, uri, parent_id)
    for t in trials:
        if t.trial_id in failed:
            print(f"FAILED {t.name}: {failed[t.trial_id].splitlines()[0][:300]}", file=out)
        elif status[t.trial_id] == "diverged":
            print(f"DIVERGED {t.name}: its losses became non-finite; see its MLflow run",
                  file=out)
    print(file=out)
    print(markdown, file=out)
    print(file=out)
    print(f"MLflow: {uri}  (parent run {parent_id}; dashboard: `make mlflow-ui`)", file=out)
    print(f"Tables: {tables}", file=out)
    return RunOutcome(exit_code, parent_id, status, markdown)


def _report_markdown(plan, trials, done, status, tables, uri, parent_id) -> str:
    """The results package's report if it has landed; else a minimal final-metrics table."""
    from results import ResultsError, write_report

    try:
        return write_report(plan.name, tables, tracking_uri=uri,
                            parent_run_id=parent_id).markdown_text
    except ResultsError as exc:
        # No finished trial (all failed or diverged): still show what happened.
        print(f"no comparison table: {exc}", file=sys.stderr)
    keys = sorted({k for r in done.values() if r for k, v in r["final_metrics"].items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})
    lines = ["| trial | status | " + " | ".join(keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for t in trials:
        metrics = (done.get(t.trial_id) or {}).get("final_metrics", {})
        cells = [f"{metrics[k]:.4g}" if k in metrics else "" for k in keys]
        lines.append(f"| {t.name} | {status[t.trial_id]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
