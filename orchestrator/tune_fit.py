"""Ray Tune's part of ``ablate run``: the trials' resources, the Tuner, its callbacks.

The driver (orchestrator/runner.py) hands over the pending trials' specs and gets back the
errors of those that failed; everything Tune-specific stays here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TextIO

from orchestrator import profiles
from orchestrator.plan import Plan
from orchestrator.spec import TrialSpec
from orchestrator.trainable import run_trial

DATA_PARALLEL_DRIVER_MEMORY = 64 * 1024**2  # bytes; Ray's logical memory resource


class _SetEvent:
    """Sets a threading.Event when called; picklable, because Tune pickles its callbacks
    into the experiment state (the pickled copy does nothing when called)."""

    def __init__(self, event):
        self.event = event

    def __call__(self) -> None:
        if self.event is not None:
            self.event.set()

    def __getstate__(self) -> dict:
        return {"event": None}


def fit(plan: Plan, specs: list[TrialSpec], storage: Path, profile: profiles.Profile, out: TextIO,
         first_result) -> dict[str, str]:
    """Ray Tune over the trial specs; ``first_result`` is set at the first report."""
    import logging

    # The classic output engine honours verbose=0; the newer one prints a result table
    # per trial regardless, which StatusLine replaces.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    from orchestrator.status import RunStatuses, StatusLine

    # Tune logs each crash with a full traceback; StatusLine prints its last line instead.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    # A data-parallel trial's Tune function only drives a TorchTrainer whose workers hold
    # the plan's resources each (orchestrator/data_parallel.py). It holds no CPU itself, so
    # N workers of 1 CPU fit N CPUs; Tune needs some resource, hence a token of memory.
    resources: dict[str, float] = (
        {"cpu": plan.resources.cpu, "gpu": plan.resources.gpu} if profile.workers == 1
        else {"cpu": 0, "gpu": 0, "memory": DATA_PARALLEL_DRIVER_MEMORY})
    tuner = tune.Tuner(
        tune.with_resources(run_trial, resources),
        param_space={"spec": tune.grid_search([s.to_dict() for s in specs])},
        tune_config=tune.TuneConfig(
            num_samples=1, max_concurrent_trials=0,
            # One worker process runs trial after trial: imports, teacher and evaluation
            # suite are paid once per process (trial.py caches them), not per trial.
            reuse_actors=True,
            trial_name_creator=lambda trial: trial.config["spec"]["name"],
            trial_dirname_creator=lambda trial: trial.config["spec"]["trial_id"]),
        run_config=tune.RunConfig(
            name=f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(storage / "tune"),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            callbacks=[StatusLine(out, {s.trial_id: s.iterations for s in specs},
                                  on_result=_SetEvent(first_result)),
                       RunStatuses(specs[0].tracking_uri, {s.trial_id: s.run_id for s in specs})],
            verbose=0, log_to_file=True),
    )
    grid = tuner.fit()
    results = [grid[i] for i in range(len(grid))]
    return {r.config["spec"]["trial_id"]: f"{type(r.error).__name__}: {r.error}"
            for r in results if r.error is not None and r.config is not None}
