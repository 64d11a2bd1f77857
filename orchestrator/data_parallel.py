"""Data-parallel trials: one Ray Tune trial drives a Ray Train ``TorchTrainer`` of N workers.

Each worker runs the ordinary trial (:func:`orchestrator.trial.execute_trial`) inside
the process group Ray Train sets up (NCCL on GPUs, gloo on CPUs); the core then splits
every global batch across the ranks and sums their gradients (``distill/parallel.py``),
so N workers make the single-worker update. Rank 0 writes MLflow, checkpoints and
``result.json``; Ray Train forwards its reports to the Tune trial (``TuneReportCallback``),
so the status line and Tune's bookkeeping see a data-parallel trial like any other.

Resume is unchanged: the workdir is on shared storage (``--storage`` / ``ABLATE_STORAGE``),
rank 0 checkpoints there and every rank resumes from it after a failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from orchestrator.spec import TrialSpec
from orchestrator.trial import execute_trial

# Rank 0 evaluates (30k images at SD scale) while the other ranks wait in the next
# collective; the default 30-minute process-group timeout would kill them first.
PROCESS_GROUP_TIMEOUT_S = 4 * 3600


def _worker(spec: dict[str, Any]) -> None:  # Ray Train hands train_loop_config as a dict
    """One rank: pin its GPU, then run the ordinary trial with Ray Train's report."""
    import ray.train
    import torch

    if torch.cuda.is_available():
        # Workers of one node may see all of its GPUs; "cuda" must mean this rank's.
        torch.cuda.set_device(ray.train.torch.get_device())
    execute_trial(TrialSpec.from_dict(spec).on_node(node_name()), ray.train.report)


def node_name() -> str:
    """This worker's Ray node: its ``--node-name`` (the IP unless set), for the trial's
    ``ablate.node`` tag, so a cluster run shows where each trial ran."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    return next((node["NodeName"] for node in ray.nodes() if node["NodeID"] == node_id),
                node_id)


def run_workers(spec: TrialSpec) -> None:
    """Run one trial on ``spec.workers`` data-parallel workers; raise if it failed."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = spec.gpu > 0
    per_worker = {"CPU": spec.cpu, **({"GPU": spec.gpu} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker,
        train_loop_config=spec.to_dict(),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo",
                                 timeout_s=PROCESS_GROUP_TIMEOUT_S),
        scaling_config=ray.train.ScalingConfig(num_workers=spec.workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=f"train-{spec.trial_id}",
            storage_path=str(Path(spec.workdir) / "ray-train"),
            # Tune retries the whole trial (FailureConfig.max_failures); a second layer of
            # retries here would multiply them.
            failure_config=ray.train.FailureConfig(max_failures=0),
            # Ray types its RunConfig's callbacks as Ray Train's own; Tune's bridge is one.
            callbacks=[cast(Any, TuneReportCallback())]),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
