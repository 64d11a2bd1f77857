"""Facts the documentation repeats from the code or from another document, checked against
their one home: each plan's values and trial count (the plan file through ``expand``), the
default budget (``DistillConfig``), and every plan file listed where plans are listed. The
precedence list has its own test (tests/test_profiles.py); measured times live only in
BENCHMARKS.md and are linked, not repeated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from distill.config import DistillConfig
from orchestrator.plan import expand, load_plan

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
PLANS_README = (REPO / "ablations" / "README.md").read_text()


def _values(text: str, anchor: str) -> list[float]:
    """The numbers of the first ``κ ∈ {…}`` set on the line that contains ``anchor``."""
    line = next(line for line in text.splitlines() if anchor in line)
    braces = re.search(r"κ ∈ \{([^}]*)\}", line)
    assert braces, f"no κ set on the line with {anchor!r}"
    return [float(v) for v in braces.group(1).split(",")]


def _axis(plan: str, key: str) -> list[float]:
    return [float(v) for v in dict(load_plan(REPO / "ablations" / plan).axes)[key]]


@pytest.mark.parametrize(("text", "anchor", "plan"), [
    (README, "`make sweep-kappa`", "kappa.yaml"),
    (README, "`make tradeoff`", "tradeoff.yaml"),
    (PLANS_README, "`kappa.yaml`", "kappa.yaml"),
    (PLANS_README, "`tradeoff.yaml`", "tradeoff.yaml"),
])
def test_kappa_values_in_the_docs_are_the_plans(text, anchor, plan):
    assert _values(text, anchor) == _axis(plan, "kappa")


@pytest.mark.parametrize("plan", ["lsg.yaml", "kappa.yaml", "tradeoff.yaml"])
def test_trial_counts_in_the_plans_table_are_what_expand_gives(plan):
    line = next(line for line in PLANS_README.splitlines() if line.startswith(f"| `{plan}`"))
    stated = int(re.search(r"\((\d+) trials", line).group(1))
    assert stated == len(expand(load_plan(REPO / "ablations" / plan), "default"))


def test_readme_trial_counts_are_the_plans():
    lsg = len(expand(load_plan(REPO / "ablations" / "lsg.yaml"), "default"))
    kappa = len(expand(load_plan(REPO / "ablations" / "kappa.yaml"), "default"))
    assert f"make ablation-lsg     # the LSG ablation on the embedded world: {lsg} trials" in README
    assert f"the κ sweep ({kappa} trials" in README


def test_the_stated_budget_is_the_config_default():
    stated = re.search(r"DistillConfig's (\d+) iterations", PLANS_README)
    assert stated and int(stated.group(1)) == DistillConfig().iterations


def test_every_plan_file_is_listed_in_the_plans_table():
    listed = set(re.findall(r"^\| `([\w-]+\.yaml)` \|", PLANS_README, flags=re.M))
    assert listed == {p.name for p in (REPO / "ablations").glob("*.yaml")}


def test_output_layout_has_one_home():
    """The layout table lives in README.md; ablations/README.md links to it."""
    assert "## Where the output goes" in README
    assert "runs/trials/<plan>/<trial id>/" in README
    section = PLANS_README.split("## Where things go", 1)[1].split("\n## ", 1)[0]
    assert "Where the output goes" in section and "mlflow.db" not in section
