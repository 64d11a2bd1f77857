"""Metric keys, importable without torch (results and the orchestrator name metrics too)."""

from __future__ import annotations


def fid_key(num_images: int) -> str:
    """Metric key carrying the sample count: 2000 -> fid2k, 30000 -> fid30k, 500 -> fid500."""
    if num_images < 1:
        raise ValueError(f"FID needs at least one image, got num_images={num_images}")
    if num_images % 1000 == 0:
        return f"fid{num_images // 1000}k"
    return f"fid{num_images}"
