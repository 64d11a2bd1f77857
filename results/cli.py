"""``ablate tables``: write each plan's tables and figures and print the Markdown."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from results.errors import ResultsError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tables",
        help="write comparison tables (LaTeX, Markdown, CSV) and plots from MLflow",
        description=(
            "Read a plan's runs from MLflow (the latest parent run, or --parent-run), "
            "aggregate over seeds (mean, 95% t-interval; diverged/failed runs counted, "
            "never averaged) and write table.tex (booktabs), table.md, table.csv and "
            "PNG/PDF figures under $ABLATE_HOME/tables/<plan>/; they are also logged to the "
            "parent run under report/. Prints the Markdown tables."),
    )
    p.add_argument("--plan", default="all",
                   help="plan name (lsg, kappa, or any plan with runs), or 'all' for every "
                        "plan in the store (default: all)")
    p.add_argument("--parent-run", metavar="ID",
                   help="report this parent run instead of the plan's latest one (its plan "
                        "is read from the run, so --plan may be left out)")
    p.add_argument("--out", metavar="DIR", type=Path,
                   help="folder to write <plan>/ into (default: $ABLATE_HOME/tables)")
    p.add_argument("--compare", metavar="PLAN.yaml", type=Path,
                   help="compare as this plan file's compare: section says (or, without one, "
                        "its first axis's first value against the rest) instead of what the "
                        "parent run recorded; for runs logged before the plan declared it. "
                        "The verdict: each arm vs the reference, difference with 95%% "
                        "interval, better/worse (Holm-corrected), equivalent within ±δ, or "
                        "unresolved with the smallest detectable difference")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow store (default: $MLFLOW_TRACKING_URI or "
                        "sqlite:///$ABLATE_HOME/mlflow.db)")
    p.set_defaults(handler=_tables)


def _tables(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from distill.paths import home
    from results.load import resolve_tracking_uri, store_error

    # A tracking server that does not answer is an error now, not after minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    comparison = _comparison(args.compare) if args.compare else None
    uri = resolve_tracking_uri(args.tracking_uri)
    try:
        plans = _plans(args, uri)
        # Checked now, created by the report once its runs are loaded: a refused plan or
        # parent run leaves no folder behind.
        base = args.out or home() / "tables"
        _check_creatable(base)
        skipped = _write_reports(plans, base, uri, args.parent_run, comparison)
    except (SQLAlchemyError, MlflowException) as exc:
        raise ResultsError(str(store_error(uri, exc))) from None
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    return 0


def _check_creatable(folder: Path) -> None:
    """ResultsError unless ``folder`` is a folder or could be created, without creating it."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a folder" if not existing.is_dir() else "is not writable"
        raise ResultsError(f"cannot create the report folder {folder} ({existing} {why}); "
                           "pass --out a writable folder")


def _plans(args: argparse.Namespace, uri: str) -> list[str]:
    """The plans to report: the parent run's, every plan in the store, or the one named."""
    from results.load import list_plans

    if args.parent_run:
        return [_plan_of(args.parent_run, uri, args.plan)]
    if args.plan != "all":
        return [args.plan]
    plans = list_plans(uri)
    if not plans:
        raise ResultsError(f"no plan has runs in the MLflow store {uri}; run one first "
                           "(`make ablation-lsg` or `make sweep-kappa`)")
    return plans


def _comparison(path: Path):
    """The comparison a plan file declares, checked against its axes; ResultsError naming
    the file and the key otherwise."""
    from distill.config import ConfigError, load_yaml
    from results.comparison import ComparisonError, axes_of_plan_data, from_plan

    try:
        data = load_yaml(path)
        comparison = from_plan(data.get("compare"), axes_of_plan_data(data))
    except (ConfigError, ComparisonError) as exc:
        raise ResultsError(f"--compare {path}: {exc}") from None
    if comparison is None:
        raise ResultsError(f"--compare {path}: the plan has no axes, so nothing to compare")
    return comparison


def _write_reports(plans: list[str], base: Path, uri: str, parent_run: str | None,
                   comparison=None) -> list[str]:
    """Write and print each plan's report; return the plans skipped (with why). A single
    plan that cannot be reported is an error; among several, the others still are."""
    from results.report import write_report

    written, skipped = 0, []
    for plan in plans:
        try:
            report = write_report(plan, base / plan, uri, parent_run, comparison)
        except ResultsError as exc:
            if len(plans) == 1:
                raise
            skipped.append(f"{plan}: {exc}")
            continue
        print(report.markdown_text)
        print(f"wrote {report.out_dir} (logged to parent run {report.parent_run_id} "
              "under report/)", file=sys.stderr)
        written += 1
    if not written:
        raise ResultsError("no plan has finished runs to report: " + "; ".join(skipped))
    return skipped


def _plan_of(parent_run_id: str, uri: str, plan_arg: str) -> str:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from results import schema

    try:
        run = MlflowClient(tracking_uri=uri).get_run(parent_run_id)
    except MlflowException:
        raise ResultsError(f"no run {parent_run_id!r} in the MLflow store {uri}") from None
    plan = run.data.tags.get(schema.PLAN)
    if not plan:
        raise ResultsError(f"run {parent_run_id} has no {schema.PLAN} tag: not a parent run "
                          "written by `ablate run`")
    if plan_arg not in ("all", plan):
        raise ResultsError(f"run {parent_run_id} belongs to plan {plan!r}, not {plan_arg!r}")
    return plan
