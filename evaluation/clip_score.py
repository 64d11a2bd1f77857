"""CLIP score through open_clip: mean cosine between image and prompt embeddings.

The raw mean cosine is what is stored (the paper's 0.302 style); scaling by 100
is a presentation choice for tables. The paper prefixes every prompt with
"A photo depicts " for ViT-g-14; the embedded CLIP was trained on bare captions,
so its default prefix is empty.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.shipped import file_hash
from evaluation.errors import EvalError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REAL_PROMPT_PREFIX = "A photo depicts "
EMBEDDED_PROMPT_PREFIX = ""
REAL_CLIP_MODEL = "ViT-g-14"
REAL_CLIP_PRETRAINED = "laion2b_s12b_b42k"


@dataclass
class ClipScorer:
    """Image and text towers of one CLIP, with the prompt prefix of the protocol."""

    name: str
    identity: str  # weights hash: recorded in the protocol string
    encode_images: Callable[[torch.Tensor], torch.Tensor]  # (N,3,H,W) in [-1,1] -> (N,D)
    encode_texts: Callable[[list[str]], torch.Tensor]
    prompt_prefix: str = ""
    batch_size: int = 500

    @torch.no_grad()
    def cosines(self, images: torch.Tensor, captions: list[str]) -> np.ndarray:
        """Cosine similarity of each image with its own caption (prefixed)."""
        if len(images) != len(captions):
            raise EvalError(f"{len(images)} images but {len(captions)} captions")
        out = []
        for start in range(0, len(captions), self.batch_size):
            stop = start + self.batch_size
            image_features = self.encode_images(images[start:stop].float())
            text_features = self.encode_texts(
                [self.prompt_prefix + c for c in captions[start:stop]])
            out.append(torch.nn.functional.cosine_similarity(
                image_features.float(), text_features.float(), dim=-1))
        return torch.cat(out).cpu().numpy().astype(np.float64)

    def score(self, images: torch.Tensor, captions: list[str]) -> float:
        """The CLIP score: mean cosine over the set (raw, not x100)."""
        return float(self.cosines(images, captions).mean())


def embedded_scorer(clip, prompt_prefix: str = EMBEDDED_PROMPT_PREFIX) -> ClipScorer:
    """A scorer over a loaded :class:`evaluation.clip_model.EmbeddedClip`."""
    return ClipScorer(name="embedded-clip", identity=clip.weights_hash,
                      encode_images=clip.encode_images, encode_texts=clip.encode_texts,
                      prompt_prefix=prompt_prefix)


def real_scorer(checkpoint: str | Path, prompt_prefix: str = REAL_PROMPT_PREFIX,
                device: str | torch.device = "cpu") -> ClipScorer:
    """open_clip ViT-g-14 (laion2b_s12b_b42k) from a local checkpoint file.

    The file is checked before open_clip is called: given a missing path, open_clip
    would try the hub and retry for most of a minute before failing.
    """
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    checkpoint = Path(checkpoint).expanduser()
    if not checkpoint.is_file():
        raise EvalError(
            f"{checkpoint}: missing. Put the open_clip {REAL_CLIP_MODEL} {REAL_CLIP_PRETRAINED} "
            "checkpoint (open_clip_pytorch_model.bin from laion/CLIP-ViT-g-14-laion2B-s12B-b42K) "
            "there or pass its path (--clip-checkpoint)")
    model = open_clip.create_model(REAL_CLIP_MODEL, pretrained=str(checkpoint), device=device)
    model.requires_grad_(False).eval()
    tokenizer = open_clip.get_tokenizer(REAL_CLIP_MODEL)
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    mean = torch.tensor(OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1)

    def encode_images(images: torch.Tensor) -> torch.Tensor:
        # open_clip's eval transform on tensors: bicubic resize of the short side,
        # centre crop, CLIP normalisation.
        x = (images.to(device).float().clamp(-1, 1) + 1) / 2
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        x = torch.nn.functional.interpolate(
            x, size=(max(size, round(h * scale)), max(size, round(w * scale))),
            mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top:top + size, left:left + size]
        return model.encode_image((x - mean) / std)

    def encode_texts(texts: list[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(texts).to(device))

    return ClipScorer(name=f"{REAL_CLIP_MODEL}-{REAL_CLIP_PRETRAINED}",
                      identity=file_hash(checkpoint), encode_images=encode_images,
                      encode_texts=encode_texts, prompt_prefix=prompt_prefix, batch_size=64)
