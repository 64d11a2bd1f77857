"""One report per plan: tables (LaTeX, Markdown, CSV), figures (PNG, PDF), logged back
to the plan's parent MLflow run under ``report/``. What the verdict's families say
(results/families.py) is read through their one registration: their lines close table.md,
their sections make power.md, their tables and figures sit beside the comparison table."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from results import families, schema
from results.comparison import Comparison
from results.convergence import curve_metrics, has_curve, load_history, ordering_table
from results.errors import ResultsError
from results.load import load_runs, quiet_downloads
from results.plots import (
    curve_figure,
    sample_grid_figure,
    save_figure,
    sweep_figure,
    tradeoff_figure,
)
from results.summary import summary_metrics
from results.tables import LATEX_VARIANTS, build_table, to_latex, to_markdown

REPORT_ARTIFACT_DIR = "report"
# Every file a report may write; all are removed first so a figure that no longer
# applies (κ stopped varying, say) cannot linger from an older report.
_FILES = (*(f"{stem}.tex" for stem in LATEX_VARIANTS), "table.md", "table.csv", "runs.csv",
          "convergence.md", "power.md",
          *(f"{name}.{ext}" for name in ("trend", "interaction") for ext in ("md", "tex", "csv")),
          *(f"{stem}.{ext}" for stem in ("fid_clip_tradeoff", "samples", "metrics_vs_iteration")
            for ext in ("png", "pdf")))
# metrics_vs_<param>.png/.pdf, one name per swept param: removed by pattern.
_SWEEP_FILES = "metrics_vs_*"


@dataclass(frozen=True)
class ReportPaths:
    out_dir: Path
    latex: Path  # table.tex: the booktabs table float, for one-column papers
    markdown: Path
    csv: Path  # the aggregated numbers behind the table (unrounded, with p-values)
    runs_csv: Path  # one row per run, as read from MLflow
    figures: tuple[Path, ...]  # PNG and PDF of each figure that applies
    markdown_text: str  # the table, the figures' names and, last, the verdict line
    parent_run_id: str
    verdict: str  # one line: which differences are significant (results/verdict.py)
    latex_wide: Path  # table-wide.tex: table* across both columns of a two-column paper
    latex_narrow: Path  # table-narrow.tex: one column of a two-column paper
    table_markdown: str  # the Markdown table alone (caption, rows, notes)
    summary: dict[str, float]  # per-arm summary metrics and the families' numbers
    lines: tuple[str, ...] = ()  # every family's verdict lines, ``verdict`` first


def fetch_grid(client, run_id: str, dst_dir: Path) -> Path | None:
    """Download a run's ``samples/grid_final.png`` into ``dst_dir``, with its layout
    (``grid_final.json``, beside it) when the run logged one; None if it has no grid."""
    names = {f.path for f in client.list_artifacts(run_id, "samples")}
    if schema.GRID_FINAL not in names:
        return None
    dst_dir.mkdir(parents=True, exist_ok=True)
    with quiet_downloads():
        if schema.GRID_FINAL_LAYOUT in names:
            client.download_artifacts(run_id, schema.GRID_FINAL_LAYOUT, str(dst_dir))
        return Path(client.download_artifacts(run_id, schema.GRID_FINAL, str(dst_dir)))


def _figures(runs, table, out_dir: Path, client, answered: list[families.Answered]
             ) -> tuple[list[Path], list[Path]]:
    """(figures, other files): the families' figures (the trend's metrics_vs_<param>), else
    the sweep figure; the trade-off and sample figures; and for plans that evaluate during
    training (eval_every > 0) the curve and the iteration from which the arms' order has
    settled (convergence.md)."""
    figures: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="ablate-grids-") as tmp:
        def fetch(run_id: str) -> Path | None:
            return fetch_grid(client, run_id, Path(tmp) / run_id)

        drawn = [each for item in answered if (each := item.figure(runs)) is not None]
        for stem, drawing in drawn:
            figures += save_figure(drawing, out_dir / stem)
        swept = sweep_figure(runs, table.verdict)
        if swept is not None and f"metrics_vs_{swept[0]}" not in {stem for stem, _ in drawn}:
            figures += save_figure(swept[1], out_dir / f"metrics_vs_{swept[0]}")
        for stem, build in (("fid_clip_tradeoff", tradeoff_figure),
                            ("samples", lambda r: sample_grid_figure(r, fetch))):
            fig = build(runs)
            if fig is not None:
                figures += save_figure(fig, out_dir / stem)
    extra: list[Path] = []
    metrics = curve_metrics(runs)
    verdict = table.verdict
    arms = verdict.layout.arms if verdict is not None else []
    history = load_history(runs, metrics, arms) if metrics and arms else None
    if history is not None and has_curve(history):
        protocol = verdict.protocol if verdict is not None else None
        curves = curve_figure(history, metrics, protocol)
        if curves is not None:
            figures += save_figure(curves, out_dir / "metrics_vs_iteration")
        (out_dir / "convergence.md").write_text(ordering_table(history, metrics, protocol))
        extra.append(out_dir / "convergence.md")
    return figures, extra


def _family_tables(answered: list[families.Answered], plan: str, out_dir: Path
                   ) -> tuple[str, list[Path]]:
    """Each family's own table as <family>.md, .tex and .csv; (their Markdown, the files)."""
    text, files = "", []
    for item in answered:
        own = item.table(plan)
        if own is None:
            continue
        name = item.family.name
        (out_dir / f"{name}.md").write_text(to_markdown(own))
        (out_dir / f"{name}.tex").write_text(to_latex(own))
        own.csv.to_csv(out_dir / f"{name}.csv", index=False)
        files += [out_dir / f"{name}.{ext}" for ext in ("md", "tex", "csv")]
        text += "\n" + to_markdown(own)
    return text, files


def write_report(plan: str, out_dir: Path, tracking_uri: str | None = None,
                 parent_run_id: str | None = None,
                 comparison: Comparison | None = None) -> ReportPaths:
    """Write the plan's tables and figures to ``out_dir`` and log them to its parent run.
    ``comparison`` replaces the one the parent run carries (``ablate tables --compare``).

    Raises :class:`results.ResultsError` (before writing anything) when the plan has no
    finished trials or its runs mix FID keys.
    """
    runs = load_runs(plan, tracking_uri, parent_run_id)
    if comparison is not None:
        runs.attrs["comparison"] = comparison
    table = build_table(plan, runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in _FILES:
        (out_dir / name).unlink(missing_ok=True)
    for path in out_dir.glob(_SWEEP_FILES):
        path.unlink()

    latex = {stem: out_dir / f"{stem}.tex" for stem in LATEX_VARIANTS}
    for stem, path in latex.items():
        path.write_text(to_latex(table, stem))
    markdown, csv, runs_csv = out_dir / "table.md", out_dir / "table.csv", out_dir / "runs.csv"
    table.csv.to_csv(csv, index=False)
    # + 0.0 turns a -0.0 into 0.0, which the CSV would otherwise print as "-0.0".
    numeric = runs.select_dtypes("number").columns
    runs.assign(**{c: runs[c] + 0.0 for c in numeric}).to_csv(runs_csv, index=False)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=runs.attrs["tracking_uri"])
    parent = runs.attrs["parent_run_id"]
    verdict = table.verdict
    if verdict is None:  # build_table always judges; a table without is a bug upstream
        raise ResultsError("the comparison table carries no verdict")
    answered = families.answers(runs, verdict.layout.comparison)
    figures, extra = _figures(runs, table, out_dir, client, answered)
    table_markdown = to_markdown(table)
    own_tables, written = _family_tables(answered, plan, out_dir)
    text = table_markdown + own_tables
    extra += written
    if figures:
        trend = any(item.family.figure for item in answered)
        fitted = (" (metrics_vs_<param> with a trend: each seed's point, the fitted line or "
                  "parabola and its 95% confidence band)") if trend else ""
        text += ("\nFigures (PNG and PDF; bars and bands are 95% intervals over seeds"
                 + fitted + "): "
                 + ", ".join(p.name for p in figures if p.suffix == ".png") + "\n")
    sections = [power for item in answered if (power := item.answer.power()) is not None]
    if sections:
        (out_dir / "power.md").write_text("\n\n".join(sections))
        extra.append(out_dir / "power.md")
    line = verdict.line()
    lines = tuple(said for item in answered for said in item.answer.lines())
    text += "".join(f"\n{said}\n" for said in lines)
    markdown.write_text(text)
    summary = summary_metrics(table)
    for item in answered:
        summary.update(item.answer.metrics())
    for path in (*latex.values(), markdown, csv, runs_csv, *extra, *figures):
        schema.retry_locked(client.log_artifact, parent, str(path), REPORT_ARTIFACT_DIR)
    return ReportPaths(out_dir=out_dir, latex=latex["table"], markdown=markdown, csv=csv,
                       runs_csv=runs_csv, figures=tuple(figures), markdown_text=text,
                       parent_run_id=parent, verdict=line, latex_wide=latex["table-wide"],
                       latex_narrow=latex["table-narrow"], table_markdown=table_markdown,
                       summary=summary, lines=lines)
