"""What one trial runs: the core's ``distill`` with MLflow wired in, and its result file.

:mod:`orchestrator.trainable` hands a Tune trial here (or, data-parallel, each rank of
its :mod:`orchestrator.data_parallel` workers); nothing here imports Ray.

The trial gets everything through its spec (:class:`orchestrator.spec.TrialSpec`, built
by the driver): the resolved config, its stable workdir, the MLflow run to write to.
Nothing is read from the driver's environment, so the same trial runs on a
laptop or on a remote Ray worker that shares the storage folder.

Resume is the core's job: ``distill`` continues from ``workdir/checkpoint/``,
so Tune's retry after a crash (``FailureConfig.max_failures``) and a rerun after
the driver was killed both continue where the last checkpoint left off.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator import faults
from orchestrator.spec import TrialSpec

RESULT_FILE = "result.json"
SYSTEM_METRICS_INTERVAL_S = 5  # half of MLflow's default: a smoke trial is shorter than that

# Per-process caches. The driver asks Tune to reuse actors, so one worker process runs
# trial after trial; loading the teacher and building the evaluation suite (reference
# statistics, CLIP) once per process instead of once per trial is most of what a
# trial's start-up costs at smoke size. Keys hold everything the loaded object depends on.
_TEACHERS: dict[tuple, Any] = {}
_SUITES: dict[tuple, Any] = {}
# Image grids: this many evaluation prompts, one row each, with this many samples per row.
GRID_PROMPTS = 8
GRID_SAMPLES_PER_PROMPT = 4


def read_result(workdir: Path) -> dict | None:
    """The finished trial's record, or None if it has not finished."""
    path = Path(workdir) / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_result(workdir: Path, record: dict) -> None:
    """Write result.json atomically: a reader sees the old file or the complete new one."""
    workdir = Path(workdir)
    fd, tmp = tempfile.mkstemp(prefix=".result-", suffix=".json", dir=workdir)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, workdir / RESULT_FILE)


def _process_started_at() -> float | None:
    """When this worker process started (epoch seconds), for the start-up breakdown."""
    try:
        import psutil  # a Ray dependency

        return psutil.Process().create_time()
    except (ImportError, OSError):  # informational only; never fail a trial over it
        return None


def execute_trial(spec: TrialSpec, send: Any) -> None:
    """One trial (or one data-parallel rank of it): ``distill`` with MLflow wired in.

    ``send`` forwards progress to Ray (``tune.report``, or ``ray.train.report`` in a
    data-parallel worker, which every rank must call equally often). Only rank 0 writes
    to MLflow and result.json and builds the evaluation suite.
    """
    entered_at = time.time()
    _adopt_driver_environment(spec)
    # Imported here, not at the top: the driver imports this module on its fail-fast path,
    # and the worker's import time is measured (the "imported_at" of the start-up record).
    import torch

    from distill import parallel
    from distill.config import DistillConfig, from_dict
    from distill.loop import distill
    from orchestrator import tracking

    imported_at = time.time()
    torch.set_num_threads(spec.cpu)
    main = parallel.is_main()
    config = from_dict(DistillConfig, spec.config, source=f"trial {spec.name}")
    workdir = Path(spec.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # Only rank 0 writes to MLflow; the other ranks hold no logger.
    logger = tracking.RunLogger(spec.tracking_uri, spec.run_id) if main else None
    # Every rank passes an evaluate, so every rank reports at each evaluation point (Ray
    # Train's report is a barrier); the core calls it on rank 0 only.
    evaluate = _evaluated_on_rank_0
    monitor = None
    if logger is not None:
        monitor = _mark_running(spec, logger)
        evaluate = _evaluator(_suite(spec, config), config, logger)

    def logged(metrics: dict[str, float], iteration: int) -> None:
        if logger is not None:
            logger.log_metrics(metrics, iteration)
        send({**metrics, "iteration": iteration})

    # Test-only hooks (orchestrator/faults.py); a real run's spec carries none.
    report = faults.wrap_report(logged, workdir, spec.fault_at_iteration, spec.hold, spec.node)

    teacher = _teacher(spec, config)
    # Wall-clock span of the trial's own compute, so benchmarks can tell it from overhead.
    started_at = time.time()
    try:
        result = distill(config, workdir, teacher=teacher, report=report, evaluate=evaluate)
    finally:
        if monitor is not None:
            monitor.finish()
    finished_at = time.time()
    final = {**{k: v for k, v in result.final_metrics.items() if isinstance(v, (int, float))},
             "iteration": result.iterations, "done_status": result.status}
    if logger is not None:
        times = {"entered_at": entered_at, "imported_at": imported_at,
                 "started_at": started_at, "finished_at": finished_at}
        _record(spec, config, logger, teacher.teacher_hash, result, times)
    send(final)


def _adopt_driver_environment(spec: TrialSpec) -> None:
    # The driver's retry policy for a tracking server, which a worker on another node
    # (started by `ray start`, not by the driver) would not otherwise have.
    os.environ.update(spec.mlflow_http)
    # The core caches teachers and metric models under the output folder; point it at the
    # driver's, which a worker started before this plan (shared Ray session) may not have.
    os.environ["ABLATE_HOME"] = spec.ablate_home


def _mark_running(spec: TrialSpec, logger):
    """The trial's run RUNNING, tagged with its node; its system-metrics sampler started."""
    from orchestrator import tracking
    from results import schema

    tracking.retry_locked(logger.client.update_run, spec.run_id, status="RUNNING")
    if spec.node:  # which machine runs it (the last one, after a retry)
        tracking.retry_locked(logger.client.set_tag, spec.run_id, schema.NODE, spec.node)
    return _system_metrics(spec)


def _record(spec: TrialSpec, config, logger, teacher_hash: str, result,
            times: dict[str, float]) -> None:
    """Rank 0's end of a trial: final metrics and cost on its run, result.json (what a rerun
    reuses), and the run FINISHED with its outcome."""
    from orchestrator import tracking

    cost = _cost(spec, config, times["finished_at"] - times["started_at"])
    logger.log_metrics({**result.final_metrics, **cost}, result.iterations)
    write_result(Path(spec.workdir), {
        "trial_id": spec.trial_id, "name": spec.name, "run_id": spec.run_id,
        # A finished trial is reused on rerun only while its teacher is unchanged.
        "teacher_hash": teacher_hash,
        "status": result.status, "iterations": result.iterations,
        # The last attempt's start: > 0 when a retry or rerun resumed a checkpoint.
        "resumed_from": result.resumed_from,
        "final_metrics": dict(result.final_metrics), "cost": cost,
        "config": dataclasses.asdict(config),
        "distill_started_at": times["started_at"], "distill_finished_at": times["finished_at"],
        # Where a trial's start-up went (bench_orchestrator prints it): worker process
        # start, entry into execute_trial, imports done, suite and teacher ready.
        "startup": {"process_started_at": _process_started_at(),
                    "entered_at": times["entered_at"], "imported_at": times["imported_at"],
                    "ready_at": times["started_at"]}})
    tracking.finish(logger.client, spec.run_id, "FINISHED", outcome=result.status)


def _system_metrics(spec: TrialSpec):
    """MLflow's CPU, memory and (NVIDIA) GPU sampler on the trial's run: the dashboard's
    System metrics tab. It samples every SYSTEM_METRICS_INTERVAL_S in a daemon thread."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(spec.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                   tracking_uri=spec.tracking_uri)
    monitor.start()
    return monitor


def _cost(spec: TrialSpec, config, seconds: float) -> dict[str, float]:
    """What the trial cost: its distill span, device-hours (a CPU trial counts one device
    per worker) and UNet passes per image per iteration, forward plus backward."""
    from distill import metrics as registry
    from distill.guidance import guidance_scales

    devices = spec.workers * (spec.gpu if spec.gpu > 0 else 1)
    forward, backward = guidance_scales(config.strategy, config.kappa).unet_passes()
    return {registry.TRAIN_SECONDS.key: seconds,
            registry.DEVICE_HOURS.key: seconds * devices / 3600,
            registry.UNET_PASSES_PER_IMAGE.key: forward + backward}


def _evaluated_on_rank_0(sample_fn, iteration: int) -> dict:
    raise AssertionError("distill evaluates on rank 0 only")


def _suite(spec: TrialSpec, config):
    """The trial's evaluation suite, built once per worker process."""
    import torch

    from orchestrator.profiles import EMBEDDED, Profile, build_suite

    profile = Profile.from_dict(spec.profile) if spec.profile is not None else EMBEDDED
    device = "cuda" if torch.cuda.is_available() else "cpu"
    key = (spec.ablate_home, json.dumps(profile.to_dict(), sort_keys=True), spec.size,
           config.eval_num_images, device)
    if key not in _SUITES:
        _SUITES[key] = build_suite(profile, spec.size, config.eval_num_images, device)
    return _SUITES[key]


def _teacher(spec: TrialSpec, config):
    """The trial's teacher, loaded once per worker process. Gradient checkpointing is
    switched on in the teacher module itself, so it is part of the key; distill otherwise
    leaves the teacher as it found it (frozen, eval)."""
    from distill.inputs import load_config_teacher

    key = (spec.ablate_home, config.teacher, config.gradient_checkpointing)
    if key not in _TEACHERS:
        _TEACHERS[key] = load_config_teacher(config.teacher)
    return _TEACHERS[key]


def _evaluator(suite, config, logger):
    """evaluate(sample_fn, iteration): the suite's metrics (the core reports them) plus a
    sample grid logged to the trial's run."""
    import evaluation
    from results import schema

    grid_prompts = [c for c in suite.captions[:GRID_PROMPTS]
                    for _ in range(GRID_SAMPLES_PER_PROMPT)]

    def evaluate(sample_fn, iteration: int) -> dict:
        metrics = suite.evaluate_sample_fn(sample_fn, seed=0)
        final = iteration >= config.iterations
        name = schema.GRID_FINAL if final else f"samples/grid_{iteration}.png"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(name).name
            # The final grid's layout lets the report cut it into one row per prompt.
            layout = Path(tmp) / Path(schema.GRID_FINAL_LAYOUT).name if final else None
            evaluation.sample_grid(sample_fn(grid_prompts, 0), grid_prompts, path,
                                   columns=GRID_SAMPLES_PER_PROMPT, layout_path=layout)
            logger.log_artifact(path, str(Path(name).parent))
            if layout is not None:
                logger.log_artifact(layout, str(Path(name).parent))
            logger.log_image(path, schema.SAMPLES_IMAGE_KEY, iteration)
        return metrics

    return evaluate
