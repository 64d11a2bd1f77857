"""Subcommands of evaluation: ``ablate eval`` and ``ablate metric-models``."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a distilled generator checkpoint or the teacher; prints the metrics",
        description=(
            "Evaluate a one-step generator checkpoint (a distillation workdir, or its "
            "checkpoint/ folder) or the teacher's multi-step DDIM samples (--teacher) with the "
            "protocol of the run: FID (clean-fid; key carries the image count, e.g. fid2k), "
            "CLIP score (open_clip, raw mean cosine) and, in the embedded world, the model-free "
            "prompt adherence. Real-world evaluation (--real) needs local files only: caption "
            "file, FID reference, clean-fid Inception, open_clip ViT-g-14 checkpoint."),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, metavar="WORKDIR",
                        help="distillation workdir (or its checkpoint/ folder) to evaluate")
    source.add_argument("--teacher", nargs="?", const="embedded:default", metavar="SPEC",
                        help="evaluate the teacher: 'embedded:default' (the default when the "
                             "flag is given alone), 'embedded:smoke', or a model directory")
    p.add_argument("--steps", type=int, default=25, help="teacher DDIM steps (default 25)")
    p.add_argument("--guidance-scale", type=float, default=None, metavar="KAPPA",
                   help="teacher CFG scale κ (default: DistillConfig's kappa, 2.0)")
    p.add_argument("--num-images", type=int, default=None,
                   help="evaluation images, one per held-out caption (default 2000 -> fid2k; "
                        "with --real 30000, the paper's, as FID on Inception's 2048 "
                        "dimensions needs more images than that)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--prompt-prefix", default=None,
                   help="text put before every prompt for the CLIP score (default: '' embedded, "
                        "'A photo depicts ' real)")
    p.add_argument("--grid", type=Path, default=None, metavar="PNG",
                   help="also write a sample grid (prompts as row labels) to this PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    real = p.add_argument_group("real world (Stable Diffusion)")
    real.add_argument("--real", action="store_true", help="use the paper's COCO protocol")
    real.add_argument("--captions", type=Path, help="caption file, one per line (COCO-2014 val)")
    real.add_argument("--reference", type=Path,
                      help="clean-fid statistics (.npz with mu, sigma) or a reference image folder")
    real.add_argument("--inception-dir", type=Path, default=Path("/tmp"),
                      help="folder holding inception-2015-12-05.pt (default /tmp, as clean-fid)")
    real.add_argument("--clip-checkpoint", type=Path,
                      help="open_clip ViT-g-14 laion2b_s12b_b42k checkpoint file")
    p.set_defaults(handler=_eval)

    m = sub.add_parser(
        "metric-models",
        help="check, or retrain, the embedded world's CLIP (CLIP score and FID features)",
        description=(
            "The embedded world's metric model is a small open_clip CLIP trained contrastively "
            "on the world; its image tower is also the FID feature extractor. The default one "
            "ships in evaluation/assets/embedded-clip (fp16, with config and content hash). "
            "Without options this verifies it and prints its directory last."),
    )
    m.add_argument("--size", default="default", choices=["default", "smoke"],
                   help="'default' (shipped) or 'smoke' (seconds; cached, for tests)")
    m.add_argument("--rebuild-shipped", action="store_true",
                   help="retrain the shipped default CLIP deterministically and overwrite it "
                        "(a CPU job; its time: BENCHMARKS.md); this is what `make metric-models` "
                        "runs")
    m.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    m.set_defaults(handler=_metric_models)


def _metric_models(args: argparse.Namespace) -> int:
    from evaluation import clip_model

    if args.rebuild_shipped:
        if args.size != "default":
            raise clip_model.MetricModelError("--rebuild-shipped applies to --size default only")
        stats = clip_model.rebuild_shipped(progress=not args.no_progress)
        print(json.dumps(stats["retrieval"]))
        directory = clip_model.SHIPPED_CLIP_DIR
    else:
        directory = clip_model.ensure_clip(args.size, progress=not args.no_progress)
    clip = clip_model.load_clip(directory)  # verifies the content hash
    print(f"weights_hash {clip.weights_hash}")
    print(directory)
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    """The flags' values, before anything is read or built."""
    from distill.config import MAX_EVAL_IMAGES, MIN_EVAL_IMAGES
    from evaluation.errors import EvalError

    if args.num_images is None:  # the SD profiles' eval_num_images under --real
        args.num_images = 30_000 if args.real else 2000
    if not MIN_EVAL_IMAGES <= args.num_images <= MAX_EVAL_IMAGES:
        raise EvalError(f"--num-images {args.num_images}: must be in {MIN_EVAL_IMAGES}.."
                        f"{MAX_EVAL_IMAGES:,} (FID needs a covariance; the paper uses 30,000)")
    if args.steps < 1:
        raise EvalError(f"--steps {args.steps}: the teacher's DDIM sampler needs >= 1 step")
    if args.guidance_scale is not None and not (math.isfinite(args.guidance_scale)
                                                and args.guidance_scale > 0):
        raise EvalError(f"--guidance-scale {args.guidance_scale}: must be a finite number > 0")
    from evaluation.suite import fid_feature_dims

    # ``_suite``: --real scores with clean-fid's Inception, otherwise the shipped CLIP.
    dims = fid_feature_dims("paper" if args.real else "embedded", "default", not args.real)
    if args.num_images <= dims:
        raise EvalError(f"--num-images {args.num_images}: FID on {dims}-dimensional features "
                        f"needs more images than dimensions (at least {dims + 1}; thousands "
                        "for a stable number)")
    _check_output_and_seed(args)
    _check_teacher(args)
    missing = [f"--{n.replace('_', '-')}" for n in ("captions", "reference", "clip_checkpoint")
               if getattr(args, n) is None]
    if args.real and missing:
        raise EvalError(f"--real needs {', '.join(missing)} (local files; nothing is "
                        "downloaded)")


def _check_output_and_seed(args: argparse.Namespace) -> None:
    """--seed within torch's range and --grid a PNG path that can be written: both failed
    only after minutes of evaluation, losing its metrics."""
    import tempfile

    from distill.config import MAX_SEED
    from evaluation.errors import EvalError

    if not 0 <= args.seed <= MAX_SEED:
        raise EvalError(f"--seed {args.seed}: must be in 0..2^63-1 (torch's generator seed)")
    if args.grid is None:
        return
    grid = args.grid.expanduser()
    if grid.suffix.lower() != ".png":
        raise EvalError(f"--grid {grid}: give a file name ending in .png")
    if grid.is_dir():
        raise EvalError(f"--grid {grid}: is a folder; give a .png file name inside it")
    try:  # the folder must take a new file (os.access says yes to root on read-only mounts)
        with tempfile.NamedTemporaryFile(dir=grid.parent, prefix=".grid-test-"):
            pass
    except OSError as exc:
        raise EvalError(f"--grid {grid}: cannot write in {grid.parent} "
                        f"({exc.strerror or exc}); give a writable path") from None


def _check_teacher(args: argparse.Namespace) -> None:
    """--teacher names an embedded size or a folder, checked before any cache is made."""
    from distill.teacher import TEACHER_SIZES
    from evaluation.errors import EvalError

    spec = args.teacher
    if spec is None:
        return
    if spec.startswith("embedded:"):
        if spec.removeprefix("embedded:") not in TEACHER_SIZES:
            raise EvalError(f"--teacher {spec}: unknown embedded size; choose one of "
                            + ", ".join(f"embedded:{s}" for s in TEACHER_SIZES))
    elif not Path(spec).expanduser().is_dir():
        raise EvalError(f"--teacher {spec}: no such model folder; give 'embedded:default' or "
                        "a diffusers model directory")


def _suite(args: argparse.Namespace):
    """The evaluation suite the flags name (checked by ``_check_arguments``)."""
    from evaluation.clip_score import EMBEDDED_PROMPT_PREFIX, REAL_PROMPT_PREFIX
    from evaluation.suite import embedded_suite, real_suite

    if args.real:
        prefix = REAL_PROMPT_PREFIX if args.prompt_prefix is None else args.prompt_prefix
        return real_suite(args.captions, args.reference, args.clip_checkpoint,
                          args.inception_dir, args.num_images, prefix, _device())
    prefix = EMBEDDED_PROMPT_PREFIX if args.prompt_prefix is None else args.prompt_prefix
    return embedded_suite(args.num_images, prompt_prefix=prefix)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _eval(args: argparse.Namespace) -> int:
    from distill.config import DistillConfig

    _check_arguments(args)
    saved = None
    if args.teacher is None:
        from distill.restore import read_generator

        # A missing or damaged checkpoint is refused before the suite is built (and cached).
        saved = read_generator(args.checkpoint)
    generator = None
    if saved is not None:
        from distill.restore import load_generator

        generator = load_generator(saved)  # another architecture: refused before the work
    suite = _suite(args)
    if args.teacher is not None:
        from distill.inputs import load_config_teacher
        from evaluation.baseline import teacher_sample_fn

        kappa = DistillConfig.kappa if args.guidance_scale is None else args.guidance_scale
        sample_fn = teacher_sample_fn(load_config_teacher(args.teacher), args.steps, kappa)
        what = f"teacher {args.teacher} (DDIM {args.steps} steps, kappa {kappa})"
    elif generator is not None:
        sample_fn, what = generator.sample, generator.describe()
    else:  # argparse's mutually exclusive group requires one of the two
        raise AssertionError("neither --teacher nor --checkpoint")
    # What suite.evaluate_sample_fn does, keeping the images for the grid.
    images = suite.generate(sample_fn, args.seed)
    metrics = suite.evaluate(images, suite.captions)
    # The metrics first: whatever happens to the grid, minutes of evaluation are not lost.
    if args.json:
        print(json.dumps({"evaluated": what, "protocol": suite.protocol, **metrics}), flush=True)
    else:
        print(f"evaluated {what}")
        print(f"protocol {suite.protocol}")
        for key, value in metrics.items():
            print(f"{key} {value:.6g}", flush=True)
    if args.grid is not None:
        from evaluation.grid import sample_grid

        sample_grid(images, suite.captions, args.grid.expanduser())
    return 0
