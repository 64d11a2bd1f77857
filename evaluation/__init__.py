"""Evaluation: FID (clean-fid), CLIP score (open_clip), prompt adherence, teacher baseline.

Importing this package is cheap: names resolve on first use, so ``ablate --help``
and the orchestrator do not pay for torch, open_clip or clean-fid until they
evaluate something.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "fid_from_features": "evaluation.fid",
    "fid_from_stats": "evaluation.fid",
    "fid_key": "distill.metrics",
    "EvalError": "evaluation.errors",
    "EvalSuite": "evaluation.suite",
    "embedded_suite": "evaluation.suite",
    "real_suite": "evaluation.suite",
    "sample_grid": "evaluation.grid",
    "teacher_baseline": "evaluation.baseline",
    "adherence": "evaluation.adherence",
    "read_image": "evaluation.adherence",
}

__all__ = [
    "EvalError",
    "EvalSuite",
    "adherence",
    "embedded_suite",
    "fid_from_features",
    "fid_from_stats",
    "fid_key",
    "read_image",
    "real_suite",
    "sample_grid",
    "teacher_baseline",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
