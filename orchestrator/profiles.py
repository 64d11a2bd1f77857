"""Profiles: which world a plan runs in (``--profile`` / ``make ... PROFILE=``).

- ``embedded``: the shipped CPU world; the plan decides everything (the default).
- ``sd15``, ``sd21base``: Stable Diffusion 1.5 / 2.1-base weights and the paper's COCO-2014
  protocol, all from local files. Where each file is comes from, lowest first:

  1. the expected layout under a data root (``$ABLATE_DATA``, else ``~/ablate-data``;
     the file may set ``data_root``), see :data:`LAYOUT`;
  2. the profile config file, ``$ABLATE_PROFILES`` or ``~/.config/ablate/profiles.yaml``,
     a mapping ``{data_root: ..., sd15: {teacher: ..., ...}, sd21base: {...}}``;
  3. environment variables ``ABLATE_<PROFILE>_<FIELD>``, e.g. ``ABLATE_SD15_TEACHER``.

A profile also brings the paper's training defaults for SD (t_init 625, α 1, lr 1e-6 for
both networks, Adam (0, 0.999), batch 512 in micro-batches, EMA, fp32), its evaluation
size (30k, the paper's) and its teacher and prompts. Where each sits among the plan's
layers is written once, in ablations/README.md ("Precedence"), and applied once, by
:func:`orchestrator.plan.expand`.

This module imports neither torch nor ray: ``ablate run --help`` and the preflight stay fast.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import ConfigError, DistillConfig, from_dict, load_yaml

PROFILE_NAMES = ("embedded", "sd15", "sd21base")
PROFILES_ENV = "ABLATE_PROFILES"
DATA_ROOT_ENV = "ABLATE_DATA"
DEFAULT_PROFILES_FILE = Path("~/.config/ablate/profiles.yaml")
DEFAULT_DATA_ROOT = Path("~/ablate-data")
METRICS = ("paper", "embedded")

# Where each file is expected under the data root. The teacher directories are the
# diffusers snapshots of runwayml/stable-diffusion-v1-5 and
# stabilityai/stable-diffusion-2-1-base (model_index.json, unet/, text_encoder/,
# tokenizer/, scheduler/, vae/).
LAYOUT = {
    "sd15": {"teacher": "stable-diffusion-v1-5"},
    "sd21base": {"teacher": "stable-diffusion-2-1-base"},
    "shared": {
        "prompts": "prompts/aesthetics_6plus.txt",
        "captions": "coco2014/captions_val2014_30k.txt",
        "reference": "coco2014/val2014_clean_fid_256.npz",
        "inception_dir": "metrics",
        "clip_checkpoint": "metrics/open_clip_vit_g14_laion2b_s12b_b42k.bin",
    },
}

# The paper's training settings at SD scale (docs/algorithm.md, "Optimiser and EMA").
# micro_batch_size is per worker: 2 fits an 80 GB GPU in fp32 (benchmarks/gpu_sd15.py
# measures it).
SD_TRAINING_DEFAULTS: dict[str, Any] = {
    "t_init": 625, "alpha": 1.0, "lr_generator": 1e-6, "lr_fake_score": 1e-6,
    "adam_beta1": 0.0, "adam_beta2": 0.999, "adam_eps": 1e-8, "batch_size": 512,
    "micro_batch_size": 2, "ema_halflife_kimg": 50.0, "ema_rampup_ratio": 0.05, "precision": "fp32",
    "iterations": 20000, "log_every": 10, "checkpoint_every": 200,
}
SD_EVAL_NUM_IMAGES = 30000  # COCO-2014 val captions, as in the paper

_FILE_FIELDS = ("teacher", "prompts", "captions", "reference", "inception_dir",
                "clip_checkpoint")
_FIELDS = (*_FILE_FIELDS, "metrics", "workers", "eval_num_images", "distill")


@dataclass(frozen=True)
class Profile:
    """A resolved profile. Paths are absolute; ``None`` means the plan decides (embedded)."""

    name: str
    settings: str  # where the values came from, for messages
    teacher: str | None = None
    prompts: str | None = None
    captions: str | None = None
    reference: str | None = None  # clean-fid .npz statistics or a folder of images
    inception_dir: str | None = None  # folder holding inception-2015-12-05.pt
    clip_checkpoint: str | None = None  # open_clip ViT-g-14 laion2b_s12b_b42k weights
    # "paper": Inception + ViT-g-14. "embedded": the embedded CLIP (16 px images), for
    # wiring checks of an SD-format teacher on CPU; its protocol string says so.
    metrics: str = "embedded"
    workers: int = 1  # data-parallel workers per trial (Ray Train), each with the plan's resources
    eval_num_images: int | None = None
    distill_defaults: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if self.metrics not in METRICS:
            raise ConfigError(f"{self.settings}: {self.name}.metrics = {self.metrics!r}; "
                              f"choose one of {', '.join(METRICS)}")
        if self.workers < 1:
            raise ConfigError(f"{self.settings}: {self.name}.workers = {self.workers}: "
                              "must be >= 1")

    @property
    def is_embedded(self) -> bool:
        return self.name == "embedded"

    def required(self, name: str) -> str:
        """A file setting that a Stable Diffusion profile always has once loaded."""
        value = getattr(self, name)
        if value is None:
            raise ConfigError(f"profile {self.name}: {name} is not set")
        return value

    @property
    def world(self) -> dict[str, str]:
        """The trial values the profile always sets (its teacher and prompts): the top
        layer of a trial's resolution, above the plan (orchestrator.plan.expand)."""
        if self.is_embedded:
            return {}
        return {"teacher": self.required("teacher"), "prompts": self.required("prompts")}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Profile:
        data = dict(data)
        data["distill_defaults"] = tuple(tuple(kv) for kv in data["distill_defaults"])
        return cls(**data)


EMBEDDED = Profile(name="embedded", settings="built in")


def profiles_file() -> Path:
    return Path(os.environ.get(PROFILES_ENV) or DEFAULT_PROFILES_FILE).expanduser()


def _env_name(profile: str, field: str) -> str:
    return f"ABLATE_{profile.upper()}_{field.upper()}"


def _read_file(path: Path) -> dict:
    if not path.is_file():
        if os.environ.get(PROFILES_ENV):
            raise ConfigError(f"{path}: profile config file not found ({PROFILES_ENV} names it)")
        return {}
    data = load_yaml(path)
    unknown = sorted(set(data) - {"data_root", *PROFILE_NAMES[1:]})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known: data_root, "
                          + ", ".join(PROFILE_NAMES[1:]))
    return data


def _check_section(path: Path, name: str, section: Any) -> dict:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: {name} must be a mapping of {', '.join(_FIELDS)}")
    unknown = sorted(set(section) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
                          f"known: {', '.join(_FIELDS)}")
    for key in _FILE_FIELDS:
        if key in section and not isinstance(section[key], str):
            raise ConfigError(f"{path}: {name}.{key} must be a path (string), "
                              f"got {section[key]!r}")
    return section


def _int_setting(value: Any, where: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or (isinstance(value, float)
                                                    and not value.is_integer()):
        raise ConfigError(f"{where} must be a whole number, got {value!r}")
    return number


def load_profile(name: str) -> Profile:
    """Resolve a profile from the data-root layout, the config file and the environment.

    Raises :class:`ConfigError` for an unknown profile or a bad config file (naming the
    file and key). Missing *files* are the preflight's job (:mod:`orchestrator.preflight`),
    which lists all of them at once.
    """
    if name not in PROFILE_NAMES:
        raise ConfigError(f"--profile {name}: unknown profile; choose one of "
                          f"{', '.join(PROFILE_NAMES)}")
    if name == "embedded":
        return EMBEDDED
    path = profiles_file()
    data = _read_file(path)
    section = _check_section(path, name, data.get(name))
    data_root = Path(os.environ.get(DATA_ROOT_ENV) or data.get("data_root")
                     or DEFAULT_DATA_ROOT).expanduser()
    values: dict[str, Any] = {
        field: str(data_root / rel) for field, rel in {**LAYOUT["shared"], **LAYOUT[name]}.items()}
    values.update({k: v for k, v in section.items() if k in _FILE_FIELDS})
    for field in _FILE_FIELDS:
        env = os.environ.get(_env_name(name, field))
        if env:
            values[field] = env
    # Relative paths in the file are relative to the data root, so one root moves everything.
    for field in _FILE_FIELDS:
        p = Path(values[field]).expanduser()
        values[field] = str(p if p.is_absolute() else (data_root / p))
    metrics = os.environ.get(_env_name(name, "metrics")) or section.get("metrics", "paper")
    workers_raw = os.environ.get(_env_name(name, "workers")) or section.get("workers", 1)
    workers = _int_setting(workers_raw, f"{path}: {name}.workers (or {_env_name(name, 'workers')})")
    eval_num_images = _int_setting(section.get("eval_num_images", SD_EVAL_NUM_IMAGES),
                                   f"{path}: {name}.eval_num_images")
    overrides = section.get("distill") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: {name}.distill must be a mapping of DistillConfig fields")
    defaults = {**SD_TRAINING_DEFAULTS, **overrides}
    # Checked now (unknown keys, wrong types), so a typo fails before the plan is expanded.
    from_dict(DistillConfig, defaults, str(path), f"{name}.distill.")
    settings = (f"profile {name}: data root {data_root} ({DATA_ROOT_ENV}), file {path} "
                f"({PROFILES_ENV}), env {_env_name(name, '*')}")
    return Profile(name=name, settings=settings, teacher=values["teacher"],
                   prompts=values["prompts"], captions=values["captions"],
                   reference=values["reference"], inception_dir=values["inception_dir"],
                   clip_checkpoint=values["clip_checkpoint"], metrics=metrics, workers=workers,
                   eval_num_images=eval_num_images,
                   distill_defaults=tuple(sorted(defaults.items())))


def build_suite(profile: Profile, size: str, num_images: int, device: str = "cpu"):
    """The profile's evaluation suite at a sample count (built by the evaluation package)."""
    from evaluation.suite import SuiteFiles
    from evaluation.suite import build_suite as build

    files = None if profile.is_embedded else SuiteFiles(
        profile.name, profile.required("captions"), profile.required("reference"),
        profile.required("clip_checkpoint"), profile.inception_dir)
    return build(profile.metrics, size, num_images, files, device)
