"""The asset mechanism on a tiny fake kind: caching by config hash, integrity, atomic writes."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass

import pytest
import torch

from distill.config import config_hash
from distill.shipped import AssetKind, file_hash


@dataclass(frozen=True)
class FakeConfig:
    value: int = 7

    def config_hash(self) -> str:
        return config_hash(self, length=16)


class FakeError(RuntimeError):
    pass


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def trained():
    """Every directory the fake kind trained, in order."""
    return []


@pytest.fixture
def kind(tmp_path, trained):
    """A kind whose 'training' writes one file of the config's value."""

    def train(config, out_dir, progress=True, dtype=torch.float32):
        time.sleep(0.1)  # long enough for a concurrent caller to overlap
        with fake.saving(config, out_dir, {"steps": 1}, dtype) as tmp:
            (tmp / "weights.bin").write_bytes(bytes([config.value]) * 100)
        trained.append(out_dir)
        return {"steps": 1}

    fake = AssetKind(
        name="fake", sizes={"default": FakeConfig(), "smoke": FakeConfig(value=3)}, train=train,
        content_hash=lambda directory: file_hash(directory / "weights.bin"),
        manifest="fake.json", shipped_dir=tmp_path / "shipped", cache_kind="fakes",
        cache_prefix="fake-", rebuild_command="make fake", error=FakeError)
    return fake


def test_file_hash_streams_sha256_and_prefixes_relative_paths(tmp_path):
    big = tmp_path / "sub" / "big.bin"
    big.parent.mkdir()
    data = bytes(range(256)) * 5000  # over one 1 MiB read
    big.write_bytes(data)
    assert file_hash(big) == hashlib.sha256(data).hexdigest()[:16]
    small = tmp_path / "a.bin"
    small.write_bytes(b"xyz")
    expected = hashlib.sha256(b"a.bin" + b"xyz" + b"sub/big.bin" + data).hexdigest()[:16]
    assert file_hash(small, big, root=tmp_path) == expected


def test_ensure_trains_once_and_caches_by_config_hash(home, kind, trained):
    first = kind.ensure("smoke", progress=False)
    assert first == home / "cache" / "fakes" / f"fake-smoke-{FakeConfig(3).config_hash()}"
    manifest = json.loads((first / "fake.json").read_text())
    assert manifest["config"] == {"value": 3}
    assert manifest["weights_hash"] == file_hash(first / "weights.bin")
    assert kind.ensure("smoke", progress=False) == first
    assert trained == [first]


def test_concurrent_callers_train_once(home, kind, trained):
    results = []
    threads = [threading.Thread(target=lambda: results.append(kind.ensure("smoke", False)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(trained) == 1


def test_tampered_cache_is_refused_then_rebuilt(home, kind, trained):
    directory = kind.ensure("smoke", progress=False)
    good = (directory / "weights.bin").read_bytes()
    (directory / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(FakeError, match=r"content hash \w+ does not match \w+ recorded in .*fake"):
        kind.verify(directory)
    assert kind.ensure("smoke", progress=False) == directory
    assert (directory / "weights.bin").read_bytes() == good and len(trained) == 2


def test_shipped_copy_is_checked_and_never_retrained(home, kind, trained):
    with pytest.raises(FakeError, match=r"shipped fake is missing .* run `make fake`"):
        kind.ensure("default")
    assert kind.rebuild_shipped(progress=False) == {"steps": 1}
    assert kind.ensure("default") == kind.shipped_dir
    manifest = json.loads((kind.shipped_dir / "fake.json").read_text())
    assert manifest["weights_dtype"] == "float16"  # shipped copies are stored in fp16
    (kind.shipped_dir / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(FakeError, match="corrupt"):
        kind.ensure("default")
    assert len(trained) == 1


def test_interrupted_save_leaves_the_previous_directory_and_no_look_alike(tmp_path, kind):
    target = tmp_path / "out" / "fake-smoke-0"
    kind.train(FakeConfig(), target)
    before = (target / "fake.json").read_text()
    with (pytest.raises(KeyboardInterrupt),
          kind.saving(FakeConfig(1), target, {}, torch.float32) as tmp):
        (tmp / "weights.bin").write_bytes(b"half")
        raise KeyboardInterrupt
    assert (target / "fake.json").read_text() == before
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_unknown_size_names_the_choices(kind):
    with pytest.raises(FakeError, match=r"unknown fake size 'huge'; choose one of \['default'"):
        kind.config("huge")
