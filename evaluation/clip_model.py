"""The embedded world's CLIP: an open_clip model trained contrastively on the world.

ViT-g-14 cannot be downloaded here, so the embedded world scores prompt
alignment with its own small CLIP. It goes through the same library code as
the real one: the architecture is an open_clip ``model_cfg``, the weights are
saved as an open_clip ``local-dir`` (``open_clip_config.json`` +
``open_clip_model.safetensors``) and loaded back with
``open_clip.create_model("local-dir:...")``, and text is tokenised by
open_clip's own ``SimpleTokenizer`` (its BPE vocabulary ships inside the
package, so nothing is downloaded).

One deliberate difference: the world has 20 words, so a 49,408-row token
embedding would be 99.9% unused rows and alone would exceed the repository's
size budget. The BPE ids the world's captions produce are remapped onto a
compact vocabulary (table stored in the config JSON); any other word maps to
one "unknown" id.

The same model's image tower is the embedded FID feature extractor (see
:mod:`evaluation.fid`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill import world
from distill.config import config_hash
from distill.shipped import AssetKind, file_hash
from evaluation.errors import MetricModelError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHIPPED_CLIP_DIR = Path(__file__).resolve().parent / "assets" / "embedded-clip"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
MANIFEST_FILE = "embedded_clip.json"

# Compact token ids: 0 is open_clip's padding id, 1 stands for any word outside the
# world; the world's own BPE ids follow in increasing order, so the end-of-text id
# (49407, the largest BPE id) stays the largest compact id, which is what open_clip's
# "argmax" text pooling relies on to find the end of the prompt.
PAD_ID, UNKNOWN_ID = 0, 1


@dataclass(frozen=True)
class ClipConfig:
    """Everything that determines the embedded CLIP's weights (hashed for the cache)."""

    resolution: int = 16
    patch_size: int = 4  # 4x4 tokens: 2x2 patches cost several times the training time
    vision_width: int = 64
    vision_layers: int = 3
    text_width: int = 64
    text_layers: int = 2
    head_width: int = 32
    embed_dim: int = 64
    context_length: int = 12  # a caption is 7 words + start + end
    train_steps: int = 800
    batch_size: int = 128  # distinct captions per batch: no false negatives in InfoNCE
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.05
    seed: int = 0

    def config_hash(self) -> str:
        # 16 hex digits: the length recorded in the shipped manifests.
        return config_hash(self, length=16)


CLIP_SIZES: dict[str, ClipConfig] = {
    "default": ClipConfig(),
    # Smoke: the same code in seconds, for tests of the training path only.
    "smoke": ClipConfig(vision_width=32, vision_layers=1, text_width=32, text_layers=1,
                        embed_dim=32, train_steps=20, batch_size=32, warmup_steps=5),
}


# --------------------------------------------------------------------------- tokenizer


def _simple_tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def world_token_ids(context_length: int) -> list[int]:
    """The BPE ids open_clip's SimpleTokenizer gives the world's captions, sorted."""
    bpe = _simple_tokenizer(context_length)
    ids = bpe([c.text for c in world.all_captions()])
    return sorted(int(i) for i in torch.unique(ids) if int(i) != PAD_ID)


class WorldTokenizer:
    """open_clip's SimpleTokenizer followed by the remap onto the compact vocabulary."""

    def __init__(self, token_ids: list[int], context_length: int):
        self.context_length = context_length
        self.vocab_size = len(token_ids) + 2
        table = torch.full((max(token_ids) + 1,), UNKNOWN_ID, dtype=torch.long)
        table[PAD_ID] = PAD_ID
        table[torch.tensor(token_ids)] = torch.arange(2, len(token_ids) + 2)
        self._table = table
        self._bpe = _simple_tokenizer(context_length)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        # SimpleTokenizer truncates to context_length and keeps the end token last;
        # every BPE id is <= the end-of-text id, so the table covers them all.
        return self._table[self._bpe(list(texts), context_length=self.context_length)]


# --------------------------------------------------------------------------- model


def model_cfg(config: ClipConfig, vocab_size: int) -> dict:
    """The open_clip model config (the same schema as open_clip's model_configs/*.json)."""
    return {
        "embed_dim": config.embed_dim,
        "vision_cfg": {"image_size": config.resolution, "patch_size": config.patch_size,
                       "width": config.vision_width, "layers": config.vision_layers,
                       "head_width": config.head_width, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": config.context_length, "vocab_size": vocab_size,
                     "width": config.text_width, "heads": config.text_width // config.head_width,
                     "layers": config.text_layers},
    }


# Images enter as the diffusion convention [-1, 1]; mean = std = 0.5 in open_clip's
# preprocess terms is the identity on that range, recorded so the config is complete.
PREPROCESS_CFG = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                  "resize_mode": "shortest"}


@dataclass
class EmbeddedClip:
    """A loaded embedded CLIP: open_clip model, tokenizer, identity."""

    model: Any  # open_clip's CLIP (encode_image / encode_text)
    tokenizer: WorldTokenizer
    directory: Path
    config: ClipConfig
    weights_hash: str

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> unnormalised image embeddings (N, embed_dim)."""
        return self.model.encode_image(images.float())

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts))


def _build(config: ClipConfig, token_ids: list[int]):
    import open_clip

    # What open_clip.create_model does with a model_cfg; loading goes through
    # create_model("local-dir:...") with the same config written beside the weights.
    model = open_clip.CLIP(**model_cfg(config, len(token_ids) + 2))
    return model, WorldTokenizer(token_ids, config.context_length)


def _config_json(config: ClipConfig, token_ids: list[int]) -> dict:
    return {"model_cfg": model_cfg(config, len(token_ids) + 2), "preprocess_cfg": {
        **PREPROCESS_CFG, "size": config.resolution}}


def weights_hash(directory: Path) -> str:
    """Content hash of the weights file alone (the config JSON is derived from the manifest)."""
    return file_hash(Path(directory) / WEIGHTS_FILE)


# --------------------------------------------------------------------------- training


def _lr_at(step: int, config: ClipConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.train_steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1 + np.cos(np.pi * progress))


def train_clip(config: ClipConfig, out_dir: Path, progress: bool = True,
               dtype: torch.dtype = torch.float32) -> dict:
    """Train the embedded CLIP with InfoNCE on random renders of all 144 captions.

    Every batch holds distinct captions (so no positive pair is used as a negative)
    with fresh random renders (so the model learns the attributes, not the jitter).
    Deterministic on CPU for a config: all randomness comes from ``config.seed``.
    Held-out captions are included on purpose: this is a metric model, and the
    metric must understand the evaluation prompts.
    """
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    token_ids = world_token_ids(config.context_length)
    model, tokenizer = _build(config, token_ids)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters()
                if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config.learning_rate)
    captions = world.all_captions()
    tokens = tokenizer([c.text for c in captions])
    batch_size = min(config.batch_size, len(captions))
    rng = np.random.default_rng(config.seed)
    start = time.perf_counter()
    loss_avg = float("nan")
    bar = tqdm(range(config.train_steps), desc="embedded clip", disable=not progress, unit="step")
    for step in bar:
        idx = rng.choice(len(captions), size=batch_size, replace=False)
        seeds = rng.integers(0, 2**31, size=batch_size).tolist()
        images = world.render_batch([captions[i] for i in idx], seeds, config.resolution)
        image_features, text_features, logit_scale = model(images, tokens[idx])[:3]
        logits = logit_scale * image_features @ text_features.T
        target = torch.arange(batch_size)
        loss = 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                      + torch.nn.functional.cross_entropy(logits.T, target))
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP's own clamp: a temperature below 1/100 is unstable
            model.logit_scale.clamp_(0, np.log(100))
        loss_avg = loss.item() if step == 0 else 0.95 * loss_avg + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_avg:.3f}")
    seconds = time.perf_counter() - start
    model.eval()
    stats = {"train_seconds": round(seconds, 1), "train_steps": config.train_steps,
             "final_loss_ema": round(float(loss_avg), 4),
             "parameters": sum(p.numel() for p in model.parameters()),
             "torch": torch.__version__, "threads": torch.get_num_threads()}
    stats["retrieval"] = retrieval_accuracy(EmbeddedClip(model, tokenizer, out_dir, config, ""))
    save_clip(config, token_ids, model, out_dir, stats, dtype)
    return stats


def save_clip(config: ClipConfig, token_ids: list[int], model: torch.nn.Module, out_dir: Path,
              stats: dict, dtype: torch.dtype = torch.float32) -> None:
    """Write an open_clip local-dir with its manifest, atomically."""
    from safetensors.torch import save_file

    with CLIP.saving(config, out_dir, stats, dtype, token_ids=token_ids) as tmp:
        state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(_config_json(config, token_ids), indent=2))


@torch.no_grad()
def retrieval_accuracy(clip: EmbeddedClip, count: int = 576, seed: int = 12345) -> dict:
    """Per-attribute zero-shot accuracy: does the best of all 144 captions name it right?

    A training-time diagnostic, stored in the manifest: it says which attributes
    the CLIP score can see at all.
    """
    captions = world.all_captions()
    pool = world.sample_captions(captions, count, seed)
    images = world.render_batch(pool, list(range(seed, seed + count)), clip.resolution)
    image_features = torch.nn.functional.normalize(clip.encode_images(images), dim=-1)
    text_features = torch.nn.functional.normalize(
        clip.encode_texts([c.text for c in captions]), dim=-1)
    best = (image_features @ text_features.T).argmax(dim=1)
    out = {}
    for attribute in ("colour", "shape", "size", "position"):
        right = [getattr(captions[b], attribute) == getattr(c, attribute)
                 for b, c in zip(best.tolist(), pool)]
        out[f"{attribute}_acc"] = round(float(np.mean(right)), 4)
    hits = [captions[b] == c for b, c in zip(best.tolist(), pool)]
    out["caption_acc"] = round(float(np.mean(hits)), 4)
    return out


# --------------------------------------------------------------------------- loading


def load_clip(directory: str | Path) -> EmbeddedClip:
    """Load an embedded CLIP directory through open_clip, verifying its content hash."""
    import open_clip

    directory = Path(directory).expanduser().resolve()
    for name in (CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE):
        if not (directory / name).is_file():
            raise MetricModelError(
                f"{directory / name}: missing; run `ablate metric-models --rebuild-shipped` "
                "(shipped model) or delete the directory to rebuild it (cache)")
    actual = CLIP.verify(directory)
    manifest = CLIP.read_manifest(directory)
    try:
        config = ClipConfig(**manifest["config"])
        token_ids = [int(i) for i in manifest["token_ids"]]
    except (KeyError, TypeError) as exc:
        raise MetricModelError(f"{directory / MANIFEST_FILE}: unreadable ({exc})") from exc
    model = open_clip.create_model("local-dir:" + str(directory), precision="fp32")
    model.requires_grad_(False).eval()
    return EmbeddedClip(model, WorldTokenizer(token_ids, config.context_length), directory,
                        config, actual)


# --------------------------------------------------------------------------- the asset


CLIP = AssetKind(
    name="embedded CLIP", sizes=CLIP_SIZES, train=train_clip, content_hash=weights_hash,
    manifest=MANIFEST_FILE, shipped_dir=SHIPPED_CLIP_DIR, cache_kind="metric-models",
    cache_prefix="clip-", rebuild_command="make metric-models", error=MetricModelError)

# The names the rest of the project and its tests call.
clip_config = CLIP.config
ensure_clip = CLIP.ensure
rebuild_shipped = CLIP.rebuild_shipped
