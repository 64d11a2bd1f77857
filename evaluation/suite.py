"""One evaluation protocol: prompts, FID reference, CLIP scorer, and (embedded) adherence.

A suite is built once per process and shared by every evaluation of a run, so
the metric models load and the reference statistics are read (or computed and
cached) once. ``suite.protocol`` names everything that changes the numbers and
is recorded with each run, so results from different protocols are never
compared silently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill import metrics as registry
from distill import world
from distill.config import read_text_file
from evaluation.adherence import adherence
from evaluation.clip_model import CLIP_SIZES, ensure_clip, load_clip
from evaluation.clip_score import (
    EMBEDDED_PROMPT_PREFIX,
    REAL_CLIP_MODEL,
    REAL_CLIP_PRETRAINED,
    REAL_PROMPT_PREFIX,
    ClipScorer,
    embedded_scorer,
    real_scorer,
)
from evaluation.fid import (
    INCEPTION_FILE,
    EvalError,
    FeatureExtractor,
    cached_features,
    clip_extractor,
    feature_stats,
    fid_from_stats,
    inception_extractor,
    read_image_folder,
)

SampleFn = Callable[[list[str], int], torch.Tensor]


@dataclass
class EvalSuite:
    protocol: str
    captions: list[str]
    extractor: FeatureExtractor
    reference_mu: np.ndarray
    reference_sigma: np.ndarray
    clip: ClipScorer
    resolution: int | None  # embedded: images must be exactly this size
    with_adherence: bool
    sample_batch_size: int = 250

    def evaluate(self, images: torch.Tensor, captions: list[str]) -> dict[str, float]:
        """FID (key carries N), CLIP score (raw mean cosine) and, embedded, adherence."""
        self._check(images, captions)
        features = self.extractor.images_features(images)
        metrics = {registry.fid_key(len(images)): fid_from_stats(
            *feature_stats(features, "generated images"), self.reference_mu, self.reference_sigma)}
        metrics[registry.CLIP_SCORE.key] = self.clip.score(images, captions)
        if self.with_adherence:
            metrics.update(adherence(images, [world.parse_caption(c) for c in captions]))
        return metrics

    def evaluate_sample_fn(self, sample_fn: SampleFn, seed: int = 0) -> dict[str, float]:
        """Generate one image per suite caption with ``sample_fn(prompts, seed)``, then evaluate.

        Batch ``i`` is sampled with seed ``seed * 1_000_003 + i``: distinct noise for
        every batch (one seed for all would repeat images), reproducible for a seed.
        """
        return self.evaluate(self.generate(sample_fn, seed), self.captions)

    @torch.no_grad()
    def generate(self, sample_fn: SampleFn, seed: int = 0) -> torch.Tensor:
        batches = []
        for i, start in enumerate(range(0, len(self.captions), self.sample_batch_size)):
            prompts = self.captions[start:start + self.sample_batch_size]
            images = sample_fn(prompts, seed * 1_000_003 + i)
            if not isinstance(images, torch.Tensor) or len(images) != len(prompts):
                got = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
                raise EvalError(f"sample_fn returned {got} for {len(prompts)} prompts; "
                                "expected a tensor (N, 3, H, W) with one image per prompt")
            batches.append(images.detach().float().cpu())
        return torch.cat(batches)

    def _check(self, images: torch.Tensor, captions: list[str]) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
            raise EvalError(f"expected images as a tensor (N, 3, H, W) in [-1, 1], got {shape}")
        if captions is None or len(captions) == 0:
            raise EvalError("no captions: evaluation needs one caption per image")
        if len(images) != len(captions):
            raise EvalError(f"{len(images)} images but {len(captions)} captions; "
                            "evaluation needs one caption per image")
        if self.resolution is not None and tuple(images.shape[-2:]) != (self.resolution,) * 2:
            raise EvalError(
                f"images are {images.shape[-2]}x{images.shape[-1]} but protocol {self.protocol} "
                f"evaluates {self.resolution}x{self.resolution} images")


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def embedded_suite(num_images: int = 2000, seed: int = 0, clip_dir: str | Path | None = None,
                   prompt_prefix: str = EMBEDDED_PROMPT_PREFIX) -> EvalSuite:
    """The embedded world's protocol: held-out captions, their renders as the FID reference.

    ``seed`` picks the reference renders (world.reference_set); the shipped CLIP
    is used unless ``clip_dir`` names another (e.g. the smoke one in tests).
    """

    clip = load_clip(clip_dir if clip_dir is not None else ensure_clip("default"))
    extractor = clip_extractor(clip)
    reference_captions = world.reference_set(num_images, clip.resolution, seed)[0]
    reference_id = (f"embedded-reference:n{num_images}:res{clip.resolution}:seed{seed}:"
                    f"{world.prompt_set_hash(reference_captions)}")
    features = cached_features(
        extractor, reference_id, lambda: world.reference_set(num_images, clip.resolution, seed)[1])
    mu, sigma = feature_stats(features, f"reference features ({reference_id})")
    protocol = (f"embedded-{clip.resolution}px-clip-"
                f"{_short_hash(clip.weights_hash, prompt_prefix, reference_id)}")
    return EvalSuite(protocol=protocol, captions=[c.text for c in reference_captions],
                     extractor=extractor, reference_mu=mu, reference_sigma=sigma,
                     clip=embedded_scorer(clip, prompt_prefix), resolution=clip.resolution,
                     with_adherence=True)


def read_captions(path: str | Path, num_images: int) -> list[str]:
    """The first ``num_images`` non-empty lines of a caption file (one caption per line)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EvalError(f"{path}: caption file missing (one caption per line, e.g. the COCO-2014 "
                        "val captions the paper evaluates on)")
    text = read_text_file(path, "caption")
    captions = [line.strip() for line in text.splitlines() if line.strip()]
    if len(captions) < num_images:
        raise EvalError(f"{path}: {len(captions)} captions but num_images={num_images}; "
                        "give a longer caption file or fewer images")
    return captions[:num_images]


def _reference_stats(path: Path, extractor: FeatureExtractor) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise EvalError(
            f"{path}: FID reference missing. Give clean-fid statistics (.npz with mu and sigma, "
            "as `cleanfid.fid.make_custom_stats` writes for Inception) or a folder of "
            "reference images")
    if path.is_dir():
        features = cached_features(extractor, f"folder:{path.resolve()}",
                                   lambda: read_image_folder(path))
        return feature_stats(features, f"reference features of {path}")
    try:
        stats = np.load(path)
        return np.asarray(stats["mu"]), np.asarray(stats["sigma"])
    except (OSError, ValueError, KeyError) as exc:
        raise EvalError(f"{path}: not clean-fid statistics (need arrays mu and sigma): {exc}") \
            from exc


def real_suite(captions_file: str | Path, reference: str | Path, clip_checkpoint: str | Path,
               inception_dir: str | Path = "/tmp", num_images: int = 30000,
               prompt_prefix: str = REAL_PROMPT_PREFIX,
               device: str | torch.device = "cpu") -> EvalSuite:
    """The paper's protocol: COCO captions, clean-fid Inception at 256, ViT-g-14 CLIP score.

    Every file is local; each missing one is an :class:`EvalError` naming it.
    ``inception_dir`` defaults to /tmp, where clean-fid itself looks.
    """

    reference = Path(reference).expanduser()
    # Every missing file in one message, before any model loads.
    needed = {
        Path(captions_file).expanduser(): "COCO caption file, one caption per line (--captions)",
        reference: "FID reference: clean-fid .npz statistics or an image folder (--reference)",
        Path(inception_dir).expanduser() / INCEPTION_FILE:
            "clean-fid Inception weights (folder via --inception-dir; clean-fid uses /tmp)",
        Path(clip_checkpoint).expanduser():
            f"open_clip {REAL_CLIP_MODEL} {REAL_CLIP_PRETRAINED} checkpoint (--clip-checkpoint)",
    }
    missing = [f"{path}: missing ({what})" for path, what in needed.items() if not path.exists()]
    if missing:
        raise EvalError("real-world evaluation files missing:\n  " + "\n  ".join(missing))
    captions = read_captions(captions_file, num_images)
    extractor = inception_extractor(inception_dir)
    mu, sigma = _reference_stats(reference, extractor)
    clip = real_scorer(clip_checkpoint, prompt_prefix, device)
    protocol = (f"coco-{num_images}-256-vitg14-"
                f"{_short_hash(extractor.identity, clip.identity, prompt_prefix, str(reference))}")
    return EvalSuite(protocol=protocol, captions=captions, extractor=extractor,
                     reference_mu=mu, reference_sigma=sigma, clip=clip, resolution=None,
                     with_adherence=False, sample_batch_size=16)


@dataclass(frozen=True)
class SuiteFiles:
    """Where a Stable Diffusion profile's evaluation files are (all local)."""

    label: str  # the profile's name, for the protocol string
    captions: str
    reference: str  # clean-fid .npz statistics or a folder of images
    clip_checkpoint: str | None = None  # open_clip ViT-g-14 (paper metrics)
    inception_dir: str | None = None  # folder holding clean-fid's Inception (paper metrics)


INCEPTION_DIMS = 2048  # clean-fid's Inception pool features


def _clip_size(size: str) -> str:
    """The embedded CLIP that scores a run of the embedded world at a size."""
    return "smoke" if size == "smoke" else "default"


def fid_feature_dims(metrics: str, size: str, embedded_world: bool) -> int:
    """The dimension of the features FID is computed on in the suite ``build_suite``
    builds, known without loading a model: FID needs more images than this
    (``feature_stats``), so a run asking for fewer is refused before it starts."""
    if embedded_world:
        return CLIP_SIZES[_clip_size(size)].embed_dim
    return INCEPTION_DIMS if metrics == "paper" else CLIP_SIZES["default"].embed_dim


def build_suite(metrics: str, size: str, num_images: int, files: SuiteFiles | None = None,
                device: str | torch.device = "cpu") -> EvalSuite:
    """The evaluation suite of a run, loading its metric models.

    Without ``files``: the embedded world's suite; at the smoke size it scores with the
    smoke CLIP (trained in seconds, cached), so a smoke run needs no shipped metric model
    and its numbers are for wiring, not for reading. With ``files``: ``metrics="paper"``
    is clean-fid Inception at 256 and ViT-g-14 on the captions; ``metrics="embedded"``
    scores the captions and reference images with the embedded CLIP (a wiring check of an
    SD-format teacher on CPU; its protocol string says so).
    """

    if files is None:
        clip_dir = ensure_clip("smoke", progress=False) if _clip_size(size) == "smoke" else None
        return embedded_suite(num_images, seed=0, clip_dir=clip_dir)
    if metrics == "paper":
        if files.clip_checkpoint is None or files.inception_dir is None:
            raise EvalError(f"profile {files.label}: the paper's metrics need clip_checkpoint "
                            "and inception_dir")
        return real_suite(files.captions, files.reference, files.clip_checkpoint,
                          files.inception_dir, num_images, device=device)
    return _embedded_clip_suite(files, num_images)


def _embedded_clip_suite(files: SuiteFiles, num_images: int) -> EvalSuite:

    clip = load_clip(ensure_clip("default"))
    extractor = clip_extractor(clip)
    reference = Path(files.reference)
    features = cached_features(extractor, f"folder:{reference.resolve()}",
                               lambda: read_image_folder(reference))
    mu, sigma = feature_stats(features, f"reference features of {reference}")
    digest = hashlib.sha256(f"{clip.weights_hash}|{reference.resolve()}".encode()).hexdigest()[:8]
    return EvalSuite(protocol=f"{files.label}-{num_images}-embedded-clip-{digest}",
                     captions=read_captions(files.captions, num_images), extractor=extractor,
                     reference_mu=mu, reference_sigma=sigma,
                     clip=embedded_scorer(clip, EMBEDDED_PROMPT_PREFIX),
                     resolution=clip.resolution, with_adherence=False)
