"""``ablate distill``: one distillation trial in the foreground, without Ray or MLflow.

It sits above the core and the evaluation package because it uses both: the core
distils, the analyzer scores adherence at the end, and the grid shows the samples.
"""

from __future__ import annotations

import argparse
from pathlib import Path

GRID_IMAGES = 32  # samples in the grid `ablate distill` writes
GRID_UPSCALE = 4  # nearest-neighbour, so 16x16 embedded samples are visible
EVAL_SEED = 0  # the same noise for every run, so runs are compared on equal footing


def register(sub: argparse._SubParsersAction) -> None:
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




def _distill(args: argparse.Namespace) -> int:
    from distill import config as config_mod
    from distill import paths, world
    from distill.inputs import load_config_teacher
    from distill.loop import distill
    from evaluation.adherence import adherence_evaluator

    values = {**config_mod.load_yaml(args.config), **config_mod.SIZE_PRESETS[args.size]}
    config = config_mod.from_dict(config_mod.DistillConfig, values, source=str(args.config))
    workdir = args.workdir or (paths.output_root() / "distill"
                               / f"{Path(args.config).stem}-{config_mod.trial_id(config)}")
    if workdir.exists() and not workdir.is_dir():
        raise config_mod.ConfigError(f"--workdir {workdir}: is a file, not a folder; give a "
                                     "folder for the checkpoints")
    teacher = load_config_teacher(config.teacher, progress=not args.no_progress)
    embedded = config.teacher.startswith("embedded:")
    evaluate = adherence_evaluator(config.eval_num_images, EVAL_SEED) if embedded else None
    result = distill(config, workdir, teacher=teacher, evaluate=evaluate,
                     progress=not args.no_progress)
    if result.status == "diverged":
        print(f"diverged after {result.iterations} iterations (a loss became NaN/inf); "
              f"last checkpoint: {result.checkpoint_dir}")
        return 1
    captions = world.heldout_captions()
    grid_prompts = ([captions[i % len(captions)].text for i in range(GRID_IMAGES)] if embedded
                    else [])
    _write_grid(workdir, grid_prompts)
    print(" ".join(f"{k}={v:.4g}" for k, v in sorted(result.final_metrics.items())))
    print(workdir)
    return 0


def _write_grid(workdir: Path, prompts: list[str]) -> None:
    """samples.png from the final checkpoint's EMA generator (row-major, 8 per row)."""
    from PIL import Image
    from torchvision.utils import make_grid

    from distill import world
    from distill.inputs import load_prompts
    from distill.restore import load_generator

    generator = load_generator(workdir)
    prompts = prompts or load_prompts(generator.config.prompts)[:GRID_IMAGES]
    images = generator.sample(prompts, EVAL_SEED)
    grid = make_grid(images, nrow=8, padding=1, pad_value=1.0)
    pixels = world.to_uint8(grid.unsqueeze(0))[0]
    image = Image.fromarray(pixels)
    image = image.resize((image.width * GRID_UPSCALE, image.height * GRID_UPSCALE),
                         Image.Resampling.NEAREST)
    image.save(workdir / "samples.png")
    (workdir / "samples.txt").write_text("\n".join(prompts) + "\n")
