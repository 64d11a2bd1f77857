"""The verdict's families, registered once.

A plan's answer is a set of families, each a question with its own test, Holm-corrected
within itself:

- **pairwise** (results/verdict.py): each arm against the reference of its block;
- **matched** (results/tradeoff.py): FID at matched CLIP, for arms compared across κ;
- **trend** (results/trend.py): the slope of each metric over a numeric axis;
- **interaction** (results/interaction.py): whether another factor changes that slope.

Each family's module returns an answer (or None when the plan does not ask its question);
every reader goes through :func:`answers`: the report's verdict lines (table.md, the
terminal, the parent run's description), power.md, the extra tables (Markdown and LaTeX),
the figures and the parent run's metrics. A new analysis is one :func:`register` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from results.comparison import Comparison

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from results.tables import Table


class Answer(Protocol):
    """What a family returns for a plan's runs."""

    def lines(self) -> list[str]:
        """The verdict's lines: each a head saying how it was tested, then the findings."""
        ...

    def power(self) -> str | None:
        """Markdown for power.md (every finding with its p-values, spreads and power)."""
        ...

    def metrics(self) -> dict[str, float]:
        """Numbers for the parent run's metrics (MLflow keys)."""
        ...


@dataclass(frozen=True)
class Family:
    name: str
    analyse: Callable[[pd.DataFrame, Comparison | None], Answer | None]
    # The family's own table (rendered like the comparison table: Markdown and LaTeX), and
    # figure ((file stem, figure)); None where it has none.
    table: Callable[[Answer, str], Table | None] | None = None
    figure: Callable[[pd.DataFrame, Answer], tuple[str, Figure] | None] | None = None


FAMILIES: list[Family] = []
_BUILTINS: list[Family] = []  # the project's own, registered ahead of any other on first use


def register(family: Family) -> Family:
    """Add a family after the project's own (its name must be new)."""
    _register_builtins()
    if any(f.name == family.name for f in [*_BUILTINS, *FAMILIES]):
        raise ValueError(f"a family named {family.name!r} is registered already")
    FAMILIES.append(family)
    return family


@dataclass(frozen=True)
class Answered:
    family: Family
    answer: Answer

    def table(self, plan: str) -> Table | None:
        return self.family.table(self.answer, plan) if self.family.table else None

    def figure(self, runs: pd.DataFrame) -> tuple[str, Figure] | None:
        return self.family.figure(runs, self.answer) if self.family.figure else None


def answers(runs: pd.DataFrame, comparison: Comparison | None) -> list[Answered]:
    """Every registered family's answer for these runs, the project's own first."""
    _register_builtins()
    out = []
    for family in [*_BUILTINS, *FAMILIES]:
        answer = family.analyse(runs, comparison)
        if answer is not None:
            out.append(Answered(family, answer))
    return out


def _register_builtins() -> None:
    """The project's four families, on first use (their modules import scipy and
    statsmodels; ``ablate --help`` should not)."""
    if _BUILTINS:
        return
    from results import interaction, trend
    from results.family_views import (
        interaction_table,
        matched,
        pairwise,
        trend_figure,
        trend_table,
    )

    _BUILTINS.extend([Family("pairwise", pairwise), Family("matched", matched),
                      Family("trend", trend.analyse, trend_table, trend_figure),
                      Family("interaction", interaction.analyse, interaction_table)])
