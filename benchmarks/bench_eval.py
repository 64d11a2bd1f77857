"""Benchmark of evaluation: 2,000 embedded images (FID + CLIP + adherence) and CLIP training.

Targets: evaluation <= 30 s on 2 cores once the reference features are
cached; embedded CLIP training <= 3 minutes. Run from the repository root:

    .venv/bin/python -m benchmarks.bench_eval [--skip-training]

Prints a Markdown fragment (a section of BENCHMARKS.md). Uses a temporary
ABLATE_HOME so the cache starts cold and nothing is left behind.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--skip-training", action="store_true",
                        help="skip the embedded CLIP training benchmark (minutes)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        os.environ["ABLATE_HOME"] = home
        import torch

        from distill import world
        from evaluation import embedded_suite
        from evaluation.adherence import adherence
        from evaluation.clip_model import clip_config, train_clip

        n = args.num_images
        suite, cold = _timed(embedded_suite, n)
        _, warm = _timed(embedded_suite, n)
        # Stand-in for generated images: held-out captions, renders the reference never
        # saw, slightly blurred, so FID is a real non-zero distance.
        from torchvision.transforms.functional import gaussian_blur

        images = gaussian_blur(world.reference_set(n, seed=7)[1], kernel_size=5, sigma=0.6)
        captions = suite.captions
        metrics, total = _timed(suite.evaluate, images, captions)
        _, fid_s = _timed(suite.extractor.images_features, images)
        _, clip_s = _timed(suite.clip.score, images, captions)
        _, adherence_s = _timed(adherence, images, [world.parse_caption(c) for c in captions])

        rows = [
            ("suite build, cold cache (reference features computed)", cold, ""),
            ("suite build, warm cache", warm, ""),
            (f"evaluate {n} images: FID + CLIP + adherence", total, "<= 30 s"),
            ("  of which FID features", fid_s, ""),
            ("  of which CLIP score", clip_s, ""),
            ("  of which adherence", adherence_s, ""),
        ]
        if not args.skip_training:
            stats, train_s = _timed(train_clip, clip_config("default"),
                                    Path(home) / "bench-clip", False)
            rows.append((f"embedded CLIP training ({stats['train_steps']} steps)", train_s,
                         "<= 180 s"))

    print(f"### Evaluation\n\nMachine: {platform.machine()} CPU, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads.\n")
    print("| what | seconds | target |\n|---|---:|---|")
    for what, seconds, target in rows:
        print(f"| {what} | {seconds:.2f} | {target} |")
    print("\nMetrics of the stand-in set: "
          + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
