"""The teacher: one loading path for any Stable-Diffusion-layout directory, and
the embedded world's own teacher (built, trained, saved in that layout).

Layout (as Stable Diffusion's, so the same loader reads SD1.5 / SD2.1-base)::

    model_index.json
    unet/{config.json, diffusion_pytorch_model.safetensors}
    text_encoder/{config.json, model.safetensors}
    tokenizer/...
    scheduler/scheduler_config.json
    vae/...                        (real world only: latents <-> pixels)
    teacher.json                   (embedded only: config, content hash, training stats)
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
from distill.errors import TeacherError
from distill.shipped import AssetKind, file_hash

# Nothing in this project may reach a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

SHIPPED_TEACHER_DIR = Path(__file__).resolve().parent / "assets" / "embedded-teacher"

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<unk>"


# --------------------------------------------------------------------------- loading


@dataclass
class Teacher:
    """Everything the distillation core needs from a text-to-image diffusion model."""

    directory: Path
    # diffusers and transformers classes (their configs are read by attribute):
    tokenizer: Any  # CLIPTokenizer
    text_encoder: Any  # CLIPTextModel
    unet: Any  # UNet2DConditionModel
    scheduler: Any  # DDPMScheduler (ε-prediction)
    vae: Any  # AutoencoderKL, or None in pixel space
    teacher_id: str  # human-readable identity (directory name)
    teacher_hash: str  # content hash of the weights, recorded with every run

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod.to(torch.float64)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the UNet denoises: pixels here, latents with a VAE."""
        cfg = self.unet.config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Token embeddings (B, L, D) that the UNet cross-attends to."""
        device = next(self.text_encoder.parameters()).device
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        return self.text_encoder(ids)[0]

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """UNet space -> pixels in [-1, 1] (identity in pixel space)."""
        if self.vae is None:
            return samples
        return self.vae.decode(samples / self.vae.config.scaling_factor).sample

    def to(self, device: torch.device | str) -> Teacher:
        for module in (self.text_encoder, self.unet, self.vae):
            if module is not None:
                module.to(device)
        return self


_REQUIRED = {
    "model_index.json": "the pipeline index",
    "unet/config.json": "the UNet config",
    "text_encoder/config.json": "the text-encoder config",
    "scheduler/scheduler_config.json": "the noise-schedule config",
}
_WEIGHTS = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin"),
}


def check_teacher_dir(directory: Path) -> list[str]:
    """Every missing piece of an SD-layout directory, as 'path: what it is' lines."""
    directory = Path(directory)
    if not directory.is_dir():
        return [f"{directory}: teacher directory does not exist"]
    problems = [f"{directory / rel}: missing ({what})" for rel, what in _REQUIRED.items()
                if not (directory / rel).is_file()]
    for sub, names in _WEIGHTS.items():
        if not any((directory / sub / n).is_file() for n in names):
            problems.append(f"{directory / sub / names[0]}: missing ({sub} weights)")
    if not (directory / "tokenizer").is_dir():
        problems.append(f"{directory / 'tokenizer'}: missing (tokenizer files)")
    return problems


def weights_hash(directory: Path) -> str:
    """Content hash of every weight file with its relative path, in path order."""
    files = sorted(p for p in Path(directory).rglob("*")
                   if p.suffix in (".safetensors", ".bin") and p.is_file())
    return file_hash(*files, root=directory)


def load_teacher(directory: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> Teacher:
    """Load tokenizer, text encoder, UNet, scheduler and (if present) VAE, offline.

    Raises :class:`TeacherError` naming every missing or unreadable file.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    directory = Path(directory).expanduser().resolve()
    problems = check_teacher_dir(directory)
    if problems:
        raise TeacherError("teacher directory is incomplete:\n  " + "\n  ".join(problems))
    # Real SD directories carry no manifest; the embedded teacher's is checked.
    if (directory / TEACHER.manifest).is_file():
        teacher_hash = TEACHER.verify(directory)
    else:
        teacher_hash = weights_hash(directory)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(
            directory / "text_encoder", local_files_only=True, torch_dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(
            directory / "unet", local_files_only=True, torch_dtype=dtype)
        scheduler = DDPMScheduler.from_pretrained(directory / "scheduler", local_files_only=True)
        vae = None
        if (directory / "vae" / "config.json").is_file():
            vae = AutoencoderKL.from_pretrained(
                directory / "vae", local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise TeacherError(f"{directory}: could not load the teacher: {exc}") from exc
    if scheduler.config.prediction_type != "epsilon":
        raise TeacherError(
            f"{directory / 'scheduler/scheduler_config.json'}: prediction_type is "
            f"{scheduler.config.prediction_type!r}; SiD-LSG needs an ε-prediction teacher")
    for module in (text_encoder, unet, vae):
        if module is not None:
            module.requires_grad_(False).eval()
    teacher = Teacher(directory, tokenizer, text_encoder, unet, scheduler, vae,
                      teacher_id=directory.name, teacher_hash=teacher_hash)
    return teacher.to(device)


# --------------------------------------------------------------------------- embedded teacher


@dataclass(frozen=True)
class TeacherConfig:
    """Everything that determines the embedded teacher's weights (hashed for the cache)."""

    resolution: int = 16
    # Attention only at 8x8 and 4x4: at 16x16 it multiplies the step time on CPU, for a
    # world whose layout is coarse anyway.
    block_out_channels: tuple[int, ...] = (32, 64, 96)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D",
                                         "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    attention_head_dim: int = 32
    text_hidden_size: int = 64
    text_layers: int = 2
    max_prompt_tokens: int = 10
    train_steps: int = 4000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    prompt_dropout: float = 0.1  # empty prompt 10% of the time, so CFG works
    # Each caption attribute names a wrong value this often in training (world.mislabel):
    # at 0 the teacher obeyed its prompt perfectly at CFG 1 and guidance changed nothing.
    caption_noise: float = 0.2
    seed: int = 0

    def config_hash(self) -> str:
        # 16 hex digits: the length recorded in the shipped manifests.
        return config_hash(self, length=16)


TEACHER_SIZES: dict[str, TeacherConfig] = {
    "default": TeacherConfig(),
    # Smoke: same code, a few seconds of training; for tests and wiring only.
    "smoke": TeacherConfig(block_out_channels=(16, 16, 32), attention_head_dim=8,
                           text_hidden_size=32, text_layers=1, train_steps=30,
                           batch_size=16, warmup_steps=5),
}


def _build_tokenizer(max_tokens: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # A word-level vocabulary over the grammar: it honours its vocabulary with no
    # download (transformers 5's CLIPTokenizer silently ignores vocab/merges files).
    vocab = {BOS: 0, EOS: 1, UNK: 2}
    for word in world.vocabulary():
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, 0), (EOS, 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=UNK,
        model_max_length=max_tokens)


def build_embedded(config: TeacherConfig):
    """Freshly initialised (tokenizer, text encoder, UNet, scheduler) for a config."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _build_tokenizer(config.max_prompt_tokens)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_hidden_size,
        intermediate_size=2 * config.text_hidden_size, num_hidden_layers=config.text_layers,
        num_attention_heads=max(1, config.text_hidden_size // 32),
        max_position_embeddings=config.max_prompt_tokens, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=config.resolution, in_channels=3, out_channels=3,
        block_out_channels=config.block_out_channels,
        down_block_types=config.down_block_types, up_block_types=config.up_block_types,
        layers_per_block=config.layers_per_block, cross_attention_dim=config.text_hidden_size,
        attention_head_dim=config.attention_head_dim, norm_num_groups=8)
    # Stable Diffusion's schedule exactly: SiD-LSG's t_init and t-range assume it.
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012, prediction_type="epsilon",
                              clip_sample=False, steps_offset=1)
    return tokenizer, text_encoder, unet, scheduler


def _lr_at(step: int, config: TeacherConfig) -> float:
    # Linear warm-up then cosine decay to 10%: the EMA does the final averaging.
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.train_steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress)))


def train_embedded(config: TeacherConfig, out_dir: Path, progress: bool = True,
                   dtype: torch.dtype = torch.float32, device: str = "cpu") -> dict:
    """Train the embedded teacher as a conditional DDPM and save it in SD layout.

    Deterministic on CPU for a given config: data, noise, timesteps and prompt
    dropout all come from CPU generators seeded by ``config.seed`` (also when the
    network runs on ``device``, so the data stream is the same everywhere; the
    arithmetic on another device differs in rounding, so weights match only
    device for device). Writes into a
    temporary sibling and renames, so an interrupted run never leaves a
    half-written teacher that looks finished.
    """
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    tokenizer, text_encoder, unet, scheduler = build_embedded(config)
    unet.to(device), text_encoder.to(device)
    ema = [p.detach().clone() for p in list(unet.parameters()) + list(text_encoder.parameters())]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    alphas = scheduler.alphas_cumprod.to(torch.float32).to(device)
    captions = world.all_captions()
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    bar = tqdm(range(config.train_steps), desc="teacher", disable=not progress, unit="step")
    loss_avg = float("nan")
    for step in bar:
        x0, ids = _teacher_batch(config, captions, rng, tokenizer, device)
        t = torch.randint(0, 1000, (config.batch_size,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(x_t, t, text_encoder(ids)[0]).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        loss_avg = loss.item() if step == 0 else 0.98 * loss_avg + 0.02 * loss.item()
        bar.set_postfix(loss=f"{loss_avg:.4f}")
    seconds = time.perf_counter() - start
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.cpu(), text_encoder.cpu()
    stats = {"train_seconds": round(seconds, 1), "train_steps": config.train_steps,
             "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
             "final_loss_ema": round(float(loss_avg), 5), **_sizes(unet, text_encoder),
             "torch": torch.__version__, "threads": torch.get_num_threads(),
             "ema_decay_final": config.ema_decay}
    save_embedded(config, tokenizer, text_encoder, unet, scheduler, out_dir, stats, dtype)
    return stats


def _teacher_batch(config: TeacherConfig, captions: list, rng: np.random.Generator, tokenizer,
                   device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: renders of random captions, and their token ids as the prompts
    say them (some mislabelled, some dropped to the empty prompt for CFG), in the order
    that ``rng`` has always been drawn in."""
    idx = rng.integers(0, len(captions), size=config.batch_size)
    batch_captions = [captions[i] for i in idx]
    seeds = rng.integers(0, 2**31, size=config.batch_size).tolist()
    x0 = world.render_batch(batch_captions, seeds, config.resolution).to(device)
    drop = rng.random(config.batch_size) < config.prompt_dropout
    said = [world.mislabel(c, rng, config.caption_noise) for c in batch_captions]
    prompts = ["" if d else c.text for c, d in zip(said, drop)]
    ids = tokenizer(prompts, padding="max_length", max_length=config.max_prompt_tokens,
                    truncation=True, return_tensors="pt").input_ids.to(device)
    return x0, ids


def _sizes(unet, text_encoder) -> dict[str, int]:
    return {"unet_parameters": sum(p.numel() for p in unet.parameters()),
            "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters())}


def save_embedded(config, tokenizer, text_encoder, unet, scheduler, out_dir: Path, stats: dict,
                  dtype: torch.dtype = torch.float32) -> None:
    """Write an SD-layout directory with its manifest, atomically."""
    with TEACHER.saving(config, out_dir, stats, dtype) as tmp:
        unet.to(dtype).save_pretrained(tmp / "unet")
        text_encoder.to(dtype).save_pretrained(tmp / "text_encoder")
        unet.to(torch.float32), text_encoder.to(torch.float32)
        tokenizer.save_pretrained(tmp / "tokenizer")
        scheduler.save_pretrained(tmp / "scheduler")
        (tmp / "model_index.json").write_text(json.dumps({
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": __import__("diffusers").__version__,
            "scheduler": ["diffusers", "DDPMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": [None, None], "safety_checker": [None, None],
            "feature_extractor": [None, None], "requires_safety_checker": False,
        }, indent=2))


TEACHER = AssetKind(
    name="teacher", sizes=TEACHER_SIZES, train=train_embedded, content_hash=weights_hash,
    manifest="teacher.json", shipped_dir=SHIPPED_TEACHER_DIR, cache_kind="teachers",
    cache_prefix="", rebuild_command="make teacher", error=TeacherError)

# The names the rest of the project and its tests call.
teacher_config = TEACHER.config
ensure_teacher = TEACHER.ensure


def rebuild_shipped(progress: bool = True) -> Path:
    """Retrain the default teacher, overwrite the shipped copy and return its directory."""
    TEACHER.rebuild_shipped(progress)
    return SHIPPED_TEACHER_DIR
