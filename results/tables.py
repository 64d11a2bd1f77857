"""Comparison tables: one model of the table, rendered as LaTeX, Markdown and CSV.

What a table compares is the plan's comparison (:mod:`results.comparison`), never its name:
one row per arm (the comparison's arm params), one block per value of the other params that
vary, the teacher baseline below. Beside each metric a Δ column gives the arm's difference
from the reference arm of its block, its 95% interval and the verdict's word
(:mod:`results.verdict`: better, worse, equivalent within ±δ, unresolved, untestable);
"†" marks better and worse. With no comparison (nothing varies), rows are what varies.
A metric cell is the mean ± the half-width of its 95% t-interval over seeds; a metric
tested on the log scale (FID) shows, on the scale it is tested on, its geometric mean with
its 95% interval "[low, high]", asymmetric and above zero.

Beside quality, a "Cost ×" column (when the trials logged their cost) divides each row's
mean device-hours by the reference arm's at the same settings, or, when any trial lacks
device-hours, its UNet passes per image: "LSG buys X FID for Y× compute". With the
sd15/sd21base profiles the table adds the paper's published FID and CLIP for the κ the
trials ran (:mod:`results.published`).

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

import numpy as np
import pandas as pd

from distill import metrics as registry
from results import published
from results.arms import (
    PARAM_HEADERS,
    Layout,
    arm_text,
    combos,
    infer,
    ordered_values,
    param_text,
    select_rows,
    sort_key,
)
from results.comparison import Comparison
from results.load import ResultsError
from results.stats import (
    ALPHA,
    GEOMETRIC_STATS,
    aggregate,
    finished_values,
    metric_columns,
    metric_of,
    shown_interval,
)
from results.verdict import Verdict, compare

SIGNIFICANCE_MARK = "†"
# What a trial's compute cost is measured by, preferred first; the CSV keeps all of them.
COST_METRICS = (registry.DEVICE_HOURS.key, registry.UNET_PASSES_PER_IMAGE.key)
COST_HEADER = "Cost ×"
COST_UNITS = {registry.DEVICE_HOURS.key: "device-hours",
              registry.UNET_PASSES_PER_IMAGE.key: "UNet passes per image"}
# Row labels longer than this wrap in LaTeX (strategy descriptions do); in the narrow
# variant, short labels longer than NARROW_LABEL_CHARS do.
WRAP_LABELS_OVER = 16
NARROW_LABEL_CHARS = 8


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
    interval: str = ""  # a Δ's or a geometric mean's 95% interval, "[-0.5, +2.7]", after (under) it
    # LaTeX: the interval's bounds on two lines, so that a geometric mean's interval, wider
    # than its value, does not widen its column (the tables would be scaled down to fit).
    wrap_interval: bool = False
    note: str = ""  # the verdict's word, printed after (LaTeX: under) the value

    def markdown(self) -> str:
        text = self.text.replace("|", "\\|")
        text = f"**{text}**" if self.bold and text else text
        text += SIGNIFICANCE_MARK if self.mark else ""
        text = f"{text} ± {self.ci}" if self.ci else text
        text = f"{text} {self.interval}" if self.interval else text
        return f"{text} {self.note}" if self.note else text

    def latex(self) -> str:
        text = _latex_number(self.text) if self.numeric else latex_escape(self.text)
        text = f"\\textbf{{{text}}}" if self.bold and text else text
        text += "$^{\\dagger}$" if self.mark else ""
        # Interval and note go under the value in a smaller size: side by side they made
        # the LSG table twice as wide as its numbers, and pdflatex shrank it to ~6 pt.
        below = ([f"{{\\scriptsize$\\pm${self.ci}}}"] if self.ci else []) + (
            [f"{{\\scriptsize {_latex_number(part)}}}" for part in self._interval_lines()]) + (
            [f"{{\\scriptsize {latex_escape(self.note)}}}"] if self.note else [])
        return _stack([text, *below], "r" if self.numeric else "l")

    def _interval_lines(self) -> list[str]:
        if not self.interval:
            return []
        if not self.wrap_interval:
            return [self.interval]
        low, high = self.interval.split(", ")
        return [low + ",", high]


EMPTY = Cell("—")


@dataclass
class Row:
    label: list[Cell]
    cells: list[Cell]
    means: dict[str, float]  # unrounded shown values (log scale: geometric), to pick the best
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
    verdict: Verdict | None = None  # the findings behind the Δ columns (build_table sets it)


# --------------------------------------------------------------------------- escaping

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}",
    # Symbols the tables use; pdflatex's default input encoding has no glyph for them.
    "κ": r"$\kappa$", "α": r"$\alpha$", "Δ": r"$\Delta$", "±": r"$\pm$", "↑": r"$\uparrow$",
    "↓": r"$\downarrow$", "†": r"$^{\dagger}$", "≥": r"$\geq$", "≤": r"$\leq$",
    "×": r"$\times$", "—": "---", "–": "--", "−": r"$-$", "δ": r"$\delta$", "τ": r"$\tau$",
}


def latex_escape(text: str) -> str:
    """Text as LaTeX that typesets literally (one pass, so replacements are not re-escaped)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_number(text: str) -> str:
    """A number (or interval) as LaTeX: signs as math signs, '%' escaped."""
    return latex_escape(text).replace("-", "$-$").replace("+", "$+$")


# --------------------------------------------------------------------------- labels


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


def _block_title(keys: list[str], values: tuple) -> str | None:
    if not keys:
        return None
    return ", ".join(param_text(k, v) if k == "strategy" else
                     f"{PARAM_HEADERS.get(k, k)} = {param_text(k, v)}"
                     for k, v in zip(keys, values))


def header(key: str, protocol: str | None) -> str:
    """A metric column's header: 'FD-CLIP (2k) ↓', 'CLIP ↑', 'Adherence (%) ↑'."""
    return metric_of(key).header(key, protocol)


# --------------------------------------------------------------------------- building


def _metric_cell(agg_row: pd.Series, key: str) -> Cell:
    """Mean ± the 95% half-width; a log-scale metric's geometric mean with its interval,
    "9.43 [5.12, 17.40]", which is asymmetric, so a ± would misstate it. One seed: the value."""
    metric = metric_of(key)
    if metric.log_scale:
        centre, low, high = shown_interval(agg_row, key)
        if not math.isfinite(centre):
            return EMPTY
        interval = f"[{metric.number(low)}, {metric.number(high)}]" if math.isfinite(low) else ""
        return Cell(metric.number(centre), numeric=True, interval=interval, wrap_interval=True)
    mean, ci = agg_row[f"{key}_mean"], agg_row[f"{key}_ci95"]
    if not math.isfinite(mean):
        return EMPTY
    return Cell(metric.number(mean), numeric=True,
                ci=metric.number(ci) if math.isfinite(ci) else "")


def _delta_cell(finding) -> Cell:
    """Δ vs the reference, its 95% interval and the verdict's word under it."""
    if finding is None or not finding.diff.testable:
        return EMPTY if finding is None else Cell("—", note="untestable")
    return Cell(finding.effect(finding.diff.estimate, unit=False), numeric=True,
                mark=finding.word in ("better", "worse"), interval=finding.interval(),
                note=finding.word)


def _plain_delta_cell(mine: pd.DataFrame, reference: pd.DataFrame, key: str) -> Cell:
    """A reference row's Δ (the teacher's), on the Δ column's scale (the ratio of geometric
    means for log-scale metrics, in %), with nothing tested: it has one run."""
    metric = metric_of(key)
    a, r = finished_values(mine, key), finished_values(reference, key)
    if not len(a) or not len(r):
        return EMPTY
    if metric.log_scale:
        if (a <= 0).any() or (r <= 0).any():
            return EMPTY
        return Cell(f"{100 * math.expm1(np.log(a).mean() - np.log(r).mean()):+.1f}%",
                    numeric=True)
    text = metric.signed(float(a.mean() - r.mean()))
    return Cell(text[:len(text) - len(metric.unit)], numeric=True)


def _bold_best(block: Block, column: int, key: str) -> None:
    """Bold the best distilled value of a block, compared as printed; a tie bolds nothing
    (two bold rows would each claim a win neither has). The teacher and published rows are
    references, not contenders."""
    metric = metric_of(key)
    shown = [(row, float(metric.number(row.means[key]))) for row in block.rows
             if not row.is_reference and math.isfinite(row.means[key])]
    if len(shown) < 2 or metric.lower_is_better is None:
        return
    best = (min if metric.lower_is_better else max)(value for _, value in shown)
    winners = [row for row, value in shown if value == best]
    if len(winners) == 1:
        row = winners[0]
        row.cells[column] = dataclasses.replace(row.cells[column], bold=True)


@dataclass
class _Spec:
    """What the table shows: every final metric (the CSV), the ones with a column, the
    comparison's findings (None: no Δ columns) and the cost metric (None: no column)."""

    metrics: list[str]
    shown: list[str]
    verdict: Verdict | None
    cost: str | None = None

    @property
    def with_delta(self) -> bool:
        return self.verdict is not None and self.verdict.layout.reference is not None

    def has_delta(self, key: str) -> bool:
        """A Δ column beside ``key``: the metric is one the comparison compares."""
        comparison = self.verdict.layout.comparison if self.verdict is not None else None
        return (self.with_delta and comparison is not None
                and metric_of(key).name in comparison.metrics)


def _cost_cell(spec: _Spec, runs: pd.DataFrame, reference: pd.DataFrame | None,
               csv: dict) -> Cell:
    """The row's mean cost over the reference arm's (finished runs on both sides)."""
    ratio = math.nan
    if reference is not None and spec.cost:
        mine, ref = finished_values(runs, spec.cost), finished_values(reference, spec.cost)
        if len(mine) and len(ref) and ref.mean() > 0:
            ratio = float(mine.mean() / ref.mean())
    csv["cost_vs_reference"] = ratio
    return Cell(f"{ratio:.2f}", numeric=True) if math.isfinite(ratio) else EMPTY


def _make_row(spec: _Spec, label: list[Cell], agg_row: pd.Series, runs: pd.DataFrame,
              csv_rows: list[dict], keys: dict, reference: pd.DataFrame | None = None,
              findings: dict | None = None) -> Row:
    """A row. ``reference``: the reference arm's runs (the cost column divides by them).
    ``findings`` (key -> Finding) fill a trial row's Δ cells; a row without findings (the
    teacher) gets the plain difference of means from ``reference``, if there is one."""
    cells, csv = [], {**keys, "n_runs": int(agg_row["n_runs"])}
    for outcome in ("finished", "diverged", "failed", "incomplete"):
        csv[f"n_{outcome}"] = int(agg_row[f"n_{outcome}"])
    for key in spec.metrics:
        geometric = GEOMETRIC_STATS if metric_of(key).log_scale else ()
        for stat in ("mean", "std", "n", "ci95", *geometric):
            csv[f"{key}_{stat}"] = agg_row[f"{key}_{stat}"]
        finding = (findings or {}).get(key)
        if finding is not None:
            diff = finding.diff
            csv.update({f"{key}_diff": diff.estimate, f"{key}_diff_low": diff.low,
                        f"{key}_diff_high": diff.high, f"{key}_diff_scale":
                        "log" if diff.log_scale else "linear", f"{key}_p": diff.p,
                        f"{key}_p_holm": finding.p_holm,
                        f"{key}_p_equivalence_holm": finding.p_equivalence_holm,
                        f"{key}_delta": finding.delta, f"{key}_detectable": diff.detectable,
                        f"{key}_verdict": finding.word})
        if key in spec.shown:
            cells.append(_metric_cell(agg_row, key))
            if spec.has_delta(key):
                cells.append(_delta_cell(finding) if findings is not None else
                             _plain_delta_cell(runs, reference, key) if reference is not None
                             else EMPTY)
    if spec.cost:
        cells.append(_cost_cell(spec, runs, reference, csv))
    cells.append(Cell(runs_text(agg_row)))
    csv_rows.append(csv)
    return Row(label, cells, {k: float(shown_interval(agg_row, k)[0]) for k in spec.shown})


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


def _delta_header(key: str, protocol: str | None) -> str:
    """'Δ FD-CLIP (%)' (a ratio, on the log scale), 'Δ CLIP', 'Δ Adherence (pts)'."""
    metric = metric_of(key)
    base = metric.label_for(None, protocol).replace(" (%)", "")
    unit = " (%)" if metric.log_scale else (f" ({metric.unit.strip()})" if metric.unit else "")
    return f"Δ {base}{unit}"


def _value_headers(spec: _Spec, protocol: str | None) -> list[str]:
    headers = []
    for key in spec.shown:
        headers.append(header(key, protocol))
        if spec.has_delta(key):
            headers.append(_delta_header(key, protocol))
    return [*headers, *([COST_HEADER] if spec.cost else []), "Seeds"]


def _cost_metric(layout: Layout, finished: pd.DataFrame) -> str | None:
    """Device-hours when every finished trial logged them, else UNet passes per image when
    every one logged those (mixing the two in one column would compare unlike things);
    None when there is no reference arm to divide by or no cost was logged."""
    if layout.reference is None:
        return None
    done = finished[finished["role"] == "trial"]
    for metric in COST_METRICS:
        if metric in done and done[metric].notna().all():
            return metric
    return None


def _trial_blocks(spec: _Spec, trials: pd.DataFrame, layout: Layout,
                  csv_rows: list[dict]) -> list[Block]:
    row_keys, block_keys = layout.arms, layout.blocks
    agg = aggregate(trials, block_keys + row_keys, spec.metrics)
    blocks = []
    for block_values in combos(agg, block_keys):
        block = Block(_block_title(block_keys, block_values))
        block_agg = select_rows(agg, block_keys, block_values)
        block_runs = select_rows(trials, block_keys, block_values)
        reference = (select_rows(block_runs, row_keys, layout.reference)
                     if layout.reference is not None else None)
        rows = sorted(block_agg.iterrows(),
                      key=lambda item: tuple(sort_key(item[1][k]) for k in row_keys))
        for _, agg_row in rows:
            values = [agg_row[k] for k in row_keys]
            # Nothing but the seed varies: one row, named for what it holds.
            label = [Cell(param_text(k, v)) for k, v in zip(row_keys, values)] or [
                Cell("all trials")]
            keys = {**dict(zip(block_keys, block_values)), **dict(zip(row_keys, values))}
            findings = {}
            if spec.verdict is not None and not layout.is_reference(values):
                findings = {key: spec.verdict.find(keys, tuple(values), key)
                            for key in spec.metrics}
                findings = {k: f for k, f in findings.items() if f is not None}
            row = _make_row(spec, label, agg_row, select_rows(block_runs, row_keys, values),
                            csv_rows, {"role": "trial", **keys}, reference, findings)
            # The narrow table's label: the bare values ("lsg", "2"); its caption names the
            # reference.
            row.short = [Cell(str(v) if k == "strategy" else param_text(k, v))
                         for k, v in zip(row_keys, values)] or None
            if layout.is_reference(values):
                row.label = [dataclasses.replace(label[0], text=label[0].text + " (ref.)"),
                             *label[1:]]
            block.rows.append(row)
        blocks.append(block)
    return blocks


def _teacher_block(spec: _Spec, teacher: pd.DataFrame, trials: pd.DataFrame,
                   layout: Layout, label_width: int, csv_rows: list[dict]) -> Block:
    teacher_keys = [p for p in ("sampler", "sampler_steps", "kappa")
                    if p in teacher and teacher[p].notna().any()]
    # Δ vs the reference arm for the teacher only when there is one reference to compare with.
    reference = (select_rows(trials, layout.arms, layout.reference)
                 if spec.with_delta and not layout.blocks else None)
    block = Block("Reference" if layout.blocks else None)
    for _, agg_row in aggregate(teacher, teacher_keys, spec.metrics).iterrows():
        values = [agg_row[k] for k in teacher_keys]
        blank = [Cell("")] * (label_width - 1)
        row = _make_row(spec, [Cell(teacher_label(agg_row)), *blank], agg_row,
                        select_rows(teacher, teacher_keys, values), csv_rows,
                        {"role": "teacher", **dict(zip(teacher_keys, values))},
                        reference=reference)
        row.is_reference, row.short = True, [Cell("Teacher"), *blank]
        block.rows.append(row)
    return block


def _published_block(spec: _Spec, trials: pd.DataFrame, profile: str | None,
                     label_width: int, csv_rows: list[dict], kappa_rows: bool) -> Block | None:
    """The paper's FID and CLIP (SiD-LSG) at each κ the trials ran (SD profiles only);
    None where the paper has no number for this profile or these κ."""
    if "kappa" not in trials:
        return None
    block = Block(f"Published ({published.SOURCE})")
    for kappa in ordered_values(trials["kappa"].dropna()):
        numbers = published.published(profile, kappa)
        if numbers is None:
            continue
        fid, clip = numbers
        cells = []
        for key in spec.shown:
            value = (fid if registry.FID.matches(key) else
                     clip if key == registry.CLIP_SCORE.key else None)
            cells.append(EMPTY if value is None
                         else Cell(metric_of(key).number(value), numeric=True))
            cells += [EMPTY] if spec.has_delta(key) else []
        cells += [EMPTY] * bool(spec.cost) + [Cell("paper")]
        # Rows keyed by κ show the κ (the block's title says whose numbers they are).
        kappa_text = param_text("kappa", kappa)
        text = kappa_text if kappa_rows else f"SiD-LSG, κ = {kappa_text}"
        label = [Cell(text)] + [Cell("")] * (label_width - 1)
        block.rows.append(Row(label, cells, dict.fromkeys(spec.shown, math.nan),
                              is_reference=True, short=[Cell(kappa_text), *label[1:]]))
        csv_rows.append({"role": "published", "source": published.SOURCE, "kappa": kappa,
                         "fid30k_published": fid, "clip_score_published": clip})
    return block if block.rows else None


def build_table(plan: str, runs: pd.DataFrame, comparison: Comparison | None = None) -> Table:
    """The plan's comparison table from :func:`results.load_runs`' frame, comparing as
    ``comparison`` says (default: the one the frame carries, ``runs.attrs['comparison']``)."""
    trials = runs[runs["role"] == "trial"]
    if comparison is None and "comparison" in runs.attrs:
        comparison = runs.attrs["comparison"]
    elif comparison is None:  # a frame not from load_runs: compare what varies first
        params = runs.attrs.get("param_columns") or list(trials.columns)
        comparison = infer(trials, [p for p in params if p in trials])
    teacher = runs[runs["role"] == "teacher"]
    parent = runs.attrs.get("parent_run_id", "?")
    finished = _check_reportable(plan, runs, trials, parent)
    metrics = metric_columns(finished)
    shown = metric_columns(finished, "table")
    if not shown:
        raise ResultsError(f"plan {plan!r}, parent run {parent}: finished trials logged no "
                           "final FID, CLIP or adherence metric; was evaluation switched off?")
    result = compare(runs, comparison)
    layout = result.layout
    costs = [m for m in (registry.TRAIN_SECONDS.key, *COST_METRICS)
             if m in finished and finished[m].notna().any()]
    spec = _Spec(metrics + costs, shown, result if layout.reference is not None else None,
                 cost=_cost_metric(layout, finished))
    label_headers = [PARAM_HEADERS.get(k, k) for k in layout.arms] or ["Configuration"]
    headers = _value_headers(spec, result.protocol)
    csv_rows: list[dict] = []
    blocks = _trial_blocks(spec, trials, layout, csv_rows)
    if len(teacher):
        blocks.append(_teacher_block(spec, teacher, trials, layout, len(label_headers),
                                     csv_rows))
    paper = _published_block(spec, trials, runs.attrs.get("profile"), len(label_headers),
                             csv_rows, kappa_rows=layout.arms[:1] == ["kappa"])
    blocks += [paper] if paper else []
    value_columns = [i for i, h in enumerate(headers[:-1])
                     if not h.startswith("Δ") and h != COST_HEADER]
    for block in blocks:
        for column, key in zip(value_columns, shown):
            _bold_best(block, column, key)

    caption, notes = _caption(trials, spec, result, has_paper=paper is not None)
    narrow_caption, _ = _caption(trials, spec, result, paper is not None, narrow=True)
    notes = _context_notes(runs, layout.blocks, paper) + notes + [f"MLflow parent run {parent}."]
    # -0.0 (a difference of equal means, say) would be written as "-0.0" in the CSV.
    csv = pd.DataFrame(csv_rows)
    numeric = csv.select_dtypes("number").columns
    csv[numeric] = csv[numeric] + 0.0
    wrap = any(len(c.text) > WRAP_LABELS_OVER for b in blocks for r in b.rows
               if not r.is_reference for c in r.label)
    return Table(caption, f"tab:ablate-{plan}", label_headers, headers, blocks, csv,
                 "2.6cm" if wrap else None, notes, layout.blocks + layout.arms,
                 narrow_caption, result)


def _caption_subject(trials: pd.DataFrame, result: Verdict) -> str:
    layout = result.layout
    if not layout.arms:
        return "One configuration."
    names = " × ".join("guidance strategy" if k == "strategy" else PARAM_HEADERS.get(k, k)
                       for k in layout.arms)
    fixed = [k for k in ("kappa", "strategy") if k in trials and k not in layout.arms
             and k not in layout.blocks and trials[k].notna().any()]
    at = "".join(f" at {PARAM_HEADERS.get(k, k)} = {param_text(k, trials[k].dropna().iloc[0])}"
                 if k != "strategy" else f" with {trials[k].dropna().iloc[0]}" for k in fixed)
    if layout.reference is None:
        return f"One row per {names}{at}."
    return f"One-step generators by {names}{at}, against {arm_text(layout.arms, layout.reference)}."


def _caption_metrics(shown: list[str], protocol: str | None) -> str:
    """One sentence naming each metric of the table and its direction ('' if none)."""
    parts = []
    for key in shown:
        metric = metric_of(key)
        if metric is registry.FID:
            feature = ("the embedded CLIP's image features" if metric.short_for(protocol)
                       != "FID" else "Inception features")
            parts.append(f"{metric.label_for(None, protocol)}: Fréchet distance in {feature} "
                         f"on {registry.fid_num_images(key):,} generated images (↓ lower is "
                         "better)")
        elif metric is registry.CLIP_SCORE:
            parts.append("CLIP score as mean cosine similarity (↑)")
        elif metric is registry.ADHERENCE:
            parts.append("adherence as the % of images with the prompted colour, shape and size "
                         "all right (↑)")
        else:
            parts.append(f"{metric.label} ({metric.arrow or 'no direction'})")
    if not parts:
        return ""
    sentence = "; ".join(parts)
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


def _caption(trials: pd.DataFrame, spec: _Spec, result: Verdict, has_paper: bool,
             narrow: bool = False) -> tuple[str, list[str]]:
    """(caption, notes): the caption says what is compared and how to read the marks in at
    most three lines at article width; the notes hold the definitions behind it. The
    narrow LaTeX variant has no Δ columns: its caption says where the mark is instead."""
    # build_table refuses a table without a metric, so the metrics sentence is never empty.
    reading, notes = [], [_caption_metrics(spec.shown, result.protocol)]
    seeds = trials.get("seed")
    if (seeds.nunique() if seeds is not None else 1) > 1:
        logged = ", ".join(metric_of(k).short_for(result.protocol) for k in spec.shown
                           if metric_of(k).log_scale)
        # Three caption lines leave room for no more than this; the note says the rest.
        reading.append("mean ± 95% CI over seeds" + (f" ({logged} geometric)" if logged else ""))
        notes.append("Mean ± half-width of the 95% t-interval over seeds (Seeds: runs per row)"
                     + (f"; {logged}, on the log scale: the geometric mean with its 95% interval "
                        "[low, high], asymmetric: the t-interval of the mean of the logs, "
                        "exponentiated" if logged else "")
                     + "; a row with one finished seed has no interval.")
    else:
        reading.append("one seed per row, no intervals")
    if spec.with_delta:
        reference = arm_text(result.layout.arms, result.layout.reference)
        reading.append(f"{SIGNIFICANCE_MARK}: better or worse than {reference} (corrected)"
                       if narrow else
                       f"Δ vs {reference} with its 95% CI and verdict ({SIGNIFICANCE_MARK}: "
                       "better or worse)")
        deltas = ", ".join(f.metric.short_for(result.protocol) + " " + f.delta_text()
                           for f in {f.metric.name: f for f in result.findings}.values())
        dunnett = result.test == "dunnett"
        notes.append(
            f"Δ: the arm minus {reference} (ratio of geometric means for metrics on the log "
            "scale), with its 95% interval"
            + (" (Dunnett's, simultaneous over the arms of its block and metric)" if dunnett
               else "")
            + f". Verdict ({result.head()[9:-1]}): better/worse when "
            + (f"Dunnett's many-to-one test rejects at {ALPHA:g} after Bonferroni's correction "
               f"over the table's {result.groups} groups" if dunnett else
               f"the test of no difference rejects at {ALPHA:g} after Holm's correction over "
               "the table's tests")
            + "; equivalent when the two one-sided tests place the difference "
            f"inside ±δ ({deltas or 'none declared'}); unresolved otherwise; untestable with "
            "fewer than 2 finished seeds or no spread.")
    reading.append("bold: best, none if tied")
    notes.append("Bold: the best distilled value per column as printed; where rows tie for "
                 "it, none is bold. Reference rows (teacher, published) never are.")
    if spec.cost:
        reference = arm_text(result.layout.arms, result.layout.reference)
        reading.append(f"{COST_HEADER}: {COST_UNITS[spec.cost]} vs {reference}")
        notes.append(f"{COST_HEADER}: the row's mean {COST_UNITS[spec.cost]} over {reference}'s "
                     "at the same settings (finished runs); device-hours = training seconds x "
                     "devices / 3600; UNet passes per image: lsg 8+7, cfg 6+5, none 5+4.")
    if has_paper:
        reading.append(f"published: {published.SOURCE}")
    notes.append("Diverged or failed runs are counted under Seeds and left out of every mean.")
    text = "; ".join(reading)
    return f"{_caption_subject(trials, result)} {text[0].upper()}{text[1:]}.", notes


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
    label_width = table.label_width
    if narrow:
        # Short labels ("lsg", "2") need no fixed width; a long one still wraps at 1.5 cm.
        short = [c.text for b in table.blocks for r in b.rows for c in (r.short or r.label)]
        label_width = "1.5cm" if any(len(t) > NARROW_LABEL_CHARS for t in short) else None
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
