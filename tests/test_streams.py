"""Common random numbers: lsg, cfg and none run with one seed draw the same prompts, z, t and
ε in both updates at every iteration (distill/streams.py); the ψ update's prompts differ only
where lsg's dropout mask drops them. Fails on a loop that draws everything from one stream,
where lsg's mask draw shifts every later draw."""

from __future__ import annotations

import pytest
import torch

from distill import inputs, loop
from distill.config import DistillConfig
from distill.streams import ROLES, Streams, role_seed

pytestmark = pytest.mark.usefixtures("one_thread")

ITERATIONS = 3
# Two micro-batches of 2 per update; dropout at 0.5 so the mask drops some prompts.
CONFIG = {"teacher": "embedded:smoke", "batch_size": 4, "micro_batch_size": 2,
          "iterations": ITERATIONS, "log_every": 1, "checkpoint_every": 0, "eval_num_images": 8,
          "prompt_dropout": 0.5, "kappa": 2.0, "seed": 7}


def _record(teacher, strategy: str, tmp_path, monkeypatch) -> dict[str, list[torch.Tensor]]:
    """What the networks were given, per update, in call order: G's z and prompt
    embeddings (its input is sqrt(1 - ᾱ_T) z), and the t and ε that noise G's sample for
    ψ and φ."""
    seen: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "z_fake_score", "cond_fake_score", "t_fake_score", "noise_fake_score",
        "z_generator", "cond_generator", "t_generator", "noise_generator")}
    generate, add_noise = loop.generate, loop.add_noise
    # Each update calls generate once per micro-batch and add_noise right after it; G's
    # sample for ψ is drawn without gradient, G's own update with it.
    update: list[str] = []

    def recording_generate(unet, z, emb, t_init, schedule):
        update[:] = ["generator" if torch.is_grad_enabled() else "fake_score"]
        seen[f"z_{update[0]}"].append(z.detach().clone())
        seen[f"cond_{update[0]}"].append(emb.detach().clone())
        return generate(unet, z, emb, t_init, schedule)

    def recording_add_noise(x0, noise, t, schedule):
        seen[f"noise_{update[0]}"].append(noise.detach().clone())
        seen[f"t_{update[0]}"].append(t.detach().clone())
        return add_noise(x0, noise, t, schedule)

    config = DistillConfig(**{**CONFIG, "strategy": strategy})
    prompts = inputs.load_prompts("embedded:train")
    with monkeypatch.context() as patch:  # undone before the next strategy wraps them
        patch.setattr(loop, "generate", recording_generate)
        patch.setattr(loop, "add_noise", recording_add_noise)
        result = loop.distill(config, tmp_path / strategy, teacher=teacher, prompts=prompts)
    assert result.status == "finished"
    return seen


@pytest.fixture
def recorded(teacher, tmp_path, monkeypatch):
    return {s: _record(teacher, s, tmp_path, monkeypatch) for s in ("lsg", "cfg", "none")}


def test_one_seed_draws_the_same_z_t_noise_and_prompts_under_every_strategy(recorded, teacher):
    lsg, cfg, none = recorded["lsg"], recorded["cfg"], recorded["none"]
    # Two micro-batches per update, ITERATIONS iterations.
    assert len(lsg["z_fake_score"]) == len(lsg["z_generator"]) == 2 * ITERATIONS
    for key in ("z_fake_score", "t_fake_score", "noise_fake_score", "z_generator",
                "t_generator", "noise_generator", "cond_generator"):
        for other in (cfg, none):
            assert all(torch.equal(a, b) for a, b in zip(lsg[key], other[key])), key
    # ψ's prompts: cfg and none drop nothing (κ1 = κ2 = 1), so theirs are equal; lsg's equal
    # them except in the rows its mask replaced with the empty prompt.
    assert all(torch.equal(a, b) for a, b in zip(cfg["cond_fake_score"], none["cond_fake_score"]))
    uncond = teacher.encode_prompts([""])[0]
    dropped = kept = 0
    for mine, plain in zip(lsg["cond_fake_score"], cfg["cond_fake_score"]):
        for row_lsg, row_plain in zip(mine, plain):
            if torch.equal(row_lsg, row_plain):
                kept += 1
            else:
                assert torch.equal(row_lsg, uncond)
                dropped += 1
    assert dropped > 0 and kept > 0  # at dropout 0.5 over 12 prompts, both happen


def test_streams_are_seeded_per_role_and_round_trip_through_their_state():
    a, b = Streams(3), Streams(3)
    assert torch.equal(torch.rand(4, generator=a["z_generator"]),
                       torch.rand(4, generator=b["z_generator"]))
    # Roles and seeds do not share a stream.
    assert len({role_seed(s, r) for s in (0, 1) for r in ROLES}) == 2 * len(ROLES)
    state = a.state()
    first = torch.rand(3, generator=a["dropout"])
    a.load_state(state)
    assert torch.equal(torch.rand(3, generator=a["dropout"]), first)
    with pytest.raises(KeyError, match="no random-stream state for"):
        a.load_state({"rng": torch.zeros(1)})
