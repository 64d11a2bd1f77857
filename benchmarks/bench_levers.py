"""Where a trial's CPU time goes, and the levers tried to make it cheaper .

    python -m benchmarks.bench_levers [--iterations 6] [--compile] [--skip-layout]

At the embedded default config, one process, median process-CPU seconds:

* one lsg iteration as the loop runs it, then the same with each lever: channels-last
  networks, bf16 autocast (``precision: bf16``; it pays only where the CPU has bf16
  units), PyTorch's math attention instead of the fused CPU kernel, and
  ``torch.compile`` of all three UNets (``--compile``; compiling dominates the first
  iteration, BENCHMARKS.md);
* one evaluation of 2000 held-out images, split into generation, FID features, CLIP score
  and adherence, at three sampling chunk sizes;
* thread layout: iterations per second of two trials at one thread each (two processes at
  once) against one trial at two threads, on the same two cores (``--skip-layout`` skips it).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time

import torch

from benchmarks.bench_core import _time, time_interleaved
from distill import generator
from distill.config import DistillConfig
from distill.guidance import NoiseSchedule
from distill.inputs import draw_prompts, load_config_teacher, load_prompts
from distill.loop import SiD
from distill.streams import Streams


def _sid(teacher, config: DistillConfig, channels_last: bool = False) -> SiD:
    unet = copy.deepcopy(teacher.unet)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    return SiD(unet, NoiseSchedule(teacher.alphas_cumprod), teacher.sample_shape,
               teacher.encode_prompts([""]), config)


def _iteration(sid: SiD, teacher, prompts):
    rng = Streams(0)

    def run():
        conds = [teacher.encode_prompts(draw_prompts(prompts, sid.config.batch_size,
                                                     rng[f"prompts_{update}"]))
                 for update in ("fake_score", "generator")]
        assert sid.iteration(*conds, rng) is not None

    return run


def iteration_levers(teacher, prompts, iterations: int, compile_unets: bool) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = DistillConfig(strategy="lsg", kappa=2.0)
    plain = _iteration(_sid(teacher, config), teacher, prompts)
    # Channels-last weights make every convolution's output channels-last too.
    channels_last = _iteration(_sid(teacher, config, True), teacher, prompts)
    math_run = _iteration(_sid(teacher, config), teacher, prompts)
    bf16 = _iteration(_sid(teacher, dataclasses.replace(config, precision="bf16")), teacher,
                      prompts)

    def math_attention():
        with sdpa_kernel(SDPBackend.MATH):
            math_run()

    timed = time_interleaved({"plain": plain, "channels-last": channels_last,
                              "math attention": math_attention, "bf16 autocast": bf16},
                             iterations)
    rows = {name: cpu for name, (_, cpu) in timed.items()}
    if compile_unets:
        sid = _sid(teacher, config)
        for name in ("generator", "fake_score", "teacher"):
            setattr(sid, name, torch.compile(getattr(sid, name)))
        run = _iteration(sid, teacher, prompts)
        started = time.perf_counter()
        run()  # compiles forward and backward for every batch shape of an iteration
        rows["torch.compile (first iteration, compiling)"] = time.perf_counter() - started
        rows["torch.compile"] = _time(run, iterations)[1]
    return rows


def evaluation_cost(teacher) -> dict:
    import evaluation
    from distill import world
    from evaluation.adherence import adherence

    suite = evaluation.embedded_suite(2000, seed=0)
    sid = _sid(teacher, DistillConfig())
    sample = sid.sample_fn(teacher.encode_prompts, teacher.decode)
    rows = {}
    for chunk in (64, 256, 1024):
        generator.EVAL_CHUNK = chunk
        start = time.process_time()
        images = suite.generate(sample, 0)
        rows[f"generate 2000 (chunk {chunk})"] = time.process_time() - start
    generator.EVAL_CHUNK = 256
    for name, fn in (("FID features", lambda: suite.extractor.images_features(images)),
                     ("CLIP score", lambda: suite.clip.score(images, suite.captions)),
                     ("adherence", lambda: adherence(
                         images, [world.parse_caption(c) for c in suite.captions]))):
        start = time.process_time()
        fn()
        rows[name] = time.process_time() - start
    return rows


_WORKER = """
import json, sys, time, torch
from benchmarks.bench_levers import _iteration, _sid
from distill.config import DistillConfig
from distill.inputs import load_config_teacher, load_prompts
threads, iterations = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
teacher = load_config_teacher("embedded:default")
run = _iteration(_sid(teacher, DistillConfig(strategy="lsg")), teacher,
                 load_prompts("embedded:train"))
run()
start = time.perf_counter()
for _ in range(iterations):
    run()
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def _workers(threads: int, processes: int, iterations: int) -> float:
    """Iterations per second of ``processes`` trials at ``threads`` threads, all at once."""
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(threads), str(iterations)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ})
             for _ in range(processes)]
    seconds = [json.loads(p.communicate()[0].strip().splitlines()[-1])["seconds"] for p in procs]
    return processes * iterations / max(seconds)


def thread_layout(iterations: int) -> dict:
    return {"2 trials x 1 thread": _workers(1, 2, iterations),
            "1 trial x 2 threads": _workers(2, 1, iterations)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--skip-layout", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    teacher = load_config_teacher("embedded:default")
    prompts = load_prompts("embedded:train")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"process CPU seconds at 1 torch thread, median of {args.iterations}")
    results = {"iteration": iteration_levers(teacher, prompts, args.iterations, args.compile)}
    plain = results["iteration"]["plain"]
    print("\n| lsg iteration (batch 16) | CPU s | vs plain |\n|---|---|---|")
    for name, seconds in results["iteration"].items():
        print(f"| {name} | {seconds:.3f} | {seconds / plain:.2f} |")
    results["evaluation"] = evaluation_cost(teacher)
    print("\n| evaluation, 2000 images | CPU s |\n|---|---|")
    for name, seconds in results["evaluation"].items():
        print(f"| {name} | {seconds:.2f} |")
    if not args.skip_layout:
        results["layout"] = thread_layout(args.iterations * 2)
        print("\n| thread layout on 2 cores (lsg) | iterations/s |\n|---|---|")
        for name, rate in results["layout"].items():
            print(f"| {name} | {rate:.3f} |")
    return results


if __name__ == "__main__":
    main()
