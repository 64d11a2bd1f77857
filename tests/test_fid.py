"""FID: clean-fid's code path, hand-computed values, sanity of the embedded extractor."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from distill import world
from evaluation import fid_from_features, fid_key
from evaluation.fid import (
    EvalError,
    cached_features,
    check_image_folder,
    clip_extractor,
    read_image_folder,
    write_image_folder,
)


@pytest.fixture(scope="module")
def extractor(home):
    from evaluation.clip_model import ensure_clip, load_clip

    return clip_extractor(load_clip(ensure_clip("default")))


@pytest.fixture(scope="module")
def reference():
    # 1,200 held-out renders; the first and second 600 are disjoint halves with
    # every held-out caption 25 times each (captions cycle through the 24).
    return world.reference_set(1200)


def test_fid_key_carries_the_sample_count():
    assert fid_key(2000) == "fid2k"
    assert fid_key(30000) == "fid30k"
    assert fid_key(500) == "fid500"
    assert fid_key(1) == "fid1"
    with pytest.raises(ValueError):
        fid_key(0)


def test_fid_from_features_matches_hand_computed_value():
    # a: mean 0, covariance diag(2/3, 2/3) (ddof 1); b = 2a + (3, 4): mean (3, 4),
    # covariance diag(8/3, 8/3). Per dimension σa + σb − 2·sqrt(σa·σb) = 2/3, so
    # FID = |(3, 4)|² + 2·(2/3) = 25 + 4/3.
    a = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    b = 2 * a + np.array([3.0, 4.0])
    assert fid_from_features(a, b) == pytest.approx(25 + 4 / 3, abs=1e-9)
    assert fid_from_features(b, a) == pytest.approx(25 + 4 / 3, abs=1e-9)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-9)


def test_fid_needs_more_rows_than_feature_dimensions():
    rng = np.random.default_rng(0)
    with pytest.raises(EvalError, match=r"features_a: 64 images for 64-dimensional.*at least 65"):
        fid_from_features(rng.normal(size=(64, 64)), rng.normal(size=(500, 64)))
    with pytest.raises(EvalError, match="feature dimensions differ"):
        fid_from_features(rng.normal(size=(100, 8)), rng.normal(size=(100, 9)))
    with pytest.raises(EvalError, match="NaN"):
        fid_from_features(np.full((10, 2), np.nan), rng.normal(size=(10, 2)))


def test_project_fid_equals_clean_fid_on_the_same_folders(extractor, tmp_path):
    from cleanfid import fid as cleanfid

    _, images_a = world.reference_set(150, seed=1)
    _, images_b = world.reference_set(150, seed=2)
    blurred_b = _blur(images_b, 1.0)
    folder_a = write_image_folder(images_a, tmp_path / "a")
    folder_b = write_image_folder(blurred_b, tmp_path / "b")
    theirs = cleanfid.compute_fid(
        str(folder_a), str(folder_b), mode="clean", custom_feat_extractor=extractor.model_fn,
        custom_fn_resize=extractor.fn_resize, device=torch.device("cpu"), num_workers=0,
        batch_size=64, verbose=False)
    ours_memory = fid_from_features(extractor.images_features(images_a),
                                    extractor.images_features(blurred_b))
    ours_folder = fid_from_features(extractor.folder_features(folder_a),
                                    extractor.folder_features(folder_b))
    assert theirs > 1.0  # a real difference, not two empty distances
    assert abs(ours_memory - theirs) < 1e-3
    assert abs(ours_folder - theirs) < 1e-3


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(images, kernel_size=7, sigma=sigma)


def test_fid_sanity_on_the_embedded_world(extractor, reference):
    images = reference[1]
    features = extractor.images_features(images)
    half_a, half_b = features[:600], features[600:]
    halves = fid_from_features(half_a, half_b)

    def fid_vs(other: torch.Tensor) -> float:
        return fid_from_features(half_a, extractor.images_features(other[600:]))

    noised = (images + 0.25 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0)))
    pool = [c for c in world.heldout_captions() if c.colour != "red"]
    no_red = world.render_batch([pool[i % len(pool)] for i in range(len(images))],
                                list(range(10_000, 10_000 + len(images))))
    blurs = [fid_vs(_blur(images, sigma)) for sigma in (0.5, 1.0, 1.5, 2.0, 3.0)]
    for what, value in (("blurred", blurs[1]), ("noised", fid_vs(noised.clamp(-1, 1))),
                        ("one colour dropped", fid_vs(no_red))):
        assert value > 5 * halves, f"FID(reference half, {what}) = {value} vs halves {halves}"
    assert all(a < b for a, b in itertools.pairwise(blurs)), f"not monotone in blur: {blurs}"


def test_reference_features_are_cached_once_and_keyed_by_extractor(extractor, home):
    calls = []

    def make():
        calls.append(1)
        return world.reference_set(100)[1]

    first = cached_features(extractor, "test-reference", make)
    second = cached_features(extractor, "test-reference", make)
    assert len(calls) == 1
    np.testing.assert_array_equal(first, second)
    files = sorted((home / "cache" / "fid").glob("*.npy"))
    assert files and not list((home / "cache" / "fid").glob("*.tmp-*"))
    other = type(extractor)(extractor.name, extractor.identity + "-changed", extractor.model_fn,
                            extractor.fn_resize)
    cached_features(other, "test-reference", make)
    assert len(calls) == 2  # another extractor hash never reuses these features


def test_bad_image_folders_are_clear_errors(tmp_path, extractor):
    with pytest.raises(EvalError, match="image folder not found"):
        check_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match="no images"):
        extractor.folder_features(tmp_path / "empty")
    small = write_image_folder(world.reference_set(10)[1], tmp_path / "small")
    with pytest.raises(EvalError, match="10 images for 64-dimensional features"):
        fid_from_features(extractor.folder_features(small), extractor.folder_features(small))
    from PIL import Image

    mixed = write_image_folder(world.reference_set(3)[1], tmp_path / "mixed")
    Image.new("RGB", (32, 32)).save(mixed / "zzz.png")
    with pytest.raises(EvalError, match=r"different sizes.*000000.png is 16x16.*zzz.png is 32x32"):
        read_image_folder(mixed)
