"""Guidance table, guided ε, and the vectorised x0 / noising algebra against diffusers."""

import dataclasses

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from distill.guidance import (
    GuidanceScales,
    NoiseSchedule,
    add_noise,
    guidance_scales,
    guided_eps,
    predict_eps,
    x0_from_eps,
)


def _sd_scheduler():
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                         beta_start=0.00085, beta_end=0.012, prediction_type="epsilon",
                         clip_sample=False)


@pytest.mark.parametrize("strategy, expected", [
    ("lsg", (2.5, 2.5, 2.5, 2.5)),
    ("cfg", (1.0, 1.0, 1.0, 2.5)),
    ("none", (1.0, 1.0, 1.0, 1.0)),
    ("short", (2.5, 1.0, 1.0, 1.0)),
])
def test_strategy_table_of_the_design(strategy, expected):
    scales = guidance_scales(strategy, 2.5)
    assert (scales.kappa1, scales.kappa2, scales.kappa3, scales.kappa4) == expected
    assert scales.kappa2 == scales.kappa3


def test_prompt_dropout_only_when_the_fake_score_is_guided():
    assert guidance_scales("lsg", 2.0).uses_prompt_dropout
    assert guidance_scales("short", 2.0).uses_prompt_dropout
    assert not guidance_scales("cfg", 2.0).uses_prompt_dropout
    assert not guidance_scales("none", 2.0).uses_prompt_dropout
    # κ = 1 makes lsg plain SiD: nothing is guided, so nothing is dropped.
    assert not guidance_scales("lsg", 1.0).uses_prompt_dropout


def test_scales_are_frozen_and_bad_input_names_the_field():
    with pytest.raises(dataclasses.FrozenInstanceError):
        guidance_scales("lsg", 2.0).kappa1 = 3.0
    with pytest.raises(ValueError, match="kappa"):
        guidance_scales("lsg", 0.0)
    with pytest.raises(ValueError, match=r"strategy.*lsg, cfg, none, short"):
        guidance_scales("LSG", 2.0)
    assert isinstance(guidance_scales("none", 3.0), GuidanceScales)


def test_guided_eps_hand_values():
    cond, uncond = torch.tensor([1.0, 0.0]), torch.tensor([3.0, 2.0])
    assert guided_eps(cond, uncond, 2.0).tolist() == [-1.0, -2.0]  # 3 + 2(1-3), 2 + 2(0-2)
    assert guided_eps(cond, uncond, 1.0).tolist() == [1.0, 0.0]
    assert guided_eps(cond, uncond, 0.5).tolist() == [2.0, 1.0]


def test_noising_matches_diffusers_add_noise_per_sample():
    scheduler = _sd_scheduler()
    schedule = NoiseSchedule(scheduler.alphas_cumprod)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 6, 3, 4, 4, generator=gen)
    t = torch.tensor([20, 137, 400, 625, 900, 979])
    ours = add_noise(x0, noise, t, schedule)
    assert torch.allclose(ours, scheduler.add_noise(x0, noise, t), atol=1e-6)


def test_x0_conversion_matches_the_official_per_sample_scheduler_loop():
    # The official loop converts each sample through the scheduler; ours is one expression.
    scheduler = _sd_scheduler()
    scheduler.set_timesteps(1000)
    schedule = NoiseSchedule(scheduler.alphas_cumprod)
    gen = torch.Generator().manual_seed(1)
    x_t, eps = torch.randn(2, 5, 3, 4, 4, generator=gen)
    t = torch.tensor([20, 300, 625, 850, 979])
    reference = torch.stack([
        scheduler.step(eps[i:i + 1], int(t[i]), x_t[i:i + 1]).pred_original_sample[0]
        for i in range(len(t))])
    assert torch.allclose(x0_from_eps(x_t, eps, t, schedule), reference, atol=1e-5)
    # and it inverts the noising exactly (up to float error)
    x0 = torch.randn(5, 3, 4, 4, generator=gen)
    assert torch.allclose(x0_from_eps(add_noise(x0, eps, t, schedule), eps, t, schedule), x0,
                          atol=1e-4)


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8).eval()


def test_predict_eps_batches_cond_and_uncond_as_one_call(tiny_unet):
    batches = []
    hook = tiny_unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 8, 8, generator=gen)
    t = torch.tensor([50, 500, 900])
    cond = torch.randn(3, 4, 16, generator=gen)
    uncond = torch.randn(1, 4, 16, generator=gen)
    try:
        with torch.no_grad():
            guided = predict_eps(tiny_unet, x, t, cond, uncond, 2.0)
            assert batches == [6]
            plain = predict_eps(tiny_unet, x, t, cond, uncond, 1.0)
            assert batches == [6, 3]
            e_c = tiny_unet(x, t, encoder_hidden_states=cond).sample
            e_u = tiny_unet(x, t, encoder_hidden_states=uncond.expand(3, -1, -1)).sample
    finally:
        hook.remove()
    assert torch.allclose(plain, e_c, atol=1e-6)
    assert torch.allclose(guided, e_u + 2.0 * (e_c - e_u), atol=1e-5)
