"""The MLflow runs of one ``ablate run``, opened, tagged, closed and published here.

The parent run is the report (its description leads with the verdict, its metrics are the
arms' summaries); each trial has a child run, created SCHEDULED with its params and tags,
which the trial itself moves to RUNNING and FINISHED; the teacher baseline has one more.
An invocation that stops early leaves no run RUNNING or SCHEDULED: :meth:`PlanRuns.close`
ends them KILLED. Every write goes through ``orchestrator.tracking`` and its retries.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import profiles, tracking
from orchestrator.plan import Plan, Trial, trial_set_hash
from results import schema


def trial_params(trial: Trial, size: str, profile: str) -> dict:
    from distill.guidance import guidance_scales

    scales = guidance_scales(trial.config.strategy, trial.config.kappa)
    return {**dataclasses.asdict(trial.config), **dataclasses.asdict(scales), "size": size,
            "profile": profile}


@dataclass
class PlanRuns:
    """The experiment of a plan and this invocation's parent and child runs."""

    uri: str
    client: Any  # MlflowClient
    experiment_id: str
    plan: Plan
    size: str
    profile: profiles.Profile
    latest_parent: Any = None  # the newest parent run of this trial set, if any
    parent_id: str | None = None
    existing: dict[str, Any] = field(default_factory=dict)  # the parent's child runs by key
    child_ids: dict[str, str] = field(default_factory=dict)  # trial id -> MLflow run id
    parent_status: str = "KILLED"  # until the run ends otherwise

    @classmethod
    def connect(cls, uri: str, plan: Plan, trials: list[Trial], size: str,
                profile: profiles.Profile) -> PlanRuns:
        """The plan's experiment (its description, the plan's), and its latest parent."""
        client = tracking.client(uri)
        experiment_id = tracking.experiment_id(client, plan.name)
        latest = tracking.latest_parent(client, experiment_id, trial_set_hash(trials))
        if plan.description.strip():  # the experiment's description in the dashboard
            tracking.retry_locked(client.set_experiment_tag, experiment_id,
                                  schema.DESCRIPTION, plan.description.strip())
        return cls(uri, client, experiment_id, plan, size, profile, latest)

    def parent(self) -> str:
        """The parent run's id (opened or found by now)."""
        if self.parent_id is None:
            raise RuntimeError("the parent run is not open yet")
        return self.parent_id

    def finished_parent(self) -> str | None:
        """The latest parent, if it finished (with nothing pending, it holds every trial)."""
        latest = self.latest_parent
        return latest.info.run_id if latest and latest.info.status == "FINISHED" else None

    def open_parent(self, trials: list[Trial]) -> None:
        """The parent run; an unfinished one of the same trial set is reopened."""
        latest = self.latest_parent
        reopen = latest if latest is not None and latest.info.status != "FINISHED" else None
        self.parent_id = tracking.open_parent(
            self.client, self.experiment_id, plan_name=self.plan.name,
            trial_set=trial_set_hash(trials), size=self.size, profile=self.profile.name,
            reopen=reopen)
        logger = tracking.RunLogger(self.uri, self.parent())
        if reopen is None:
            # What was asked and what it resolved to, beside the results.
            logger.log_artifact(Path(self.plan.source), "plan")
            logger.log_dict({"plan": self.plan.name, "size": self.size,
                             "profile": self.profile.name,
                             "trials": [{"trial_id": t.trial_id, "name": t.name,
                                         "config": dataclasses.asdict(t.config)}
                                        for t in trials]}, "plan/trials.json")
        self.log_comparison()

    def log_comparison(self) -> None:
        """The plan's comparison on the parent run, at every invocation (a reopened or an
        already finished parent too): what to compare is analysis, so a plan whose
        compare: section changed (a trend: declared later, say) is reported the new way."""
        if self.plan.comparison is not None:
            from results.comparison import ARTIFACT

            tracking.RunLogger(self.uri, self.parent()).log_dict(
                json.loads(self.plan.comparison.to_json()), ARTIFACT)

    def open_children(self, trials: list[Trial], results: dict[str, dict | None],
                      shared) -> None:
        """One child run per trial; trials finished earlier have theirs closed with their
        result (``results``: trial id -> result.json, None while unfinished)."""
        self.existing = tracking.children(self.client, self.experiment_id, self.parent())
        commit = tracking.git_commit()
        for t in trials:
            if t.trial_id in self.existing:
                self.child_ids[t.trial_id] = self.existing[t.trial_id].info.run_id
            else:
                self.child_ids[t.trial_id] = self._create_child(t, commit, shared)
            record = results[t.trial_id]
            if record is not None:
                self._close_finished_child(t, record)

    def _create_child(self, t: Trial, commit: str, shared) -> str:
        teacher = shared.teachers[t.config.teacher]
        protocol = shared.suites[t.config.eval_num_images].protocol
        run_id = tracking.create_child(
            self.client, self.experiment_id, self.parent(), run_name=t.name,
            tags={schema.ROLE: "trial", schema.PLAN: self.plan.name, schema.TRIAL_ID: t.trial_id,
                  schema.GIT_COMMIT: commit, schema.TEACHER_ID: teacher.teacher_id,
                  schema.TEACHER_HASH: teacher.teacher_hash,
                  schema.PROMPT_SET_HASH: shared.prompt_hashes[t.config.prompts],
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

    def _close_finished_child(self, t: Trial, record: dict) -> None:
        """A trial finished in an earlier invocation: make its child run FINISHED with its
        result. Either the driver died after the trial wrote result.json but before its run
        was closed (reopened run), or this is a new parent for a trial set finished earlier
        (new run, filled from result.json so every parent has every trial)."""
        run = self.existing.get(t.trial_id)
        if run is not None and run.info.status == "FINISHED":
            return
        run_id = self.child_ids[t.trial_id]
        logger = tracking.RunLogger(self.uri, run_id)
        logger.log_metrics({**record["final_metrics"], **record.get("cost", {})},
                           record["iterations"])
        self._copy_samples(record.get("run_id"), logger)
        tracking.finish(self.client, run_id, "FINISHED", outcome=record["status"])

    def _copy_samples(self, source_run: str | None, logger: tracking.RunLogger) -> None:
        """The sample grids of the run that computed the result (an earlier parent's child,
        or another plan's when the trial was adopted), so the report's samples figure and
        the dashboard's image panel have this trial too. Skipped when that run is not in
        this store (another tracking URI, or deleted)."""
        from results.load import quiet_downloads  # pandas: not on the fail-fast path

        if not source_run or source_run == logger.run_id:
            return
        try:
            names = [f.path for f in self.client.list_artifacts(source_run, "samples")]
        except Exception:  # noqa: BLE001 - not in this store: the metrics alone are kept
            return
        with tempfile.TemporaryDirectory(prefix="ablate-samples-") as tmp, quiet_downloads():
            for name in names:
                local = self.client.download_artifacts(source_run, name, tmp)
                logger.log_artifact(Path(local), "samples")

    def baseline_finished(self) -> bool:
        teacher = self.existing.get("teacher")
        return teacher is not None and teacher.info.status == "FINISHED"

    def mark_failed(self, failed: dict[str, str]) -> None:
        """Crashed trials (Tune's retries spent): FAILED, with the error as a tag."""
        for trial_id, error in failed.items():
            run_id = self.child_ids[trial_id]
            tracking.finish(self.client, run_id, "FAILED", outcome="failed")
            tracking.retry_locked(self.client.set_tag, run_id, "ablate.error", error[:5000])

    def close(self) -> None:
        """No run of this invocation stays RUNNING or SCHEDULED: an unfinished one ends
        KILLED, the parent with ``parent_status``. Nothing can be closed on a server that is
        gone (each call would wait out the retries); the rerun reopens these runs."""
        if self.parent_id is None or tracking.probe(self.uri) is not None:
            return
        for run_id in self.child_ids.values():
            run = tracking.retry_locked(self.client.get_run, run_id)
            if run.info.status in ("RUNNING", "SCHEDULED"):
                tracking.finish(self.client, run_id, "KILLED")
        tracking.finish(self.client, self.parent_id, self.parent_status)

    def publish(self, written, markdown: str, step: int) -> None:
        """The parent run is the report: its description leads with the verdict, then the
        table; each arm's summary (mean and interval bounds) is a metric of it, so the
        runs table's parent row itself shows the result."""
        description = markdown
        if written:
            said = "".join(f"**{line}**\n\n" for line in written.lines or (written.verdict,))
            description = f"{said}{written.table_markdown}"
        tracking.retry_locked(self.client.set_tag, self.parent(), schema.DESCRIPTION,
                              description)
        if written:
            tracking.RunLogger(self.uri, self.parent()).log_metrics(written.summary, step)
