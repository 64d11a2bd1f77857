"""The SiD-LSG loop on the smoke teacher: network passes, resume, divergence, CLI."""

import copy
import dataclasses
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill import checkpoint, generator, inputs, loop
from distill.config import SIZE_PRESETS, ConfigError, DistillConfig, from_dict
from distill.guidance import NoiseSchedule
from distill.inputs import load_prompts
from distill.loop import SiD, distill
from distill.streams import ROLES, Streams

REPO = Path(__file__).resolve().parent.parent
SMOKE = {"teacher": "embedded:smoke", "batch_size": 4, "micro_batch_size": 2, "iterations": 2,
         "log_every": 1, "checkpoint_every": 2, "eval_num_images": 8}


pytestmark = pytest.mark.usefixtures("one_thread")


def _sid(teacher, **overrides):
    config = DistillConfig(**{**SMOKE, **overrides})
    return SiD(teacher.unet, NoiseSchedule(teacher.alphas_cumprod), teacher.sample_shape,
               teacher.encode_prompts([""]), config)


@pytest.mark.parametrize("values, field", [
    ({"kappa": 0.0}, "kappa"),
    ({"kappa": -1.5}, "kappa"),
    ({"strategy": "cfg-only"}, "strategy"),
    ({"t_init": 0}, "t_init"),
    ({"t_init": 1000}, "t_init"),
    ({"batch_size": 16, "micro_batch_size": 5}, "batch_size"),
    ({"kappa": float("inf")}, "kappa"),
    ({"lr_generator": float("nan")}, "lr_generator"),
    ({"alpha": float("-inf")}, "alpha"),
    ({"adam_beta1": 5.0}, "adam_beta1"),
    ({"adam_beta2": 1.0}, "adam_beta2"),
    ({"ema_rampup_ratio": 0.0}, "ema_rampup_ratio"),
    ({"seed": 2**64}, "seed"),
    ({"seed": -1}, "seed"),
    ({"eval_num_images": 1}, "eval_num_images"),
    ({"eval_num_images": 10**12}, "eval_num_images"),
])
def test_bad_config_names_the_field(values, field):
    with pytest.raises(ConfigError, match=f"^trial.yaml: {field} = "):
        from_dict(DistillConfig, values, source="trial.yaml")


def test_smoke_preset_is_a_valid_config_of_seconds():
    config = DistillConfig(**SIZE_PRESETS["smoke"])
    assert config.teacher == "embedded:smoke" and config.iterations <= 10
    assert SIZE_PRESETS["default"] == {}


# (network, batch, gradient enabled) per call for one iteration of batch b = 2:
# ψ update = G (no grad) + ψ; G update = G + φ + ψ; guided calls run as one batch of 2b.
CALLS = {
    "lsg": [("G", 2, False), ("psi", 4, True), ("G", 2, True), ("phi", 4, True), ("psi", 4, True)],
    "cfg": [("G", 2, False), ("psi", 2, True), ("G", 2, True), ("phi", 4, True), ("psi", 2, True)],
    "none": [("G", 2, False), ("psi", 2, True), ("G", 2, True), ("phi", 2, True), ("psi", 2, True)],
    "short": [("G", 2, False), ("psi", 4, True), ("G", 2, True), ("phi", 2, True),
              ("psi", 2, True)],
}


@pytest.mark.parametrize("strategy", sorted(CALLS))
def test_network_passes_per_iteration_follow_the_strategy_table(teacher, strategy):
    sid = _sid(teacher, strategy=strategy, batch_size=2, micro_batch_size=2)
    calls = []
    nets = {"G": sid.generator, "psi": sid.fake_score, "phi": sid.teacher}
    hooks = [net.register_forward_pre_hook(
        lambda m, args, name=name: calls.append((name, args[0].shape[0], torch.is_grad_enabled())))
        for name, net in nets.items()]
    psi_before = [p.detach().clone() for p in sid.fake_score.parameters()]
    g_before = [p.detach().clone() for p in sid.generator.parameters()]
    try:
        cond = teacher.encode_prompts(["a small red square on the left"] * 2)
        losses = sid.iteration(cond, cond, Streams(0))
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == CALLS[strategy]
    assert set(losses) == {"loss_fake_score", "loss_generator"}
    # Both trained networks moved; the teacher is frozen and collected no gradients.
    assert any(not torch.equal(a, b) for a, b in zip(psi_before, sid.fake_score.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(g_before, sid.generator.parameters()))
    assert all(p.grad is None and not p.requires_grad for p in sid.teacher.parameters())
    # ψ's weights are not differentiated in the G update (only its input is).
    assert all(p.requires_grad for p in sid.fake_score.parameters())


def test_ema_half_life_with_rampup_hand_values(teacher):
    sid = _sid(teacher, batch_size=16, micro_batch_size=16, ema_halflife_kimg=0.5,
               ema_rampup_ratio=0.5)
    with torch.no_grad():
        for p in sid.generator.parameters():
            p.fill_(1.0)
        for p in sid.generator_ema.parameters():
            p.fill_(0.0)
    # 16 images seen, rampup 0.5: half-life min(500, 8) = 8 images; beta = 0.5^(16/8) = 0.25.
    sid.update_ema(16)
    assert all(torch.allclose(p, torch.full_like(p, 0.75)) for p in sid.generator_ema.parameters())
    # 100 kimg seen: the 500-image half-life applies: beta = 0.5^(16/500).
    sid.update_ema(100_000)
    beta = 0.5 ** (16 / 500)
    expected = beta * 0.75 + (1 - beta)
    assert all(torch.allclose(p, torch.full_like(p, expected))
               for p in sid.generator_ema.parameters())


def test_sample_fn_is_deterministic_chunk_invariant_and_in_pixel_range(teacher, monkeypatch):
    sid = _sid(teacher)
    sample = sid.sample_fn(teacher.encode_prompts, teacher.decode)
    prompts = ["a large red circle on the left", "a small blue cross on the right"] * 4
    a = sample(prompts, 7)
    assert a.shape == (8, 3, 16, 16) and a.device.type == "cpu"
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(sample(prompts, 7), a)
    # Chunking changes only the batch shape of each call (float rounding), never the noise.
    monkeypatch.setattr(generator, "EVAL_CHUNK", 3)
    assert torch.allclose(sample(prompts, 7), a, atol=1e-5)
    assert not torch.equal(sample(prompts, 8), a)


def test_reports_losses_and_evaluations_and_encodes_each_batch_once(teacher, tmp_path):
    encoder_calls = []
    hook = teacher.text_encoder.register_forward_pre_hook(
        lambda m, args: encoder_calls.append(args[0].shape[0]))
    reports = []
    evaluated = []

    def evaluate(sample_fn, step):
        evaluated.append(step)
        return {"pixel_mean": float(sample_fn(["a small red square on the left"], 0).mean())}

    config = DistillConfig(**{**SMOKE, "iterations": 3, "log_every": 2, "eval_every": 2,
                              "checkpoint_every": 0})
    try:
        result = distill(config, tmp_path, teacher=teacher,
                         report=lambda m, s: reports.append((s, m)), evaluate=evaluate)
    finally:
        hook.remove()
    # the empty prompt once per run, then one batch of 4 per update (two per iteration),
    # then 1 per evaluation
    assert encoder_calls == [1, 4, 4, 4, 4, 1, 4, 4, 1]
    assert [s for s, _ in reports] == [2, 2, 3, 3]
    assert set(reports[0][1]) == {"loss_fake_score", "loss_generator", "images_per_second"}
    assert reports[0][1]["images_per_second"] > 0
    assert evaluated == [2, 3]
    assert result.status == "finished" and result.iterations == 3
    assert result.final_metrics == {**reports[3][1], **{k: reports[2][1][k] for k in
                                                       ("loss_fake_score", "loss_generator")}}
    assert checkpoint.exists(result.checkpoint_dir)  # always written at the end


def _tensors(directory):
    state = checkpoint.load(directory)[1]
    return load_file(directory / state["tensors"])


def test_the_learning_rates_anneal_linearly_over_the_last_fraction():
    from distill.loop import lr_factor

    # 10 iterations, the last 30% annealed: iterations after 7, 8, 9 completed steps get
    # 3/3, 2/3, 1/3 of the rate; off (0) it stays 1.
    assert [lr_factor(s, 10, 0.3) for s in range(10)] == [1.0] * 8 + [2 / 3, 1 / 3]
    assert [lr_factor(s, 10, 0.0) for s in range(10)] == [1.0] * 10
    assert lr_factor(0, 4, 1.0) == 1.0 and lr_factor(3, 4, 1.0) == 0.25


# Anneal 0.5 of 4 iterations: the rates change at the resumed step (2), so a resume that
# kept the checkpoint's optimizer rate instead of the schedule's would differ.
@pytest.mark.parametrize("anneal", [0.0, 0.5])
def test_resume_after_a_fault_is_bit_identical_to_an_uninterrupted_run(teacher, tmp_path, anneal):
    config = DistillConfig(**{**SMOKE, "iterations": 4, "lr_anneal_fraction": anneal})
    saved = {}
    reports_a = []
    result_a = distill(config, tmp_path / "a", teacher=teacher,
                       report=lambda m, s: reports_a.append((s, m)),
                       on_checkpoint=lambda path, step: saved.setdefault(step, _tensors(path)))
    assert sorted(saved) == [2, 4]

    def crash_at_3(metrics, step):
        if step == 3:
            raise RuntimeError("fault at iteration 3")

    with pytest.raises(RuntimeError, match="fault at iteration 3"):
        distill(config, tmp_path / "b", teacher=teacher, report=crash_at_3)
    assert checkpoint.load(tmp_path / "b" / "checkpoint")[1]["step"] == 2
    assert _tensors(tmp_path / "b" / "checkpoint").keys() == saved[2].keys()
    reports_b = []
    result_b = distill(config, tmp_path / "b", teacher=teacher,
                       report=lambda m, s: reports_b.append((s, m)))
    assert result_b.status == "finished" and result_b.iterations == 4
    final_a, final_b = saved[4], _tensors(tmp_path / "b" / "checkpoint")
    assert final_a.keys() == final_b.keys()
    assert any(k.startswith("opt_fake_score.") for k in final_a)
    assert all(f"rng.{r}" in final_a for r in ROLES)
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    # Losses (not images/s) reported after the resume equal the uninterrupted run's.
    strip = [(s, m["loss_fake_score"], m["loss_generator"]) for s, m in reports_a if s > 2]
    assert [(s, m["loss_fake_score"], m["loss_generator"]) for s, m in reports_b] == strip
    assert result_a.final_metrics == result_b.final_metrics

    # A different seed gives different weights, so the equality above can fail.
    other = distill(dataclasses.replace(config, seed=1, iterations=2), tmp_path / "c",
                    teacher=teacher)
    seed_1 = _tensors(other.checkpoint_dir)
    assert not torch.equal(seed_1["generator_ema.conv_in.weight"],
                           saved[2]["generator_ema.conv_in.weight"])

    # Resuming with a different algorithm config is refused, naming the key.
    with pytest.raises(checkpoint.CheckpointError, match=r"kappa: 2.0 -> 3.0"):
        distill(dataclasses.replace(config, kappa=3.0), tmp_path / "a", teacher=teacher)


DAMAGE_CONFIG = {**SMOKE, "iterations": 6, "checkpoint_every": 2}


@pytest.fixture(scope="module")
def interrupted_at_4(teacher, tmp_path_factory):
    """Computed once for every kind of damage: the uninterrupted run's final tensors, and
    a run stopped after iteration 4 with its two checkpoints (each case damages a copy)."""
    root = tmp_path_factory.mktemp("damage")
    config = DistillConfig(**DAMAGE_CONFIG)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests resume (one_thread): rounding depends on it
    try:
        final = _tensors(distill(config, root / "uninterrupted", teacher=teacher).checkpoint_dir)
        distill(dataclasses.replace(config, iterations=4), root / "stopped", teacher=teacher)
    finally:
        torch.set_num_threads(threads)
    return final, root / "stopped"


@pytest.mark.parametrize("damage", ["truncate newest", "truncate both", "empty record",
                                    "random bytes newest"])
def test_a_damaged_checkpoint_is_survived_with_nothing_lost(teacher, tmp_path, damage, capsys,
                                                           interrupted_at_4):
    """A node lost mid-write can leave the newest checkpoint truncated: the run resumes from
    the one kept before it (or, with none readable, starts over), saying so, and on CPU ends
    bit-identical to an uninterrupted run."""
    final_a, stopped = interrupted_at_4
    shutil.copytree(stopped, tmp_path / "b")
    folder = tmp_path / "b" / "checkpoint"
    files = sorted(folder.glob("state-*.safetensors"))
    assert [f.name for f in files] == ["state-00000002.safetensors", "state-00000004.safetensors"]
    if damage == "empty record":
        (folder / checkpoint.STATE_JSON).write_text("[]")
    elif damage == "random bytes newest":  # the recorded size, but no safetensors file
        files[-1].write_bytes(os.urandom(files[-1].stat().st_size))
    else:
        for victim in (files if damage == "truncate both" else files[-1:]):
            with victim.open("r+b") as f:
                f.truncate(victim.stat().st_size // 3)
    capsys.readouterr()
    resumed = distill(DistillConfig(**DAMAGE_CONFIG), tmp_path / "b", teacher=teacher)
    err = capsys.readouterr().err
    if damage == "truncate both":
        assert "no readable checkpoint" in err and "starting from scratch" in err
        assert (tmp_path / "b" / "checkpoint.unreadable-1").is_dir()
    elif damage == "truncate newest":
        assert "state-00000004.safetensors is" in err and "(truncated)" in err
        assert "resumed from step 2" in err
    elif damage == "random bytes newest":
        assert "state-00000004.safetensors unreadable" in err and "resumed from step 2" in err
    else:  # state.json unusable, but the newest per-step record and its tensors are fine
        assert "state.json is not a checkpoint record" in err and "resumed from step 4" in err
    assert resumed.status == "finished" and resumed.iterations == 6
    final_b = _tensors(resumed.checkpoint_dir)
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_eval_of_a_broken_checkpoint_exits_2_with_one_line(teacher, tmp_path, capsys):
    from orchestrator.cli import main

    folder = distill(DistillConfig(**SMOKE), tmp_path / "run", teacher=teacher).checkpoint_dir
    for stale in folder.glob("state-*.json"):
        stale.unlink()  # only state.json left to read
    (folder / checkpoint.STATE_JSON).write_text("[]")
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--num-images", "100"]) == 2
    err = capsys.readouterr().err
    assert "no readable checkpoint" in err and "is not a checkpoint record" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_nan_loss_marks_the_run_diverged_and_stops(teacher, tmp_path):
    broken = dataclasses.replace(teacher, unet=copy.deepcopy(teacher.unet))
    with torch.no_grad():
        broken.unet.conv_out.bias[0] = float("nan")
    reports = []
    result = distill(DistillConfig(**SMOKE), tmp_path, teacher=broken,
                     report=lambda m, s: reports.append((s, m)),
                     evaluate=lambda fn, step: pytest.fail("a diverged run is not evaluated"))
    assert result.status == "diverged" and result.iterations == 0
    assert result.final_metrics == {"diverged": 1.0}
    assert reports == [(1, {"diverged": 1.0})]
    assert not checkpoint.exists(result.checkpoint_dir)


def test_bf16_autocast_trains_with_finite_losses(teacher):
    sid = _sid(teacher, precision="bf16")
    cond = teacher.encode_prompts(["a large green cross on the right"] * 4)
    losses = sid.iteration(cond, cond, Streams(0))
    assert losses is not None and all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_prompt_sources(tmp_path):
    assert len(load_prompts("embedded:train")) == 120
    good = tmp_path / "prompts.txt"
    good.write_text("a cat\n\n  a dog  \n")
    assert load_prompts(str(good)) == ["a cat", "a dog"]
    with pytest.raises(ConfigError, match=r"prompts = .*missing.txt.*not found"):
        load_prompts(str(tmp_path / "missing.txt"))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"a cat\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"binary.txt: not UTF-8 text"):
        load_prompts(str(binary))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(ConfigError, match=r"prompts = .*holds no prompts"):
        load_prompts(str(empty))


def test_cli_runs_a_smoke_trial_and_writes_a_grid(smoke_home, tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main

    monkeypatch.setenv("ABLATE_HOME", str(smoke_home))
    code = main(["distill", str(REPO / "examples" / "distill-smoke.yaml"), "--workdir",
                 str(tmp_path / "run"), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(tmp_path / "run") and "colour_acc=" in out[-2]
    assert (tmp_path / "run" / "samples.png").stat().st_size > 0


def test_cli_bad_config_exits_2_with_one_line(tmp_path, capsys):
    from orchestrator.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy: lsg\nkappa: 0\n")
    assert main(["distill", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.yaml" in err and "kappa" in err
    bad.write_text("kapa: 2\n")
    assert main(["distill", str(bad)]) == 2
    assert "unknown key(s) kapa" in capsys.readouterr().err


def _record_calls(monkeypatch):
    """Wrap the loop's network entry points to record (what, prompt embeddings, grad on):
    ``generate`` for G's samples, ``predict_eps`` for ψ's target in the ψ update, and
    ``denoise`` for the guided φ and ψ calls of the G update."""
    calls = []

    def wrap(name, fn, cond_at):
        def recorded(*args, **kwargs):
            calls.append((name, args[cond_at].detach().clone(), torch.is_grad_enabled()))
            return fn(*args, **kwargs)
        monkeypatch.setattr(loop, name, recorded)

    wrap("generate", loop.generate, 2)
    wrap("predict_eps", loop.predict_eps, 3)
    wrap("denoise", loop.denoise, 3)
    return calls


def _is_empty(emb, uncond):
    """Per row of (b, L, D): is it the empty prompt's embedding?"""
    return (emb == uncond).flatten(1).all(dim=1)


@pytest.mark.parametrize("strategy", ["lsg", "cfg", "none"])
def test_prompt_dropout_reaches_only_the_fake_score_update(teacher, tmp_path, monkeypatch,
                                                           strategy):
    # docs/algorithm.md, "Prompt dropout": the ψ update's generator sample and ψ's target
    # see the dropped prompts; the G update never samples G on the empty prompt.
    calls = _record_calls(monkeypatch)
    # lsg needs 80 samples for its binomial bound below; under cfg and none any dropped
    # prompt is a failure, and 5 iterations (20 samples at 0.5) would show one with
    # probability 1 - 2^-20.
    iterations = 20 if strategy == "lsg" else 5
    config = DistillConfig(**{**SMOKE, "strategy": strategy, "prompt_dropout": 0.5,
                              "iterations": iterations, "log_every": iterations,
                              "checkpoint_every": 0})
    assert distill(config, tmp_path, teacher=teacher).status == "finished"
    uncond = teacher.encode_prompts([""])

    # Per micro-batch: ψ update = generate (no grad), predict_eps; G update = generate
    # (grad), denoise φ, denoise ψ.
    per_round = 2
    fake, gen = [], []
    i = 0
    for _ in range(config.iterations):
        for _ in range(per_round):
            (g, g_emb, g_grad), (p, p_emb, _) = calls[i:i + 2]
            assert (g, g_grad, p) == ("generate", False, "predict_eps")
            assert torch.equal(g_emb, p_emb)  # ψ learns on the prompts G's sample was drawn for
            fake.append(g_emb)
            i += 2
        for _ in range(per_round):
            (g, g_emb, g_grad), (d1, real_emb, _), (d2, fake_emb, _) = calls[i:i + 3]
            assert (g, g_grad, d1, d2) == ("generate", True, "denoise", "denoise")
            # The conditional halves of the guided φ and ψ calls carry G's own prompts.
            assert torch.equal(real_emb, g_emb) and torch.equal(fake_emb, g_emb)
            gen.append(g_emb)
            i += 3
    assert i == len(calls)

    dropped_fake = int(torch.cat([_is_empty(e, uncond) for e in fake]).sum())
    dropped_gen = int(torch.cat([_is_empty(e, uncond) for e in gen]).sum())
    samples = config.iterations * config.batch_size  # 80 per update under lsg
    assert dropped_gen == 0
    if strategy == "lsg":
        # Binomial(80, 0.5): mean 40, sd 4.5; 25..55 is beyond 3 sd either side.
        assert 25 <= dropped_fake <= 55, dropped_fake
    else:
        assert dropped_fake == 0  # κ1 = κ2 = 1: ψ never reads its unconditional branch
    assert samples == len(torch.cat(fake)) == len(torch.cat(gen))


def test_the_two_updates_of_an_iteration_draw_their_own_prompts(teacher, tmp_path, monkeypatch):
    calls = _record_calls(monkeypatch)
    # One micro-batch of 4 prompts per update from 120: the same 4-tuple twice has
    # probability 120^-4 per iteration.
    config = DistillConfig(**{**SMOKE, "strategy": "cfg", "micro_batch_size": 4, "iterations": 5,
                              "log_every": 5, "checkpoint_every": 0})
    distill(config, tmp_path, teacher=teacher)
    samples = [(emb, grad) for name, emb, grad in calls if name == "generate"]
    assert len(samples) == 2 * config.iterations
    for (fake_emb, fake_grad), (gen_emb, gen_grad) in zip(samples[::2], samples[1::2]):
        assert (fake_grad, gen_grad) == (False, True)
        assert not torch.equal(fake_emb, gen_emb)


def test_draw_prompts_is_uniform_with_replacement_and_seeded():
    prompts = [f"p{i}" for i in range(3)]
    a = inputs.draw_prompts(prompts, 3000, torch.Generator().manual_seed(0))
    assert a == inputs.draw_prompts(prompts, 3000, torch.Generator().manual_seed(0))
    counts = [a.count(p) for p in prompts]
    assert all(900 <= c <= 1100 for c in counts), counts  # 1000 ± 3 sd (sd 25.8)
