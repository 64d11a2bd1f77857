"""The embedded world: grammar, held-out split, determinism, and the analyzer's accuracy."""

import numpy as np
import pytest
import torch

from distill import world
from evaluation.adherence import adherence, read_image


def test_grammar_has_enough_attributes():
    assert len(world.SHAPES) >= 4 and len(world.COLOURS) >= 6
    assert len(world.all_captions()) == 2 * 6 * 4 * 3


def test_heldout_is_disjoint_and_covers_every_word():
    train, heldout = world.train_captions(), world.heldout_captions()
    assert len(train) == 120 and len(heldout) == 24
    assert not set(train) & set(heldout)
    for attribute, values in (("size", world.SIZES), ("colour", world.COLOURS),
                              ("shape", world.SHAPES), ("position", world.POSITIONS)):
        for value in values:
            assert any(getattr(c, attribute) == value for c in train)
            assert any(getattr(c, attribute) == value for c in heldout)


def test_caption_text_round_trips():
    for caption in world.all_captions():
        assert world.parse_caption(caption.text) == caption
    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        world.parse_caption("a small purple circle on the left")


def test_render_is_deterministic_and_seed_dependent():
    caption = world.all_captions()[7]
    a, b = world.render(caption, 3), world.render(caption, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, world.render(caption, 4))
    assert a.shape == (16, 16, 3) and a.min() >= 0 and a.max() <= 1


def test_render_batch_range_and_layout():
    captions = world.all_captions()[:5]
    x = world.render_batch(captions, list(range(5)))
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    u8 = world.to_uint8(x)
    assert u8.shape == (5, 16, 16, 3) and u8.dtype == np.uint8


def test_background_is_exactly_the_background_colour():
    image = world.render(world.Caption("small", "red", "circle", "left"), 0)
    corner = image[0, -1]  # top right: far from a small object on the left
    assert np.allclose(corner, world.BACKGROUND)


def test_analyzer_reads_the_renderers_images():
    # The issue asks >= 99% on the renderer's own images; it reads all of them.
    captions, images = world.reference_set(600, seed=1)
    scores = adherence(images, captions)
    for key in ("colour_acc", "shape_acc", "size_acc", "position_acc"):
        assert scores[key] >= 0.99, (key, scores)
    assert scores["background_deviation"] < 1e-3


def test_analyzer_is_near_chance_on_noise():
    captions = world.sample_captions(world.heldout_captions(), 300, seed=0)
    noise = torch.rand(300, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scores = adherence(noise, captions)
    assert scores["colour_acc"] < 0.3  # chance 1/6
    assert scores["all_acc"] < 0.05


def test_analyzer_foreground_area_tracks_size():
    small = read_image(world.render(world.Caption("small", "blue", "square", "center"), 0))
    large = read_image(world.render(world.Caption("large", "blue", "square", "center"), 0))
    assert large.foreground_area > 1.8 * small.foreground_area


def test_reference_set_balances_captions():
    captions, _ = world.reference_set(48)
    heldout = world.heldout_captions()
    assert all(captions.count(c) == 2 for c in heldout)


def test_mislabel_rate_and_values():
    captions = world.all_captions()
    rng = np.random.default_rng(0)
    n, p = 20_000, 0.2
    pairs = [(c, world.mislabel(c, rng, p)) for c in
             (captions[i] for i in np.random.default_rng(1).integers(0, len(captions), n))]
    for attribute in ("size", "colour", "shape", "position"):
        wrong = np.mean([getattr(a, attribute) != getattr(b, attribute) for a, b in pairs])
        # Binomial standard error at n = 20000 is 0.0028; 4 sigma.
        assert abs(wrong - p) < 0.012, (attribute, wrong)
    # Every attribute of a mislabelled caption is still a word of the grammar.
    assert all(world.parse_caption(b.text) == b for _, b in pairs[:500])
    # A flip is always to another value, so the wrong-value rate is the flip rate; colour
    # flips spread over the five other colours.
    flipped = [b.colour for a, b in pairs if a.colour == "red" and b.colour != "red"]
    assert set(flipped) == set(world.COLOURS) - {"red"}


def test_mislabel_is_deterministic_and_zero_noise_is_identity():
    caption = world.all_captions()[7]
    a = [world.mislabel(caption, np.random.default_rng(3), 0.5) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = np.random.default_rng(0)
    assert all(world.mislabel(c, rng, 0.0) == c for c in world.all_captions())
