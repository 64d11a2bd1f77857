"""What a run reads before it trains: the teacher a config names and the prompts it trains on.

A config names both by a string (``DistillConfig.teacher``, ``DistillConfig.prompts``):
``embedded:<size>`` / ``embedded:train`` for the world that ships with the repository, or a
path. Each loader turns that string into the object or one :class:`ConfigError` that names
the value and the fix; :func:`draw_prompts` is how the loop samples a batch from them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distill import world
from distill.config import ConfigError, read_text_file
from distill.teacher import TEACHER_SIZES, Teacher, ensure_teacher, load_teacher


def load_config_teacher(spec: str, progress: bool = False) -> Teacher:
    """``embedded:<size>`` -> the embedded teacher of that size; otherwise a directory."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("embedded:"):
        size = spec.removeprefix("embedded:")
        if size not in TEACHER_SIZES:
            raise ConfigError(f"teacher = {spec!r}: unknown embedded size; choose one of "
                              + ", ".join(f"embedded:{s}" for s in TEACHER_SIZES))
        return load_teacher(ensure_teacher(size, progress=progress), device)
    return load_teacher(spec, device)


def load_prompts(spec: str) -> list[str]:
    """``embedded:train`` -> the world's training captions; otherwise a text file, one per line."""
    if spec == "embedded:train":
        return [c.text for c in world.train_captions()]
    if spec.startswith("embedded:"):
        raise ConfigError(f"prompts = {spec!r}: the only embedded prompt set is 'embedded:train'")
    path = Path(spec).expanduser()
    if not path.exists():  # a folder or an unreadable file: read_text_file says which
        raise ConfigError(f"prompts = {spec!r}: file {path} not found; give a text file with one "
                          "prompt per line, or 'embedded:train'")
    text = read_text_file(path, "prompts")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"prompts = {spec!r}: {path} holds no prompts (one per line expected)")
    return prompts


def draw_prompts(prompts: list[str], count: int, rng: torch.Generator,
                 device: torch.device | str = "cpu") -> list[str]:
    """``count`` prompts drawn uniformly with replacement from the training set."""
    picks = torch.randint(len(prompts), (count,), generator=rng, device=device)
    return [prompts[i] for i in picks.tolist()]
