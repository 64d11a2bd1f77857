"""The driver of ``ablate run``: one :class:`PlanRun` per invocation, read as its phases.

    resolve -> prepare (beside Ray's start) -> open parent and children
            -> start baseline -> tune -> close (report)

Everything that can be wrong with a plan, the machine or the tracking store is checked
before any trial starts, so a bad plan costs a second, not a Ray start-up. Resume needs
no Tune state: a finished trial has ``result.json`` in its stable workdir, an unfinished
one has the core's checkpoint there, and the MLflow runs are found again by their tags.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from distill.config import ConfigError
from distill.paths import output_root
from orchestrator import baseline, faults, preflight, profiles, tracking
from orchestrator.plan import MAX_TRIALS, Plan, Trial, expand, load_plan, trial_set_hash, with_seeds
from orchestrator.ray_session import RaySession, check_local_resources, check_reachable
from orchestrator.spec import TrialSpec
from orchestrator.trainable import run_trial
from orchestrator.trial import read_result
from results import schema

DATA_PARALLEL_DRIVER_MEMORY = 64 * 1024**2  # bytes; Ray's logical memory resource


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    parent_run_id: str | None
    trial_status: dict[str, str]  # trial id -> finished / diverged / failed / unfinished
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


def trial_params(trial: Trial, size: str, profile: str) -> dict:
    from distill.guidance import guidance_scales

    scales = guidance_scales(trial.config.strategy, trial.config.kappa)
    return {**dataclasses.asdict(trial.config), **dataclasses.asdict(scales), "size": size,
            "profile": profile}


def _quiet_model_loading() -> None:
    """Loading a teacher or CLIP prints per-file progress bars and advice (install
    accelerate) that would bury the status lines; warnings and errors still show."""
    from orchestrator.cli import quiet_libraries

    quiet_libraries()
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


class _Interrupted(KeyboardInterrupt):
    """SIGTERM handled like Ctrl-C: the runs end KILLED, exit code 130."""


def _raise_interrupted(signum, frame):
    raise _Interrupted(signal.Signals(signum).name)


@dataclass(frozen=True)
class Setup:
    """What the trials share, loaded once by the driver (and, for the embedded sizes,
    trained once here rather than by each trial at once)."""

    teachers: dict  # teacher spec -> loaded Teacher
    prompt_hashes: dict[str, str]
    suites: dict  # eval_num_images -> EvalSuite


def _load_setup(trials: list[Trial], profile: profiles.Profile, size: str, uri: str) -> Setup:
    from distill import world
    from distill.loop import load_config_teacher, load_prompts

    tracking.check_reachable(uri)
    teachers = {spec: load_config_teacher(spec)
                for spec in sorted({t.config.teacher for t in trials})}
    prompt_hashes = {spec: world.prompt_set_hash(load_prompts(spec))
                     for spec in {t.config.prompts for t in trials}}
    # Built once here so reference statistics are cached before trials share them.
    suites = {n: profiles.build_suite(profile, size, n)
              for n in sorted({t.config.eval_num_images for t in trials})}
    return Setup(teachers, prompt_hashes, suites)


def run_plan(plan_path: str | Path, size: str = "default", profile: str = "embedded",
             storage: str | None = None, out: TextIO | None = None,
             seeds: tuple[int, ...] | None = None, max_trials: int = MAX_TRIALS) -> RunOutcome:
    """Run every unfinished trial of a plan; return the exit code and where results are.

    ``seeds`` replaces the plan's ``seeds`` (``ablate run --seeds``); a plan of more than
    ``max_trials`` trials is refused (``--max-trials``)."""
    # sys.stdout as it is now, not as it was at import (a test may have replaced it).
    out = out or sys.stdout
    return PlanRun.resolve(plan_path, size, profile, storage, seeds, max_trials, out).execute()


@dataclass
class PlanRun:
    """One ``ablate run``: the resolved plan and everything its phases build, in one place."""

    plan: Plan
    size: str
    profile: profiles.Profile
    trials: list[Trial]
    storage: Path
    uri: str
    out: TextIO
    done: dict[str, dict | None]  # trial id -> its result.json, None while unfinished
    ray: RaySession = field(default_factory=RaySession)
    setup: Setup | None = None
    client: Any = None  # MlflowClient
    experiment_id: str = ""
    latest_parent: Any = None  # the newest parent run of this trial set, if any
    parent_id: str | None = None
    existing: dict[str, Any] = field(default_factory=dict)  # the parent's child runs by key
    child_ids: dict[str, str] = field(default_factory=dict)  # trial id -> MLflow run id
    parent_status: str = "KILLED"  # until the run ends otherwise

    # -- resolve ---------------------------------------------------------------------------
    @classmethod
    def resolve(cls, plan_path: str | Path, size: str, profile_name: str, storage: str | None,
                seeds: tuple[int, ...] | None, max_trials: int, out: TextIO) -> PlanRun:
        """The plan's trials under the profile, checked against the files and the machine."""
        plan = load_plan(plan_path, max_trials)
        if seeds is not None:
            plan = with_seeds(plan, seeds, max_trials)
        profile = profiles.load_profile(profile_name)
        trials = expand(plan, size, profile)
        # Every missing weight, prompt, caption and metric file at once, before anything starts.
        preflight.check(profile, max(t.config.eval_num_images for t in trials))
        preflight.check_trial_files(plan.source, trials)
        if os.environ.get("RAY_ADDRESS"):
            check_reachable(os.environ["RAY_ADDRESS"])  # before minutes of Ray's reconnects
        else:
            check_local_resources(plan)
        preflight.check_fid_images(plan.source, trials, profile, size)
        _quiet_model_loading()
        uri = tracking.tracking_uri()
        tracking.http_retry_policy()  # before a local Ray starts: its workers inherit it
        # MLflow prints a "View run" link for each run closed on a server; the report
        # prints the parent's once.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        if tracking.is_server(uri):
            tracking.check_reachable(uri)  # one quick request, so before Ray starts
        elif os.environ.get("MLFLOW_TRACKING_URI"):  # the default's folder is the output's
            tracking.check_store_folder(uri)
        storage_dir = storage_root(storage)
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            output_root()  # the default store's folder, also when trials are stored elsewhere
        done = {t.trial_id: read_result(trial_workdir(storage_dir, plan, t)) for t in trials}
        return cls(plan, size, profile, trials, storage_dir, uri, out, done)

    @property
    def pending(self) -> list[Trial]:
        return [t for t in self.trials if self.done[t.trial_id] is None]

    def execute(self) -> RunOutcome:
        with _plan_lock(self.storage, self.plan):
            try:
                return self._execute()
            except Exception as exc:
                why = tracking.probe(self.uri)
                if why is None:
                    raise
                # The server went away mid-run: the checkpoints are on disk and the runs
                # are reopened by the rerun, so the fix is the server, not the run.
                raise tracking.TrackingLost(
                    f"the MLflow tracking server {self.uri} stopped answering ({why}) and "
                    f"did not come back within the retries ({type(exc).__name__}); trials "
                    f"keep their checkpoints under {self.storage / 'trials' / self.plan.name}"
                    "; start the server again and rerun the same command to resume") from None

    def _execute(self) -> RunOutcome:
        self._print_trials()
        try:
            self.prepare()
            self._check_finished_teachers()
            finished = self._finished_parent()
            if finished is not None:
                print(f"all {len(self.trials)} trials of {self.plan.name} ({self.size}) "
                      f"already finished; delete {self.storage / 'trials' / self.plan.name} "
                      "to rerun them", file=self.out)
                self.parent_id = finished
                return self.report(0, {})
            self.open_parent()
            with self._runs_closed_on_exit():
                self.open_children()
                beside = self.start_baseline()
                failed = self.tune(beside)
                return self.close(failed, beside)
        finally:
            self.ray.close()

    def _print_trials(self) -> None:
        """What this invocation will do, before anything starts."""
        print(f"plan {self.plan.name} (size {self.size}, profile {self.profile.name}): "
              f"{len(self.trials)} trials, {len(self.pending)} to run", file=self.out)
        for t in self.trials:
            state = "to run" if self.done[t.trial_id] is None else "finished earlier"
            print(f"  {t.name:<34} {t.trial_id}  {state}", file=self.out)
        print(file=self.out, flush=True)

    # -- prepare ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Teachers, prompt hashes, evaluation suites and the MLflow check, beside Ray's
        start-up, which they do not need. Their error, if any, wins: it names the fix."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            loading = pool.submit(_load_setup, self.trials, self.profile, self.size, self.uri)
            try:
                if self.pending:
                    self.ray.start(self.plan)
            finally:
                self.setup = loading.result()
        self.client = tracking.client(self.uri)
        self.experiment_id = tracking.experiment_id(self.client, self.plan.name)
        self.latest_parent = tracking.latest_parent(self.client, self.experiment_id,
                                                    trial_set_hash(self.trials))
        if self.plan.description.strip():  # the experiment's description in the dashboard
            tracking.retry_locked(self.client.set_experiment_tag, self.experiment_id,
                                  schema.DESCRIPTION, self.plan.description.strip())

    def _check_finished_teachers(self) -> None:
        """A finished trial is reused on rerun, so it must have been distilled from the
        teacher its config names *now*: the trial id hashes the config ("embedded:default"),
        not the weights, and after `make teacher` (or a new checkout) the old numbers would
        come back as if current. Results from before result.json recorded the hash are
        checked against their MLflow run's tag."""
        for t in self.trials:
            record = self.done[t.trial_id]
            if record is None:
                continue
            recorded = record.get("teacher_hash") or self._tagged_teacher_hash(record)
            current = self.setup.teachers[t.config.teacher].teacher_hash
            if recorded is not None and recorded != current:
                folder = self.storage / "trials" / self.plan.name
                raise ConfigError(
                    f"{trial_workdir(self.storage, self.plan, t)}: trial {t.name} finished with "
                    f"teacher {recorded}, but {t.config.teacher} is now teacher {current}; move "
                    f"or delete {folder} (or set ABLATE_HOME to a new folder) to rerun the plan "
                    "with the current teacher")

    def _tagged_teacher_hash(self, record: dict) -> str | None:
        if not record.get("run_id"):
            return None
        try:
            return self.client.get_run(record["run_id"]).data.tags.get(schema.TEACHER_HASH)
        except Exception:  # noqa: BLE001 - another store, or the run is gone: cannot tell
            return None

    def _finished_parent(self) -> str | None:
        """The parent run that already holds every trial finished, if nothing is pending."""
        if self.pending or self.latest_parent is None:
            return None
        finished = self.latest_parent.info.status == "FINISHED"
        return self.latest_parent.info.run_id if finished else None

    # -- open runs -------------------------------------------------------------------------
    def open_parent(self) -> None:
        """The parent run; an unfinished one of the same trial set is reopened."""
        latest = self.latest_parent
        reopen = latest if latest is not None and latest.info.status != "FINISHED" else None
        self.parent_id = tracking.open_parent(
            self.client, self.experiment_id, plan_name=self.plan.name,
            trial_set=trial_set_hash(self.trials), size=self.size, profile=self.profile.name,
            reopen=reopen)
        if reopen is None:
            # What was asked and what it resolved to, beside the results.
            logger = tracking.RunLogger(self.uri, self.parent_id)
            logger.log_artifact(Path(self.plan.source), "plan")
            logger.log_dict({"plan": self.plan.name, "size": self.size,
                             "profile": self.profile.name,
                             "trials": [{"trial_id": t.trial_id, "name": t.name,
                                         "config": dataclasses.asdict(t.config)}
                                        for t in self.trials]}, "plan/trials.json")
        if self.plan.comparison is not None:
            # Every invocation (a reopened parent too): what to compare is analysis, so a
            # plan whose compare: section changed is reported the new way on resume.
            from results.comparison import ARTIFACT

            tracking.RunLogger(self.uri, self.parent_id).log_dict(
                json.loads(self.plan.comparison.to_json()), ARTIFACT)

    def open_children(self) -> None:
        """One child run per trial; trials finished earlier have theirs closed with their
        result."""
        self.existing = tracking.children(self.client, self.experiment_id, self.parent_id)
        commit = tracking.git_commit()
        for t in self.trials:
            if t.trial_id in self.existing:
                self.child_ids[t.trial_id] = self.existing[t.trial_id].info.run_id
            else:
                self.child_ids[t.trial_id] = self._create_child(t, commit)
            if self.done[t.trial_id] is not None:
                self._close_finished_child(t)

    def _create_child(self, t: Trial, commit: str) -> str:
        teacher = self.setup.teachers[t.config.teacher]
        protocol = self.setup.suites[t.config.eval_num_images].protocol
        run_id = tracking.create_child(
            self.client, self.experiment_id, self.parent_id, run_name=t.name,
            tags={schema.ROLE: "trial", schema.PLAN: self.plan.name, schema.TRIAL_ID: t.trial_id,
                  schema.GIT_COMMIT: commit, schema.TEACHER_ID: teacher.teacher_id,
                  schema.TEACHER_HASH: teacher.teacher_hash,
                  schema.PROMPT_SET_HASH: self.setup.prompt_hashes[t.config.prompts],
                  schema.EVAL_PROTOCOL: protocol, **self._group_tags(t),
                  schema.DESCRIPTION: self._describe(t)},
            # With eval_num_images, so runs under different protocols are told apart in
            # the params as well as the tag.
            params={**trial_params(t, self.size, self.profile.name),
                    "workers": self.profile.workers, "eval_protocol": protocol})
        tracking.RunLogger(self.uri, run_id).log_dict(
            {"trial_id": t.trial_id, "name": t.name, "config": dataclasses.asdict(t.config)},
            schema.CONFIG_ARTIFACT)
        return run_id

    def _group_tags(self, t: Trial) -> dict[str, str]:
        values = {"strategy": t.config.strategy, "kappa": f"{t.config.kappa:g}",
                  "seed": str(t.config.seed), "plan": self.plan.name, "size": self.size,
                  "profile": self.profile.name}
        return {key: values[key] for key in schema.GROUP_TAGS}

    def _describe(self, t: Trial) -> str:
        c = t.config
        return (f"{c.strategy} at κ = {c.kappa:g}, seed {c.seed}: {c.iterations} iterations of "
                f"batch {c.batch_size} from {c.teacher}, evaluated on {c.eval_num_images} images "
                f"(plan {self.plan.name}, size {self.size}, profile {self.profile.name}; "
                f"trial {t.trial_id})")

    def _close_finished_child(self, t: Trial) -> None:
        """A trial finished in an earlier invocation: make its child run FINISHED with its
        result. Either the driver died after the trial wrote result.json but before its run
        was closed (reopened run), or this is a new parent for a trial set finished earlier
        (new run, filled from result.json so every parent has every trial)."""
        run = self.existing.get(t.trial_id)
        if run is not None and run.info.status == "FINISHED":
            return
        record, run_id = self.done[t.trial_id], self.child_ids[t.trial_id]
        tracking.RunLogger(self.uri, run_id).log_metrics(
            {**record["final_metrics"], **record.get("cost", {})}, record["iterations"])
        tracking.finish(self.client, run_id, "FINISHED", outcome=record["status"])

    @contextlib.contextmanager
    def _runs_closed_on_exit(self):
        """SIGTERM raises like Ctrl-C; whatever happens (error, Ctrl-C, SIGTERM), no run of
        this invocation stays RUNNING or SCHEDULED: an unfinished one ends KILLED."""
        previous = signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            yield
        finally:
            # Nothing can be closed on a server that is gone (each call would wait out the
            # retries); the rerun reopens these runs.
            if tracking.probe(self.uri) is None:
                self._close_runs()
            signal.signal(signal.SIGTERM, previous)

    def _close_runs(self) -> None:
        for run_id in self.child_ids.values():
            run = tracking.retry_locked(self.client.get_run, run_id)
            if run.info.status in ("RUNNING", "SCHEDULED"):
                tracking.finish(self.client, run_id, "KILLED")
        tracking.finish(self.client, self.parent_id, self.parent_status)

    # -- start baseline --------------------------------------------------------------------
    def start_baseline(self) -> baseline.BesideTrials:
        """The teacher-baseline child: beside the trials on CPUs, before them on GPUs."""
        beside = baseline.BesideTrials()
        done = "teacher" in self.existing and self.existing["teacher"].info.status == "FINISHED"
        if self.plan.evaluation.teacher_baseline is None or done:
            return beside
        if self.pending and self.plan.resources.gpu == 0:
            beside.start(self._log_baseline)
        else:
            self._log_baseline()
        return beside

    def _log_baseline(self) -> None:
        first = self.trials[0].config
        teacher = self.setup.teachers[first.teacher]
        suite = self.setup.suites[first.eval_num_images]
        values = baseline.metrics(self.plan, teacher, suite, first.eval_num_images, self.out)
        # At the trials' last iteration, so the teacher's point sits beside theirs in charts.
        step = max(t.config.iterations for t in self.trials)
        baseline.log_run(self.client, self.uri, self.experiment_id, self.parent_id, self.plan,
                         teacher, suite, self.existing, values, step)

    # -- tune ------------------------------------------------------------------------------
    def tune(self, beside: baseline.BesideTrials) -> dict[str, str]:
        """Run the pending trials with Ray Tune; {trial id: error} of those that failed."""
        if not self.pending:
            beside.tune_done.set()
            return {}
        try:
            return _fit(self.plan, [self._spec(t) for t in self.pending], self.storage,
                        self.profile, self.out, beside.first_result)
        except BaseException:
            beside.cancelled.set()  # SIGTERM or an error: a baseline not yet started stays so
            raise
        finally:
            beside.tune_done.set()

    def _spec(self, t: Trial) -> TrialSpec:
        """Everything a trial needs (it may run on another node)."""
        return TrialSpec(
            trial_id=t.trial_id, name=t.name, config=dataclasses.asdict(t.config),
            workdir=str(trial_workdir(self.storage, self.plan, t)), tracking_uri=self.uri,
            run_id=self.child_ids[t.trial_id], ablate_home=str(output_root()), size=self.size,
            cpu=self.plan.resources.cpu, gpu=self.plan.resources.gpu,
            workers=self.profile.workers, profile=self.profile.to_dict(),
            mlflow_http=tracking.http_retry_policy(),
            fault_at_iteration=faults.faults_for(t.trial_id), hold=faults.hold())

    # -- close -----------------------------------------------------------------------------
    def close(self, failed: dict[str, str], beside: baseline.BesideTrials) -> RunOutcome:
        """Mark failed trials, settle the baseline, report; 130 if trials are unfinished
        (Tune stops on Ctrl-C by itself and returns normally with them left)."""
        self.ray.release()
        self.done = {t.trial_id: read_result(trial_workdir(self.storage, self.plan, t))
                     for t in self.trials}
        unfinished = [t for t in self.trials
                      if self.done[t.trial_id] is None and t.trial_id not in failed]
        beside.finish(interrupted=bool(unfinished))
        for trial_id, error in failed.items():
            run_id = self.child_ids[trial_id]
            tracking.finish(self.client, run_id, "FAILED", outcome="failed")
            tracking.retry_locked(self.client.set_tag, run_id, "ablate.error", error[:5000])
        if unfinished:
            print(f"interrupted: {len(unfinished)} trial(s) unfinished; run the same command "
                  "again to resume them", file=self.out)
            return RunOutcome(130, self.parent_id,
                              {t.trial_id: "unfinished" for t in unfinished}, "")
        self.parent_status = "FAILED" if failed else "FINISHED"
        return self.report(1 if failed else 0, failed)

    def report(self, exit_code: int, failed: dict[str, str]) -> RunOutcome:
        status = {t.trial_id: "failed" if t.trial_id in failed else
                  (self.done[t.trial_id] or {}).get("status", "unfinished") for t in self.trials}
        tables = output_root() / "tables" / self.plan.name
        written = self._write_report(tables)
        markdown = written.markdown_text if written else self._fallback_table(status)
        for t in self.trials:
            if t.trial_id in failed:
                print(f"FAILED {t.name}: {failed[t.trial_id].splitlines()[0][:300]}",
                      file=self.out)
            elif status[t.trial_id] == "diverged":
                print(f"DIVERGED {t.name}: its losses became non-finite; see its MLflow run",
                      file=self.out)
        print(f"\n{markdown}\n", file=self.out)
        verdict = written.verdict if written else ""
        self._publish(written, markdown)
        print(f"MLflow: {self.uri}  (parent run {self.parent_id})", file=self.out)
        # A tracking server is its own dashboard; a SQLite store needs one started.
        dashboard = (self.uri if tracking.is_server(self.uri)
                     else f"ablate mlflow-ui --tracking-uri {self.uri}")
        print(f"Dashboard: {dashboard}", file=self.out)
        print(f"Tables: {tables}", file=self.out)
        if verdict:
            print(verdict[0].upper() + verdict[1:], file=self.out)
        if written and written.tradeoff:
            print(written.tradeoff, file=self.out)
        return RunOutcome(exit_code, self.parent_id, status, markdown)

    def _write_report(self, tables: Path):
        """The results package's report (tables, figures, verdict, per-arm summary), or None
        when there is nothing to compare (every trial failed or diverged)."""
        from results import ResultsError, write_report

        try:
            return write_report(self.plan.name, tables, tracking_uri=self.uri,
                                parent_run_id=self.parent_id)
        except ResultsError as exc:
            print(f"no comparison table: {exc}", file=sys.stderr)
            return None

    def _publish(self, written, markdown: str) -> None:
        """The parent run is the report: its description leads with the verdict, then the
        table; each arm's summary (mean and interval bounds) is a metric of it, so the
        runs table's parent row itself shows the result."""
        description = markdown
        if written:
            tradeoff = f"**{written.tradeoff}**\n\n" if written.tradeoff else ""
            description = f"**{written.verdict}**\n\n{tradeoff}{written.table_markdown}"
        tracking.retry_locked(self.client.set_tag, self.parent_id, schema.DESCRIPTION,
                              description)
        if written:
            step = max(t.config.iterations for t in self.trials)
            tracking.RunLogger(self.uri, self.parent_id).log_metrics(written.summary, step)

    def _fallback_table(self, status: dict[str, str]) -> str:
        """What each trial ended with, when there is no comparison table."""
        finals = {t.trial_id: (self.done[t.trial_id] or {}).get("final_metrics", {})
                  for t in self.trials}
        keys = sorted({k for metrics in finals.values() for k, v in metrics.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)})
        lines = ["| trial | status | " + " | ".join(keys) + " |",
                 "|---|---|" + "---|" * len(keys)]
        for t in self.trials:
            cells = [f"{finals[t.trial_id][k]:.4g}" if k in finals[t.trial_id] else ""
                     for k in keys]
            lines.append(f"| {t.name} | {status[t.trial_id]} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


@contextlib.contextmanager
def _plan_lock(storage: Path, plan: Plan):
    """One ``ablate run`` per plan and storage folder at a time: two would share one parent
    run, run every trial twice in the same workdirs and log every point twice. The lock
    is the kernel's (flock), so a killed driver never leaves it held."""
    folder = storage / "trials" / plan.name
    path = storage / f".ablate-run-{plan.name}.lock"
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise ConfigError(
                f"{path}: another `ablate run` of plan {plan.name} (pid {holder}) is using "
                f"{folder}; wait for it to finish, or give this run another --storage or "
                "ABLATE_HOME") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


class _SetEvent:
    """Sets a threading.Event when called; picklable, because Tune pickles its callbacks
    into the experiment state (the pickled copy does nothing when called)."""

    def __init__(self, event):
        self.event = event

    def __call__(self) -> None:
        if self.event is not None:
            self.event.set()

    def __getstate__(self) -> dict:
        return {"event": None}


def _fit(plan: Plan, specs: list[TrialSpec], storage: Path, profile: profiles.Profile, out: TextIO,
         first_result) -> dict[str, str]:
    """Ray Tune over the trial specs; ``first_result`` is set at the first report."""
    import logging

    # The classic output engine honours verbose=0; the newer one prints a result table
    # per trial regardless, which StatusLine replaces.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    from orchestrator.status import RunStatuses, StatusLine

    # Tune logs each crash with a full traceback; StatusLine prints its last line instead.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    # A data-parallel trial's Tune function only drives a TorchTrainer whose workers hold
    # the plan's resources each (orchestrator/data_parallel.py). It holds no CPU itself, so
    # N workers of 1 CPU fit N CPUs; Tune needs some resource, hence a token of memory.
    resources = ({"cpu": plan.resources.cpu, "gpu": plan.resources.gpu} if profile.workers == 1
                 else {"cpu": 0, "gpu": 0, "memory": DATA_PARALLEL_DRIVER_MEMORY})
    tuner = tune.Tuner(
        tune.with_resources(run_trial, resources),
        param_space={"spec": tune.grid_search([s.to_dict() for s in specs])},
        tune_config=tune.TuneConfig(
            num_samples=1, max_concurrent_trials=0,
            # One worker process runs trial after trial: imports, teacher and evaluation
            # suite are paid once per process (trial.py caches them), not per trial.
            reuse_actors=True,
            trial_name_creator=lambda trial: trial.config["spec"]["name"],
            trial_dirname_creator=lambda trial: trial.config["spec"]["trial_id"]),
        run_config=tune.RunConfig(
            name=f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(storage / "tune"),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            callbacks=[StatusLine(out, {s.trial_id: s.iterations for s in specs},
                                  on_result=_SetEvent(first_result)),
                       RunStatuses(specs[0].tracking_uri, {s.trial_id: s.run_id for s in specs})],
            verbose=0, log_to_file=True),
    )
    return {result.config["spec"]["trial_id"]: f"{type(result.error).__name__}: {result.error}"
            for result in tuner.fit() if result.error is not None}
