"""Subcommands of the distillation core: ``ablate teacher`` and ``ablate distill``."""

from __future__ import annotations

import argparse
from pathlib import Path

GRID_IMAGES = 32  # samples in the grid `ablate distill` writes
GRID_UPSCALE = 4  # nearest-neighbour, so 16x16 embedded samples are visible
EVAL_SEED = 0  # the same noise for every run, so runs are compared on equal footing


def __getattr__(name: str):
    # EXPECTED_ERRORS is looked up only when a command fails; resolving it lazily keeps
    # `ablate --help` free of torch imports.
    if name == "EXPECTED_ERRORS":
        from distill.checkpoint import CheckpointError

        return (CheckpointError,)
    raise AttributeError(name)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "teacher",
        help="train or reuse the embedded teacher; prints its directory last",
        description=(
            "Train or reuse the embedded world's teacher diffusion model (UNet + CLIP text "
            "encoder + tokenizer + DDPM scheduler, saved in Stable Diffusion's directory "
            "layout). The default teacher ships in the repository (distill/assets/); other "
            "sizes are trained once and cached under $ABLATE_HOME/cache/teachers by config "
            "hash. The teacher's directory is the last line of standard output."),
    )
    p.add_argument("--size", default="default", choices=["default", "smoke"],
                   help="teacher size: 'default' (shipped) or 'smoke' (seconds; for tests)")
    p.add_argument("--rebuild-shipped", action="store_true",
                   help="retrain the shipped default teacher deterministically and overwrite it "
                        "(tens of minutes on 2 cores); this is what `make teacher` runs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=_teacher)

    d = sub.add_parser(
        "distill",
        help="run one distillation trial without Ray (for debugging)",
        description=(
            "Distill the teacher into a one-step generator with SiD and the config's guidance "
            "strategy, in the foreground: a progress bar shows iteration, both losses and "
            "images/s. Resumes if the workdir holds a checkpoint. At the end it evaluates the "
            "EMA generator (embedded teachers: prompt adherence on held-out captions) and "
            "writes samples.png into the workdir."),
    )
    d.add_argument("config", help="YAML mapping of DistillConfig fields (see "
                                  "examples/distill-smoke.yaml)")
    d.add_argument("--size", default="default", choices=["default", "smoke"],
                   help="apply the size preset on top of the file (smoke: seconds)")
    d.add_argument("--workdir", type=Path, default=None,
                   help="where checkpoints and samples go (default: "
                        "$ABLATE_HOME/distill/<config name>-<config hash>)")
    d.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    d.set_defaults(handler=_distill)


def _teacher(args: argparse.Namespace) -> int:
    from distill import teacher

    if args.rebuild_shipped:
        if args.size != "default":
            raise teacher.TeacherError("--rebuild-shipped applies to --size default only")
        directory = teacher.rebuild_shipped(progress=not args.no_progress)
    else:
        directory = teacher.ensure_teacher(args.size, progress=not args.no_progress)
    print(directory)
    return 0


def _distill(args: argparse.Namespace) -> int:
    from distill import config as config_mod
    from distill import paths, world
    from distill.loop import distill, load_config_teacher

    values = {**config_mod.load_yaml(args.config), **config_mod.SIZE_PRESETS[args.size]}
    config = config_mod.from_dict(config_mod.DistillConfig, values, source=str(args.config))
    workdir = args.workdir or (paths.output_root() / "distill"
                               / f"{Path(args.config).stem}-{config_mod.trial_id(config)}")
    if workdir.exists() and not workdir.is_dir():
        raise config_mod.ConfigError(f"--workdir {workdir}: is a file, not a folder; give a "
                                     "folder for the checkpoints")
    teacher = load_config_teacher(config.teacher, progress=not args.no_progress)
    embedded = config.teacher.startswith("embedded:")
    captions = world.heldout_captions()
    evaluate = adherence_evaluator(config.eval_num_images) if embedded else None
    result = distill(config, workdir, teacher=teacher, evaluate=evaluate,
                     progress=not args.no_progress)
    if result.status == "diverged":
        print(f"diverged after {result.iterations} iterations (a loss became NaN/inf); "
              f"last checkpoint: {result.checkpoint_dir}")
        return 1
    grid_prompts = ([captions[i % len(captions)].text for i in range(GRID_IMAGES)] if embedded
                    else [])
    _write_grid(config, workdir, teacher, grid_prompts)
    print(" ".join(f"{k}={v:.4g}" for k, v in sorted(result.final_metrics.items())))
    print(workdir)
    return 0


def adherence_evaluator(num_images: int, seed: int = EVAL_SEED):
    """evaluate(sample_fn, step) -> the analyzer's adherence on ``num_images`` held-out
    captions (cycling through all of them, so each is equally represented)."""
    from distill import world
    from evaluation.adherence import adherence

    pool = world.heldout_captions()
    captions = [pool[i % len(pool)] for i in range(num_images)]

    def evaluate(sample_fn, step: int) -> dict[str, float]:
        del step
        return adherence(sample_fn([c.text for c in captions], seed), captions)

    return evaluate


def _write_grid(config, workdir: Path, teacher, prompts: list[str]) -> None:
    """samples.png from the final checkpoint's EMA generator (row-major, 8 per row)."""
    import torch
    from PIL import Image
    from torchvision.utils import make_grid

    from distill import checkpoint, world
    from distill.guidance import NoiseSchedule
    from distill.loop import SiD, load_prompts

    prompts = prompts or load_prompts(config.prompts)[:GRID_IMAGES]
    device = next(teacher.unet.parameters()).device
    sid = SiD(teacher.unet, NoiseSchedule(teacher.alphas_cumprod, device), teacher.sample_shape,
              teacher.encode_prompts([""]), config)
    tensors, _ = checkpoint.load(workdir / "checkpoint")
    sid.load_state_tensors(tensors, torch.Generator(device=device))
    images = sid.sample_fn(teacher.encode_prompts, teacher.decode)(prompts, EVAL_SEED)
    grid = make_grid(images, nrow=8, padding=1, pad_value=1.0)
    pixels = world.to_uint8(grid.unsqueeze(0))[0]
    image = Image.fromarray(pixels)
    image = image.resize((image.width * GRID_UPSCALE, image.height * GRID_UPSCALE),
                         Image.NEAREST)
    image.save(workdir / "samples.png")
    (workdir / "samples.txt").write_text("\n".join(prompts) + "\n")
