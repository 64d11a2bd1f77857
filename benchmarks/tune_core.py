"""How the DistillConfig defaults were chosen: many short distillations, judged by the analyzer.

    python -m benchmarks.tune_core OUT_DIR TEACHER_DIR VARIANT [VARIANT ...]

VARIANT is ``name:key=value,key=value`` over DistillConfig fields. Each variant
runs in its own process on the teacher's device (CUDA when present), evaluates
the EMA generator every ``eval_every`` iterations on ``eval_num_images``
held-out prompts with the model-free analyzer, and at the end also with two
more noise seeds (the evaluation noise). Results go to OUT_DIR/<name>.json.
The CPU time budget is measured separately by ``benchmarks.bench_core``.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

EXTRA_EVAL_SEEDS = (1, 2)


def _parse(text: str):
    from distill.config import DistillConfig, from_dict

    name, _, spec = text.partition(":")
    values = {}
    for item in filter(None, spec.split(",")):
        key, value = item.split("=")
        field = next(f for f in dataclasses.fields(DistillConfig) if f.name == key)
        values[key] = value if field.type in ("str", str) else json.loads(value)
    return name, from_dict(DistillConfig, values, source=f"variant {name}")


def run_variant(out_dir: Path, teacher_dir: str, variant: str) -> None:
    from distill.loop import distill
    from distill.teacher import load_teacher
    from evaluation.adherence import adherence_evaluator

    torch.set_num_threads(1)
    name, config = _parse(variant)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = load_teacher(teacher_dir, device)
    evaluate = adherence_evaluator(config.eval_num_images)
    log = []
    start = time.perf_counter()
    result = distill(config, out_dir / "work" / name, teacher=teacher,
                     report=lambda m, s: log.append({"step": s, **m}), evaluate=evaluate)
    seconds = time.perf_counter() - start
    noise = {}
    if result.status == "finished":
        from distill import checkpoint
        from distill.guidance import NoiseSchedule
        from distill.loop import SiD
        from distill.streams import Streams

        sid = SiD(teacher.unet, NoiseSchedule(teacher.alphas_cumprod, device), teacher.sample_shape,
                  teacher.encode_prompts([""]), config)
        sid.load_state_tensors(checkpoint.load(result.checkpoint_dir)[0],
                               Streams(0, device))
        sample_fn = sid.sample_fn(teacher.encode_prompts, teacher.decode)
        for seed in EXTRA_EVAL_SEEDS:
            noise[seed] = adherence_evaluator(config.eval_num_images, seed)(sample_fn, 0)
    (out_dir / f"{name}.json").write_text(json.dumps({
        "name": name, "config": dataclasses.asdict(config), "status": result.status,
        "seconds": seconds, "final": result.final_metrics, "log": log,
        "extra_seeds": noise}, indent=1))
    print(name, result.status, f"{seconds:.0f}s", json.dumps(result.final_metrics), flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--one":
        run_variant(Path(argv[1]), argv[2], argv[3])
        return
    out_dir, teacher_dir, variants = Path(argv[0]), argv[1], argv[2:]
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.tune_core", "--one",
                               str(out_dir), teacher_dir, v]) for v in variants]
    failed = [v for v, p in zip(variants, procs) if p.wait() != 0]
    if failed:
        raise SystemExit(f"variants failed: {failed}")


if __name__ == "__main__":
    main()
