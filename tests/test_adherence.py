"""The model-free analyzer: exact on the world's renders, chance on noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill import world
from evaluation.adherence import adherence, read_image


def test_renders_are_read_perfectly():
    captions = world.all_captions() * 2  # every caption, two different renders each
    images = world.render_batch(captions, list(range(len(captions))))
    result = adherence(images, captions)
    for key in ("colour_acc", "shape_acc", "size_acc", "position_acc", "all_acc"):
        assert result[key] == 1.0, key
    assert result["background_deviation"] < 1e-6
    # Mean covered fraction: bounded by the extents (0.34..0.68 of the side) squared.
    assert 0.1 < result["foreground_area"] < 0.35


def test_uint8_and_tensor_inputs_agree():
    caption = world.Caption("large", "cyan", "triangle", "right")
    image = world.render_batch([caption], [7])
    assert read_image(image[0]).as_caption() == caption
    assert read_image(world.to_uint8(image)[0]).as_caption() == caption


def test_noise_is_near_chance():
    captions = world.sample_captions(world.all_captions(), 600, seed=1)
    noise = torch.rand((600, 3, 16, 16), generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = adherence(noise, captions)
    # Chance: 1/6 colours, 1/4 shapes, 1/2 sizes, 1/3 positions; all four 1/144.
    for key, chance in (("colour_acc", 1 / 6), ("shape_acc", 1 / 4), ("size_acc", 1 / 2),
                        ("position_acc", 1 / 3)):
        assert abs(result[key] - chance) < 0.12, (key, result[key])
    assert result["all_acc"] < 0.03


def test_bad_input():
    captions = world.all_captions()[:2]
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        adherence(world.render_batch(world.all_captions()[:3], [0, 1, 2]), captions)
    with pytest.raises(ValueError, match="at least one image"):
        adherence(torch.zeros((0, 3, 16, 16)), [])
    with pytest.raises(ValueError, match="square RGB"):
        read_image(np.zeros((16, 8, 3), dtype=np.uint8))


def test_vectorised_templates_equal_the_worlds_rasteriser():
    from evaluation.adherence import shape_masks

    rng = np.random.default_rng(0)
    cx, cy, extent = rng.uniform(0.2, 0.8, 5), rng.uniform(0.2, 0.8, 5), rng.uniform(0.3, 0.7, 5)
    for shape in world.SHAPES:
        masks = shape_masks(shape, cx, cy, extent, 16)
        for k in range(5):
            np.testing.assert_array_equal(
                masks[k], world.shape_mask(shape, cx[k], cy[k], extent[k], 16))
