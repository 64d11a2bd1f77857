"""Model-free prompt adherence for the embedded world.

The analyzer reads colour, shape, size and position back from an image using
only the world's own geometry (no learned weights), so it is a ground truth
that a learned CLIP score can be checked against.

How it reads an image:
1. Foreground strength per pixel is its distance from the known background.
2. The colour is the palette colour nearest to the mean of the strongest pixels.
3. Coverage (alpha) per pixel is the projection of (pixel - background) onto
   (colour - background); its mass and centroid give, for each candidate shape,
   the extent and centre that shape would need (each shape fills a known
   fraction of its bounding box). Each candidate is rendered with the world's
   own rasteriser, refined over a few sub-pixel shifts, and the one with the
   smallest squared error to the coverage wins.
4. Size and position follow from the winning template's extent and centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from distill import metrics as registry
from distill import world

_PALETTE_NAMES = list(world.COLOURS)
_PALETTE = np.asarray([world.COLOURS[c] for c in _PALETTE_NAMES], dtype=np.float32)
_BACKGROUND = np.asarray(world.BACKGROUND, dtype=np.float32)

# Fraction of its bounding box each shape covers (see world.shape_masks).
_FILL = {"circle": np.pi / 4, "square": 0.64, "triangle": 0.5, "cross": (4 * 0.72 - 0.72**2) / 4}
# Centroid offset below the box centre, as a fraction of extent (triangle: apex up).
_CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 6.0, "cross": 0.0}
_SHIFTS = (-0.03, 0.0, 0.03)
_SCALES = (0.92, 1.0, 1.08)


@dataclass(frozen=True)
class Reading:
    colour: str
    shape: str
    size: str
    position: str
    foreground_area: float  # fraction of pixels covered by the object
    background_deviation: float  # mean |pixel - background| away from the object

    def as_caption(self) -> world.Caption:
        return world.Caption(self.size, self.colour, self.shape, self.position)


def _as_hwc01(image: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(image, torch.Tensor):  # (3, H, W) in [-1, 1]
        return ((image.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    if image.dtype == np.uint8:  # (H, W, 3)
        return image.astype(np.float32) / 255.0
    return image.astype(np.float32)


def read_image(image: np.ndarray | torch.Tensor) -> Reading:
    """Read the attributes of one image: (3,H,W) tensor in [-1,1], or HWC uint8/float [0,1]."""
    img = _as_hwc01(image)
    resolution = img.shape[0]
    if img.shape[:2] != (resolution, resolution) or img.shape[2] != 3:
        raise ValueError(f"expected a square RGB image, got shape {img.shape}")
    strength = np.abs(img - _BACKGROUND).max(axis=2)
    strongest = strength >= max(0.5 * strength.max(), 1e-6)
    mean_colour = img[strongest].mean(axis=0)
    colour_index = int(np.argmin(((_PALETTE - mean_colour) ** 2).sum(axis=1)))
    direction = _PALETTE[colour_index] - _BACKGROUND
    alpha = np.clip(((img - _BACKGROUND) @ direction) / float(direction @ direction), 0.0, 1.0)

    mass = float(alpha.sum()) / resolution**2  # covered fraction of the image
    ys, xs = np.mgrid[0:resolution, 0:resolution]
    weight = alpha.sum() + 1e-8
    cx = float(((xs + 0.5) * alpha).sum() / weight) / resolution
    cy = float(((ys + 0.5) * alpha).sum() / weight) / resolution

    # Every candidate (shape x scale x shift) in one vectorised pass per shape; the
    # order matches a nested loop shape -> scale -> sx -> sy, so argmin keeps the
    # first of equal errors.
    scales, dxs, dys = (a.ravel() for a in np.meshgrid(_SCALES, _SHIFTS, _SHIFTS, indexing="ij"))
    best = (np.inf, "circle", 0.0, 0.0, 0.0)
    for shape in world.SHAPES:
        extents = np.sqrt(max(mass, 1e-6) / _FILL[shape]) * scales
        tcxs, tcys = cx + dxs, cy - _CENTROID_DY[shape] * extents + dys
        templates = world.shape_masks(shape, tcxs, tcys, extents, resolution)
        errors = ((templates - alpha) ** 2).sum(axis=(1, 2))
        k = int(np.argmin(errors))
        if errors[k] < best[0]:
            best = (float(errors[k]), shape, float(extents[k]), float(tcxs[k]), float(tcys[k]))
    _, shape, extent, tcx, _ = best
    size = min(world.SIZES, key=lambda s: abs(world.SIZES[s] - extent))
    position = min(world.POSITIONS, key=lambda p: abs(world.POSITIONS[p] - tcx))
    away = alpha < 0.05
    background_deviation = (
        float(np.abs(img[away] - _BACKGROUND).mean()) if away.any() else float("nan")
    )
    return Reading(
        colour=_PALETTE_NAMES[colour_index],
        shape=shape,
        size=size,
        position=position,
        foreground_area=mass,
        background_deviation=background_deviation,
    )


ATTRIBUTES = ("colour", "shape", "size", "position")


def adherence(images: torch.Tensor | np.ndarray, captions: list[world.Caption]) -> dict[str, float]:
    """Per-attribute accuracy of images against their captions, plus summaries.

    Returns ``{colour_acc, shape_acc, size_acc, position_acc, all_acc,
    colour_shape_size_acc, foreground_area, background_deviation}``; ``all_acc``
    counts an image right only when every attribute is right,
    ``colour_shape_size_acc`` when all but position are: the embedded teacher does
    not learn position (RESULTS.md, "The embedded teacher"), so that is the adherence the
    tables show.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if len(captions) == 0:
        raise ValueError("adherence needs at least one image")
    hits = {a: 0 for a in ATTRIBUTES}
    all_hits = css_hits = 0
    areas, deviations = [], []
    for image, caption in zip(images, captions):
        reading = read_image(image)
        right = [getattr(reading, a) == getattr(caption, a) for a in ATTRIBUTES]
        for a, ok in zip(ATTRIBUTES, right):
            hits[a] += ok
        all_hits += all(right)
        css_hits += all(ok for a, ok in zip(ATTRIBUTES, right) if a != "position")
        areas.append(reading.foreground_area)
        deviations.append(reading.background_deviation)
    n = len(captions)
    out = {f"{a}_acc": hits[a] / n for a in ATTRIBUTES}
    out["all_acc"] = all_hits / n
    out[registry.ADHERENCE.key] = css_hits / n
    out["foreground_area"] = float(np.mean(areas))
    out["background_deviation"] = float(np.nanmean(deviations))
    return out


def adherence_evaluator(num_images: int, seed: int = 0):
    """evaluate(sample_fn, step) -> the analyzer's adherence on ``num_images`` held-out
    captions (cycling through all of them, so each is equally represented); the same
    ``seed`` for every run, so runs are compared on equal noise."""
    pool = world.heldout_captions()
    captions = [pool[i % len(pool)] for i in range(num_images)]

    def evaluate(sample_fn, step: int) -> dict[str, float]:
        del step
        return adherence(sample_fn([c.text for c in captions], seed), captions)

    return evaluate
