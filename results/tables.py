"""Comparison tables: one model of the table, rendered as LaTeX, Markdown and CSV.

Which table a plan gets:

- ``lsg``: one row per guidance strategy (lsg, cfg = "LSG removed: teacher guidance
  only", none = "SiD alone", short), the teacher baseline below; columns FID, CLIP,
  adherence, each with Δ vs ``lsg`` and a mark where a Welch t-test gives p < 0.05.
- ``kappa``: one row per κ; one block per strategy when the strategy varies too.
- any other plan: one row per combination of the params that vary.

Params that vary but are not the row key (κ in an LSG plan run at several κ, say)
split the table into blocks, so rows are never averaged across them.

Beside quality, a "Cost ×" column (when the strategy varies and the trials logged their
cost) divides each row's mean device-hours by lsg's at the same settings, or, when any
trial lacks device-hours, its UNet passes per image: "LSG buys X FID for Y× compute".
With the sd15/sd21base profiles the lsg and kappa tables add the paper's published
FID and CLIP for the same κ (:mod:`results.published`).

Rules every rendering follows: no negative zero is printed ("-0.00" is "0.00"); the best
distilled value of a column is bold only when one row holds it (a tie at the printed
precision bolds nothing); the caption is short (what is compared and how to read the
marks), the rest (metric definitions, outcome rules, the MLflow run id) are notes:
``%`` comments in LaTeX, a paragraph under the Markdown table.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import pandas as pd

from results import published, schema
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
# What a trial's compute cost is measured by, preferred first; the CSV keeps all of them.
COST_METRICS = (schema.DEVICE_HOURS, schema.UNET_PASSES_PER_IMAGE)
COST_HEADER = "Cost ×"
COST_UNITS = {schema.DEVICE_HOURS: "device-hours", schema.UNET_PASSES_PER_IMAGE:
              "UNet passes per image"}


@dataclass(frozen=True)
class MetricFormat:
    header: str
    digits: int
    scale: float = 1.0  # 100 shows a fraction as a percentage

    def number(self, value: float) -> str:
        return unsigned_zero(f"{value * self.scale:.{self.digits}f}")


def unsigned_zero(text: str) -> str:
    """'-0.00' -> '0.00': a small negative value rounded to zero has no direction, and a
    printed minus would read as one."""
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


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
    ci: str = ""  # half-width of the 95% interval, printed after (LaTeX: under) the value
    note: str = ""  # e.g. "n.s.", printed after (LaTeX: under) the value

    def markdown(self) -> str:
        text = self.text.replace("|", "\\|")
        text = f"**{text}**" if self.bold and text else text
        text += SIGNIFICANCE_MARK if self.mark else ""
        text = f"{text} ± {self.ci}" if self.ci else text
        return f"{text} {self.note}" if self.note else text

    def latex(self) -> str:
        text = latex_escape(self.text)
        if self.numeric:
            text = text.replace("-", "$-$").replace("+", "$+$")
        text = f"\\textbf{{{text}}}" if self.bold and text else text
        text += "$^{\\dagger}$" if self.mark else ""
        # Interval and note go under the value in a smaller size: side by side they made
        # the LSG table twice as wide as its numbers, and pdflatex shrank it to ~6 pt.
        below = ([f"{{\\scriptsize$\\pm${self.ci}}}"] if self.ci else []) + (
            [f"{{\\scriptsize {latex_escape(self.note)}}}"] if self.note else [])
        return _stack([text, *below], "r" if self.numeric else "l")


EMPTY = Cell("—")


@dataclass
class Row:
    label: list[Cell]
    cells: list[Cell]
    means: dict[str, float]  # unrounded, for picking the best value of a column
    is_reference: bool = False  # teacher or published: shown, never a contender for bold
    short: list[Cell] | None = None  # the label in the narrow LaTeX variant (None: label)


@dataclass
class Block:
    title: str | None
    rows: list[Row] = field(default_factory=list)


@dataclass
class Table:
    caption: str  # at most three lines at article width: what is compared, how to read it
    label: str
    label_headers: list[str]
    headers: list[str]
    blocks: list[Block]
    csv: pd.DataFrame  # the numbers behind the table, unrounded
    label_width: str | None = None  # LaTeX width of wrapping label columns (None: no wrap)
    notes: list[str] = field(default_factory=list)  # sentences the caption leaves out
    keys: list[str] = field(default_factory=list)  # params naming a trial row (block, row)
    narrow_caption: str = ""  # the caption of the narrow LaTeX variant ('': caption)


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
        return "None"  # what the config said (e.g. ema_rampup_ratio: null)
    if isinstance(value, float):
        return f"{value + 0.0:g}"  # + 0.0 turns -0.0 into 0.0
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
        parts.append(f"κ = {param_text('kappa', row['kappa'])}")
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
    # Said in the cell, not only by a missing mark: a reader skimming the Δ column must
    # not take a difference inside the seed noise for a result.
    note = NOT_SIGNIFICANT if math.isfinite(p_value) and p_value >= SIGNIFICANCE_P else ""
    return Cell(text, mark=bool(p_value < SIGNIFICANCE_P), numeric=True, note=note)


def _bold_best(block: Block, column: int, metric: str) -> None:
    """Bold the best distilled value of a block, compared as printed; a tie bolds nothing
    (two bold rows would each claim a win neither has). The teacher and published rows are
    references, not contenders."""
    fmt = metric_format(metric)
    shown = [(row, float(fmt.number(row.means[metric]))) for row in block.rows
             if not row.is_reference and math.isfinite(row.means[metric])]
    if len(shown) < 2:
        return
    best = (min if lower_is_better(metric) else max)(value for _, value in shown)
    winners = [row for row, value in shown if value == best]
    if len(winners) == 1:
        row = winners[0]
        row.cells[column] = dataclasses.replace(row.cells[column], bold=True)


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
    cost: str | None = None  # the metric behind the "Cost ×" column (None: no column)


def _cost_cell(spec: _Spec, runs: pd.DataFrame, reference: pd.DataFrame | None,
               csv: dict) -> Cell:
    """The row's mean cost over lsg's (finished runs on both sides, like every mean)."""
    ratio = math.nan
    if reference is not None:
        mine, ref = finished_values(runs, spec.cost), finished_values(reference, spec.cost)
        if len(mine) and len(ref) and ref.mean() > 0:
            ratio = float(mine.mean() / ref.mean())
    csv["cost_vs_lsg"] = ratio
    return Cell(f"{ratio:.2f}", numeric=True) if math.isfinite(ratio) else EMPTY


def _make_row(spec: _Spec, label: list[Cell], agg_row: pd.Series, runs: pd.DataFrame,
              reference: pd.DataFrame | None, csv_rows: list[dict], keys: dict,
              cost_reference: pd.DataFrame | None = None) -> Row:
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
    if spec.cost:
        cells.append(_cost_cell(spec, runs, cost_reference, csv))
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
    return [*headers, *([COST_HEADER] if spec.cost else []), "Seeds"]


def _cost_metric(trials: pd.DataFrame, finished: pd.DataFrame) -> str | None:
    """Device-hours when every finished trial logged them, else UNet passes per image when
    every one logged those (mixing the two in one column would compare unlike things);
    None when nothing is there to compare with lsg or no cost was logged."""
    if "strategy" not in trials or trials["strategy"].nunique() < 2 \
            or not (trials["strategy"] == "lsg").any():
        return None
    done = finished[finished["role"] == "trial"]
    for metric in COST_METRICS:
        if metric in done and done[metric].notna().all():
            return metric
    return None


def _cost_reference(trials: pd.DataFrame, keys: dict) -> pd.DataFrame:
    """lsg's runs at the row's other settings (its κ, say): what its cost is relative to."""
    others = [k for k in keys if k != "strategy"]
    scope = select_rows(trials, others, [keys[k] for k in others])
    return scope[scope["strategy"] == "lsg"]


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
            keys = {**dict(zip(block_keys, block_values)), **dict(zip(row_keys, values))}
            row = _make_row(spec, label, agg_row, select_rows(block_runs, row_keys, values),
                            reference, csv_rows, {"role": "trial", **keys},
                            _cost_reference(trials, keys) if spec.cost else None)
            if row_keys == ["strategy"]:
                row.short = [Cell(str(values[0]))]  # the narrow table's label: "lsg"
            block.rows.append(row)
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
        blank = [Cell("")] * (label_width - 1)
        row = _make_row(spec, [Cell(teacher_label(agg_row)), *blank], agg_row,
                        select_rows(teacher, teacher_keys, values), reference, csv_rows,
                        {"role": "teacher", **dict(zip(teacher_keys, values))})
        row.is_reference, row.short = True, [Cell("Teacher"), *blank]
        block.rows.append(row)
    return block


def _published_block(spec: _Spec, kind: str, trials: pd.DataFrame, profile: str | None,
                     label_width: int, csv_rows: list[dict]) -> Block | None:
    """The paper's FID and CLIP at each κ the trials ran (SD profiles, lsg and kappa tables
    only); None where the paper has no number for this profile or these κ."""
    if kind not in ("lsg", "kappa") or "kappa" not in trials:
        return None
    block = Block(f"Published ({published.SOURCE})")
    for kappa in ordered_values(trials["kappa"].dropna()):
        numbers = published.published(profile, kappa)
        if numbers is None:
            continue
        fid, clip = numbers
        cells = []
        for metric in spec.shown:
            value = fid if metric.startswith("fid") else clip if metric == schema.CLIP_SCORE \
                else None
            cells.append(EMPTY if value is None
                         else Cell(metric_format(metric).number(value), numeric=True))
            cells += [EMPTY] if spec.with_delta else []
        cells += [EMPTY] * bool(spec.cost) + [Cell("paper")]
        text = param_text("kappa", kappa)
        text = f"lsg, κ = {text}" if kind == "lsg" else text
        label = [Cell(text)] + [Cell("")] * (label_width - 1)
        block.rows.append(Row(label, cells, dict.fromkeys(spec.shown, math.nan),
                              is_reference=True))
        csv_rows.append({"role": "published", "source": published.SOURCE, "kappa": kappa,
                         "fid30k_published": fid, "clip_score_published": clip})
    return block if block.rows else None


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
    costs = [m for m in (schema.TRAIN_SECONDS, *COST_METRICS)
             if m in finished and finished[m].notna().any()]
    spec = _Spec(metrics + costs, shown, with_delta=kind == "lsg",
                 cost=_cost_metric(trials, finished))
    label_headers = (["Method"] if kind == "lsg" else
                     [PARAM_HEADERS.get(k, k) for k in row_keys] or ["Configuration"])
    headers = _value_headers(spec)
    csv_rows: list[dict] = []
    blocks = _trial_blocks(spec, trials, row_keys, block_keys, csv_rows)
    if len(teacher):
        blocks.append(_teacher_block(spec, teacher, trials, block_keys, len(label_headers),
                                     csv_rows))
    paper = _published_block(spec, kind, trials, runs.attrs.get("profile"),
                             len(label_headers), csv_rows)
    blocks += [paper] if paper else []
    value_columns = [i for i, h in enumerate(headers[:-1])
                     if not h.startswith("Δ") and h != COST_HEADER]
    for block in blocks:
        for column, metric in zip(value_columns, shown):
            _bold_best(block, column, metric)

    caption, notes = _caption(plan, kind, trials, spec, has_paper=paper is not None)
    narrow_caption, _ = _caption(plan, kind, trials, spec, paper is not None, narrow=True)
    notes = _context_notes(runs, block_keys, paper) + notes + [f"MLflow parent run {parent}."]
    # -0.0 (a difference of equal means, say) would be written as "-0.0" in the CSV.
    csv = pd.DataFrame(csv_rows)
    numeric = csv.select_dtypes("number").columns
    csv[numeric] = csv[numeric] + 0.0
    # The LSG rows' labels are long descriptions: wrap them rather than widen the table.
    return Table(caption, f"tab:ablate-{plan}", label_headers, headers, blocks, csv,
                 "2.6cm" if kind == "lsg" else None, notes, block_keys + row_keys,
                 narrow_caption)


def _caption_subject(plan: str, kind: str, trials: pd.DataFrame) -> str:
    if kind == "lsg":
        kappas = sorted(trials["kappa"].dropna().unique()) if "kappa" in trials else []
        at = f" at κ = {', '.join(param_text('kappa', k) for k in kappas)}" if kappas else ""
        return f"Guidance ablation{at}: LSG kept (lsg), teacher guidance only (cfg), none."
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


def _context_notes(runs: pd.DataFrame, block_keys: list[str], paper: Block | None) -> list[str]:
    """Notes on where the reference rows and blocks come from."""
    notes = []
    if (runs["role"] == "teacher").any():
        notes.append("The teacher's own multi-step samples are the reference row.")
    if block_keys:
        names = ", ".join("strategy" if k == "strategy" else PARAM_HEADERS.get(k, k)
                          for k in block_keys)
        notes.append(f"One block per {names}.")
    if paper:
        model = published.MODEL_NAMES[runs.attrs["profile"]]
        notes.append(f"Published rows: {published.CITATION}, {model}; the paper's numbers, not "
                     "measured here.")
    return notes


def _caption(plan: str, kind: str, trials: pd.DataFrame, spec: _Spec, has_paper: bool,
             narrow: bool = False) -> tuple[str, list[str]]:
    """(caption, notes): the caption says what is compared and how to read the marks in at
    most three lines at article width; the notes hold the definitions behind it. The
    narrow LaTeX variant has no Δ columns: its caption says where the mark is instead."""
    # build_table refuses a table without a metric, so the metrics sentence is never empty.
    reading, notes = [], [_caption_metrics(spec.shown)]
    seeds = trials.get("seed")
    if (seeds.nunique() if seeds is not None else 1) > 1:
        reading.append("mean ± 95% CI over seeds")
        notes.append("Mean ± half-width of the 95% t-interval over seeds (Seeds: runs per "
                     "row); a row with one finished seed has no interval.")
    else:
        reading.append("one seed per row, no intervals")
    if spec.with_delta:
        reading.append(f"{SIGNIFICANCE_MARK}: differs from lsg (Welch p < {SIGNIFICANCE_P:g})"
                       if narrow else
                       f"Δ and {SIGNIFICANCE_MARK} (Welch p < {SIGNIFICANCE_P:g}) vs lsg")
        notes.append(f"Δ: difference of means vs lsg; {SIGNIFICANCE_MARK}: two-sided Welch "
                     f"t-test p < {SIGNIFICANCE_P:g}, {NOT_SIGNIFICANT}: not significant (needs "
                     "≥ 2 finished seeds on both sides; neither mark without them).")
    reading.append("bold: best, none if tied")
    notes.append("Bold: the best distilled value per column as printed; where rows tie for "
                 "it, none is bold. Reference rows (teacher, published) never are.")
    if spec.cost:
        reading.append(f"{COST_HEADER}: {COST_UNITS[spec.cost]} vs lsg")
        notes.append(f"{COST_HEADER}: the row's mean {COST_UNITS[spec.cost]} over lsg's at the "
                     "same settings (finished runs); device-hours = training seconds x devices "
                     "/ 3600; UNet passes per image: lsg 8+7, cfg 6+5, none 5+4.")
    if has_paper:
        reading.append(f"published: {published.SOURCE}")
    notes.append("Diverged or failed runs are counted under Seeds and left out of every mean.")
    text = "; ".join(reading)
    return f"{_caption_subject(plan, kind, trials)} {text[0].upper()}{text[1:]}.", notes


# --------------------------------------------------------------------------- rendering


# The LaTeX variants: file stem -> (float environment, narrow layout, what it is for).
LATEX_VARIANTS = {
    "table": ("table", False, "one-column papers: the full table in a table float"),
    "table-wide": ("table*", False, "two-column papers: the full table across both columns"),
    "table-narrow": ("table", True, "two-column papers: one column wide; no Δ columns "
                     "(the significance mark sits on the mean), short row labels"),
}
LATEX_PACKAGES = r"\usepackage{booktabs} \usepackage{graphicx}"


def _stack(lines: list[str], align: str) -> str:
    """Lines stacked in one cell (a nested tabular: no package needed)."""
    if len(lines) == 1:
        return lines[0]
    return (f"\\begin{{tabular}}[{'b' if align == 'c' else 't'}]{{@{{}}{align}@{{}}}}"
            + "\\\\".join(lines) + "\\end{tabular}")


def _wide_header(table: Table) -> list[str]:
    """A Δ column sits under its metric in a two-level header."""
    n_label = len(table.label_headers)
    groups: list[list[str]] = []  # [metric header] or [metric header, its Δ header]
    for header in table.headers[:-1]:
        if header.startswith("Δ") and groups:
            groups[-1].append(header)
        else:
            groups.append([header])
    if all(len(g) == 1 for g in groups):
        return [" & ".join(latex_escape(h) for h in table.label_headers + table.headers)
                + " \\\\"]
    top, rules, sub, column = [""] * n_label, [], list(table.label_headers), n_label + 1
    for group in groups:
        if len(group) > 1:
            top.append(f"\\multicolumn{{{len(group)}}}{{c}}{{{latex_escape(group[0])}}}")
            rules.append(f"\\cmidrule(lr){{{column}-{column + len(group) - 1}}}")
            sub += ["mean", "Δ"]
        else:
            top.append(latex_escape(group[0]))
            sub.append("")
        column += len(group)
    return [" & ".join([*top, ""]) + " \\\\", "".join(rules),
            " & ".join(latex_escape(h) for h in [*sub, table.headers[-1]]) + " \\\\"]


def _latex_cells(row: Row, headers: list[str], narrow: bool) -> list[str]:
    """A row's value cells, the Seeds text ("diverged 1/3") one word a line; narrow: without
    the Δ cells, whose significance mark moves onto the mean."""
    cells: list[Cell] = []
    for header, cell in zip(headers, row.cells):
        if narrow and header.startswith("Δ"):
            if cell.mark:
                cells[-1] = dataclasses.replace(cells[-1], mark=True)
            continue
        cells.append(cell)
    seeds = cells.pop()
    return [c.latex() for c in cells] + [_stack(latex_escape(seeds.text).split(" "), "l")]


def to_latex(table: Table, variant: str = "table") -> str:
    """One of :data:`LATEX_VARIANTS` as a booktabs float; the packages it needs and the
    table's notes (definitions, MLflow run id) are ``%`` comments at the top.

    The tabular is scaled down to the line width only if it is wider (never up)."""
    environment, narrow, purpose = LATEX_VARIANTS[variant]
    caption = (table.narrow_caption or table.caption) if narrow else table.caption
    n_label = len(table.label_headers)
    label_width = ("1.5cm" if narrow and table.label_width else table.label_width)
    label_spec = f"p{{{label_width}}}" if label_width else "l"
    if narrow:
        headers = [h for h in table.headers if not h.startswith("Δ")]
        header_lines = [" & ".join(
            [latex_escape(h) for h in table.label_headers]
            + [_stack([latex_escape(part) for part in h.split(" ", 1)], "c") for h in headers])
            + " \\\\"]
    else:
        headers, header_lines = table.headers, _wide_header(table)
    spec = label_spec * n_label + "r" * (len(headers) - 1) + "l"
    width = n_label + len(headers)
    lines = [f"% Needs {LATEX_PACKAGES} in the preamble.",
             f"% {variant}.tex, for {purpose}.",
             *(f"% {note}" for note in table.notes),
             f"\\begin{{{environment}}}[t]", "\\centering", "\\small",
             "\\setlength{\\tabcolsep}{3pt}",
             f"\\caption{{{latex_escape(caption)}}}", f"\\label{{{table.label}}}",
             f"\\sbox0{{\\begin{{tabular}}{{{spec}}}", "\\toprule", *header_lines, "\\midrule"]
    # Wrapped labels read better ragged; \raggedright redefines \\, hence \tabularnewline.
    ragged = "\\raggedright " if label_width else ""
    for index, block in enumerate(table.blocks):
        if index:
            lines.append("\\midrule")
        if block.title:
            lines.append(f"\\multicolumn{{{width}}}{{l}}{{\\emph{{{latex_escape(block.title)}}}}}"
                         " \\\\")
        for row in block.rows:
            shown_label = (row.short or row.label) if narrow else row.label
            label = [ragged + c.latex() for c in shown_label]
            cells = _latex_cells(row, table.headers, narrow)
            lines.append(" & ".join(label + cells) + " \\tabularnewline")
    lines += ["\\bottomrule", "\\end{tabular}}",
              "\\ifdim\\wd0>\\linewidth\\resizebox{\\linewidth}{!}{\\box0}\\else\\box0\\fi",
              f"\\end{{{environment}}}"]
    return "\n".join(lines) + "\n"


def to_markdown(table: Table) -> str:
    """The caption, the table, then its notes as one paragraph."""
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
    if table.notes:
        lines += ["", "Notes: " + " ".join(table.notes)]
    return "\n".join(lines) + "\n"
