"""The distillation core at Stable Diffusion 1.5 scale on one GPU (issue 7's measurement).

A randomly initialised UNet with SD1.5's exact config (860M parameters, 64x64x4
latents, 77x768 text embeddings) runs through the project's own ``SiD.iteration``:
iterations/s and peak memory for ``lsg`` and ``none``, fp32 vs bf16 autocast,
micro-batch 1/2/4. Random weights are fine: the cost of a pass does not depend on
the values. One JSON line per configuration is appended to OUT as soon as it is
measured, so a run cut short still leaves what it measured.

    python -m benchmarks.gpu_sd15 OUT.jsonl [--tiny]   (--tiny: a CPU wiring check)
"""

from __future__ import annotations

import gc
import json
import sys
import time

import torch


def sd15_unet(tiny: bool):
    from diffusers import UNet2DConditionModel

    if tiny:
        return UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
            cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8)
    # SD1.5's unet/config.json, field for field.
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, center_input_sample=False,
        flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                          "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                        "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
        mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
        cross_attention_dim=768, attention_head_dim=8)


def main() -> None:
    from diffusers import DDPMScheduler

    from distill.config import DistillConfig
    from distill.guidance import NoiseSchedule
    from distill.loop import SiD

    out_path, tiny = sys.argv[1], "--tiny" in sys.argv
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    # The paper trains in fp32 with TF32 off; bf16 rows use autocast on top of that.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    unet = sd15_unet(tiny).to(device).requires_grad_(False)
    params = sum(p.numel() for p in unet.parameters())
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012)
    schedule = NoiseSchedule(scheduler.alphas_cumprod, device)
    tokens, dim = (77, 768) if not tiny else (10, 64)
    shape = (4, unet.config.sample_size, unet.config.sample_size)
    uncond = torch.randn(1, tokens, dim, device=device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    plan = [(mb, precision, strategy) for mb in (1, 2, 4) for precision in ("fp32", "bf16")
            for strategy in ("lsg", "none")]
    for micro_batch, precision, strategy in plan:
        config = DistillConfig(strategy=strategy, kappa=2.0, batch_size=micro_batch,
                               micro_batch_size=micro_batch, precision=precision,
                               lr_generator=1e-6, lr_fake_score=1e-6)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        sid = SiD(unet, schedule, shape, uncond, config)
        rng = torch.Generator(device=device).manual_seed(0)
        cond = torch.randn(micro_batch, tokens, dim, device=device)
        timed = 3 if not tiny else 1
        sid.iteration(cond, cond, rng)  # warm-up: kernels chosen, allocator primed
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(timed):
            sid.iteration(cond, cond, rng)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / timed
        row = {"device": name, "unet_parameters": params, "strategy": strategy,
               "precision": precision, "micro_batch": micro_batch,
               "seconds_per_iteration": round(seconds, 4),
               "iterations_per_second": round(1 / seconds, 3),
               "images_per_second": round(micro_batch / seconds, 3),
               "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
               if device.type == "cuda" else None,
               "torch": torch.__version__}
        with open(out_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        del sid
        gc.collect()


if __name__ == "__main__":
    main()
