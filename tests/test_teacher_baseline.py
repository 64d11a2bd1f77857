"""The shipped teacher-baseline row (evaluation/assets/teacher-baseline/): it belongs to
today's shipped teacher and protocol, a subset recomputed here finds its values, and a run
reads it instead of spending ~430 s of a core."""

from __future__ import annotations

import io

import pytest
import torch

import evaluation
from distill.inputs import load_config_teacher
from orchestrator import baseline
from orchestrator.plan import load_plan
from orchestrator.profiles import EMBEDDED, build_suite

# Ray, end-to-end plans or minutes of compute: `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher():
    return load_config_teacher("embedded:default")


@pytest.fixture(scope="module")
def plan():
    return load_plan("ablations/lsg.yaml")


def _key(teacher, plan, n):
    b = plan.evaluation.teacher_baseline
    return baseline.cache_key(teacher, build_suite(EMBEDDED, "default", n), n, b.steps,
                              b.guidance_scale)


def test_the_shipped_row_belongs_to_todays_teacher_and_the_plans_protocol(teacher, plan):
    n = plan.evaluation.eval_num_images
    record = baseline.shipped(_key(teacher, plan, n))
    # None here means the teacher, the embedded protocol or the plan's sampler changed:
    # `make teacher-baseline` rebuilds the file.
    assert record is not None
    # The same metrics, the FD named by its image count (fid2k, fid128).
    assert set(record["metrics"]) - {"fid2k"} == set(record["subset"]) - {"fid128"}
    assert "fid2k" in record["metrics"] and "clip_score" in record["metrics"]
    assert "1 thread" in record["machine"]


def test_a_subset_recomputed_here_finds_the_shipped_values(teacher, plan):
    n = baseline.SUBSET_IMAGES
    record = baseline.shipped(_key(teacher, plan, plan.evaluation.eval_num_images))
    assert record["subset_key"] == _key(teacher, plan, n)
    b = plan.evaluation.teacher_baseline
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        values = evaluation.teacher_baseline(teacher, build_suite(EMBEDDED, "default", n),
                                             num_steps=b.steps, guidance_scale=b.guidance_scale)
    finally:
        torch.set_num_threads(previous)
    # 25 DDIM steps are not chaotic: another CPU's rounding moves them ~1e-6, not 1e-3.
    for key, shipped in record["subset"].items():
        assert values[key] == pytest.approx(shipped, rel=1e-3, abs=1e-4), key


def test_a_run_reads_the_shipped_row_and_computes_nothing(teacher, plan, monkeypatch, tmp_path):
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path))

    def computed(*args, **kwargs):
        raise AssertionError("the shipped baseline was recomputed")

    monkeypatch.setattr(evaluation, "teacher_baseline", computed)
    n = plan.evaluation.eval_num_images
    out = io.StringIO()
    values = baseline.metrics(plan, teacher, build_suite(EMBEDDED, "default", n), n, out)
    assert values == baseline.shipped(_key(teacher, plan, n))["metrics"]
    assert "teacher baseline: shipped" in out.getvalue()
    assert not (tmp_path / "cache" / "teacher-baseline").exists()
