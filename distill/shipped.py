"""Shipped models as assets: one way from a config to a verified model directory.

An asset kind (the embedded teacher, the embedded CLIP) is a model trained
deterministically from a frozen config. Its directory holds a manifest naming
the config, the config's hash and the content hash of the weights. The default
size ships in the repository and is rebuilt only on request; other sizes are
trained on first use and cached under the output folder by config hash. A
directory whose weights do not match its manifest is never used.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill import paths

# Hex digits kept of a sha256: what the manifests, run tags and cache keys record.
HASH_LENGTH = 16


def file_hash(*files: str | Path, root: str | Path | None = None) -> str:
    """Short sha256 of the files' bytes, streamed in the order given.

    With ``root``, each file's path relative to it precedes its bytes, so that a
    directory's hash also changes when a file moves within it.
    """
    digest = hashlib.sha256()
    for path in map(Path, files):
        if root is not None:
            digest.update(path.relative_to(root).as_posix().encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:HASH_LENGTH]


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """A fresh temporary sibling to fill; it replaces ``target`` only if the block completes.

    The sibling's name starts with a dot, so an interrupted write leaves nothing
    that a lookup by name (or a glob like ``smoke-*``) could take for a finished one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextmanager
def _exclusive(target: Path) -> Iterator[None]:
    # Trials ask for the same cached asset at the same time: the lock makes the first
    # train it and the others wait and reuse it, instead of each replacing the last.
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


@dataclass(frozen=True)
class AssetKind:
    """One kind of model asset: its sizes, how it is trained, hashed, shipped and cached."""

    name: str  # in messages: "teacher", "embedded CLIP"
    sizes: Mapping[str, Any]  # size -> frozen config dataclass with .config_hash()
    train: Callable[..., dict]  # (config, out_dir, progress=, dtype=) -> training stats
    content_hash: Callable[[Path], str]  # of a directory's weights
    manifest: str  # file name of the manifest inside an asset directory
    shipped_dir: Path  # where the default size lives in the repository
    cache_kind: str  # subfolder of the output folder's cache
    cache_prefix: str  # cached directories are named <prefix><size>-<config hash>
    rebuild_command: str  # what a user runs to rebuild the shipped copy
    error: type[Exception]  # raised for every problem, with the file and the fix

    def config(self, size: str) -> Any:
        if size not in self.sizes:
            raise self.error(
                f"unknown {self.name} size {size!r}; choose one of {sorted(self.sizes)}")
        return self.sizes[size]

    # ----------------------------------------------------------------------- writing

    @contextmanager
    def saving(self, config: Any, out_dir: Path, stats: dict, dtype: torch.dtype,
               **fields: Any) -> Iterator[Path]:
        """A temporary directory for the model files; the manifest is written after them
        (hashing what was written) and the whole renamed onto ``out_dir`` at once.

        ``fields`` are extra manifest entries the loader needs (e.g. a token table).
        """
        with atomic_directory(out_dir) as tmp:
            yield tmp
            manifest = {"config": dataclasses.asdict(config), "config_hash": config.config_hash(),
                        **fields, "weights_dtype": str(dtype).removeprefix("torch."),
                        "weights_hash": self.content_hash(tmp), "stats": stats}
            (tmp / self.manifest).write_text(json.dumps(manifest, indent=2))

    # ----------------------------------------------------------------------- reading

    def read_manifest(self, directory: Path) -> dict:
        path = Path(directory) / self.manifest
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise self.error(f"{path}: unreadable ({exc})") from exc

    def recorded_config_hash(self, directory: Path) -> str | None:
        """The config hash a directory's manifest records; None if there is none to read."""
        try:
            return self.read_manifest(directory).get("config_hash")
        except self.error:
            return None

    def verify(self, directory: Path) -> str:
        """The content hash of a directory's weights, checked against its manifest."""
        directory = Path(directory)
        recorded = self.read_manifest(directory).get("weights_hash")
        actual = self.content_hash(directory)
        if actual != recorded:
            raise self.error(
                f"{directory}: content hash {actual} does not match {recorded} recorded in "
                f"{directory / self.manifest}; the weights are corrupt or were changed. Delete "
                f"the directory to rebuild it (cache) or run `{self.rebuild_command}` (shipped)")
        return actual

    # ----------------------------------------------------------------------- getting one

    def ensure(self, size: str = "default", progress: bool = True) -> Path:
        """Verified directory of the asset for a size: shipped, cached, or trained now.

        The default size ships in the repository; other configs are trained once
        and cached under the output folder by config hash. A cache entry that
        fails its content-hash check is rebuilt, never used.
        """
        config = self.config(size)
        if size == "default":
            if self.recorded_config_hash(self.shipped_dir) != config.config_hash():
                raise self.error(
                    f"{self.shipped_dir}: the shipped {self.name} is missing or was trained from "
                    f"a different config; run `{self.rebuild_command}` to rebuild it")
            self.verify(self.shipped_dir)
            return self.shipped_dir
        target = paths.cache_dir(self.cache_kind) / (
            f"{self.cache_prefix}{size}-{config.config_hash()}")
        with _exclusive(target):
            if self.recorded_config_hash(target) == config.config_hash():
                try:
                    self.verify(target)
                    return target
                except self.error as exc:
                    print(f"rebuilding cached {self.name}: {exc}")
            self.train(config, target, progress=progress)
        return target

    def rebuild_shipped(self, progress: bool = True) -> dict:
        """Retrain the default size from scratch, overwrite the shipped copy; training stats.

        Stored in fp16 so the shipped models fit the repository's size budget; they
        are loaded back as fp32.
        """
        return self.train(self.config("default"), self.shipped_dir, progress=progress,
                          dtype=torch.float16)
