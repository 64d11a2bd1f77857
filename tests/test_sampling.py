"""DDIM + CFG sampling of a teacher, checked against diffusers' DDIMScheduler."""


import pytest
import torch
from diffusers import DDIMScheduler

from distill import sampling
from distill.sampling import ddim_sample, ddim_timesteps

PROMPTS = ["a large red circle on the left", "a small blue cross on the right",
           "a small green square on the center"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _diffusers_ddim(teacher, prompts, steps, scale, seed):
    """The reference: diffusers' scheduler step by step, cond and uncond as separate calls."""
    scheduler = DDIMScheduler.from_config(teacher.scheduler.config, set_alpha_to_one=False)
    scheduler.set_timesteps(steps)
    x = torch.randn((len(prompts), *teacher.sample_shape),
                    generator=torch.Generator().manual_seed(seed))
    cond = teacher.encode_prompts(prompts)
    uncond = teacher.encode_prompts([""] * len(prompts))
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps_c = teacher.unet(x, t, encoder_hidden_states=cond).sample
            eps_u = teacher.unet(x, t, encoder_hidden_states=uncond).sample
            x = scheduler.step(eps_u + scale * (eps_c - eps_u), t, x).prev_sample
    return x


@pytest.mark.parametrize("steps", [1, 4, 25])
def test_timesteps_are_stable_diffusions(steps):
    scheduler = DDIMScheduler(num_train_timesteps=1000, steps_offset=1)
    scheduler.set_timesteps(steps)
    assert ddim_timesteps(steps) == scheduler.timesteps.tolist()


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_matches_diffusers_ddim_with_cfg(teacher, scale):
    ours = ddim_sample(teacher, PROMPTS, 5, scale, torch.Generator().manual_seed(3))
    assert ours.shape == (3, *teacher.sample_shape)
    reference = _diffusers_ddim(teacher, PROMPTS, 5, scale, 3)
    assert torch.allclose(ours, reference, atol=1e-4), (ours - reference).abs().max()


def test_one_batch_per_step_of_b_or_2b(teacher, monkeypatch):
    batches = []
    hook = teacher.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        ddim_sample(teacher, PROMPTS, 3, 1.0, torch.Generator().manual_seed(0))
        assert batches == [3, 3, 3]
        batches.clear()
        ddim_sample(teacher, PROMPTS, 3, 2.0, torch.Generator().manual_seed(0))
        assert batches == [6, 6, 6]
        # Chunked: 2 prompts per call -> calls of 2 then 1 (times 2 with guidance).
        monkeypatch.setattr(sampling, "SAMPLING_CHUNK", 2)
        batches.clear()
        ddim_sample(teacher, PROMPTS, 1, 2.0, torch.Generator().manual_seed(0))
        assert batches == [4, 2]
    finally:
        hook.remove()


def test_deterministic_for_a_generator_and_independent_of_chunking(teacher, monkeypatch):
    a = ddim_sample(teacher, PROMPTS, 4, 2.0, torch.Generator().manual_seed(5))
    assert torch.equal(a, ddim_sample(teacher, PROMPTS, 4, 2.0, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, ddim_sample(teacher, PROMPTS, 4, 2.0,
                                          torch.Generator().manual_seed(6)))
    monkeypatch.setattr(sampling, "SAMPLING_CHUNK", 1)
    assert torch.allclose(a, ddim_sample(teacher, PROMPTS, 4, 2.0,
                                         torch.Generator().manual_seed(5)), atol=1e-5)


def test_bad_arguments_say_what_is_wrong(teacher):
    with pytest.raises(ValueError, match="at least one prompt"):
        ddim_sample(teacher, [], 4, 2.0, torch.Generator())
    with pytest.raises(ValueError, match="num_steps = 0"):
        ddim_sample(teacher, PROMPTS, 0, 2.0, torch.Generator())
    with pytest.raises(ValueError, match="guidance_scale = 0"):
        ddim_sample(teacher, PROMPTS, 4, 0.0, torch.Generator())
