"""FID through clean-fid: its resizers, its batch feature code and its Fréchet distance.

Two feature extractors plug into clean-fid's code path:

- real world: clean-fid's own Inception (``inception-2015-12-05.pt``, TorchScript)
  from a local folder, with the paper's protocol (centre crop, resize to 256,
  then clean-fid's "clean" bicubic resize to 299);
- embedded world: the image tower of the embedded CLIP (:mod:`evaluation.clip_model`).
  Inception features of 16x16 shapes upscaled 19x are ImageNet texture statistics
  of interpolation artefacts; a tower trained on this very world encodes its
  colour, shape, size and position, and reusing the CLIP costs no extra shipped
  weights. Its 64-dimensional output also keeps the covariance well conditioned
  with the 2,000-image evaluations the ablations run. The resize is clean-fid's
  "clean" PIL-bicubic resizer with the output size set to the tower's 16x16
  input (the identity on the world's own 16x16 images).

clean-fid cannot build statistics with a custom extractor (``make_custom_stats``
only knows Inception) and defaults to CUDA, so reference features are computed
here on CPU and cached on disk, keyed by reference set and extractor hash.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill import paths, world
from distill.shipped import file_hash
from evaluation.errors import EvalError

INCEPTION_FILE = "inception-2015-12-05.pt"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def feature_stats(features: np.ndarray, what: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of one row per image, as clean-fid computes them.

    With no more rows than feature dimensions the covariance is singular and the
    Fréchet distance meaningless, so that is an error rather than a number.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise EvalError(f"{what}: expected a 2-D array (one row per image), got shape "
                        f"{features.shape}")
    rows, dims = features.shape
    if rows <= dims:
        raise EvalError(
            f"{what}: {rows} images for {dims}-dimensional features; the covariance would be "
            f"singular. FID needs more than {dims} images (use at least {dims + 1}; "
            "thousands for a stable number)")
    if not np.isfinite(features).all():
        raise EvalError(f"{what}: features contain NaN or inf (are the images finite?)")
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def fid_from_stats(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray,
                   sigma_b: np.ndarray) -> float:
    """clean-fid's Fréchet distance between two Gaussians."""
    from cleanfid.fid import frechet_distance

    if mu_a.shape != mu_b.shape:
        raise EvalError(f"feature dimensions differ: {mu_a.shape[0]} vs {mu_b.shape[0]} "
                        "(were both sets embedded with the same extractor?)")
    return float(frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets (NumPy, one row per image), through clean-fid's code."""
    return fid_from_stats(*feature_stats(features_a, "features_a"),
                          *feature_stats(features_b, "features_b"))


# --------------------------------------------------------------------------- extractors


@dataclass
class FeatureExtractor:
    """What clean-fid needs: a model on float [0, 255] NCHW batches and a per-image resizer.

    ``identity`` is a content hash of the weights plus the protocol, the key of
    cached reference features.
    """

    name: str
    identity: str
    model_fn: Callable[[torch.Tensor], torch.Tensor]
    fn_resize: Callable[[np.ndarray], np.ndarray]
    image_transform: Callable[[np.ndarray], np.ndarray] | None = None
    batch_size: int = 500

    def images_features(self, images: torch.Tensor) -> np.ndarray:
        """Features of (N, 3, H, W) images in [-1, 1], quantised to uint8 as a PNG would be."""
        _check_images(images, "images")
        return self.uint8_features(world.to_uint8(images))

    def uint8_features(self, images: np.ndarray) -> np.ndarray:
        """Features of (N, H, W, 3) uint8 images: clean-fid's per-image transform and resize,
        then clean-fid's batch feature call, on CPU."""
        from cleanfid.fid import get_batch_features

        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = []
            for image in images[start:start + self.batch_size]:
                shown = image if self.image_transform is None else self.image_transform(image)
                batch.append(np.asarray(self.fn_resize(shown), dtype=np.float32))
            # clean-fid's ResizeDataset: float32 HWC -> CHW tensor, values kept in [0, 255].
            tensor = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()
            chunks.append(get_batch_features(tensor, self.model_fn, torch.device("cpu")))
        return np.concatenate(chunks).astype(np.float64)

    def folder_features(self, folder: str | Path) -> np.ndarray:
        """Features of every image in a folder, through clean-fid's own folder reader."""
        from cleanfid.fid import get_folder_features

        check_image_folder(folder)
        return get_folder_features(
            str(folder), self.model_fn, num_workers=0, batch_size=self.batch_size,
            device=torch.device("cpu"), mode="clean", custom_fn_resize=self.fn_resize,
            custom_image_tranform=self.image_transform, verbose=False).astype(np.float64)


def clean_resizer(size: int) -> Callable[[np.ndarray], np.ndarray]:
    """clean-fid's "clean" resize (PIL bicubic on float channels) to ``size`` x ``size``."""
    from cleanfid.resize import make_resizer

    return make_resizer("PIL", False, "bicubic", (size, size))


def clip_extractor(clip) -> FeatureExtractor:
    """The embedded CLIP's image tower as a clean-fid feature extractor."""

    def model_fn(batch: torch.Tensor) -> torch.Tensor:
        return clip.encode_images(batch / 127.5 - 1.0)  # clean-fid hands over [0, 255]

    return FeatureExtractor(
        name=f"embedded-clip-{clip.config.embed_dim}d", model_fn=model_fn,
        identity=f"embedded-clip:{clip.weights_hash}:clean-bicubic-{clip.resolution}",
        fn_resize=clean_resizer(clip.resolution))


def centre_crop_resize(size: int) -> Callable[[np.ndarray], np.ndarray]:
    """Centre-crop to a square, then PIL bicubic to size x size (the paper's 256 protocol)."""
    from PIL import Image

    def transform(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = image[top:top + side, left:left + side]
        if side == size:
            return square
        return np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BICUBIC))

    return transform


def inception_extractor(inception_dir: str | Path, crop_size: int = 256) -> FeatureExtractor:
    """clean-fid's Inception from a local folder (no download), paper protocol at 256."""
    from cleanfid.inception_torchscript import InceptionV3W
    from cleanfid.resize import build_resizer

    inception_dir = Path(inception_dir).expanduser()
    path = inception_dir / INCEPTION_FILE
    if not path.is_file():
        raise EvalError(
            f"{path}: missing. Put clean-fid's Inception weights ({INCEPTION_FILE}, from "
            "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/) in "
            f"{inception_dir} or pass the folder that holds it (--inception-dir)")
    model = InceptionV3W(str(inception_dir), download=False, resize_inside=False).eval()
    return FeatureExtractor(
        name="inception-v3", model_fn=model, identity=f"inception:{file_hash(path)}:"
        f"crop{crop_size}-clean299", fn_resize=build_resizer("clean"),
        image_transform=centre_crop_resize(crop_size), batch_size=64)


# --------------------------------------------------------------------------- inputs


def _check_images(images: torch.Tensor, what: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise EvalError(f"{what}: expected a tensor (N, 3, H, W) in [-1, 1], got {shape}")
    if len(images) == 0:
        raise EvalError(f"{what}: no images")


def check_image_folder(folder: str | Path) -> list[Path]:
    """The image files of a folder; a missing or empty folder, or mixed sizes, is an error."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"{folder}: image folder not found")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise EvalError(f"{folder}: no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    sizes: dict[tuple[int, int], Path] = {}
    for path in files:
        with Image.open(path) as image:
            sizes.setdefault(image.size, path)
    if len(sizes) > 1:
        (size_a, file_a), (size_b, file_b) = list(sizes.items())[:2]
        raise EvalError(f"{folder}: images of different sizes ({file_a.name} is "
                        f"{size_a[0]}x{size_a[1]}, {file_b.name} is {size_b[0]}x{size_b[1]}); "
                        "one evaluation set must share one resolution")
    return files


def read_image_folder(folder: str | Path) -> torch.Tensor:
    """All images of a folder (sorted by path) as (N, 3, H, W) in [-1, 1]."""
    from PIL import Image

    files = check_image_folder(folder)
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def write_image_folder(images: torch.Tensor, folder: str | Path) -> Path:
    """Save (N, 3, H, W) images in [-1, 1] as numbered PNGs (the input clean-fid reads)."""
    from PIL import Image

    _check_images(images, "images")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(world.to_uint8(images)):
        Image.fromarray(image).save(folder / f"{i:06d}.png")
    return folder


# --------------------------------------------------------------------------- reference cache


def cached_features(extractor: FeatureExtractor, reference_id: str,
                    make_images: Callable[[], torch.Tensor]) -> np.ndarray:
    """Reference features, computed once per (reference set, extractor) and shared by trials.

    Written to a temporary file and renamed into place, so concurrent trials
    either see a complete file or compute their own copy; never a torn one.
    """
    key = hashlib.sha256(f"{reference_id}|{extractor.identity}".encode()).hexdigest()[:24]
    path = paths.cache_dir("fid") / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # unreadable: recompute below
    features = extractor.images_features(make_images())
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".tmp-", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, features)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return features
