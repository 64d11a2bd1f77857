"""Deterministic DDIM (η = 0) sampling of a teacher with classifier-free guidance.

A pure function other areas call (teacher baselines, reference checks). It
follows diffusers' DDIMScheduler as Stable Diffusion configures it ("leading"
timesteps with steps_offset = 1, set_alpha_to_one = False) and is checked
against it in tests; the update is written out here so a whole batch advances
with one vectorised expression per step.
"""

from __future__ import annotations

import torch

from distill.guidance import NoiseSchedule, predict_eps

# Prompts per network call: bounds memory for thousands of prompts (2b with guidance).
SAMPLING_CHUNK = 256


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000,
                   steps_offset: int = 1) -> list[int]:
    """Stable Diffusion's "leading" DDIM timesteps, highest first."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps = {num_steps}: must be in 1..{num_train_timesteps}")
    ratio = num_train_timesteps // num_steps
    return [i * ratio + steps_offset for i in reversed(range(num_steps))]


@torch.no_grad()
def ddim_sample(teacher, prompts: list[str], num_steps: int, guidance_scale: float,
                generator: torch.Generator) -> torch.Tensor:
    """Samples (N, C, H, W) in UNet space (decode with ``teacher.decode``).

    ``guidance_scale`` is CFG's κ (1: no guidance, a single batch of b per step;
    otherwise conditional and unconditional halves run as one batch of 2b). All
    initial noise is drawn from ``generator`` up front, so the result does not
    depend on how prompts are chunked.
    """
    if not prompts:
        raise ValueError("ddim_sample needs at least one prompt")
    if not guidance_scale > 0:
        raise ValueError(f"guidance_scale = {guidance_scale!r}: must be > 0")
    unet = teacher.unet
    parameter = next(unet.parameters())
    device, dtype = parameter.device, parameter.dtype
    config = teacher.scheduler.config
    schedule = NoiseSchedule(teacher.alphas_cumprod, device)
    timesteps = ddim_timesteps(num_steps, config.num_train_timesteps, config.steps_offset)
    ratio = config.num_train_timesteps // num_steps
    # set_alpha_to_one=False (SD): the last step lands on ᾱ_0, not on 1.
    final_alpha = (schedule.alphas_cumprod[0] if not config.get("set_alpha_to_one", False)
                   else torch.tensor(1.0, dtype=torch.float64, device=device))
    noise = torch.randn((len(prompts), *teacher.sample_shape), generator=generator,
                        device=generator.device, dtype=torch.float32)
    uncond = teacher.encode_prompts([""]).to(dtype)
    out = []
    for start in range(0, len(prompts), SAMPLING_CHUNK):
        chunk = list(prompts[start:start + SAMPLING_CHUNK])
        cond = teacher.encode_prompts(chunk).to(dtype)
        x = noise[start:start + len(chunk)].to(device=device, dtype=dtype)
        for t in timesteps:
            t_batch = torch.full((len(chunk),), t, dtype=torch.long, device=device)
            eps = predict_eps(unet, x, t_batch, cond, uncond, guidance_scale)
            alpha = schedule.alphas_cumprod[t]
            alpha_prev = schedule.alphas_cumprod[t - ratio] if t - ratio >= 0 else final_alpha
            x0 = (x - (1 - alpha).sqrt().to(dtype) * eps) / alpha.sqrt().to(dtype)
            x = alpha_prev.sqrt().to(dtype) * x0 + (1 - alpha_prev).sqrt().to(dtype) * eps
        out.append(x)
    return torch.cat(out)
