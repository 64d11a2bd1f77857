"""Benchmark of the distillation core: s/iteration per strategy against two baselines.

    python -m benchmarks.bench_core [--teacher embedded:default] [--iterations 10]

For each strategy (lsg, cfg, none) at the embedded default config it measures,
in one process, on the same networks and shapes:

* ``ours``: one full iteration of :class:`distill.loop.SiD` as the loop runs it
  (prompt choice and encoding, ψ step, G step, EMA);
* ``bare``: only the UNet passes that iteration needs (same calls, same batch
  shapes, same forward/backward work, random inputs) - the floor;
* ``official``: a faithful re-implementation of the official loop's
  per-iteration work on the same networks: prompts re-tokenised and re-encoded
  on every network call (the empty prompt too), x0 converted per sample through
  the scheduler in a Python loop, and NaN masking of losses and gradients;
* ``before``: the loop of 91d24a3 (one prompt batch for both updates),
  loaded from git revision ``--reference`` (default :data:`REFERENCE_REVISION`), so the
  table carries the per-iteration cost of each strategy as a ratio to that code, measured
  in the same run. Skipped, with a note, where git or the revision is not available.

It prints a Markdown table (ratio ours/bare, goal <= 1.10; speedup
official/ours, goal >= 1.15) and a torch.profiler summary of where our
remaining time goes.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

from distill.config import DistillConfig
from distill.guidance import NoiseSchedule, add_noise, guidance_scales
from distill.inputs import draw_prompts, load_config_teacher, load_prompts
from distill.loop import SiD
from distill.losses import sid_generator_loss
from distill.streams import Streams

STRATEGIES = ("lsg", "cfg", "none")
# The reference loop: prompt dropout in both updates, one prompt batch per iteration.
REFERENCE_REVISION = "91d24a3"
REPO = Path(__file__).resolve().parent.parent


def reference_sid_class(revision: str):
    """``SiD`` as ``distill/loop.py`` defined it at ``revision`` (None if git cannot say)."""
    try:
        source = subprocess.run(["git", "show", f"{revision}:distill/loop.py"], cwd=REPO,
                                capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if source.returncode:
        return None
    module = types.ModuleType(f"loop_at_{revision}")
    sys.modules[module.__name__] = module  # its dataclasses look their module up there
    # The repository's own history, not outside input: it is what the column measures.
    exec(compile(source.stdout, f"{revision}:distill/loop.py", "exec"), module.__dict__)
    return module.SiD


def before(sid, teacher, prompts: list[str], rng: torch.Generator):
    """One iteration of the reference loop: one prompt batch encoded once for both updates."""
    config = sid.config
    step = [0]

    def iteration():
        cond = teacher.encode_prompts(draw_prompts(prompts, config.batch_size, rng))
        assert sid.iteration(cond, rng) is not None
        step[0] += 1
        sid.update_ema(step[0] * config.batch_size)

    return iteration


def time_interleaved(fns: dict, iterations: int, warmup: int = 2) -> dict[str, tuple[float, float]]:
    """Median (wall, process CPU) seconds per call of each of ``fns``, timed round-robin.

    One call of each in turn, ``iterations`` rounds: a drift of the machine (clock, cache,
    allocator, another job) then reaches every variant alike, where timing them one block
    after another put it all on whichever ran first (measured: 10% between identical loops).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iterations):
        for name, fn in fns.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def _time(fn, iterations: int, warmup: int = 2) -> tuple[float, float]:
    """Median (wall, process CPU) seconds per call.

    Medians resist other jobs sharing the CPU; process CPU time resists them
    further (time spent waiting for a core is not counted), and at one torch
    thread it is what the wall time would be on an idle core.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(iterations):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def ours(sid: SiD, teacher, prompts: list[str], rng: torch.Generator):
    del rng  # the loop draws from its own streams (distill/streams.py)
    config = sid.config
    step = [0]
    streams = Streams(0)

    def iteration():
        cond_fake_score = teacher.encode_prompts(
            draw_prompts(prompts, config.batch_size, streams["prompts_fake_score"]))
        cond_generator = teacher.encode_prompts(
            draw_prompts(prompts, config.batch_size, streams["prompts_generator"]))
        assert sid.iteration(cond_fake_score, cond_generator, streams) is not None
        sid.update_ema(step[0] * config.batch_size)
        step[0] += 1

    return iteration


def bare(sid: SiD, teacher):
    """The UNet passes of one iteration and nothing else."""
    config, scales = sid.config, sid.scales
    b = config.micro_batch_size
    rounds = config.batch_size // b
    shape = (b, *sid.sample_shape)
    emb = teacher.encode_prompts(["a large red circle on the left"] * b)
    t = torch.full((b,), 500)

    def call(net, x, kappa):
        if kappa == 1:
            return net(x, t, encoder_hidden_states=emb).sample
        return net(torch.cat([x, x]), torch.cat([t, t]),
                   encoder_hidden_states=torch.cat([emb, emb])).sample

    def iteration():
        for _ in range(rounds):
            with torch.no_grad():
                x_g = sid.generator(torch.randn(shape), t, encoder_hidden_states=emb).sample
            call(sid.fake_score, x_g, scales.kappa1).sum().backward()
        sid.fake_score.requires_grad_(False)
        for _ in range(rounds):
            x_g = sid.generator(torch.randn(shape), t, encoder_hidden_states=emb).sample
            (call(sid.teacher, x_g, scales.kappa4).sum()
             + call(sid.fake_score, x_g, scales.kappa2).sum()).backward()
        sid.fake_score.requires_grad_(True)

    return iteration


def _nan_masked_mean(per_sample: torch.Tensor) -> torch.Tensor:
    keep = ~torch.isnan(per_sample)
    if not keep.all():  # a device sync per loss, as in the official code
        per_sample = per_sample[keep]
    return per_sample.mean()


def _clean_grads(module: torch.nn.Module) -> None:
    for p in module.parameters():
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)


def official(sid: SiD, teacher, prompts: list[str], rng: torch.Generator):
    """The official loop's per-iteration work on the same networks (see module docstring)."""
    from diffusers import DDPMScheduler

    config, scales = sid.config, sid.scales
    scheduler = DDPMScheduler.from_config(teacher.scheduler.config)
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    schedule = sid.schedule
    b = config.micro_batch_size
    step = [0]

    def encode(texts):
        # tokenise + encode on every call, as the official sid_sd_denoise does
        return teacher.encode_prompts(texts)

    def guided_eps(net, x_t, t, texts, kappa):
        if kappa == 1:
            return net(x_t, t, encoder_hidden_states=encode(texts)).sample
        both = net(torch.cat([x_t, x_t]), torch.cat([t, t]),
                   encoder_hidden_states=torch.cat([encode(texts), encode([""] * len(texts))]))
        eps_c, eps_u = both.sample.chunk(2)
        return eps_u + kappa * (eps_c - eps_u)

    def unet_x0(net, x_t, t, texts, kappa):
        eps = guided_eps(net, x_t, t, texts, kappa)
        return torch.cat([scheduler.step(eps[i:i + 1], int(t[i]), x_t[i:i + 1])
                          .pred_original_sample for i in range(len(t))])

    def generator_x0(texts, z, grad):
        t = torch.full((len(texts),), config.t_init)
        x_init = schedule.sigma[config.t_init] * z
        with torch.set_grad_enabled(grad):
            eps = sid.generator(x_init, t, encoder_hidden_states=encode(texts)).sample
            return torch.cat([scheduler.step(eps[i:i + 1], config.t_init, x_init[i:i + 1])
                              .pred_original_sample for i in range(len(texts))])

    def iteration():
        picks = torch.randint(len(prompts), (config.batch_size,), generator=rng).tolist()
        texts = [prompts[i] for i in picks]
        sid.opt_fake_score.zero_grad(set_to_none=True)
        for start in range(0, config.batch_size, b):
            chunk = texts[start:start + b]
            x_g = generator_x0(chunk, torch.randn(b, *sid.sample_shape, generator=rng), False)
            t = torch.randint(config.t_min, config.t_max + 1, (b,), generator=rng)
            noise = torch.randn(x_g.shape, generator=rng)
            x_t = add_noise(x_g, noise, t, schedule)
            eps = guided_eps(sid.fake_score, x_t, t, chunk, scales.kappa1)
            loss = _nan_masked_mean((eps - noise).square().flatten(1).sum(1))
            (loss * b / config.batch_size).backward()
        _clean_grads(sid.fake_score)
        sid.opt_fake_score.step()
        sid.opt_generator.zero_grad(set_to_none=True)
        sid.fake_score.requires_grad_(False)
        # The official loop draws a fresh prompt batch for the G update.
        picks = torch.randint(len(prompts), (config.batch_size,), generator=rng).tolist()
        texts = [prompts[i] for i in picks]
        for start in range(0, config.batch_size, b):
            chunk = texts[start:start + b]
            x_g = generator_x0(chunk, torch.randn(b, *sid.sample_shape, generator=rng), True)
            t = torch.randint(config.t_min, config.t_max + 1, (b,), generator=rng)
            x_t = add_noise(x_g, torch.randn(x_g.shape, generator=rng), t, schedule)
            y_real = unet_x0(sid.teacher, x_t, t, chunk, scales.kappa4)
            y_fake = unet_x0(sid.fake_score, x_t, t, chunk, scales.kappa2)
            loss = sid_generator_loss(y_real, y_fake, x_g, config.alpha)
            if torch.isnan(loss):
                loss = torch.zeros_like(loss, requires_grad=True)
            (loss * b / config.batch_size).backward()
        sid.fake_score.requires_grad_(True)
        _clean_grads(sid.generator)
        sid.opt_generator.step()
        sid.update_ema(step[0] * config.batch_size)
        step[0] += 1

    return iteration


def profile_summary(fn, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def _fresh_sid(teacher, config, uncond, cls=SiD):
    # Each measurement starts from the teacher's weights and fresh optimisers.
    return cls(copy.deepcopy(teacher.unet), NoiseSchedule(teacher.alphas_cumprod),
               teacher.sample_shape, uncond, config)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="embedded:default")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per row")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--reference", default=REFERENCE_REVISION,
                        help="git revision whose loop is the 'before' column "
                             f"(default {REFERENCE_REVISION}, one prompt batch per iteration)")
    args = parser.parse_args(argv)
    reference = reference_sid_class(args.reference)
    if args.threads:
        torch.set_num_threads(args.threads)
    # The CPU is what this benchmark is about; a CUDA machine's GPU is left alone.
    teacher = load_config_teacher(args.teacher).to("cpu")
    prompts = load_prompts("embedded:train")
    uncond = teacher.encode_prompts([""])
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; teacher {teacher.teacher_id} ({teacher.teacher_hash}); "
          f"default DistillConfig; median of {args.iterations} iterations after 2 warm-up")
    print()
    print("Seconds per iteration; ratio and speedup from process CPU time (robust to other "
          "jobs sharing the machine).")
    print()
    if reference is None:
        print(f"(no 'before' column: git revision {args.reference} is not available here)\n")
    print("| strategy | UNet passes (fwd+bwd) | ours wall s/it | ours CPU s/it "
          "| bare UNet CPU s/it "
          "| ours/bare (goal <= 1.10) | official CPU s/it | speedup (goal >= 1.15) "
          f"| before ({args.reference}) CPU s/it | ours/before |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = {}
    for strategy in STRATEGIES:
        config = DistillConfig(strategy=strategy, kappa=2.0, teacher=args.teacher)
        rng = torch.Generator().manual_seed(0)
        fns = {"ours": ours(_fresh_sid(teacher, config, uncond), teacher, prompts, rng),
               "bare": bare(_fresh_sid(teacher, config, uncond), teacher),
               "official": official(_fresh_sid(teacher, config, uncond), teacher, prompts, rng)}
        if reference is not None:
            fns["before"] = before(_fresh_sid(teacher, config, uncond, reference), teacher,
                                   prompts, rng)
        timed = time_interleaved(fns, args.iterations)
        wall, s_ours = timed["ours"]
        s_bare, s_official = timed["bare"][1], timed["official"][1]
        s_before = timed["before"][1] if "before" in timed else math.nan
        results[strategy] = {"ours_wall": wall, "ours": s_ours, "bare": s_bare,
                             "official": s_official, "before": s_before}
        forward, backward = guidance_scales(strategy, 2.0).unet_passes()
        print(f"| {strategy} | {forward} + {backward} | {wall:.3f} | {s_ours:.3f} | {s_bare:.3f} | "
              f"{s_ours / s_bare:.2f} | {s_official:.3f} | {s_official / s_ours:.2f}x "
              f"| {s_before:.3f} | {s_ours / s_before:.2f} |", flush=True)
    if not args.no_profile:
        config = DistillConfig(strategy="lsg", kappa=2.0, teacher=args.teacher)
        fn = ours(_fresh_sid(teacher, config, uncond), teacher, prompts,
                  torch.Generator().manual_seed(0))
        fn()
        print("\nlsg, one iteration of ours, by self CPU time (torch.profiler):\n")
        print(profile_summary(fn))
    return results


if __name__ == "__main__":
    main()
