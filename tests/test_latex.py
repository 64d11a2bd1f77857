"""The generated LaTeX compiles with a real engine (pdflatex from Debian's texlive:
texlive-latex-base + texlive-latex-recommended, which has booktabs), figures included.

Skipped only where pdflatex is missing and CI is not set; in CI a missing engine fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from test_results import shared_store

from results.tables import build_table, latex_escape, to_latex

PDFLATEX = shutil.which("pdflatex")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return shared_store(tmp_path_factory)


def _require_pdflatex():
    if PDFLATEX:
        return
    if os.environ.get("CI"):
        pytest.fail("pdflatex not found but CI is set: install texlive-latex-base and "
                    "texlive-latex-recommended (.ci/run does)")
    pytest.skip("pdflatex not installed (apt-get install texlive-latex-base "
                "texlive-latex-recommended)")


def _compile(folder: Path, body: str) -> str:
    """Compile a minimal article around ``body``; fail with the log's error lines."""
    preamble = r"\documentclass{article}\usepackage{booktabs}\usepackage{graphicx}"
    document = f"{preamble}\n\\begin{{document}}\n{body}\n\\end{{document}}\n"
    (folder / "doc.tex").write_text(document)
    result = subprocess.run(
        [PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=folder,
        check=False, capture_output=True, text=True, timeout=120)
    log = (folder / "doc.log").read_text(errors="replace") if (folder / "doc.log").exists() else ""
    errors = [line for line in log.splitlines() if line.startswith("!")]
    assert result.returncode == 0, f"pdflatex failed: {errors or result.stdout[-2000:]}"
    assert (folder / "doc.pdf").read_bytes().startswith(b"%PDF-")
    # Characters without a glyph only warn; they would vanish from the paper silently.
    assert "Missing character" not in log
    return log


def test_latex_escape_hand_checked():
    assert latex_escape("R&D_1 50% #2 {x} ~ ^ \\ $") == (
        r"R\&D\_1 50\% \#2 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{} \$")
    assert latex_escape("κ = 2 ± 0.5 ↓") == r"$\kappa$ = 2 $\pm$ 0.5 $\downarrow$"


def test_report_tables_and_figures_compile(store, tmp_path):
    _require_pdflatex()
    from results import write_report

    reports = {plan: write_report(plan, tmp_path / plan, store["uri"]) for plan in ("lsg", "kappa")}
    for plan, report in reports.items():
        tex = report.latex.read_text()
        assert tex.startswith("\\begin{table}") and "\\toprule" in tex and "\\bottomrule" in tex
        assert f"\\label{{tab:ablate-{plan}}}" in tex and "\\caption{" in tex
        assert "\\textbf{" in tex and "$\\downarrow$" in tex and "$\\uparrow$" in tex
    assert "diverged 1/3" in reports["lsg"].latex.read_text()
    assert "Welch t-test p \\textless{} 0.05" in reports["lsg"].latex.read_text()
    figures = [p for r in reports.values() for p in r.figures if p.suffix == ".pdf"]
    # lsg: trade-off, samples, metrics vs iteration (the store logs an evaluation at step 50
    # before the final one); kappa: the same + metrics vs κ.
    assert len(figures) == 7
    body = "\n\n".join(
        [r"\input{lsg/table.tex}", r"\input{kappa/table.tex}", r"\clearpage"]
        + [rf"\includegraphics[width=0.8\linewidth]{{{p.relative_to(tmp_path)}}}"
           for p in figures])
    log = _compile(tmp_path, body)
    # Every figure PDF was read by the engine (a corrupt PDF is an error above).
    for path in figures:
        assert path.name in log


def test_hostile_param_values_are_escaped_and_compile(tmp_path):
    """A generic plan whose varying param holds every LaTeX special character."""
    _require_pdflatex()
    values = ["my_prompts & co 100%.txt", "#1 {x} ~y^z \\w $5"]
    rows = [{"run_id": f"r{i}{s}", "run_name": "", "role": "trial", "status": "finished",
             "trial_id": "", "prompts": v, "seed": s, "fid2k": 10.0 + i + s,
             "clip_score": 0.3 - 0.01 * i}
            for i, v in enumerate(values) for s in (0, 1)]
    runs = pd.DataFrame(rows)
    runs.attrs.update(parent_run_id="p", param_columns=["prompts", "seed"])
    table = build_table("custom_plan", runs)
    assert [r.label[0].text for r in table.blocks[0].rows] == sorted(values)
    tex = to_latex(table)
    assert r"my\_prompts \& co 100\%.txt" in tex
    (tmp_path / "t.tex").write_text(tex)
    _compile(tmp_path, r"\input{t.tex}")
