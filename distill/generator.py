"""The one-step generator: a UNet of the teacher's architecture evaluated once at t_init.

z ~ N(0, I); x_init = sqrt(1-ᾱ_T)·z; ε̂ = G(x_init, T, c); x_g = (x_init - sqrt(1-ᾱ_T)·ε̂)/sqrt(ᾱ_T)
with T = t_init (625 in SiD-LSG). G starts as a copy of the teacher, so before any
training x_g is the teacher's own one-step x0 estimate from pure noise.
"""

from __future__ import annotations

import torch

from distill.guidance import NoiseSchedule, x0_from_eps


def generate(unet: torch.nn.Module, z: torch.Tensor, text_embeddings: torch.Tensor,
             t_init: int, schedule: NoiseSchedule) -> torch.Tensor:
    """x_g for noise ``z`` (B, C, H, W) and prompt embeddings (B, L, D), in UNet space."""
    t = torch.full((z.shape[0],), t_init, dtype=torch.long, device=z.device)
    _, sigma = schedule.coefficients(t, z)
    x_init = sigma * z
    eps = unet(x_init, t, encoder_hidden_states=text_embeddings).sample
    return x0_from_eps(x_init, eps, t, schedule)
