"""The one-step generator: a UNet of the teacher's architecture evaluated once at t_init.

z ~ N(0, I); x_init = sqrt(1-ᾱ_T)·z; ε̂ = G(x_init, T, c); x_g = (x_init - sqrt(1-ᾱ_T)·ε̂)/sqrt(ᾱ_T)
with T = t_init (625 in SiD-LSG). G starts as a copy of the teacher, so before any
training x_g is the teacher's own one-step x0 estimate from pure noise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from distill.guidance import NoiseSchedule, x0_from_eps

SampleFn = Callable[[list[str], int], torch.Tensor]
# Prompts per network call when sampling for evaluation: bounds memory for 2000+ images.
EVAL_CHUNK = 256


def generate(unet: torch.nn.Module, z: torch.Tensor, text_embeddings: torch.Tensor,
             t_init: int, schedule: NoiseSchedule) -> torch.Tensor:
    """x_g for noise ``z`` (B, C, H, W) and prompt embeddings (B, L, D), in UNet space."""
    t = torch.full((z.shape[0],), t_init, dtype=torch.long, device=z.device)
    _, sigma = schedule.coefficients(t, z)
    x_init = sigma * z
    eps = unet(x_init, t, encoder_hidden_states=text_embeddings).sample
    return x0_from_eps(x_init, eps, t, schedule)


def autocast(precision: str, device: torch.device):
    """The context a network call runs in: bf16 autocast, or nothing (fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sampler(unet: torch.nn.Module, schedule: NoiseSchedule, sample_shape: tuple[int, ...],
            t_init: int, precision: str, encode: Callable[[list[str]], torch.Tensor],
            decode: Callable[[torch.Tensor], torch.Tensor]) -> SampleFn:
    """(prompts, seed) -> images in [-1, 1] on CPU from ``unet`` in one step. The noise is
    drawn on CPU from ``seed`` alone, so every run and device sees the same z."""
    device = next(unet.parameters()).device

    @torch.no_grad()
    def sample(prompts: list[str], seed: int) -> torch.Tensor:
        noise = torch.randn((len(prompts), *sample_shape),
                            generator=torch.Generator().manual_seed(seed))
        images = []
        for start in range(0, len(prompts), EVAL_CHUNK):
            chunk = list(prompts[start:start + EVAL_CHUNK])
            z = noise[start:start + len(chunk)].to(device)
            with autocast(precision, device):
                x = generate(unet, z, encode(chunk), t_init, schedule)
                pixels = decode(x)
            images.append(pixels.float().clamp(-1, 1).cpu())
        return torch.cat(images)

    return sample
