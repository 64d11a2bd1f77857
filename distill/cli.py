"""The distillation core's subcommand: ``ablate teacher``.

``ablate distill`` (one trial in the foreground) evaluates with the evaluation package, so
it lives above both, in :mod:`orchestrator.distill_cli`.
"""

from __future__ import annotations

import argparse


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
                        "(a long CPU job; its time: BENCHMARKS.md); this is what `make teacher` "
                        "runs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=_teacher)


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
