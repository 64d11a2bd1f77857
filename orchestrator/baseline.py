"""The teacher-baseline row: the teacher's own multi-step samples, evaluated once per
(teacher, protocol, sampler) and cached, logged as one child run per parent.

For the shipped embedded teacher under the shipped plans' protocol the row ships with the
repository (``evaluation/assets/teacher-baseline/``, rebuilt by ``make teacher-baseline``),
so a fresh clone does not spend 430 s of a core recomputing it: a 25-step DDIM sampler
is not chaotic the way training is, and a test recomputes a 128-image subset and finds the
shipped values. Any other teacher, protocol or sampler is computed once and cached in the
output folder.

On a CPU plan it runs beside the trials (:class:`BesideTrials`) rather than before them:
it starts once a trial has reported (the workers are past their start-up, which it would
slow) and shares the CPUs with them, so no core waits for it at either end. On GPUs it
runs before them, where it would compete with the trials for memory.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from distill.paths import output_root
from orchestrator import tracking
from orchestrator.plan import Plan, TeacherBaseline
from results import schema

SHIPPED = Path(__file__).resolve().parent.parent / "evaluation" / "assets" / "teacher-baseline"
SUBSET_IMAGES = 128  # the check a test recomputes in ~30 s (FD needs > 64 images here)


def _sampler(plan: Plan) -> TeacherBaseline:
    """The plan's teacher-baseline sampler; callers run only for plans that have one."""
    if plan.evaluation.teacher_baseline is None:
        raise ValueError(f"plan {plan.name} has no teacher baseline")
    return plan.evaluation.teacher_baseline


def cache_key(teacher, suite, num_images: int, steps: int, guidance_scale: float) -> str:
    """Everything that changes the baseline's numbers (seed 0, one torch thread)."""
    return json.dumps([teacher.teacher_hash, suite.protocol, num_images, steps,
                       guidance_scale, 0])


def _file_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16] + ".json"


def shipped(key: str) -> dict | None:
    """The shipped record of ``key`` (its metrics, subset and machine), or None."""
    path = SHIPPED / _file_name(key)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("key") == key else None


def metrics(plan: Plan, teacher, suite, num_images: int, out: TextIO) -> dict[str, float]:
    """The baseline's metrics, computed once and then read from the cache.

    On ``resources.cpu`` torch threads, like one more trial, wherever it runs: a fixed
    count, because the numbers depend on it at the 1e-6 level and the same config must
    give the same numbers; and beside the trials, a second thread on a core a trial
    already uses makes both spin-wait.
    """
    import evaluation

    baseline = _sampler(plan)
    key = cache_key(teacher, suite, num_images, baseline.steps, baseline.guidance_scale)
    record = shipped(key)
    if record is not None:
        print(f"teacher baseline: shipped ({SHIPPED.relative_to(SHIPPED.parents[2])}/"
              f"{_file_name(key)}, computed on {record['machine']}; `make teacher-baseline` "
              "recomputes it)", file=out, flush=True)
        return record["metrics"]
    cache = output_root() / "cache" / "teacher-baseline" / _file_name(key)
    if cache.is_file():
        return json.loads(cache.read_text())
    print(f"teacher baseline: {baseline.steps} steps at guidance {baseline.guidance_scale:g}"
          " (computed once, then cached)", file=out, flush=True)
    started = time.perf_counter()
    with _torch_threads(plan):
        result = evaluation.teacher_baseline(teacher, suite, num_steps=baseline.steps,
                                             guidance_scale=baseline.guidance_scale, seed=0)
    print(f"teacher baseline: done in {time.perf_counter() - started:.0f} s", file=out,
          flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, sort_keys=True, default=str))
    os.replace(tmp, cache)
    return result


def rebuild_shipped(steps: int = 25, guidance_scale: float = 2.0,
                    num_images: int = 2000) -> Path:
    """Compute the shipped embedded teacher's baseline under the embedded protocol (the
    shipped plans' ``evaluation``: 2000 images, 25 DDIM steps at guidance 2) on one torch
    thread, with a ``SUBSET_IMAGES`` check beside it, and write its file."""
    import evaluation
    from distill.inputs import load_config_teacher
    from orchestrator.profiles import EMBEDDED, build_suite

    teacher = load_config_teacher("embedded:default", progress=True)
    record: dict = {}
    for n, field in ((SUBSET_IMAGES, "subset"), (num_images, "metrics")):
        suite = build_suite(EMBEDDED, "default", n)
        started = time.perf_counter()
        with _torch_threads(1):
            values = evaluation.teacher_baseline(teacher, suite, num_steps=steps,
                                                 guidance_scale=guidance_scale, seed=0)
        print(f"{n} images: {time.perf_counter() - started:.0f} s", flush=True)
        record[field] = {k: float(v) for k, v in values.items()}
        record[f"{field}_key"] = cache_key(teacher, suite, n, steps, guidance_scale)
    record["key"] = record.pop("metrics_key")
    record["machine"] = _machine()
    path = SHIPPED / _file_name(record["key"])
    SHIPPED.mkdir(parents=True, exist_ok=True)
    for old in SHIPPED.glob("*.json"):
        old.unlink()  # one teacher, one protocol: an older file would only go stale
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def _machine() -> str:
    """The CPU model and torch's capability: rounding differs between CPUs (RESULTS.md)."""
    import torch

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{model}, torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()}, "
            "1 thread")


@contextlib.contextmanager
def _torch_threads(plan: Plan | int):
    import torch

    previous = torch.get_num_threads()
    threads = plan if isinstance(plan, int) else plan.resources.cpu
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _log_grid(logger: tracking.RunLogger, plan: Plan, teacher, suite) -> None:
    """The teacher's samples for the trials' grid prompts, laid out as theirs, so the
    report's samples.png has a teacher column beside the arms."""
    from evaluation.baseline import teacher_sample_fn
    from evaluation.grid import sample_grid
    from orchestrator.trial import GRID_PROMPTS, GRID_SAMPLES_PER_PROMPT

    baseline = _sampler(plan)
    prompts = [c for c in suite.captions[:GRID_PROMPTS] for _ in range(GRID_SAMPLES_PER_PROMPT)]
    sample = teacher_sample_fn(teacher, baseline.steps, baseline.guidance_scale)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(schema.GRID_FINAL).name
        layout = Path(tmp) / Path(schema.GRID_FINAL_LAYOUT).name
        with _torch_threads(plan):
            images = sample(prompts, 0)
        sample_grid(images, prompts, path, columns=GRID_SAMPLES_PER_PROMPT, layout_path=layout)
        for file in (path, layout):
            logger.log_artifact(file, str(Path(schema.GRID_FINAL).parent))


def log_run(mlflow_client, uri: str, experiment_id: str, parent_id: str, plan: Plan, teacher,
            suite, existing, values: dict[str, float], step: int) -> None:
    """The parent's one teacher child run, created (or reopened) and closed FINISHED, with
    its metrics at ``step`` and its sample grid."""
    baseline = _sampler(plan)
    if "teacher" in existing:
        run_id = existing["teacher"].info.run_id
    else:
        run_id = tracking.create_child(
            mlflow_client, experiment_id, parent_id, run_name="teacher",
            tags={schema.ROLE: "teacher", schema.PLAN: plan.name,
                  schema.TEACHER_ID: teacher.teacher_id, schema.TEACHER_HASH: teacher.teacher_hash,
                  schema.EVAL_PROTOCOL: suite.protocol},
            params={"sampler": "ddim", "sampler_steps": baseline.steps,
                    "kappa": baseline.guidance_scale})
    logger = tracking.RunLogger(uri, run_id)
    logger.log_metrics(values, step)
    _log_grid(logger, plan, teacher, suite)
    tracking.finish(mlflow_client, run_id, "FINISHED", outcome="finished")


class BesideTrials:
    """``work`` in a daemon thread that starts at the first trial result (or when Tune is
    done), and not at all if cancelled first.

    A daemon thread, so an interrupted run exits at once instead of waiting minutes for
    a baseline whose numbers nobody will read; nothing is half-written, because the
    baseline caches and logs its metrics only once complete. With no ``work`` it only
    carries the events Tune's callback sets."""

    def __init__(self) -> None:
        self.first_result = threading.Event()
        self.tune_done = threading.Event()
        self.cancelled = threading.Event()
        self._future: concurrent.futures.Future | None = None

    def start(self, work: Callable[[], None]) -> None:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._future = future
        threading.Thread(target=self._run, args=(work, future), name="teacher-baseline",
                         daemon=True).start()

    def _run(self, work: Callable[[], None], future: concurrent.futures.Future) -> None:
        try:
            while not (self.first_result.wait(0.5) or self.tune_done.is_set()):
                pass
            if not self.cancelled.is_set():
                work()
            future.set_result(None)
        except BaseException as exc:  # noqa: BLE001 - handed to finish(), which re-raises it
            future.set_exception(exc)

    def finish(self, interrupted: bool) -> None:
        """Interrupted: cancel it (not waited for). Otherwise wait, re-raising its error."""
        if self._future is None:
            return
        if interrupted:
            self.cancelled.set()
        else:
            self._future.result()


if __name__ == "__main__":
    print(rebuild_shipped())
