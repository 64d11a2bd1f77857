"""How each family of the verdict is shown: the pairwise and matched-CLIP answers as family
answers, and the trend and interaction tables (rendered like the comparison table, so the
same LaTeX and Markdown rules hold) and the trend figure. Registered in
:mod:`results.families`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from results.arms import PARAM_HEADERS, short_text
from results.comparison import Comparison
from results.interaction import InteractionResult, main_text
from results.stats import ALPHA, eval_protocol
from results.tables import Block, Cell, Row, Table
from results.tradeoff import Matched
from results.tradeoff import matched as matched_clip
from results.trend import TrendResult, optimum_text, p_text
from results.verdict import Verdict, compare, power_table

# --------------------------------------------------------------------------- adapters


@dataclass(frozen=True)
class PairwiseAnswer:
    verdict: Verdict

    def lines(self) -> list[str]:
        return [self.verdict.line()]

    def power(self) -> str | None:
        table = power_table(self.verdict)
        return None if table is None else "## Pairwise\n\n" + table

    def metrics(self) -> dict[str, float]:
        return {}  # the parent run's per-arm summary carries the arms (results.summary)


def pairwise(runs: pd.DataFrame, comparison: Comparison | None) -> PairwiseAnswer:
    return PairwiseAnswer(compare(runs, comparison))


@dataclass(frozen=True)
class MatchedAnswer:
    result: Matched
    protocol: str | None

    def lines(self) -> list[str]:
        return [self.result.line(self.protocol)]

    def power(self) -> str | None:
        return None

    def metrics(self) -> dict[str, float]:
        return {}


def matched(runs: pd.DataFrame, comparison: Comparison | None) -> MatchedAnswer | None:
    result = matched_clip(runs, comparison)
    if result is None:
        return None
    finished = runs[(runs["role"] == "trial") & (runs["status"] == "finished")]
    return MatchedAnswer(result, eval_protocol(finished))


# --------------------------------------------------------------------------- tables


def _param(axis: str) -> str:
    return PARAM_HEADERS.get(axis, axis)


def _metric_label(metric, log_scale: bool, protocol: str | None) -> str:
    unit = "%" if log_scale else metric.unit.strip()
    return metric.short_for(protocol) + (f" ({unit})" if unit else "")


def trend_table(answer, plan: str) -> Table | None:
    """Metric, slope per unit [95% CI], p Holm, lack of fit, Kendall's τ, the optimum (for
    a quadratic) and the word; one block per value of the other varying params."""
    result: TrendResult = answer
    param = _param(result.trend.axis)
    quadratic = result.trend.model == "quadratic"
    headers = [f"Slope per unit of {param}", "p Holm", "Lack of fit p", "Kendall's τ (p Holm)",
               *(["Best at"] if quadratic else []), "Verdict"]
    blocks: dict[tuple, Block] = {}
    csv = []
    for f in result.findings:
        block = blocks.setdefault(f.block, Block(
            ", ".join(short_text(k, v) for k, v in f.block) or None))
        s = f.slope
        label = [Cell(_metric_label(f.metric, s.log_scale, result.protocol))]
        if not s.testable:
            cells = [Cell("—"), Cell(""), Cell(""), Cell(""), *([Cell("")] * quadratic),
                     Cell("untestable")]
        else:
            lof = s.lack_of_fit
            cells = [Cell(f.effect(s.estimate, unit=False), numeric=True, interval=f.interval()),
                     Cell(p_text(f.p_holm), numeric=True),
                     Cell(p_text(lof.p) if lof else "—", numeric=True),
                     Cell(f"{s.tau:+.2f} ({p_text(f.p_tau_holm)})", numeric=True),
                     *([Cell(_best(f, result.trend.axis))] if quadratic else []),
                     Cell(f.word)]
        block.rows.append(Row(label, cells, {}))
        csv.append({**{k: v for k, v in f.block}, "metric": f.metric.name, "key": f.key,
                    "scale": "log" if s.log_scale else "linear", "n": s.n,
                    "slope": s.estimate, "slope_low": s.low, "slope_high": s.high, "p": s.p,
                    "p_holm": f.p_holm, "p_flat_holm": f.p_flat_holm,
                    "delta_per_unit": f.delta, "detectable": s.detectable,
                    "seeds_per_value_for_delta": s.seeds_needed, "verdict": f.word,
                    "lack_of_fit_f": s.lack_of_fit.f if s.lack_of_fit else math.nan,
                    "lack_of_fit_p": s.lack_of_fit.p if s.lack_of_fit else math.nan,
                    "kendall_tau": s.tau, "kendall_p_holm": f.p_tau_holm,
                    "optimum": s.optimum.at if s.optimum else math.nan,
                    "optimum_inside": s.optimum.inside if s.optimum else None,
                    "optimum_low": s.optimum.low if s.optimum else math.nan,
                    "optimum_high": s.optimum.high if s.optimum else math.nan})
    caption = (f"How {param} moves each metric: the least-squares slope per unit of {param} "
               "over every finished trial, with its 95% interval and verdict (rises, falls, "
               "flat within ±δ per unit, unresolved).")
    notes = [f"{result.head()}.",
             "Log-scale metrics: the slope is a ratio per unit, in %. Lack of fit: the F test "
             "of the line against one mean per value (p < 0.05: the slope averages a curve). "
             "Kendall's τ-b: a rank test of a monotone trend that assumes no line."]
    if quadratic:
        notes.append("Best at: where the fitted parabola is best, with Fieller's 95% "
                     "interval, or the end of the range where it is best.")
    return Table(caption, f"tab:ablate-{plan}-trend", ["Metric"], headers,
                 list(blocks.values()), pd.DataFrame(csv), notes=notes)


def _best(f, axis: str) -> str:
    best = f.slope.optimum
    if best is None:
        return "—"
    return optimum_text(best, axis, f.metric).split(" at ", 1)[1]


def interaction_table(answer, plan: str) -> Table | None:
    """Level vs the reference, metric, difference of slopes [95% CI], the main effect at the
    centre of the axis, p Holm and the word."""
    result: InteractionResult = answer
    param = _param(result.trend.axis)
    reference = result.names(result.reference)
    headers = [f"Slope difference per unit of {param}", f"Difference at the centre of {param}",
               "p Holm", "Verdict"]
    block = Block(None)
    csv = []
    for f in result.findings:
        c = f.contrast
        label = [Cell(f"{result.names(f.level)} − {reference}"),
                 Cell(_metric_label(f.metric, f.log_scale, result.protocol))]
        if not c.testable:
            cells = [Cell("—"), Cell("—"), Cell(""), Cell("untestable")]
        else:
            cells = [Cell(f.effect(c.slope_difference, unit=False), numeric=True,
                          interval=f"[{f.effect(c.low, False)}, {f.effect(c.high, False)}]"),
                     Cell(main_text(f).replace(f.metric.unit, ""), numeric=True),
                     Cell(p_text(f.p_holm), numeric=True), Cell(f.word)]
        block.rows.append(Row(label, cells, {}))
        csv.append({"level": result.names(f.level), "reference": reference,
                    "metric": f.metric.name, "key": f.key,
                    "scale": "log" if f.log_scale else "linear",
                    "slope_difference": c.slope_difference, "low": c.low, "high": c.high,
                    "p": c.p, "p_holm": f.p_holm, "p_parallel_holm": f.p_parallel_holm,
                    "main_effect": c.main_effect, "main_low": c.main_low,
                    "main_high": c.main_high, "main_p": c.main_p, "verdict": f.word})
    caption = (f"Does {' × '.join(_param(g) for g in result.groups)} change how {param} moves "
               f"each metric? The difference of slopes against {reference} in one "
               "least-squares model per metric, with its 95% interval and verdict.")
    notes = [f"{result.head()}.",
             f"Verdict: differs when the test of equal slopes rejects at {ALPHA:g} after Holm's "
             "correction; parallel when two one-sided tests place the difference inside ±δ "
             "per unit; unresolved otherwise. Log-scale metrics as a ratio per unit, in %."]
    return Table(caption, f"tab:ablate-{plan}-interaction", ["Level", "Metric"], headers,
                 [block], pd.DataFrame(csv), notes=notes)


def trend_figure(runs: pd.DataFrame, answer):
    from results.plots import trend_figure as draw

    return draw(runs, answer)
