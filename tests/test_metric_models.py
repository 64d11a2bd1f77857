"""The embedded CLIP: deterministic training, open_clip round trip, shipped copy within budget."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from evaluation import clip_model
from evaluation.clip_model import (
    CONFIG_FILE,
    MANIFEST_FILE,
    SHIPPED_CLIP_DIR,
    WEIGHTS_FILE,
    MetricModelError,
    clip_config,
    load_clip,
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path))
    return tmp_path


def test_smoke_training_is_deterministic_and_loads_through_open_clip(home):
    config = clip_config("smoke")
    clip_model.train_clip(config, home / "a", progress=False)
    clip_model.train_clip(config, home / "b", progress=False)
    a, b = load_clip(home / "a"), load_clip(home / "b")
    assert a.weights_hash == b.weights_hash
    # The saved folder is an open_clip local-dir: config and weights, nothing custom.
    saved = json.loads((home / "a" / CONFIG_FILE).read_text())
    assert saved["model_cfg"]["vision_cfg"]["image_size"] == 16
    assert type(a.model).__name__ == "CLIP"
    assert a.model.visual.conv1.weight.dtype == torch.float32
    images = torch.zeros((2, 3, 16, 16))
    assert a.encode_images(images).shape == (2, config.embed_dim)
    assert a.encode_texts(["a small red circle on the left", ""]).shape == (2, config.embed_dim)


def test_corrupt_or_missing_files_are_clear_errors(home):
    directory = home / "clip"
    clip_model.train_clip(clip_config("smoke"), directory, progress=False)
    with open(directory / WEIGHTS_FILE, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(MetricModelError, match=r"clip: content hash .* does not match .* corrupt"):
        load_clip(directory)
    (directory / CONFIG_FILE).unlink()
    with pytest.raises(MetricModelError,
                       match=rf"{CONFIG_FILE}: missing; run `ablate metric-models"):
        load_clip(directory)


def test_ensure_clip_caches_the_smoke_model_by_config_hash(home):
    first = clip_model.ensure_clip("smoke", progress=False)
    assert first.parent == home / "cache" / "metric-models"
    assert clip_config("smoke").config_hash() in first.name
    stamp = (first / WEIGHTS_FILE).stat().st_mtime_ns
    assert clip_model.ensure_clip("smoke", progress=False) == first
    assert (first / WEIGHTS_FILE).stat().st_mtime_ns == stamp  # reused, not retrained
    with pytest.raises(MetricModelError, match="unknown embedded CLIP size 'huge'"):
        clip_config("huge")


def test_shipped_clip_matches_its_config_and_fits_the_budget():
    manifest = json.loads((SHIPPED_CLIP_DIR / MANIFEST_FILE).read_text())
    assert manifest["config_hash"] == clip_config("default").config_hash()
    total = sum(p.stat().st_size for p in SHIPPED_CLIP_DIR.iterdir())
    assert total <= 2.3e6, f"shipped metric model takes {total} bytes"
    tensors = load_file(SHIPPED_CLIP_DIR / WEIGHTS_FILE)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    clip = load_clip(SHIPPED_CLIP_DIR)
    assert clip.weights_hash == manifest["weights_hash"]
    # It learned the world: zero-shot retrieval recorded at training time.
    retrieval = manifest["stats"]["retrieval"]
    assert retrieval["colour_acc"] >= 0.95 and retrieval["shape_acc"] >= 0.8
