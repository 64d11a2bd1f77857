"""The embedded text-to-image world: coloured shapes on a plain background.

Stable Diffusion weights cannot be downloaded on the machines this project is
developed on, so the project ships its own small world that exercises exactly
the same code path. Every image is rendered procedurally from a caption and a
seed, so the world is deterministic and infinite, and every attribute named in
a caption can be read back by a model-free analyzer
(:mod:`evaluation.adherence`), which gives a ground-truth adherence metric that
COCO cannot.

A caption names four attributes, so guidance has something to do beyond colour
(a prototype found colour alone saturates near 100% for every strategy):

    "a large red circle on the left"
     size   colour shape   position

The shipped teacher learns colour, shape and size but not position: with SD's
schedule at 16x16 the object's place is readable from x_t even at t = 999, so the
prompt's position word is never needed (RESULTS.md, "The embedded teacher"). Position
stays in the grammar and the metrics, as "on the left" does in SD's prompts.

Images are float tensors in [-1, 1], shape (N, 3, H, W), the diffusion
convention; :func:`to_uint8` converts for metrics and PNGs.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
import torch

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1),
    "magenta": (0.9, 0.1, 0.9),
    "cyan": (0.1, 0.85, 0.9),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: dict[str, float] = {"small": 0.40, "large": 0.62}  # object extent / image side
POSITIONS: dict[str, float] = {"left": 0.30, "center": 0.50, "right": 0.70}  # centre x / side
BACKGROUND: tuple[float, float, float] = (0.12, 0.12, 0.12)

# Jitter gives every caption a distribution of images rather than one picture,
# so FID has diversity to measure; it is small enough that the caption stays true.
SIZE_JITTER = 0.06
POSITION_JITTER = 0.05
VERTICAL_RANGE = (0.38, 0.62)
SUPERSAMPLE = 4  # render at 4x and box-filter down: anti-aliased edges like real images


@dataclass(frozen=True, order=True)
class Caption:
    size: str
    colour: str
    shape: str
    position: str

    @property
    def text(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} on the {self.position}"

    def __str__(self) -> str:
        return self.text


def all_captions() -> list[Caption]:
    """Every caption of the grammar, in a fixed order (144 of them)."""
    return [
        Caption(size, colour, shape, position)
        for size, colour, shape, position in itertools.product(SIZES, COLOURS, SHAPES, POSITIONS)
    ]


def _is_held_out(caption: Caption) -> bool:
    # A Latin-square choice: for each (size, shape, position) exactly one colour
    # is held out, so 24 of 144 captions are held out and every value of every
    # attribute occurs in both sets (checked by a test). Held-out captions are
    # new *combinations* of seen words, as COCO captions are for SD.
    index = (
        list(COLOURS).index(caption.colour)
        + SHAPES.index(caption.shape)
        + list(POSITIONS).index(caption.position)
        + 3 * list(SIZES).index(caption.size)
    )
    return index % len(COLOURS) == 0


def train_captions() -> list[Caption]:
    """Prompts the one-step generator is distilled on (never evaluated on)."""
    return [c for c in all_captions() if not _is_held_out(c)]


def heldout_captions() -> list[Caption]:
    """Captions for evaluation, disjoint from :func:`train_captions` (the COCO-val role)."""
    return [c for c in all_captions() if _is_held_out(c)]


def parse_caption(text: str) -> Caption:
    """Inverse of :attr:`Caption.text`; raises ValueError naming the bad word."""
    words = text.strip().split()
    if len(words) != 7 or words[0] != "a" or words[4:6] != ["on", "the"]:
        raise ValueError(
            f"caption {text!r} does not match 'a <size> <colour> <shape> on the <position>'"
        )
    size, colour, shape, position = words[1], words[2], words[3], words[6]
    for word, vocab, what in (
        (size, SIZES, "size"),
        (colour, COLOURS, "colour"),
        (shape, SHAPES, "shape"),
        (position, POSITIONS, "position"),
    ):
        if word not in vocab:
            raise ValueError(f"caption {text!r}: unknown {what} {word!r}; known: {list(vocab)}")
    return Caption(size, colour, shape, position)


def mislabel(caption: Caption, rng: np.random.Generator, probability: float) -> Caption:
    """``caption`` with each attribute independently replaced by another value, with
    ``probability``.

    The embedded analogue of web alt-text that does not quite describe its
    image. It is why classifier-free guidance matters here as it does for Stable
    Diffusion: a teacher trained on mislabelled pairs reproduces the mistakes at
    guidance 1 (each attribute right about 1 - probability of the time), and
    guidance sharpens towards images whose caption is most likely given the
    image. Without it the world's captions determine their images, a well
    trained teacher is already right at guidance 1, and a guidance ablation has
    nothing to show.
    """
    fields = {}
    for name, vocab in (("size", SIZES), ("colour", COLOURS), ("shape", SHAPES),
                        ("position", POSITIONS)):
        value = getattr(caption, name)
        # Both draws happen for every attribute, so the stream does not depend on outcomes.
        flip, pick = rng.random(), rng.integers(0, len(vocab) - 1)
        if flip < probability:
            others = [v for v in vocab if v != value]
            value = others[pick]
        fields[name] = value
    return Caption(**fields)


def vocabulary() -> list[str]:
    """Every word the grammar can produce, sorted (the tokenizer's vocabulary)."""
    words = {"a", "on", "the", *SIZES, *COLOURS, *SHAPES, *POSITIONS}
    return sorted(words)


def shape_masks(shape: str, cx: np.ndarray, cy: np.ndarray, extent: np.ndarray,
                resolution: int) -> np.ndarray:
    """Coverage in [0, 1] of K shapes of one kind: (K, resolution, resolution).

    Coordinates are fractions of the image side; ``extent`` is the side of each
    shape's bounding box. Rendered at SUPERSAMPLE x and box-filtered, so edges are
    anti-aliased. Vectorised over K because the analyzer rasterises 108 candidate
    templates per image with this same function.
    """
    n = resolution * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n
    half = (np.asarray(extent, dtype=np.float64) / 2)[:, None]
    dx = ((coords[None, :] - np.asarray(cx, dtype=np.float64)[:, None]) / half)[:, None, :]
    dy = ((coords[None, :] - np.asarray(cy, dtype=np.float64)[:, None]) / half)[:, :, None]
    # y grows downwards, as in images; dx, dy are in [-1, 1] inside each box.
    if shape == "circle":
        inside = dx**2 + dy**2 <= 1.0
    elif shape == "square":  # same visual area as the circle
        inside = (np.abs(dx) <= 0.8) & (np.abs(dy) <= 0.8)
    elif shape == "triangle":  # apex up; the base spans the box
        inside = (dy >= -1.0) & (dy <= 1.0) & (np.abs(dx) <= (dy + 1.0) / 2.0)
    elif shape == "cross":
        bar = 0.36
        in_box = (np.abs(dx) <= 1.0) & (np.abs(dy) <= 1.0)
        inside = in_box & ((np.abs(dx) <= bar) | (np.abs(dy) <= bar))
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    # Box filter as two matrix products (BLAS, not a strided mean); every coverage
    # is a multiple of 1/SUPERSAMPLE^2, exact in float32, so it equals the loop's mean.
    pool = np.kron(np.eye(resolution, dtype=np.float32),
                   np.full((1, SUPERSAMPLE), 1.0 / SUPERSAMPLE, dtype=np.float32))
    return pool @ inside.astype(np.float32) @ pool.T


def shape_mask(shape: str, cx: float, cy: float, extent: float, resolution: int) -> np.ndarray:
    """One shape's coverage (resolution, resolution); see :func:`shape_masks`."""
    return shape_masks(shape, np.array([cx]), np.array([cy]), np.array([extent]), resolution)[0]


def _caption_seed(caption: Caption, seed: int) -> int:
    digest = hashlib.sha256(f"{caption.text}|{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def render(caption: Caption, seed: int, resolution: int = 16) -> np.ndarray:
    """One image, float32 HWC in [0, 1], fully determined by (caption, seed, resolution)."""
    rng = np.random.default_rng(_caption_seed(caption, seed))
    extent = SIZES[caption.size] + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
    cx = POSITIONS[caption.position] + rng.uniform(-POSITION_JITTER, POSITION_JITTER)
    cy = rng.uniform(*VERTICAL_RANGE)
    coverage = shape_mask(caption.shape, cx, cy, extent, resolution)[..., None]
    colour = np.asarray(COLOURS[caption.colour], dtype=np.float32)
    background = np.asarray(BACKGROUND, dtype=np.float32)
    return (coverage * colour + (1.0 - coverage) * background).astype(np.float32)


def render_batch(captions: list[Caption], seeds: list[int], resolution: int = 16) -> torch.Tensor:
    """Images for (caption, seed) pairs as a float tensor (N, 3, H, W) in [-1, 1]."""
    if len(captions) != len(seeds):
        raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds")
    images = np.stack([render(c, s, resolution) for c, s in zip(captions, seeds)])
    return torch.from_numpy(images).permute(0, 3, 1, 2) * 2.0 - 1.0


def sample_captions(pool: list[Caption], count: int, seed: int) -> list[Caption]:
    """``count`` captions drawn uniformly with replacement from ``pool``, reproducibly."""
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.integers(0, len(pool), size=count)]


def reference_set(count: int, resolution: int = 16,
                  seed: int = 0) -> tuple[list[Caption], torch.Tensor]:
    """Held-out captions and their rendered images: the embedded COCO-2014-val.

    Captions cycle through the held-out set so every caption is equally
    represented; each image gets its own seed so no two images repeat.
    """
    pool = heldout_captions()
    captions = [pool[i % len(pool)] for i in range(count)]
    seeds = [seed * 1_000_003 + i for i in range(count)]
    return captions, render_batch(captions, seeds, resolution)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, the layout clean-fid and PIL use."""
    x = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def prompt_set_hash(captions: list[Caption] | list[str]) -> str:
    """Stable short hash of a prompt list, recorded with every run."""
    text = "\n".join(str(c) for c in captions)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
