"""MLflow runs for plans and trials, with the names of :mod:`results.schema`.

The driver creates (or, after an interrupted invocation, reopens) the parent run
and one child run per trial before any trial starts; each trial process then
writes its own metrics and artifacts into its child run, so nothing is lost if
the driver dies. Several trial processes share one SQLite file, which answers
"database is locked" to concurrent writers: every call goes through
:func:`retry_locked`.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, TypeVar

from distill.config import ConfigError
from distill.paths import REPO_ROOT, output_root
from results import schema
from results.schema import retry_locked  # every MLflow write of the orchestrator uses it

T = TypeVar("T")

TRIAL_SET = "ablate.trial_set"  # hash of the invocation's trial ids: which parent a rerun reopens
SIZE = "ablate.size"
PROFILE = schema.PROFILE
PARENT_RUN_ID = "mlflow.parentRunId"


# How every process of a run retries a tracking *server* (MLflow's own urllib3 retries,
# set through its variables). urllib3 sleeps 0, 2, 4, 8, 16, 32 s between the 7 attempts:
# a server restarted within about a minute loses nothing; one gone for longer fails the
# trials that write to it, and the driver stops (TrackingLost). MLflow's defaults (7
# retries, factor 2, 120 s per request) would wait over 4 minutes per call. A variable the
# user set wins; the driver hands its values to every trial (TrialSpec.mlflow_http), so
# workers on other nodes retry as the driver does.
HTTP_RETRY_POLICY = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
PROBE_TIMEOUT_S = 5.0


class TrackingLost(Exception):
    """The tracking server stopped answering in the middle of a run (beyond the retries)."""


def http_retry_policy() -> dict[str, str]:
    """The retry variables in force for this process (the user's, else ours), set in
    os.environ so that a local Ray's workers inherit them too."""
    for key, value in HTTP_RETRY_POLICY.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in HTTP_RETRY_POLICY}


is_server = schema.is_server


def retry_budget_s() -> float:
    """About how long the current policy retries one call (urllib3 sleeps 0, then
    factor * 2**k for k = 1 .. retries - 1), jitter left out."""
    policy = http_retry_policy()
    retries = int(policy["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    factor = float(policy["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    return sum(factor * 2 ** k for k in range(1, retries))


def gone(uri: str) -> str | None:
    """Why the server is gone if it stays unanswering for the retry budget, else None:
    a server restarting is waited for as every trial's call would wait for it."""
    deadline = time.monotonic() + retry_budget_s()
    while True:
        why = probe(uri)
        if why is None or time.monotonic() >= deadline:
            return why
        time.sleep(1.0)


def probe(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why a tracking server does not answer at all, or None (see schema.probe_server)."""
    return schema.probe_server(uri, timeout_s)


def tracking_uri() -> str:
    return schema.default_tracking_uri()


def artifact_root() -> str:
    """Where a new experiment keeps artifacts when the store is the local SQLite file."""
    return (output_root() / schema.ARTIFACT_DIR).as_uri()


# The stores MLflow can track to: its SQLite and SQL databases, a server, a file store.
SCHEMES = ("sqlite:///", "http://", "https://", "postgresql", "mysql", "mssql", "file:")


def check_scheme(uri: str) -> None:
    """A tracking URI MLflow cannot use is refused before anything starts (MLflow would
    say so only when first asked, after Ray's start-up)."""
    if not uri.startswith(SCHEMES):
        raise ConfigError(f"MLFLOW_TRACKING_URI={uri}: not a tracking store MLflow can use; "
                          "give sqlite:////path/mlflow.db, http(s)://host:port of a tracking "
                          "server, or a postgresql/mysql/mssql database URI")


def client(uri: str | None = None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri or tracking_uri())


def check_store_folder(uri: str) -> None:
    """A SQLite store's folder must exist and take a new file: MLflow would retry for
    minutes in a missing or read-only one. A file is created and removed there, as asking
    os.access would answer yes to root on a read-only or virtual file system."""
    store = schema.sqlite_path(uri)
    if store is None:
        return
    folder = store.parent
    if not folder.is_dir():
        why = "does not exist"
    else:
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
            why = None
        except OSError as exc:
            why = f"is not writable ({exc.strerror or exc})"
    if why is not None:
        raise ConfigError(
            f"MLFLOW_TRACKING_URI={uri}: the folder {folder} {why}; create it, fix the URI, "
            "or unset MLFLOW_TRACKING_URI to use the SQLite store in the output folder")


def check_reachable(uri: str) -> None:
    """Fail before any trial starts if the tracking store cannot be used.

    A server that is down is refused after one probe, not after MLflow's retries.
    """
    import logging

    # "Creating initial MLflow database tables..." is noise on every fresh output folder.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    why = probe(uri)
    if why is not None:
        raise ConfigError(
            f"MLFLOW_TRACKING_URI={uri}: the MLflow tracking server is unreachable ({why}); "
            "start it (`mlflow server --host ... --port ...`), fix the URI, or unset "
            "MLFLOW_TRACKING_URI to use the SQLite store in the output folder")
    check_store_folder(uri)  # a store another process holds locked: PlanRun.resolve
    try:
        retry_locked(client(uri).search_experiments, max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure means unusable; its text is kept
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConfigError(
            f"MLFLOW_TRACKING_URI={uri}: the MLflow tracking store is unreachable "
            f"({first_line}); start the server, fix the URI, or unset MLFLOW_TRACKING_URI "
            "to use the SQLite store in the output folder") from None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                               check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def experiment_id(mlflow_client, plan_name: str) -> str:
    name = schema.EXPERIMENT_PREFIX + plan_name
    experiment = retry_locked(mlflow_client.get_experiment_by_name, name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            retry_locked(mlflow_client.restore_experiment, experiment.experiment_id)
        return experiment.experiment_id
    location = artifact_root() if mlflow_client.tracking_uri.startswith("sqlite:") else None
    try:
        return retry_locked(mlflow_client.create_experiment, name, artifact_location=location)
    except Exception:
        # Another driver created it between our lookup and create.
        experiment = retry_locked(mlflow_client.get_experiment_by_name, name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _search(mlflow_client, exp_id: str, filter_string: str):
    return retry_locked(mlflow_client.search_runs, [exp_id], filter_string=filter_string,
                        order_by=["attributes.start_time DESC"], max_results=1000)


def latest_parent(mlflow_client, exp_id: str, trial_set: str):
    """The newest parent run of the same trial set, or None."""
    runs = _search(mlflow_client, exp_id,
                   f"tags.`{schema.ROLE}` = 'parent' and tags.`{TRIAL_SET}` = '{trial_set}'")
    return runs[0] if runs else None


def open_parent(mlflow_client, exp_id: str, *, plan_name: str, trial_set: str, size: str,
                profile: str, reopen) -> str:
    """Reopen ``reopen`` (an unfinished parent of the same trial set) or start a new parent."""
    if reopen is not None:
        retry_locked(mlflow_client.update_run, reopen.info.run_id, status="RUNNING")
        return reopen.info.run_id
    tags = {schema.ROLE: "parent", schema.PLAN: plan_name, TRIAL_SET: trial_set, SIZE: size,
            PROFILE: profile, schema.GIT_COMMIT: git_commit()}
    run = retry_locked(mlflow_client.create_run, exp_id, tags=tags,
                       run_name=f"{plan_name}-{size}")
    return run.info.run_id


def children(mlflow_client, exp_id: str, parent_run_id: str) -> dict[str, Any]:
    """Child runs of a parent keyed by trial id (role trial) or by 'teacher' (role teacher)."""
    found: dict[str, Any] = {}
    for run in _search(mlflow_client, exp_id, f"tags.`{PARENT_RUN_ID}` = '{parent_run_id}'"):
        role = run.data.tags.get(schema.ROLE)
        key = run.data.tags.get(schema.TRIAL_ID) if role == "trial" else role
        # Newest first: a duplicate (which resume never creates) would not shadow the newest.
        found.setdefault(key, run)
    return found


def create_child(mlflow_client, exp_id: str, parent_run_id: str, *, run_name: str,
                 tags: dict[str, str], params: dict[str, Any]) -> str:
    """A child run, SCHEDULED: it becomes RUNNING only when its trial starts."""
    all_tags = {PARENT_RUN_ID: parent_run_id, **tags}
    run = retry_locked(mlflow_client.create_run, exp_id, tags=all_tags, run_name=run_name)
    retry_locked(mlflow_client.update_run, run.info.run_id, status="SCHEDULED")
    log_params(mlflow_client, run.info.run_id, params)
    return run.info.run_id


def log_params(mlflow_client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v))
             for k, v in sorted(params.items())]
    # MLflow takes at most 100 params per batch.
    for i in range(0, len(items), 100):
        retry_locked(mlflow_client.log_batch, run_id, params=items[i:i + 100])


def finish(mlflow_client, run_id: str, status: str, outcome: str | None = None) -> None:
    """End a run FINISHED / FAILED / KILLED, recording the outcome tag (finished, diverged, ...)."""
    if outcome is not None:
        retry_locked(mlflow_client.set_tag, run_id, schema.STATUS, outcome)
    retry_locked(mlflow_client.set_terminated, run_id, status=status)


class RunLogger:
    """Metrics and artifacts of one run from one process: numeric values only, batched,
    and each (key, step) written once, so a trial retried from a checkpoint does not
    log the overlap between its checkpoint and its crash twice."""

    def __init__(self, uri: str, run_id: str):
        self.client = client(uri)
        self.run_id = run_id
        self._last_step: dict[str, int] = {}
        run = retry_locked(self.client.get_run, run_id)
        for key in run.data.metrics:
            history = retry_locked(self.client.get_metric_history, run_id, key)
            self._last_step[key] = max(m.step for m in history)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        """Log the numbers in ``metrics`` at ``step``, skipping (key, step) pairs already logged."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = []
        for key, value in sorted(metrics.items()):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if step <= self._last_step.get(key, -1):
                continue
            batch.append(Metric(key, float(value), now, step))
            self._last_step[key] = max(step, self._last_step.get(key, -1))
        for i in range(0, len(batch), 1000):
            retry_locked(self.client.log_batch, self.run_id, metrics=batch[i:i + 1000])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        retry_locked(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        retry_locked(self.client.log_dict, self.run_id, data, name)

    def log_image(self, path: Path, key: str, step: int) -> None:
        """An image at a step, for the dashboard's image panel (beside the PNG artifact)."""
        from PIL import Image

        with Image.open(path) as image:
            retry_locked(self.client.log_image, self.run_id, image.copy(), key=key, step=step,
                         synchronous=True)
