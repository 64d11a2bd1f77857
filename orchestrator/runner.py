"""The driver of ``ablate run``: one :class:`PlanRun` per invocation, read as its phases.

    resolve -> prepare (beside Ray's start) -> open parent and children
            -> start baseline -> tune -> close (report)

Everything that can be wrong with a plan, the machine or the tracking store is checked
before any trial starts, so a bad plan costs a second, not a Ray start-up. Resume needs
no Tune state: a finished trial has ``result.json`` in its stable workdir, an unfinished
one has the core's checkpoint there, and the MLflow runs are found again by their tags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from distill.config import ConfigError
from distill.paths import output_root
from orchestrator import (
    baseline,
    faults,
    interrupts,
    preflight,
    profiles,
    run_report,
    tracking,
    tune_fit,
)
from orchestrator.plan import MAX_TRIALS, Plan, Trial, expand, load_plan, with_seeds
from orchestrator.plan_runs import PlanRuns
from orchestrator.ray_session import RaySession, check_local_resources, check_reachable
from orchestrator.shared import SharedInputs, in_background, load_shared
from orchestrator.spec import TrialSpec
from orchestrator.storage import adopt_finished, plan_lock, storage_root, trial_workdir
from orchestrator.trial import read_result
from results import schema


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    parent_run_id: str | None
    trial_status: dict[str, str]  # trial id -> finished / diverged / failed / unfinished
    report_markdown: str


def _quiet_model_loading() -> None:
    """Loading a teacher or CLIP prints per-file progress bars and advice (install
    accelerate) that would bury the status lines; warnings and errors still show."""
    from orchestrator.cli import quiet_libraries

    quiet_libraries()
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


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
    results: dict[str, dict | None]  # trial id -> its result.json, None while unfinished
    adopted: dict[str, str] = field(default_factory=dict)  # trial id -> where it was computed
    ray: RaySession = field(default_factory=RaySession)
    # Set by prepare(): before it, reading them is an AttributeError, not a silent None.
    shared: SharedInputs = field(init=False)  # orchestrator/shared.py
    runs: PlanRuns = field(init=False)  # the MLflow runs (orchestrator/plan_runs.py)

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
        tracking.check_scheme(uri)
        store = schema.sqlite_path(uri)
        # Before Ray starts: a bounded wait, then one line naming the holder.
        if store is not None and (locked := schema.locked_store(store, write=True)):
            raise ConfigError(locked)
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
        results = {t.trial_id: read_result(trial_workdir(storage_dir, plan, t)) for t in trials}
        return cls(plan, size, profile, trials, storage_dir, uri, out, results)

    @property
    def pending(self) -> list[Trial]:
        return [t for t in self.trials if self.results[t.trial_id] is None]

    def execute(self) -> RunOutcome:
        with interrupts.handled(), plan_lock(self.storage, self.plan):
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
        self.adopted = adopt_finished(self.storage, self.plan, self.pending)
        for t in self.trials:
            if t.trial_id in self.adopted:
                self.results[t.trial_id] = read_result(trial_workdir(self.storage, self.plan, t))
        self._print_trials()
        try:
            self.prepare()
            self._check_finished_teachers()
            finished = None if self.pending else self.runs.finished_parent()
            if finished is not None:
                print(f"all {len(self.trials)} trials of {self.plan.name} ({self.size}) "
                      f"already finished; delete {self.storage / 'trials' / self.plan.name} "
                      "to rerun them", file=self.out)
                self.runs.parent_id = finished
                self.runs.log_comparison()
                return self.report(0, {})
            self.runs.open_parent(self.trials)
            with self._runs_closed_on_exit():
                self.runs.open_children(self.trials, self.results, self.shared)
                baseline_job = self.start_baseline()
                failed = self.tune(baseline_job)
                return self.close(failed, baseline_job)
        finally:
            self.ray.close()

    def _print_trials(self) -> None:
        """What this invocation will do, before anything starts."""
        print(f"plan {self.plan.name} (size {self.size}, profile {self.profile.name}): "
              f"{len(self.trials)} trials, {len(self.pending)} to run", file=self.out)
        for t in self.trials:
            state = ("to run" if self.results[t.trial_id] is None else
                     self.adopted.get(t.trial_id, "finished earlier"))
            print(f"  {t.name:<34} {t.trial_id}  {state}", file=self.out)
        print(file=self.out, flush=True)

    # -- prepare ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Teachers, prompt hashes, evaluation suites and the MLflow check, beside Ray's
        start-up, which they do not need. Their error, if any, wins: it names the fix."""
        # A daemon thread: an interrupt while Ray starts does not wait for the loading.
        loading = in_background(load_shared, self.trials, self.profile, self.size, self.uri)
        try:
            if self.pending:
                self.ray.start(self.plan)
                interrupts.reassert()  # ray.init installed its own SIGTERM handler
        except Exception:
            loading.result()  # the setup's error, if any, wins: it names the fix
            raise
        self.shared = loading.result()
        self.runs = PlanRuns.connect(self.uri, self.plan, self.trials, self.size, self.profile)

    def _check_finished_teachers(self) -> None:
        """A finished trial is reused on rerun, so it must have been distilled from the
        teacher its config names *now*: the trial id hashes the config ("embedded:default"),
        not the weights, and after `make teacher` (or a new checkout) the old numbers would
        come back as if current. Results from before result.json recorded the hash are
        checked against their MLflow run's tag."""
        for t in self.trials:
            record = self.results[t.trial_id]
            if record is None:
                continue
            recorded = record.get("teacher_hash") or self._tagged_teacher_hash(record)
            current = self.shared.teachers[t.config.teacher].teacher_hash
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
            return self.runs.client.get_run(record["run_id"]).data.tags.get(schema.TEACHER_HASH)
        except Exception:  # noqa: BLE001 - another store, or the run is gone: cannot tell
            return None

    @contextlib.contextmanager
    def _runs_closed_on_exit(self):
        """Whatever happens (an error, Ctrl-C, SIGTERM), no run of this invocation stays
        RUNNING or SCHEDULED: an unfinished one ends KILLED."""
        try:
            yield
        finally:
            self.runs.close()

    # -- start baseline --------------------------------------------------------------------
    def start_baseline(self) -> baseline.BesideTrials:
        """The teacher-baseline child: beside the trials on CPUs, before them on GPUs."""
        baseline_job = baseline.BesideTrials()
        if self.plan.evaluation.teacher_baseline is None or self.runs.baseline_finished():
            return baseline_job
        if self.pending and self.plan.resources.gpu == 0:
            baseline_job.start(self._log_baseline)
        else:
            self._log_baseline()
        return baseline_job

    def _log_baseline(self) -> None:
        first = self.trials[0].config
        teacher = self.shared.teachers[first.teacher]
        suite = self.shared.suites[first.eval_num_images]
        values = baseline.metrics(self.plan, teacher, suite, first.eval_num_images, self.out)
        # At the trials' last iteration, so the teacher's point sits beside theirs in charts.
        step = max(t.config.iterations for t in self.trials)
        runs = self.runs
        baseline.log_run(runs.client, self.uri, runs.experiment_id, runs.parent(), self.plan,
                         teacher, suite, runs.existing, values, step)

    # -- tune ------------------------------------------------------------------------------
    def tune(self, baseline_job: baseline.BesideTrials) -> dict[str, str]:
        """Run the pending trials with Ray Tune; {trial id: error} of those that failed."""
        if not self.pending:
            baseline_job.tune_done.set()
            return {}
        try:
            return tune_fit.fit(self.plan, [self._spec(t) for t in self.pending],
                                self.storage, self.profile, self.out, baseline_job.first_result)
        except BaseException:
            baseline_job.cancelled.set()  # SIGTERM or an error: a baseline not yet started stays so
            raise
        finally:
            baseline_job.tune_done.set()

    def _spec(self, t: Trial) -> TrialSpec:
        """Everything a trial needs (it may run on another node)."""
        return TrialSpec(
            trial_id=t.trial_id, name=t.name, config=dataclasses.asdict(t.config),
            workdir=str(trial_workdir(self.storage, self.plan, t)), tracking_uri=self.uri,
            run_id=self.runs.child_ids[t.trial_id], ablate_home=str(output_root()), size=self.size,
            cpu=self.plan.resources.cpu, gpu=self.plan.resources.gpu,
            workers=self.profile.workers, profile=self.profile.to_dict(),
            mlflow_http=tracking.http_retry_policy(),
            fault_at_iteration=faults.faults_for(t.trial_id), hold=faults.hold())

    # -- close -----------------------------------------------------------------------------
    def close(self, failed: dict[str, str], baseline_job: baseline.BesideTrials) -> RunOutcome:
        """Mark failed trials, settle the baseline, report; 130 if trials are unfinished
        (Tune stops on Ctrl-C by itself and returns normally with them left)."""
        self.ray.release()
        self.results = {t.trial_id: read_result(trial_workdir(self.storage, self.plan, t))
                     for t in self.trials}
        unfinished = [t for t in self.trials
                      if self.results[t.trial_id] is None and t.trial_id not in failed]
        baseline_job.finish(interrupted=bool(unfinished))
        self.runs.mark_failed(failed)
        if unfinished:
            print(f"interrupted: {len(unfinished)} trial(s) unfinished; run the same command "
                  "again to resume them", file=self.out)
            return RunOutcome(130, self.runs.parent_id,
                              {t.trial_id: "unfinished" for t in unfinished}, "")
        self.runs.parent_status = "FAILED" if failed else "FINISHED"
        return self.report(1 if failed else 0, failed)
    def report(self, exit_code: int, failed: dict[str, str]) -> RunOutcome:
        status = {t.trial_id: "failed" if t.trial_id in failed else
                  (self.results[t.trial_id] or {}).get("status", "unfinished") for t in self.trials}
        tables = output_root() / "tables" / self.plan.name
        written = run_report.write(self.plan.name, tables, self.uri, self.runs.parent_id)
        markdown = (written.markdown_text if written
                    else run_report.fallback_table(self.trials, self.results, status))
        # The terminal first: the table is shown even if the tracking store then fails.
        run_report.show(self.out, self.trials, failed, status, markdown, written,
                        self.uri, self.runs.parent_id, tables)
        self.runs.publish(written, markdown, max(t.config.iterations for t in self.trials))
        return RunOutcome(exit_code, self.runs.parent_id, status, markdown)
