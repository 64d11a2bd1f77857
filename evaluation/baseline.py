"""The teacher row of every table: multi-step DDIM samples under the same protocol."""

from __future__ import annotations

from collections.abc import Callable

import torch

from distill.config import DistillConfig
from distill.sampling import ddim_sample

DEFAULT_TEACHER_STEPS = 25


def teacher_baseline(teacher, suite, num_steps: int = DEFAULT_TEACHER_STEPS,
                     guidance_scale: float = DistillConfig.kappa,
                     seed: int = 0) -> dict[str, float]:
    """Evaluate the teacher's ``num_steps``-step DDIM samples with CFG scale ``guidance_scale``
    (default: the distillation's default κ) under ``suite``'s protocol."""
    return suite.evaluate_sample_fn(teacher_sample_fn(teacher, num_steps, guidance_scale),
                                    seed=seed)


def teacher_sample_fn(teacher, num_steps: int,
                      guidance_scale: float) -> Callable[[list[str], int], torch.Tensor]:
    """``(prompts, seed) -> images in [-1, 1]`` through :func:`distill.sampling.ddim_sample`."""

    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")

    @torch.no_grad()
    def sample_fn(prompts: list[str], seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        samples = ddim_sample(teacher, prompts, num_steps, guidance_scale, generator)
        return teacher.decode(samples).float().clamp(-1, 1).cpu()

    return sample_fn
