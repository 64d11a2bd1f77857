"""What the driver hands one trial: a frozen, typed spec.

Built by the driver (``runner.PlanRun``) and read by attribute in the trial, the Tune
trainable and the data-parallel workers. It crosses Ray Tune as plain data (``to_dict`` /
``from_dict``): Tune's param space must be JSON-able for its experiment state, and a trial
may run on another node. Nothing here imports Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrialSpec:
    trial_id: str
    name: str
    config: dict[str, Any]  # the resolved DistillConfig's fields
    workdir: str  # the trial's stable folder: checkpoint/, result.json
    tracking_uri: str
    run_id: str  # the MLflow child run the trial writes to
    ablate_home: str  # the driver's output folder (caches), which a worker may not share
    size: str
    cpu: int = 1  # torch threads (and Ray CPUs) per worker
    gpu: float = 0
    workers: int = 1  # data-parallel ranks (orchestrator/data_parallel.py)
    profile: dict[str, Any] | None = None  # Profile.to_dict(); None is the embedded world
    mlflow_http: dict[str, str] = field(default_factory=dict)  # the driver's retry policy
    node: str | None = None  # the Ray node that runs it, set by the trainable
    # Test-only fault hooks (orchestrator/faults.py), None outside the fault tests.
    fault_at_iteration: int | None = None
    hold: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialSpec:
        return cls(**data)

    def on_node(self, node: str) -> TrialSpec:
        return dataclasses.replace(self, node=node)

    @property
    def iterations(self) -> int:
        return int(self.config["iterations"])


def of_trial(trial) -> TrialSpec:
    """The spec of a Ray Tune trial object (its config holds the spec as plain data)."""
    return TrialSpec.from_dict(trial.config["spec"])
