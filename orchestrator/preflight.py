"""Preflight: every file a run needs, checked before anything starts.

A Stable Diffusion run needs six things on local disk. Without this check the first
missing one would surface minutes later, alone, from inside a Ray worker (or, for a
hub-style name, after huggingface_hub's retry loop); here all of them are listed at once,
each with what it is, where it was looked for and how to point the profile at it.
It reads file names only and loads no weights, so ``ablate run`` on a machine without
the weights exits 2 within seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distill.config import ConfigError
from orchestrator.profiles import PROFILES_ENV, Profile, _env_name, profiles_file

INCEPTION_FILE = "inception-2015-12-05.pt"  # clean-fid's name (evaluation.fid.INCEPTION_FILE)


class PreflightError(ConfigError):
    """Files missing for a profile; the message lists each one and how to provide it."""


@dataclass(frozen=True)
class Missing:
    field: str  # profile field that points at it
    path: Path
    what: str

    def line(self, profile: str) -> str:
        return (f"{self.what}: {self.path}\n      set `{self.field}:` under `{profile}:` in "
                f"{profiles_file()} (or ${_env_name(profile, self.field)})")


_SD_TEACHER = ("teacher directory ({}: diffusers layout with model_index.json, unet/, "
               "text_encoder/, tokenizer/, scheduler/, vae/)")
_TEACHER_NAMES = {"sd15": "Stable Diffusion 1.5", "sd21base": "Stable Diffusion 2.1-base"}
_VAE_FILES = ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin")


def _teacher_problems(profile: Profile) -> list[Missing]:
    """The teacher loader's own check (distill.teacher.check_teacher_dir), plus the VAE
    that an SD teacher needs to decode latents for evaluation."""
    from distill.teacher import check_teacher_dir

    directory = Path(profile.required("teacher"))
    what = _SD_TEACHER.format(_TEACHER_NAMES.get(profile.name, profile.name))
    if not directory.is_dir():
        return [Missing("teacher", directory, what + " does not exist")]
    missing = [line.split(": missing")[0] for line in check_teacher_dir(directory)]
    if not (directory / "vae" / "config.json").is_file():
        missing.append(str(directory / "vae" / "config.json"))
    if not any((directory / name).is_file() for name in _VAE_FILES):
        missing.append(str(directory / _VAE_FILES[0]))
    if missing:
        return [Missing("teacher", directory,
                        f"{what} is incomplete, missing " + ", ".join(
                            str(Path(m).relative_to(directory)) for m in missing))]
    return []


def _lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def missing_files(profile: Profile, eval_num_images: int | None = None) -> list[Missing]:
    """Everything the profile needs that is not on disk, in the order a run would need it."""
    if profile.is_embedded:
        return []
    problems = _teacher_problems(profile)
    prompts = Path(profile.required("prompts"))
    if not prompts.is_file():
        problems.append(Missing("prompts", prompts, "training prompts (text file, one prompt "
                                "per line; the paper used LAION-Aesthetics 6+ prompts, never "
                                "COCO captions)"))
    captions = Path(profile.required("captions"))
    wanted = eval_num_images or profile.eval_num_images or 1
    if not captions.is_file():
        problems.append(Missing("captions", captions, "COCO-2014 val evaluation captions (text "
                                f"file, one caption per line, at least {wanted} lines)"))
    elif _lines(captions) < wanted:
        problems.append(Missing("captions", captions, f"COCO-2014 val evaluation captions: "
                                f"only {_lines(captions)} non-empty lines, the run evaluates "
                                f"{wanted} images"))
    reference = Path(profile.required("reference"))
    if not reference.exists():
        problems.append(Missing("reference", reference, "FID reference (clean-fid statistics "
                                ".npz with mu and sigma of COCO-2014 val at 256, or a folder "
                                "of the reference images)"))
    if profile.metrics == "paper":
        inception = Path(profile.required("inception_dir")) / INCEPTION_FILE
        if not inception.is_file():
            problems.append(Missing("inception_dir", inception, "clean-fid Inception weights "
                                    f"({INCEPTION_FILE}); inception_dir is the folder "
                                    "holding it"))
        clip = Path(profile.required("clip_checkpoint"))
        if not clip.is_file():
            problems.append(Missing("clip_checkpoint", clip, "open_clip ViT-g-14 "
                                    "laion2b_s12b_b42k checkpoint (open_clip_pytorch_model.bin "
                                    "of laion/CLIP-ViT-g-14-laion2B-s12B-b42K)"))
    return problems


def check(profile: Profile, eval_num_images: int | None = None) -> None:
    """Raise :class:`PreflightError` listing every missing file; nothing has started yet."""
    problems = missing_files(profile, eval_num_images)
    if not problems:
        return
    where = (f"{profiles_file()}" + ("" if profiles_file().is_file() else " (does not exist)"))
    raise PreflightError(
        f"profile {profile.name}: {len(problems)} required file(s) missing; nothing was "
        "started.\n  - " + "\n  - ".join(p.line(profile.name) for p in problems)
        + f"\n  Profile settings: {where} (${PROFILES_ENV}); expected layout and variables: "
        "README.md, section 'Stable Diffusion scale'.")


def check_trial_files(source: str, trials: list) -> None:
    """The teacher directories and prompt files a plan names itself (the embedded profile
    lets a plan point at any SD-layout teacher or prompt file), checked before Ray starts
    and named by their plan key; ``embedded:`` specs need no file."""
    problems = []
    for spec in sorted({t.config.teacher for t in trials}):
        if not spec.startswith("embedded:"):
            from distill.teacher import check_teacher_dir  # torch: only when a path is named

            problems += [f"teacher = {spec!r}: {line}" for line in check_teacher_dir(Path(spec))]
    for spec in sorted({t.config.prompts for t in trials}):
        if not spec.startswith("embedded:"):
            problems += _prompts_problems(spec)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems) + "; nothing was started")


def _prompts_problems(spec: str) -> list[str]:
    """A prompts file the plan names, read as a trial would read it (binary, empty, a
    folder), so that a bad one is refused here and not by every trial after Ray starts."""
    if not Path(spec).expanduser().exists():
        return [f"prompts = {spec!r}: file not found; give a text file with one prompt per "
                "line, or 'embedded:train'"]
    from distill.loop import load_prompts  # torch: only when a file is named

    try:
        load_prompts(spec)
    except ConfigError as exc:
        message = str(exc)
        return [message if message.startswith("prompts = ") else f"prompts = {spec!r}: {message}"]
    return []


def check_fid_images(source: str, trials: list, profile: Profile, size: str) -> None:
    """Enough evaluation images for FID's covariance under this profile and size, checked
    before Ray starts (a trial would otherwise fail at its first evaluation)."""
    from evaluation.suite import fid_feature_dims  # torch: a run imports it anyway

    dims = fid_feature_dims(profile.metrics, size, profile.is_embedded)
    few = min((t.config.eval_num_images for t in trials), default=dims + 1)
    if few <= dims:
        raise ConfigError(
            f"{source}: eval_num_images = {few} at --size {size}: FID on this profile's "
            f"{dims}-dimensional features needs more images than dimensions; set "
            f"`sizes: {{{size}: {{eval_num_images: {max(64, dims + 1)}}}}}` in the plan (or "
            f"evaluation.eval_num_images, or the profile's eval_num_images); nothing was started")
