"""Checkpoints of a distillation run: safetensors for tensors, JSON for everything else.

Layout of ``<workdir>/checkpoint/``::

    state-<step>.safetensors   G, G-EMA, ψ, both Adam states, the RNG state
    state.json                 step, config, losses-so-far, which tensors file is current

Each file is written to a temporary name and renamed, and ``state.json`` is
renamed last: it is the commit point, so a crash at any moment leaves either
the previous checkpoint or the new one, never a mixture. No pickles anywhere.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_JSON = "state.json"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is unreadable or belongs to a different run (message names it)."""


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def flatten_optimizer(prefix: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Adam's per-parameter state as flat tensors ``<prefix>.<index>.<name>``.

    Hyper-parameters are not stored: they come from the run's config, which a
    resume checks is unchanged.
    """
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            out[f"{prefix}.{index}.{name}"] = value
    return out


def unflatten_optimizer(prefix: str, tensors: dict[str, torch.Tensor],
                        optimizer: torch.optim.Optimizer) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state,
                               "param_groups": optimizer.state_dict()["param_groups"]})


def save(directory: Path, step: int, tensors: dict[str, torch.Tensor],
         meta: dict[str, Any]) -> Path:
    """Write one checkpoint atomically; older tensor files are removed after the commit."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors_name = f"state-{step:08d}.safetensors"
    # safetensors refuses shared or strided storage; detached contiguous CPU copies are safe.
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_write(directory / tensors_name, lambda tmp: save_file(flat, tmp))
    record = {"format_version": FORMAT_VERSION, "step": step, "tensors": tensors_name, **meta}
    _atomic_write(directory / STATE_JSON,
                  lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2, sort_keys=True)))
    for stale in directory.glob("state-*.safetensors"):
        if stale.name != tensors_name:
            stale.unlink()
    return directory


def exists(directory: Path) -> bool:
    return (Path(directory) / STATE_JSON).is_file()


def load(directory: Path, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of the committed checkpoint in ``directory``."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / STATE_JSON).read_text())
        tensors = load_file(directory / meta["tensors"], device=str(device))
    except (OSError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{directory}: unreadable checkpoint ({exc}); delete the folder to start the run "
            "from scratch") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory / STATE_JSON}: format_version {meta.get('format_version')!r}, expected "
            f"{FORMAT_VERSION}; delete the folder to start the run from scratch")
    return tensors, meta
