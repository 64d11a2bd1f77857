"""Train embedded-teacher candidates on a lent GPU and judge them with the analyzer.

This is how the shipped teacher was made (RESULTS.md, "The embedded teacher", judges it;
BENCHMARKS.md times its training): the 2-core CPU machine was saturated by other work,
so the candidates were trained with the
project's own `train_embedded` on CUDA, and each was judged by the model-free
analyzer on 25-step DDIM samples of held-out prompts at CFG 1 and 3.

    python -m benchmarks.gpu_teacher OUT_DIR VARIANT [VARIANT ...]

VARIANT is ``name:key=value,key=value`` over TeacherConfig fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch


def _parse_variant(text: str):
    from distill.teacher import teacher_config

    name, _, spec = text.partition(":")
    overrides = {}
    for item in filter(None, spec.split(",")):
        key, value = item.split("=")
        overrides[key] = type(getattr(teacher_config("default"), key))(value)
    return name, dataclasses.replace(teacher_config("default"), **overrides)


@torch.no_grad()
def ddim(teacher, prompts, steps, guidance, seed, device):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(teacher.scheduler.config, clip_sample=False,
                                          set_alpha_to_one=False)
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((len(prompts), *teacher.sample_shape), generator=gen).to(device)
    cond = teacher.encode_prompts(prompts)
    uncond = teacher.encode_prompts([""]).expand_as(cond)
    for t in scheduler.timesteps:
        tt = torch.full((len(prompts),), int(t), device=device)
        if guidance == 1.0:
            eps = teacher.unet(x, tt, cond).sample
        else:
            both = teacher.unet(torch.cat([x, x]), torch.cat([tt, tt]),
                                torch.cat([uncond, cond])).sample
            eps_u, eps_c = both.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        x = scheduler.step(eps, t, x).prev_sample
    return x.clamp(-1, 1).cpu()


def judge(directory: Path, device: str, num_prompts: int) -> dict:
    from distill import world
    from distill.teacher import load_teacher
    from evaluation.adherence import adherence

    teacher = load_teacher(directory, device=device)
    captions, _ = world.reference_set(num_prompts)
    out = {}
    for guidance in (1.0, 2.0, 3.0):
        images = ddim(teacher, [c.text for c in captions], 25, guidance, 0, device)
        out[f"cfg{guidance:g}"] = adherence(images, captions)
        if guidance == 3.0:
            from PIL import Image

            grid = world.to_uint8(images[:64]).reshape(8, 8, 16, 16, 3)
            grid = grid.transpose(0, 2, 1, 3, 4).reshape(128, 128, 3)
            Image.fromarray(grid).resize((512, 512), Image.NEAREST).save(
                directory.parent / f"{directory.name}-grid.png")
    return out


def main() -> None:
    out_root = Path(sys.argv[1])
    out_root.mkdir(parents=True, exist_ok=True)
    if sys.argv[2] == "--one":  # worker: train and judge one variant
        from distill.teacher import train_embedded

        name, config = _parse_variant(sys.argv[3])
        start = time.time()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        stats = train_embedded(config, out_root / name, progress=False, device=device)
        num_prompts = int(os.environ.get("JUDGE_PROMPTS", "512"))
        result = {"name": name, "config": dataclasses.asdict(config), "stats": stats,
                  "wall_s": round(time.time() - start, 1),
                  "judge": judge(out_root / name, device, num_prompts)}
        (out_root / f"{name}.json").write_text(json.dumps(result, indent=2))
        with tarfile.open(out_root / f"{name}.tar", "w") as tar:
            tar.add(out_root / name, arcname=name)
        print(json.dumps(result["judge"], indent=1), flush=True)
        return
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_teacher", str(out_root),
                               "--one", v]) for v in sys.argv[2:]]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    main()
