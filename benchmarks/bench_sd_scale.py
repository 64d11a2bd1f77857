"""SD-scale plumbing on CPU: how fast the preflight answers, and whether a bf16 teacher holds up.

1. ``ablate run ablations/lsg.yaml --profile sd15`` on a machine without the weights:
   wall seconds to the exit-2 preflight message (fresh process, imports included).
2. The teacher φ in bf16 (``teacher_bf16``) against fp32: the generator's gradient after
   one SiD-LSG iteration on the same batch, for the embedded teachers (smoke and, when
   shipped, default): cosine similarity and relative L2 error.

    python -m benchmarks.bench_sd_scale        (prints a Markdown fragment)
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def preflight_seconds(repeats: int = 3) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ABLATE_DATA": str(Path(tmp) / "none"), "HF_HUB_OFFLINE": "1",
               "ABLATE_HOME": str(Path(tmp) / "home"),
               "ABLATE_PROFILES": str(Path(tmp) / "profiles.yaml")}
        (Path(tmp) / "profiles.yaml").write_text("sd15: {}\n")
        for _ in range(repeats):
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "orchestrator.cli", "run", "ablations/lsg.yaml",
                 "--profile", "sd15"], cwd=REPO, env=env, capture_output=True, text=True,
                check=False)
            times.append(time.perf_counter() - started)
            assert proc.returncode == 2, proc.stderr
    return times


def generator_gradient(teacher, config) -> torch.Tensor:
    from distill.guidance import NoiseSchedule
    from distill.loop import SiD
    from distill.streams import Streams

    torch.manual_seed(0)
    sid = SiD(teacher.unet, NoiseSchedule(teacher.alphas_cumprod), teacher.sample_shape,
              teacher.encode_prompts([""]), config)
    rng = Streams(config.seed)
    from distill import world

    prompts = [c.text for c in world.train_captions()][:config.batch_size]
    cond = teacher.encode_prompts(prompts)
    sid.iteration(cond, cond, rng)
    return torch.cat([p.grad.flatten() for p in sid.generator.parameters()])


def bf16_agreement(size: str) -> tuple[float, float]:
    from distill.config import DistillConfig
    from distill.teacher import ensure_teacher, load_teacher

    teacher = load_teacher(ensure_teacher(size, progress=False))
    config = DistillConfig(strategy="lsg", kappa=2.0, batch_size=16, micro_batch_size=16)
    fp32 = generator_gradient(teacher, config)
    bf16 = generator_gradient(teacher, dataclasses.replace(config, teacher_bf16=True))
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16, dim=0).item()
    return cosine, ((bf16 - fp32).norm() / fp32.norm()).item()


def main() -> None:
    from distill.teacher import TeacherError

    torch.set_num_threads(1)
    times = preflight_seconds()
    print("### SD scale on CPU (x86_64, 2 cores; other jobs shared the machine)\n")
    print(f"`ablate run ablations/lsg.yaml --profile sd15` without weights: exit 2 after "
          f"{min(times):.1f} s (best of {len(times)}; all: "
          + ", ".join(f"{t:.1f}" for t in times) + " s), naming all 6 missing files.\n")
    print("| teacher | φ in bf16 vs fp32: cosine of G's gradient | relative L2 error |")
    print("|---|---:|---:|")
    for size in ("smoke", "default"):
        try:
            cosine, relative = bf16_agreement(size)
        except TeacherError as exc:
            print(f"| embedded {size} | not measured: {exc} | |")
            continue
        print(f"| embedded {size} | {cosine:.5f} | {relative:.2%} |")


if __name__ == "__main__":
    main()
