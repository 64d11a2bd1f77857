"""Speed and memory options for Stable Diffusion scale, as DistillConfig switches.

All default to off, which is the paper's run: fp32 with TF32 disabled. Attention
needs no switch: diffusers' UNet uses PyTorch's scaled-dot-product attention
(flash / memory-efficient kernels) by default.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from distill.config import DistillConfig


def set_tf32(allow: bool) -> None:
    """TF32 for float32 matmuls and convolutions (a process-wide setting, as in PyTorch)."""
    precision = "tf32" if allow else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    # Not yet in torch's type stubs (the fp32_precision API is newer than them).
    torch.backends.cudnn.conv.fp32_precision = precision  # type: ignore[attr-defined]


class Bf16InputGradTeacher(torch.nn.Module):
    """A frozen UNet held and run in bf16, called like the fp32 one.

    In the generator update the teacher φ is differentiated only with respect to its
    input x_t (its weights are frozen), so its weights can be bf16: half the memory
    traffic and bf16 tensor-core matmuls, with inputs cast down and ε̂ cast back to
    float32 so the guidance algebra and the loss stay in float32.
    """

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = copy.deepcopy(unet).to(torch.bfloat16).requires_grad_(False).eval()

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> UNet2DConditionOutput:
        eps = self.unet(sample.to(torch.bfloat16), timestep,
                        encoder_hidden_states=encoder_hidden_states.to(torch.bfloat16)).sample
        return UNet2DConditionOutput(sample=eps.float())


def teacher_network(unet: torch.nn.Module, config: DistillConfig) -> torch.nn.Module:
    """The module the generator update calls as φ: the teacher itself, or its bf16 copy."""
    return Bf16InputGradTeacher(unet) if config.teacher_bf16 else unet


def enable_gradient_checkpointing(config: DistillConfig, *unets: torch.nn.Module) -> None:
    """Recompute each UNet block's activations in backward instead of storing them
    (about a third more compute for a large cut in activation memory)."""
    if not config.gradient_checkpointing:
        return
    for unet in unets:
        target: Any = unet.unet if isinstance(unet, Bf16InputGradTeacher) else unet
        target.enable_gradient_checkpointing()  # diffusers' UNet method
