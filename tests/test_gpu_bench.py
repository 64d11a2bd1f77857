"""Issue 15's GPU tooling, dry-run on CPU at tiny size: the MFU benchmark, the faster
step's numerics, and the full-size dress rehearsal's builder and phases."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import dress_rehearsal, gpu_sd15
from distill.config import DistillConfig
from distill.guidance import NoiseSchedule
from distill.inputs import load_config_teacher
from distill.streams import Streams

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    """The benchmark's tiny SD-shaped UNet and inputs (random weights, seed 0)."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    unet = gpu_sd15.sd15_unet(tiny=True).requires_grad_(False)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012)
    return {"unet": unet, "schedule": NoiseSchedule(scheduler.alphas_cumprod),
            "shape": (4, 8, 8), "uncond": torch.randn(1, 10, 64),
            "cond": torch.randn(4, 10, 64)}


def _config(**changes) -> DistillConfig:
    return DistillConfig(**{"strategy": "lsg", "kappa": 2.0, "batch_size": 4,
                            "micro_batch_size": 2, **changes})


def _iterate(tiny, levers, config, cond=None):
    sid = gpu_sd15.build_sid(tiny["unet"], tiny["schedule"], tiny["shape"], tiny["uncond"],
                             config, frozenset(levers))
    cond = tiny["cond"] if cond is None else cond
    losses = sid.iteration(cond, cond, Streams(0))
    return sid, losses


def test_nosync_step_computes_exactly_the_plain_step(tiny):
    plain, plain_losses = _iterate(tiny, (), _config())
    fast, fast_losses = _iterate(tiny, ("nosync",), _config())
    assert not bool(fast_losses["diverged"])
    for key in ("loss_fake_score", "loss_generator"):
        assert float(fast_losses[key]) == plain_losses[key]
    for net in ("generator", "fake_score"):
        for a, b in zip(getattr(plain, net).parameters(), getattr(fast, net).parameters()):
            assert torch.equal(a, b) and torch.equal(a.grad, b.grad)


def test_nosync_step_steps_nothing_when_a_loss_is_not_finite(tiny):
    sid, losses = _iterate(tiny, ("nosync",), _config(),
                           cond=torch.full_like(tiny["cond"], float("nan")))
    assert bool(losses["diverged"])
    for net in ("generator", "fake_score"):
        for p, q in zip(getattr(sid, net).parameters(), tiny["unet"].parameters()):
            assert torch.equal(p, q)  # still the teacher's weights: no Adam step
    assert all(float(s["step"]) == 0 for s in sid.opt_generator.state.values())


def test_faster_step_gives_the_plain_generator_gradient(tiny):
    """nosync + channels-last against the plain step, fp32, on the tiny SD-shaped UNet and on
    the trained embedded teacher."""
    cosine = gpu_sd15.gradient_cosine(tiny["unet"], tiny["schedule"], tiny["shape"],
                                      tiny["uncond"], tiny["cond"], _config(),
                                      frozenset({"nosync", "channels_last"}))
    assert cosine >= 0.9999
    teacher = load_config_teacher("embedded:default")
    cond = teacher.encode_prompts(["a small red circle on the center"] * 4)
    cosine = gpu_sd15.gradient_cosine(teacher.unet, NoiseSchedule(teacher.alphas_cumprod),
                                      teacher.sample_shape, teacher.encode_prompts([""]), cond,
                                      _config(), frozenset({"nosync", "channels_last"}))
    assert cosine >= 0.9999


def test_benchmark_rows_carry_counted_flops_and_mfu(tmp_path):
    out = tmp_path / "mfu.jsonl"
    gpu_sd15.main([str(out), "--tiny", "--strategies", "lsg", "none", "--precisions", "fp32",
                   "--micro-batches", "1", "--options", "plain", "nosync+channels_last",
                   "--warmup", "0", "--timed", "1"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["kind"] == "matmul" and rows[0]["fp32_tflops"] > 0
    iterations = [r for r in rows if r["kind"] == "iteration"]
    assert [(r["strategy"], r["options"]) for r in iterations] == [
        ("lsg", "plain"), ("lsg", "nosync+channels_last"),
        ("none", "plain"), ("none", "nosync+channels_last")]
    for row in iterations:
        assert row["flops_per_iteration"] > 0 and row["seconds_per_iteration"] > 0
        assert row["achieved_tflops"] > 0 and row["mfu_measured_matmul"] > 0
        assert row["attention_ops"]  # the SDPA backend that ran is named
    lsg, none = iterations[0]["flops_per_iteration"], iterations[2]["flops_per_iteration"]
    assert lsg > none  # guidance doubles the batch of the guided calls
    assert gpu_sd15.datasheet_peak("NVIDIA H200", "bf16") == 989.4
    assert gpu_sd15.datasheet_peak("NVIDIA H100 PCIe", "fp32") == 51.2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    dress_rehearsal.build(root, tiny=True)
    return root


def test_tiny_dress_rehearsal_passes_preflight_and_loads_as_teacher(built, monkeypatch):
    from distill.teacher import load_teacher
    from orchestrator import preflight, profiles

    monkeypatch.setenv("ABLATE_PROFILES", str(built / "profiles.yaml"))
    monkeypatch.delenv("ABLATE_DATA", raising=False)
    profile = profiles.load_profile("sd15")
    assert profile.teacher == str(built / profiles.LAYOUT["sd15"]["teacher"])
    assert preflight.missing_files(profile) == []
    teacher = load_teacher(profile.teacher)
    assert teacher.vae is not None and teacher.sample_shape == (4, 8, 8)
    assert teacher.encode_prompts(["a small red circle on the center"]).shape == (1, 77, 64)
    manifest = json.loads((built / dress_rehearsal.MANIFEST).read_text())
    assert "random" in manifest["weights"]


def test_tiny_dress_rehearsal_phases_write_one_row_each(built, tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path / "home"))
    out = tmp_path / "phases.jsonl"
    dress_rehearsal.phases(built, out, images=dress_rehearsal.TINY_EVAL_IMAGES, iterations=1)
    rows = {r["phase"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(dress_rehearsal.PHASES) <= set(rows)
    assert rows["checkpoint write"]["bytes"] > 0
    assert all(r["seconds"] >= 0 for r in rows.values())
