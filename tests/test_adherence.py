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
    for key in ("colour_acc", "shape_acc", "size_acc", "position_acc", "all_acc",
                "colour_shape_size_acc"):
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
    assert result["colour_shape_size_acc"] < 0.06  # chance 1/48


def test_colour_shape_size_ignores_position_only():
    # Renders of the wrong position and right everything else: all but all_acc/position hold.
    captions = world.all_captions()[:48]
    moved = [world.Caption(c.size, c.colour, c.shape,
                           "right" if c.position == "left" else "left") for c in captions]
    result = adherence(world.render_batch(moved, list(range(48))), captions)
    assert result["position_acc"] == 0.0 and result["all_acc"] == 0.0
    assert result["colour_shape_size_acc"] == 1.0
    # And a wrong colour is a miss for it.
    recoloured = [world.Caption(c.size, "red" if c.colour != "red" else "blue", c.shape,
                                c.position) for c in captions]
    result = adherence(world.render_batch(recoloured, list(range(48))), captions)
    assert result["colour_shape_size_acc"] == 0.0


def test_bad_input():
    captions = world.all_captions()[:2]
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        adherence(world.render_batch(world.all_captions()[:3], [0, 1, 2]), captions)
    with pytest.raises(ValueError, match="at least one image"):
        adherence(torch.zeros((0, 3, 16, 16)), [])
    with pytest.raises(ValueError, match="square RGB"):
        read_image(np.zeros((16, 8, 3), dtype=np.uint8))


def test_vectorised_rasteriser_equals_a_per_pixel_box_filter():
    # The matrix box filter must equal the plain mean over each pixel's 4x4 subsamples.
    rng = np.random.default_rng(0)
    cx, cy, extent = rng.uniform(0.2, 0.8, 5), rng.uniform(0.2, 0.8, 5), rng.uniform(0.3, 0.7, 5)
    n = 16 * world.SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n
    x, y = np.meshgrid(coords, coords)
    for shape in world.SHAPES:
        masks = world.shape_masks(shape, cx, cy, extent, 16)
        for k in range(5):
            dx, dy = (x - cx[k]) / (extent[k] / 2), (y - cy[k]) / (extent[k] / 2)
            inside = {"circle": dx**2 + dy**2 <= 1.0,
                      "square": (np.abs(dx) <= 0.8) & (np.abs(dy) <= 0.8),
                      "triangle": (dy >= -1) & (dy <= 1) & (np.abs(dx) <= (dy + 1) / 2),
                      "cross": (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
                      & ((np.abs(dx) <= 0.36) | (np.abs(dy) <= 0.36))}[shape]
            reference = inside.astype(np.float32).reshape(16, 4, 16, 4).mean(axis=(1, 3))
            np.testing.assert_array_equal(masks[k], reference)
            np.testing.assert_array_equal(world.shape_mask(shape, cx[k], cy[k], extent[k], 16),
                                          masks[k])
