"""Read a plan's runs from MLflow into one tidy pandas frame.

The layout read here is the contract in :mod:`results.schema`: one experiment per
plan, one parent run per invocation, one child run per trial plus a teacher-baseline
child. The frame has one row per child run and plain column names:

- ``run_id``, ``run_name``, ``role`` (``trial`` or ``teacher``), ``status`` (an
  outcome from ``schema.STATUSES`` or ``incomplete`` when the run never recorded
  one, e.g. it is still running or its worker was killed), ``trial_id``,
  ``eval_protocol`` (tags);
- one column per param, with numbers parsed back into numbers (MLflow stores
  params as strings; ``"2.0"`` must sort and group as the number 2);
- one column per metric (its latest value, which is the final one: the
  orchestrator logs final metrics at the last step).

``df.attrs`` carries ``plan``, ``parent_run_id``, ``tracking_uri``, ``param_columns``,
``metric_columns``, ``profile`` (the parent's profile tag, None on runs from before
it was tagged) and ``comparison`` (what the plan compares, :func:`load_comparison`) so later
steps know which column is which, what world the runs ran in and what to compare.
"""

from __future__ import annotations

import contextlib
import math
import os

import pandas as pd

from results import schema
from results.errors import ResultsError

INCOMPLETE = "incomplete"
SQLITE_HEADER = b"SQLite format 3\x00"
# Columns of every frame load_runs returns, before the params and metrics.
RUN_COLUMNS = ("run_id", "run_name", "role", "status", "trial_id", "eval_protocol")


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The given URI or the project default; a SQLite store that does not exist is an
    error here, because MLflow would silently create an empty one and report nothing."""
    uri = tracking_uri or schema.default_tracking_uri()
    why = schema.probe_server(uri)
    if why is not None:  # one request, not MLflow's retries (which the user may have raised)
        raise ResultsError(f"no MLflow tracking server answers at {uri} ({why}); start it, or "
                           "point MLFLOW_TRACKING_URI / --tracking-uri at a running one")
    path = schema.sqlite_path(uri)
    if path is not None:
        if not path.is_file():
            raise ResultsError(
                f"no MLflow store at {path} (tracking URI {uri}); run a plan first "
                "(`make ablation-lsg` or `ablate run ablations/lsg.yaml`), or point "
                "MLFLOW_TRACKING_URI / --tracking-uri at the store that holds the runs")
        # MLflow would turn an empty or foreign file into a new store (it writes its schema
        # on first use), so a file that is not an SQLite database is refused untouched.
        try:
            with path.open("rb") as f:
                header = f.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise ResultsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        if header != SQLITE_HEADER:
            what = "is empty" if not header else "is not an SQLite database"
            raise ResultsError(f"{path} {what}, so it holds no MLflow runs; restore the store "
                               "from a backup or point --tracking-uri at another one")
        _check_mlflow_tables(path)
        locked = schema.locked_store(path, write=False)
        if locked:
            raise ResultsError(locked)
    return uri


MLFLOW_TABLES = ("alembic_version", "experiments", "runs")


def _check_mlflow_tables(path) -> None:
    """An SQLite database without MLflow's tables is refused, read-only: MLflow would
    write its schema into it (a reader must never change a store, nor someone's other
    database). A damaged file is left for MLflow to report, with the store's name."""
    import sqlite3

    try:
        read_only = f"{path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(read_only, uri=True)) as db:
            tables = {row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return  # damaged: MLflow's own read fails, and store_error names the store
    missing = [t for t in MLFLOW_TABLES if t not in tables]
    if missing:
        raise ResultsError(f"{path} is an SQLite database but not an MLflow store (no "
                           f"{', '.join(missing)} table); point --tracking-uri at the store "
                           "`ablate run` wrote")


def store_error(uri: str, exc: BaseException) -> ResultsError:
    """A store that opened but failed to answer (truncated, corrupt, wrong schema)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if schema.is_server(uri):
        return ResultsError(f"the MLflow tracking server {uri} failed to answer ({first}); "
                            "check that it is running and reachable, then rerun")
    return ResultsError(f"the MLflow store {uri} cannot be read ({first}); it may be truncated "
                        "or corrupt: restore it from a backup, or rerun the plans")


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _search_all(client, experiment_ids: list[str], filter_string: str, order_by=None):
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string,
                                  max_results=1000, order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def list_plans(tracking_uri: str | None = None) -> list[str]:
    """Plans that have an experiment in the store (``ablate/<plan>``), sorted by name."""
    client = _client(resolve_tracking_uri(tracking_uri))
    names = [e.name for e in client.search_experiments()]
    return sorted(n[len(schema.EXPERIMENT_PREFIX):] for n in names
                  if n.startswith(schema.EXPERIMENT_PREFIX))


def find_parent_run(plan: str, tracking_uri: str | None = None,
                    parent_run_id: str | None = None):
    """The named parent run (checked to be a parent run of ``plan``) or the latest one."""
    uri = resolve_tracking_uri(tracking_uri)
    client = _client(uri)
    if parent_run_id:
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(parent_run_id)
        except MlflowException:
            raise ResultsError(f"no run {parent_run_id!r} in the MLflow store {uri}; "
                               "copy the parent run id from the MLflow UI") from None
        tags = run.data.tags
        if tags.get(schema.ROLE) != "parent":
            raise ResultsError(
                f"run {parent_run_id} is not a parent run (its {schema.ROLE} tag is "
                f"{tags.get(schema.ROLE)!r}); pass the id of the plan's parent run")
        if tags.get(schema.PLAN) != plan:
            raise ResultsError(f"run {parent_run_id} belongs to plan {tags.get(schema.PLAN)!r}, "
                               f"not {plan!r}; drop --plan or pass a matching one")
        return run
    experiment = client.get_experiment_by_name(schema.EXPERIMENT_PREFIX + plan)
    if experiment is None:
        known = ", ".join(list_plans(uri)) or "none"
        raise ResultsError(f"no runs of plan {plan!r} in {uri} (no experiment "
                           f"{schema.EXPERIMENT_PREFIX}{plan}; plans with runs: {known})")
    parents = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{schema.ROLE}` = 'parent'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise ResultsError(f"plan {plan!r} has no parent run in {uri}; run the plan first")
    return parents[0]


def _parse_param(value: str):
    """MLflow params are strings; give numbers back as numbers (ints stay ints)."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return {"None": None, "True": True, "False": False}.get(value, value)
    return number if math.isfinite(number) else value


def _status(run) -> str:
    status = run.data.tags.get(schema.STATUS)
    return status if status in schema.STATUSES else INCOMPLETE


def load_runs(plan: str, tracking_uri: str | None = None,
              parent_run_id: str | None = None) -> pd.DataFrame:
    """Child runs (trials and teacher baseline) of the latest parent run of ``plan``, or
    of the named parent run, as one row per run (see the module docstring)."""
    uri = resolve_tracking_uri(tracking_uri)
    parent = find_parent_run(plan, uri, parent_run_id)
    client = _client(uri)
    children = _search_all(
        client, [parent.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"])
    rows: list[dict] = []
    param_names: set[str] = set()
    metric_names: set[str] = set()
    for run in children:
        role = run.data.tags.get(schema.ROLE)
        if role not in ("trial", "teacher"):
            continue
        row = {"run_id": run.info.run_id, "run_name": run.info.run_name, "role": role,
               "status": _status(run), "trial_id": run.data.tags.get(schema.TRIAL_ID),
               "eval_protocol": run.data.tags.get(schema.EVAL_PROTOCOL)}
        run_params = {k: _parse_param(v) for k, v in run.data.params.items()}
        row.update(run_params)
        row.update(run.data.metrics)
        param_names.update(run_params)
        metric_names.update(run.data.metrics)
        rows.append(row)
    clash = param_names & metric_names
    if clash:
        raise ResultsError(f"parent run {parent.info.run_id}: {sorted(clash)} logged both as "
                           "param and metric; the schema keeps their names apart")
    fixed = list(RUN_COLUMNS)
    params = sorted(param_names - set(fixed))
    metrics = sorted(metric_names - set(fixed))
    df = pd.DataFrame(rows, columns=fixed + params + metrics)
    df.attrs.update(plan=plan, parent_run_id=parent.info.run_id, tracking_uri=uri,
                    param_columns=params, metric_columns=metrics,
                    profile=parent.data.tags.get(schema.PROFILE))
    df.attrs["comparison"] = load_comparison(client, parent.info.run_id, df)
    return df


@contextlib.contextmanager
def quiet_downloads():
    """No per-file MLflow download progress bars in `ablate tables`' output."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old


def load_comparison(client, parent_run_id: str, runs: pd.DataFrame):
    """What the parent run's plan compares: its ``plan/comparison.json`` (logged by the
    driver); for parent runs from before it was logged, the plan file logged beside it
    (its ``compare:`` section, or the default rule over its axes); failing both, the first
    param that varies against its first value (:func:`results.arms.infer`)."""
    import tempfile

    import yaml

    from results import comparison as comparisons
    from results.arms import infer

    names = {f.path for f in client.list_artifacts(parent_run_id, "plan")}
    with tempfile.TemporaryDirectory(prefix="ablate-plan-") as tmp, quiet_downloads():
        if comparisons.ARTIFACT in names:
            path = client.download_artifacts(parent_run_id, comparisons.ARTIFACT, tmp)
            with open(path, encoding="utf-8") as f:
                return comparisons.Comparison.from_json(f.read())
        plans = sorted(n for n in names if n.endswith((".yaml", ".yml")))
        if plans:
            path = client.download_artifacts(parent_run_id, plans[0], tmp)
            try:
                with open(path, encoding="utf-8") as f:
                    data = yaml.safe_load(f)
                axes = comparisons.axes_of_plan_data(data)
                return comparisons.from_plan(data.get("compare"), axes)
            except (yaml.YAMLError, AttributeError, TypeError, comparisons.ComparisonError):
                pass  # a plan file this version cannot read: infer from the runs below
    trials = runs[runs["role"] == "trial"]
    return infer(trials, [p for p in runs.attrs["param_columns"] if p in trials])
