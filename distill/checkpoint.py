"""Checkpoints of a distillation run: safetensors for tensors, JSON for everything else.

Layout of ``<workdir>/checkpoint/``::

    state-<step>.safetensors   G, G-EMA, ψ, both Adam states, the RNG state
    state-<step>.json          step, config, losses-so-far, its tensors file and that file's size
    state.json                 a copy of the newest state-<step>.json: the commit point

Each file is written to a temporary name, flushed to disk and renamed, and ``state.json`` is
renamed last, so a crash at any moment leaves either the previous checkpoint or the new one,
never a mixture. The newest two checkpoints are kept: when the newest proves unreadable on
load (a node lost before the disk had it, a truncated copy), :func:`load` falls back to the
one before and says so. No pickles anywhere.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from distill.errors import CheckpointError

STATE_JSON = "state.json"
FORMAT_VERSION = 1
KEEP = 2  # checkpoints kept: the newest, and one to fall back to


class UnreadableCheckpoint(CheckpointError):
    """No checkpoint in the folder can be read: truncated, corrupt or missing files."""


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # On disk before the rename: a node lost right after must not leave a renamed but
        # empty file behind the commit point.
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
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
    """Write one checkpoint atomically; all but the newest :data:`KEEP` are removed after
    the commit."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors_name = f"state-{step:08d}.safetensors"
    # safetensors refuses shared or strided storage; detached contiguous CPU copies are safe.
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_write(directory / tensors_name, lambda tmp: save_file(flat, tmp))
    record = {"format_version": FORMAT_VERSION, "step": step, "tensors": tensors_name,
              "tensors_bytes": (directory / tensors_name).stat().st_size, **meta}
    text = json.dumps(record, indent=2, sort_keys=True)
    _atomic_write(directory / f"state-{step:08d}.json", lambda tmp: Path(tmp).write_text(text))
    _atomic_write(directory / STATE_JSON, lambda tmp: Path(tmp).write_text(text))
    kept = sorted(directory.glob("state-*.json"))[-KEEP:]
    keep = {p.name for p in kept} | {p.with_suffix(".safetensors").name for p in kept}
    for stale in [*directory.glob("state-*.json"), *directory.glob("state-*.safetensors")]:
        if stale.name not in keep:
            stale.unlink()
    return directory


def exists(directory: Path) -> bool:
    return (Path(directory) / STATE_JSON).is_file()


def _read(directory: Path, record_file: Path, device: str,
          prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """One checkpoint, verified: a well-formed record, a tensors file of the recorded size,
    and a safetensors file that parses. Raises CheckpointError saying what is wrong."""
    try:
        meta = json.loads(record_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{record_file.name} unreadable ({exc})") from None
    if not isinstance(meta, dict) or not {"step", "tensors", "config"} <= set(meta):
        raise CheckpointError(f"{record_file.name} is not a checkpoint record (needs step, "
                              "tensors and config)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{record_file.name}: format_version "
                              f"{meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    path = directory / str(meta["tensors"])
    if path.parent != directory:
        raise CheckpointError(f"{record_file.name} names a tensors file outside {directory}")
    try:
        size = path.stat().st_size
    except OSError:
        raise CheckpointError(f"{path.name} is missing") from None
    expected = meta.get("tensors_bytes")
    if expected is not None and size != expected:
        raise CheckpointError(f"{path.name} is {size:,} bytes, not the {expected:,} written "
                              "(truncated)")
    try:
        if prefix:
            with safe_open(path, framework="pt", device=device) as f:
                tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}  # noqa: SIM118 - not a dict
        else:
            tensors = load_file(path, device=device)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path.name} unreadable ({str(exc)[:200]})") from None
    return tensors, meta


def load(directory: Path, device: torch.device | str = "cpu",
         prefix: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of the newest readable checkpoint in ``directory``; with ``prefix``,
    only the tensors whose names start with it (one network of an SD checkpoint, not 24 GB).

    If the committed one (``state.json``) is unreadable, the one kept before it is used, and
    ``meta["fallback"]`` says why. No readable checkpoint at all raises
    :class:`CheckpointError` naming each problem.
    """
    directory = Path(directory)
    candidates = [directory / STATE_JSON, *sorted(directory.glob("state-*.json"), reverse=True)]
    problems: list[str] = []
    for record_file in candidates:
        try:
            tensors, meta = _read(directory, record_file, str(device), prefix)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if problems:
            meta = {**meta, "fallback": f"the newest checkpoint is unreadable ({problems[0]}); "
                                        f"resumed from step {meta['step']}"}
        return tensors, meta
    raise UnreadableCheckpoint(
        f"{directory}: no readable checkpoint ({'; '.join(problems) or 'none written'}); "
        "delete the folder to start the run from scratch")
