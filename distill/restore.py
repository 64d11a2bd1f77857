"""What a distillation run leaves behind, loaded back: the EMA generator of a checkpoint.

Only that one network is read and built (not the fake score, the training generator or
their Adam states), so evaluating an SD-size checkpoint costs one UNet, not a whole run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from distill import checkpoint
from distill.config import DistillConfig, from_dict
from distill.errors import CheckpointError
from distill.generator import SampleFn, sampler
from distill.guidance import NoiseSchedule
from distill.inputs import load_config_teacher

EMA_PREFIX = "generator_ema."


@dataclass(frozen=True)
class RestoredGenerator:
    """A distilled one-step generator: its config, step, teacher and sampler."""

    directory: Path
    config: DistillConfig
    step: int
    teacher: object  # distill.teacher.Teacher: its text encoder and decoder frame the UNet
    sample: SampleFn

    def describe(self) -> str:
        return (f"generator {self.directory} (step {self.step}, {self.config.strategy}, "
                f"kappa {self.config.kappa})")


@dataclass(frozen=True)
class SavedGenerator:
    """A checkpoint's EMA weights and config, read and checked; no teacher loaded yet."""

    directory: Path
    config: DistillConfig
    meta: dict
    tensors: dict


def read_generator(workdir: Path) -> SavedGenerator:
    """The EMA weights of a distillation workdir (or its ``checkpoint/`` folder), read
    before anything is built, so a missing or damaged checkpoint is refused first.

    Refuses (:class:`CheckpointError`, naming the folder) a folder without a checkpoint
    and one whose files are all unreadable."""
    workdir = Path(workdir)
    directory = workdir / "checkpoint" if (workdir / "checkpoint").is_dir() else workdir
    if not checkpoint.exists(directory):
        raise CheckpointError(
            f"{directory}: no checkpoint here ({checkpoint.STATE_JSON} missing); give a "
            "distillation workdir or its checkpoint/ folder")
    tensors, meta = checkpoint.load(directory, prefix=EMA_PREFIX)
    config = from_dict(DistillConfig, meta["config"], source=str(directory / checkpoint.STATE_JSON))
    return SavedGenerator(directory, config, meta, tensors)


def load_generator(workdir: Path | SavedGenerator, progress: bool = False) -> RestoredGenerator:
    """The EMA generator of a distillation workdir (or of what :func:`read_generator`
    read from one), with the teacher its config names.

    Refuses (:class:`CheckpointError`, naming the folder) what :func:`read_generator`
    refuses and a checkpoint distilled from another teacher than its config names now.
    """
    saved = workdir if isinstance(workdir, SavedGenerator) else read_generator(workdir)
    directory, config, meta = saved.directory, saved.config, saved.meta
    teacher = load_config_teacher(config.teacher, progress=progress)
    if meta.get("teacher_hash") != teacher.teacher_hash:
        raise CheckpointError(
            f"{directory}: distilled from teacher {meta.get('teacher_hash')}, but "
            f"{config.teacher} is now {teacher.teacher_hash}; evaluate with that teacher")
    device = next(teacher.unet.parameters()).device
    unet = copy.deepcopy(teacher.unet).requires_grad_(False).eval()
    try:
        unet.load_state_dict({k[len(EMA_PREFIX):]: v.to(device)
                              for k, v in saved.tensors.items()})
    except RuntimeError as exc:  # torch's size-mismatch / missing-key report, pages long
        first = " ".join(str(exc).split("\n\t")[1:2]) or str(exc).splitlines()[0]
        raise CheckpointError(
            f"{directory}: its generator does not fit {config.teacher}'s architecture "
            f"({first[:200]}); evaluate it with the teacher it was distilled from") from None
    schedule = NoiseSchedule(teacher.alphas_cumprod, device)
    sample = sampler(unet, schedule, teacher.sample_shape, config.t_init, config.precision,
                     teacher.encode_prompts, teacher.decode)
    return RestoredGenerator(directory, config, int(meta["step"]), teacher, sample)
