"""Sample grids for MLflow artifacts: one row per prompt, the prompt as the row label."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from distill import world
from evaluation.errors import EvalError

CELL_PIXELS = 64  # 16x16 images are upscaled 4x with nearest: every pixel stays visible
MAX_ROWS = 16  # an artifact to look at, not the evaluation set
PAD = 2
LABEL_HEIGHT_PAD = 6


def sample_grid(images: torch.Tensor, captions: list[str], path: str | Path,
                columns: int = 8, layout_path: str | Path | None = None) -> Path:
    """Write a PNG grid of images grouped by prompt (first ``columns`` images per prompt,
    first ``MAX_ROWS`` prompts in order of appearance) and return its path.

    ``layout_path``: also write where each image sits, as JSON ``{"prompts": [...],
    "cells": [[[left, top, right, bottom], ...] per prompt]}`` (results.schema's
    GRID_FINAL_LAYOUT), so a report can cut the grid into one row per prompt."""
    from PIL import Image, ImageDraw, ImageFont

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise EvalError("sample_grid: expected images as a tensor (N, 3, H, W) in [-1, 1]")
    if len(images) == 0 or len(images) != len(captions):
        raise EvalError(f"sample_grid: {len(images)} images but {len(captions)} captions; "
                        "need one caption per image and at least one image")
    if columns < 1:
        raise EvalError(f"sample_grid: columns must be >= 1, got {columns}")
    rows: dict[str, list[int]] = {}
    for i, caption in enumerate(captions):
        if caption in rows or len(rows) < MAX_ROWS:
            rows.setdefault(caption, [])
            if len(rows[caption]) < columns:
                rows[caption].append(i)

    pixels = world.to_uint8(images)
    height, width = pixels.shape[1:3]
    # Small images grow by an integer factor with nearest (crisp pixels); large ones shrink.
    scale = max(1, CELL_PIXELS // max(height, width))
    cell_w, cell_h = (width * scale, height * scale) if scale > 1 else (CELL_PIXELS, CELL_PIXELS)
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = int(max(probe.textlength(c, font=font) for c in rows)) + 2 * LABEL_HEIGHT_PAD
    canvas = Image.new("RGB", (label_w + columns * (cell_w + PAD) + PAD,
                               len(rows) * (cell_h + PAD) + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    cells = []
    for r, (caption, indices) in enumerate(rows.items()):
        top = PAD + r * (cell_h + PAD)
        draw.text((LABEL_HEIGHT_PAD, top + cell_h // 2), caption, fill=(0, 0, 0), font=font,
                  anchor="lm")
        boxes = []
        for c, index in enumerate(indices):
            tile = Image.fromarray(np.ascontiguousarray(pixels[index]))
            resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC
            tile = tile.resize((cell_w, cell_h), resample)
            left = label_w + PAD + c * (cell_w + PAD)
            canvas.paste(tile, (left, top))
            boxes.append([left, top, left + cell_w, top + cell_h])
        cells.append(boxes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    if layout_path is not None:
        Path(layout_path).write_text(json.dumps({"prompts": list(rows), "cells": cells}))
    return path
