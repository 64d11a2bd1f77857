"""Comparison tables: one model of the table, rendered as LaTeX, Markdown and CSV.

Which table a plan gets:

- ``lsg``: one row per guidance strategy (lsg, cfg = "LSG removed: teacher guidance
  only", none = "SiD alone", short), the teacher baseline below; columns FID, CLIP,
  adherence, each with Δ vs ``lsg`` and a mark where a Welch t-test gives p < 0.05.
- ``kappa``: one row per κ; one block per strategy when the strategy varies too.
- any other plan: one row per combination of the params that vary.

Params that vary but are not the row key (κ in an LSG plan run at several κ, say)
split the table into blocks, so rows are never averaged across them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import pandas as pd

from results import schema
from results.load import RUN_COLUMNS, ResultsError
from results.stats import (
    aggregate,
    fid_num_images,
    finished_values,
    lower_is_better,
    metric_columns,
    welch_p_value,
)

STRATEGY_ORDER = ("lsg", "cfg", "none", "short")
STRATEGY_LABELS = {
    "lsg": "lsg: LSG kept (paper)",
    "cfg": "cfg: LSG removed, teacher guidance only",
    "none": "none: SiD alone",
    "short": "short: fake-score guidance only",
}
# Params shown in a row key, in this order when several vary; the rest follow by name.
PRIMARY_PARAMS = ("strategy", "kappa")
# Replicates, not configurations: runs differing only here are averaged together.
REPLICATE_PARAMS = ("seed",)
PARAM_HEADERS = {"kappa": "κ", "strategy": "Strategy", "alpha": "α"}
SIGNIFICANCE_P = 0.05
SIGNIFICANCE_MARK = "†"
NOT_SIGNIFICANT = "n.s."
# Metrics a table shows (the CSV keeps every final metric): how to print them.
TABLE_METRICS = (schema.CLIP_SCORE, schema.ADHERENCE)


@dataclass(frozen=True)
class MetricFormat:
    header: str
    digits: int
    scale: float = 1.0  # 100 shows a fraction as a percentage

    def number(self, value: float) -> str:
        return f"{value * self.scale:.{self.digits}f}"


def metric_format(metric: str) -> MetricFormat:
    arrow = "↓" if lower_is_better(metric) else "↑"
    if metric.startswith("fid"):
        # FID's count is part of the metric (fid2k is not fid30k), so the header shows it.
        return MetricFormat(f"FID ({metric[3:]}) {arrow}", 2)
    if metric == schema.CLIP_SCORE:
        return MetricFormat(f"CLIP {arrow}", 3)
    if metric == schema.ADHERENCE:
        return MetricFormat(f"Adherence (%) {arrow}", 1, 100.0)
    return MetricFormat(f"{metric} {arrow}", 3)


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One table cell: plain text plus how to emphasise it. Numbers keep ASCII '-'
    here; LaTeX turns it into a math minus."""

    text: str
    bold: bool = False
    mark: bool = False  # significance mark
    numeric: bool = False
    ci: str = ""  # half-width of the 95% interval, printed after the value

    def markdown(self) -> str:
        text = self.text.replace("|", "\\|")
        text = f"**{text}**" if self.bold and text else text
        text += SIGNIFICANCE_MARK if self.mark else ""
        return f"{text} ± {self.ci}" if self.ci else text

    def latex(self) -> str:
        text = latex_escape(self.text)
        if self.numeric:
            text = text.replace("-", "$-$").replace("+", "$+$")
        text = f"\\textbf{{{text}}}" if self.bold and text else text
        text += "$^{\\dagger}$" if self.mark else ""
        # The interval in a smaller size keeps the wide LSG table near the text width.
        return f"{text}{{\\scriptsize\\,$\\pm$\\,{self.ci}}}" if self.ci else text


EMPTY = Cell("—")


@dataclass
class Row:
    label: list[Cell]
    cells: list[Cell]
    means: dict[str, float]  # unrounded, for picking the best value of a column
    is_teacher: bool = False


@dataclass
class Block:
    title: str | None
    rows: list[Row] = field(default_factory=list)


@dataclass
class Table:
    caption: str
    label: str
    label_headers: list[str]
    headers: list[str]
    blocks: list[Block]
    csv: pd.DataFrame  # the numbers behind the table, unrounded
    label_width: str | None = None  # LaTeX width of wrapping label columns (None: no wrap)


# --------------------------------------------------------------------------- escaping

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}",
    # Symbols the tables use; pdflatex's default input encoding has no glyph for them.
    "κ": r"$\kappa$", "α": r"$\alpha$", "Δ": r"$\Delta$", "±": r"$\pm$", "↑": r"$\uparrow$",
    "↓": r"$\downarrow$", "†": r"$^{\dagger}$", "≥": r"$\geq$", "≤": r"$\leq$",
    "×": r"$\times$", "—": "---", "–": "--",
}


def latex_escape(text: str) -> str:
    """Text as LaTeX that typesets literally (one pass, so replacements are not re-escaped)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


# --------------------------------------------------------------------------- grouping


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def sort_key(value) -> tuple:
    """Strategies in the paper's order, then numbers, then text, then unset values."""
    if value in STRATEGY_ORDER:
        return (0, STRATEGY_ORDER.index(value), "")
    if _missing(value):
        return (3, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (2, 0, str(value))


def ordered_values(values) -> list:
    """Distinct values (NaN once), in :func:`sort_key` order."""
    return sorted({str(v): v for v in values}.values(), key=sort_key)


def combos(df: pd.DataFrame, keys: list[str]) -> list[tuple]:
    """Distinct value tuples of ``keys`` (NaN equal to NaN), sorted position by position."""
    if not keys:
        return [()]
    distinct = {tuple(map(str, t)): tuple(t) for t in df[keys].itertuples(index=False)}
    return sorted(distinct.values(), key=lambda t: tuple(map(sort_key, t)))


def _ngroups(df: pd.DataFrame, keys: list[str]) -> int:
    return df.groupby(keys, dropna=False).ngroups if keys else 1


def varying_params(trials: pd.DataFrame, params: list[str]) -> list[str]:
    """Params that tell configurations apart: they vary across trials, are not replicate
    ids (seed), and are not implied by the ones already chosen (kappa1..kappa4 follow
    from strategy and κ; adding them would not split any group, so they are left out)."""
    candidates = [p for p in params if p not in REPLICATE_PARAMS
                  and trials[p].map(str).nunique() > 1]
    candidates.sort(key=lambda p: (PRIMARY_PARAMS.index(p) if p in PRIMARY_PARAMS
                                   else len(PRIMARY_PARAMS), p))
    seeds_vary = "seed" in trials and trials["seed"].nunique() > 1
    chosen: list[str] = []
    for param in candidates:
        keys = [*chosen, param]
        if _ngroups(trials, keys) <= _ngroups(trials, chosen):
            continue
        # A param with a different value for every seed (a run name, an output folder)
        # identifies runs, not configurations: grouping by it would average nothing.
        one_per_group = _ngroups(trials, keys) == _ngroups(trials, [*keys, "seed"]) == len(trials)
        if seeds_vary and one_per_group:
            continue
        chosen.append(param)
    return chosen


def param_text(param: str, value) -> str:
    if param == "strategy":
        return STRATEGY_LABELS.get(value, str(value))
    if _missing(value):
        return "None"  # what the config said (e.g. fault_inject_at_iteration unset)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _block_title(keys: list[str], values: tuple) -> str | None:
    if not keys:
        return None
    return ", ".join(param_text(k, v) if k == "strategy" else
                     f"{PARAM_HEADERS.get(k, k)} = {param_text(k, v)}"
                     for k, v in zip(keys, values))


def teacher_label(row: pd.Series) -> str:
    parts = [str(row[k]) for k in ("sampler",) if k in row and pd.notna(row[k])]
    if "sampler_steps" in row and pd.notna(row["sampler_steps"]):
        parts.append(f"{int(row['sampler_steps'])} steps")
    if "kappa" in row and pd.notna(row["kappa"]):
        parts.append(f"κ = {row['kappa']:g}")
    return "Teacher" + (f" ({', '.join(parts)})" if parts else "")


def runs_text(row: pd.Series) -> str:
    """'3' when every seed finished; otherwise the runs that did not, e.g. 'diverged 1/3'
    (the rest finished)."""
    total = int(row["n_runs"])
    parts = [f"{outcome} {int(row[f'n_{outcome}'])}/{total}"
             for outcome in ("diverged", "failed", "incomplete") if row[f"n_{outcome}"]]
    return ", ".join(parts) or str(total)


# --------------------------------------------------------------------------- building


def _metric_cell(agg_row: pd.Series, metric: str) -> Cell:
    fmt = metric_format(metric)
    mean, ci = agg_row[f"{metric}_mean"], agg_row[f"{metric}_ci95"]
    if not math.isfinite(mean):
        return EMPTY
    return Cell(fmt.number(mean), numeric=True, ci=fmt.number(ci) if math.isfinite(ci) else "")


def _delta_cell(delta: float, p_value: float, metric: str) -> Cell:
    if not math.isfinite(delta):
        return EMPTY
    fmt = metric_format(metric)
    text = fmt.number(delta)
    text = text if text.startswith("-") else "+" + text
    if math.isfinite(p_value) and p_value >= SIGNIFICANCE_P:
        # Said in the cell, not only by a missing mark: a reader skimming the Δ column
        # must not take a difference inside the seed noise for a result.
        text += f" {NOT_SIGNIFICANT}"
    return Cell(text, mark=bool(p_value < SIGNIFICANCE_P), numeric=True)


def _bold_best(block: Block, column: int, metric: str) -> None:
    """Bold the best distilled value of a block (ties as printed are all bold); the
    teacher is a reference, not a contender."""
    fmt = metric_format(metric)
    shown = [(row, fmt.number(row.means[metric])) for row in block.rows
             if not row.is_teacher and math.isfinite(row.means[metric])]
    if len(shown) < 2:
        return
    best = (min if lower_is_better(metric) else max)(float(text) for _, text in shown)
    for row, text in shown:
        if float(text) == best:
            old = row.cells[column]
            row.cells[column] = dataclasses.replace(old, bold=True)


def select_rows(runs: pd.DataFrame, keys: list[str], values) -> pd.DataFrame:
    """Runs whose params equal ``values`` (compared as text, as MLflow stored them)."""
    for key, value in zip(keys, values):
        runs = runs[runs[key].map(str) == str(value)]
    return runs


@dataclass
class _Spec:
    """What the table compares: the metrics shown, and the Δ reference when there is one."""

    metrics: list[str]  # every final metric (the CSV has them all)
    shown: list[str]  # the ones with a column in the table
    with_delta: bool


def _make_row(spec: _Spec, label: list[Cell], agg_row: pd.Series, runs: pd.DataFrame,
              reference: pd.DataFrame | None, csv_rows: list[dict], keys: dict) -> Row:
    cells, csv = [], {**keys, "n_runs": int(agg_row["n_runs"])}
    for outcome in ("finished", "diverged", "failed", "incomplete"):
        csv[f"n_{outcome}"] = int(agg_row[f"n_{outcome}"])
    for metric in spec.metrics:
        for stat in ("mean", "std", "n", "ci95"):
            csv[f"{metric}_{stat}"] = agg_row[f"{metric}_{stat}"]
        delta = p_value = math.nan
        # The reference row itself gets no Δ (a "+0.00" would read like a measurement).
        if (reference is not None and len(reference)
                and set(runs["run_id"]) != set(reference["run_id"])):
            ref = finished_values(reference, metric)
            mine = finished_values(runs, metric)
            if len(ref) and len(mine):
                delta = float(mine.mean() - ref.mean())
                p_value = welch_p_value(mine, ref)
        if spec.with_delta:
            csv[f"{metric}_delta_vs_lsg"] = delta
            csv[f"{metric}_welch_p_vs_lsg"] = p_value
        if metric in spec.shown:
            cells.append(_metric_cell(agg_row, metric))
            if spec.with_delta:
                cells.append(_delta_cell(delta, p_value, metric))
    cells.append(Cell(runs_text(agg_row)))
    csv_rows.append(csv)
    return Row(label, cells, {m: float(agg_row[f"{m}_mean"]) for m in spec.shown})


def _check_reportable(plan: str, runs: pd.DataFrame, trials: pd.DataFrame,
                      parent: str) -> pd.DataFrame:
    """The finished runs, if they make one comparable table; else why not."""
    if not (trials["status"] == "finished").any():
        counts = trials["status"].value_counts().to_dict()
        spelled = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no trial runs"
        raise ResultsError(
            f"plan {plan!r}, parent run {parent}: no finished trials ({spelled}); nothing "
            "to tabulate. Wait for the run to finish, resume it, or pick an earlier parent "
            "run with --parent-run")
    finished = runs[runs["status"] == "finished"]
    protocols = finished["eval_protocol"].dropna().unique() if "eval_protocol" in runs else []
    if len(protocols) > 1:
        raise ResultsError(
            f"plan {plan!r}, parent run {parent}: finished runs were evaluated under different "
            f"protocols ({', '.join(sorted(protocols))}); their metrics are not comparable in "
            "one table; report each parent run separately with --parent-run")
    return finished


def _layout(plan: str, trials: pd.DataFrame, varying: list[str]) -> tuple[list[str], str]:
    """(row keys, kind): the lsg and kappa plans have their own rows; others, what varies."""
    if plan == "lsg" and "strategy" in trials:
        return ["strategy"], "lsg"
    if plan == "kappa" and "kappa" in trials:
        return ["kappa"], "kappa"
    return varying, "generic"


def _value_headers(spec: _Spec) -> list[str]:
    headers = []
    for metric in spec.shown:
        headers.append(metric_format(metric).header)
        if spec.with_delta:
            headers.append("Δ " + metric_format(metric).header.split(" ")[0])
    return [*headers, "Seeds"]


def _trial_blocks(spec: _Spec, trials: pd.DataFrame, row_keys: list[str],
                  block_keys: list[str], csv_rows: list[dict]) -> list[Block]:
    agg = aggregate(trials, block_keys + row_keys, spec.metrics)
    blocks = []
    for block_values in combos(agg, block_keys):
        block = Block(_block_title(block_keys, block_values))
        block_agg = select_rows(agg, block_keys, block_values)
        block_runs = select_rows(trials, block_keys, block_values)
        reference = block_runs[block_runs["strategy"] == "lsg"] if spec.with_delta else None
        rows = sorted(block_agg.iterrows(),
                      key=lambda item: tuple(sort_key(item[1][k]) for k in row_keys))
        for _, agg_row in rows:
            values = [agg_row[k] for k in row_keys]
            # Nothing but the seed varies: one row, named for what it holds.
            label = [Cell(param_text(k, v)) for k, v in zip(row_keys, values)] or [
                Cell("all trials")]
            block.rows.append(_make_row(
                spec, label, agg_row,
                select_rows(block_runs, row_keys, values), reference, csv_rows,
                {"role": "trial", **dict(zip(block_keys, block_values)),
                 **dict(zip(row_keys, values))}))
        blocks.append(block)
    return blocks


def _teacher_block(spec: _Spec, teacher: pd.DataFrame, trials: pd.DataFrame,
                   block_keys: list[str], label_width: int, csv_rows: list[dict]) -> Block:
    teacher_keys = [p for p in ("sampler", "sampler_steps", "kappa")
                    if p in teacher and teacher[p].notna().any()]
    # Δ vs lsg for the teacher only when there is one lsg row to compare with.
    reference = (trials[trials["strategy"] == "lsg"]
                 if spec.with_delta and not block_keys else None)
    block = Block("Reference" if block_keys else None)
    for _, agg_row in aggregate(teacher, teacher_keys, spec.metrics).iterrows():
        values = [agg_row[k] for k in teacher_keys]
        label = [Cell(teacher_label(agg_row))] + [Cell("")] * (label_width - 1)
        row = _make_row(spec, label, agg_row, select_rows(teacher, teacher_keys, values),
                        reference, csv_rows, {"role": "teacher", **dict(zip(teacher_keys, values))})
        row.is_teacher = True
        block.rows.append(row)
    return block


def build_table(plan: str, runs: pd.DataFrame) -> Table:
    """The plan's comparison table from :func:`results.load_runs`' frame."""
    params = runs.attrs.get("param_columns") or [c for c in runs.columns if c not in RUN_COLUMNS]
    trials = runs[runs["role"] == "trial"]
    teacher = runs[runs["role"] == "teacher"]
    parent = runs.attrs.get("parent_run_id", "?")
    finished = _check_reportable(plan, runs, trials, parent)
    metrics = metric_columns(finished)
    shown = [m for m in metrics if m.startswith("fid") or m in TABLE_METRICS]
    if not shown:
        raise ResultsError(f"plan {plan!r}, parent run {parent}: finished trials logged no "
                           "final FID, CLIP or adherence metric; was evaluation switched off?")
    varying = varying_params(trials, [p for p in params if p in trials])
    row_keys, kind = _layout(plan, trials, varying)
    block_keys = [p for p in varying if p not in row_keys]
    spec = _Spec(metrics, shown, with_delta=kind == "lsg")
    label_headers = (["Method"] if kind == "lsg" else
                     [PARAM_HEADERS.get(k, k) for k in row_keys] or ["Configuration"])
    headers = _value_headers(spec)
    csv_rows: list[dict] = []
    blocks = _trial_blocks(spec, trials, row_keys, block_keys, csv_rows)
    if len(teacher):
        blocks.append(_teacher_block(spec, teacher, trials, block_keys, len(label_headers),
                                     csv_rows))
    value_columns = [i for i, h in enumerate(headers[:-1]) if not h.startswith("Δ")]
    for block in blocks:
        for column, metric in zip(value_columns, shown):
            _bold_best(block, column, metric)

    caption = _caption(plan, kind, parent, trials, shown, spec.with_delta, block_keys,
                       has_teacher=len(teacher) > 0)
    # The LSG rows' labels are long descriptions: wrap them rather than widen the table.
    return Table(caption, f"tab:ablate-{plan}", label_headers, headers, blocks,
                 pd.DataFrame(csv_rows), "3.2cm" if kind == "lsg" else None)


def _caption_subject(plan: str, kind: str, trials: pd.DataFrame) -> str:
    if kind == "lsg":
        kappas = sorted(trials["kappa"].dropna().unique()) if "kappa" in trials else []
        at = f" at κ = {', '.join(f'{k:g}' for k in kappas)}" if kappas else ""
        return ("Guidance ablation: one-step generators distilled with LSG kept (lsg), "
                "LSG removed with guidance on the teacher only (cfg), and no guidance "
                f"(none){at}.")
    if kind == "kappa":
        return "Guidance-scale sweep: one-step generators distilled at each κ."
    return f"Plan {plan}: one row per configuration."


def _caption_metrics(shown: list[str]) -> str:
    """One sentence naming each metric of the table and its direction ('' if none)."""
    fid = [m for m in shown if m.startswith("fid")]
    metrics = []
    if fid:
        metrics.append(f"FID on {fid_num_images(fid[0]):,} generated images (↓ lower is better)")
    if schema.CLIP_SCORE in shown:
        metrics.append("CLIP score as mean cosine similarity (↑)")
    if schema.ADHERENCE in shown:
        metrics.append("adherence as the % of images with the prompted colour, shape and size "
                       "all right (↑)")
    if not metrics:
        return ""
    sentence = "; ".join(metrics)
    return sentence[0].upper() + sentence[1:] + "."


def _caption(plan: str, kind: str, parent: str, trials: pd.DataFrame, shown: list[str],
             with_delta: bool, block_keys: list[str], has_teacher: bool) -> str:
    parts = [_caption_subject(plan, kind, trials)]
    if has_teacher:
        parts.append("The teacher's own multi-step samples are the reference row.")
    if block_keys:
        names = ", ".join("strategy" if k == "strategy" else PARAM_HEADERS.get(k, k)
                          for k in block_keys)
        parts.append(f"One block per {names}.")
    metrics = _caption_metrics(shown)
    if metrics:
        parts.append(metrics)
    seeds = trials.get("seed")
    n_seeds = seeds.nunique() if seeds is not None else 1
    if n_seeds > 1:
        parts.append("Mean ± half-width of the 95% t-interval over seeds (Seeds: runs per "
                     "row); a row with one finished seed has no interval.")
    else:
        parts.append("One seed per row: no intervals.")
    if with_delta:
        parts.append(f"Δ: difference of means vs lsg; {SIGNIFICANCE_MARK}: two-sided Welch "
                     f"t-test p < {SIGNIFICANCE_P:g}, {NOT_SIGNIFICANT}: not significant (needs "
                     "≥ 2 finished seeds on both sides; neither mark without them).")
    parts.append("Best distilled value per column in bold. Diverged or failed runs are "
                 "counted under Seeds and left out of every mean.")
    parts.append(f"MLflow parent run {parent}.")
    return " ".join(parts)


# --------------------------------------------------------------------------- rendering


def to_latex(table: Table) -> str:
    """A booktabs ``table`` float; needs ``\\usepackage{booktabs}`` and ``{graphicx}``.

    A Δ column sits under its metric in a two-level header. The tabular is scaled down
    to the text width only if it is wider (never up), so it fits any paper format.
    """
    n_label = len(table.label_headers)
    label_spec = f"p{{{table.label_width}}}" if table.label_width else "l"
    spec = label_spec * n_label + "r" * (len(table.headers) - 1) + "l"
    width = n_label + len(table.headers)
    groups: list[list[str]] = []  # [metric header] or [metric header, its Δ header]
    for header in table.headers[:-1]:
        if header.startswith("Δ") and groups:
            groups[-1].append(header)
        else:
            groups.append([header])
    if any(len(g) > 1 for g in groups):
        top, rules, sub, column = [""] * n_label, [], list(table.label_headers), n_label + 1
        for group in groups:
            if len(group) > 1:
                top.append(f"\\multicolumn{{{len(group)}}}{{c}}{{{latex_escape(group[0])}}}")
                rules.append(f"\\cmidrule(lr){{{column}-{column + len(group) - 1}}}")
                sub += ["mean", "Δ vs lsg"]
            else:
                top.append(latex_escape(group[0]))
                sub.append("")
            column += len(group)
        header_lines = [" & ".join([*top, ""]) + " \\\\", "".join(rules),
                        " & ".join(latex_escape(h) for h in [*sub, table.headers[-1]]) + " \\\\"]
    else:
        header_lines = [" & ".join(latex_escape(h)
                                   for h in table.label_headers + table.headers) + " \\\\"]
    lines = ["\\begin{table}[t]", "\\centering", "\\small", "\\setlength{\\tabcolsep}{4pt}",
             f"\\caption{{{latex_escape(table.caption)}}}", f"\\label{{{table.label}}}",
             f"\\sbox0{{\\begin{{tabular}}{{{spec}}}", "\\toprule", *header_lines, "\\midrule"]
    for index, block in enumerate(table.blocks):
        if index:
            lines.append("\\midrule")
        if block.title:
            lines.append(f"\\multicolumn{{{width}}}{{l}}{{\\emph{{{latex_escape(block.title)}}}}}"
                         " \\\\")
        for row in block.rows:
            # Wrapped labels read better ragged; \raggedright redefines \\, hence
            # \tabularnewline to end the row.
            ragged = "\\raggedright " if table.label_width else ""
            label = [ragged + c.latex() for c in row.label]
            lines.append(" & ".join(label + [c.latex() for c in row.cells]) + " \\tabularnewline")
    lines += ["\\bottomrule", "\\end{tabular}}",
              "\\ifdim\\wd0>\\linewidth\\resizebox{\\linewidth}{!}{\\box0}\\else\\box0\\fi",
              "\\end{table}"]
    return "\n".join(lines) + "\n"


def to_markdown(table: Table) -> str:
    headers = table.label_headers + table.headers
    lines = [f"**Table ({table.label}).** {table.caption}", "",
             "| " + " | ".join(headers) + " |",
             "|" + "|".join([":---"] * len(table.label_headers)
                            + ["---:"] * (len(table.headers) - 1) + [":---"]) + "|"]
    for block in table.blocks:
        if block.title:
            lines.append("| " + " | ".join([f"*{block.title}*"] + [""] * (len(headers) - 1))
                         + " |")
        for row in block.rows:
            lines.append("| " + " | ".join(c.markdown() for c in row.label + row.cells) + " |")
    return "\n".join(lines) + "\n"
