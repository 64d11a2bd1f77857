"""The Ray Tune trainable: a plain function that runs one trial and reports through Tune.

A data-parallel trial (``workers > 1``) drives Ray Train workers instead, each running
the same :func:`orchestrator.trial.execute_trial` (:mod:`orchestrator.data_parallel`).
"""

from __future__ import annotations

from typing import Any

from orchestrator.data_parallel import node_name, run_workers
from orchestrator.spec import TrialSpec
from orchestrator.trial import execute_trial


def run_trial(tune_config: dict[str, Any]) -> None:
    """Ray Tune function trainable; ``tune_config["spec"]`` is a TrialSpec as plain data."""
    spec = TrialSpec.from_dict(tune_config["spec"]).on_node(node_name())
    if spec.workers > 1:
        # N data-parallel workers: a Ray Train TorchTrainer inside this Tune trial; each
        # worker runs execute_trial and their reports reach Tune through it.
        run_workers(spec)
        return
    from ray import tune

    execute_trial(spec, tune.report)

