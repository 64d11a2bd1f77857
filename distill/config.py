"""Typed, frozen, checked configs.

Configs enter the program from YAML files and the command line; they are
checked where they enter, so a typo or a wrong type fails loudly with the file
and key named (nanoGPT's configurator lets typos through; this does not).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import stat
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from distill.errors import ConfigError

STRATEGIES = ("lsg", "cfg", "none", "short")
# What each strategy is, for row labels of tables and figures (STRATEGIES is their order).
STRATEGY_DESCRIPTIONS = {
    "lsg": "LSG kept (paper)",
    "cfg": "LSG removed, teacher guidance only",
    "none": "SiD alone",
    "short": "fake-score guidance only",
}


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        return _tuple_ok(value, typing.get_args(annotation))
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _tuple_ok(value: Any, args: tuple) -> bool:
    """``tuple[X, ...]`` or ``tuple[X, Y]``; YAML gives lists, which count as tuples."""
    if not isinstance(value, (list, tuple)):
        return False
    if len(args) == 2 and args[1] is Ellipsis:
        return all(_type_ok(v, args[0]) for v in value)
    return len(value) == len(args) and all(_type_ok(v, a) for v, a in zip(value, args))


def _coerce(value: Any, annotation: Any) -> Any:
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(annotation) is tuple and isinstance(value, list):
        return tuple(value)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for a in typing.get_args(annotation):
            if a is not type(None) and _type_ok(value, a):
                return _coerce(value, a)
    return value


def from_dict(cls: type, data: dict[str, Any], source: str = "<config>", prefix: str = ""):
    """Build a frozen dataclass from a mapping; unknown keys and wrong types raise
    :class:`ConfigError` naming ``source`` and the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix or 'config'} must be a mapping, "
                          f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known keys: {', '.join(sorted(fields))}")
    values = {}
    for key, value in data.items():
        annotation = hints[key]
        if not _type_ok(value, annotation):
            expected = getattr(annotation, "__name__", str(annotation))
            raise ConfigError(
                f"{source}: {prefix}{key} must be {expected}, "
                f"got {value!r} ({type(value).__name__})")
        values[key] = _coerce(value, annotation)
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def json_hash(value: Any, length: int) -> str:
    blob = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def config_hash(config: Any, length: int = 12) -> str:
    """Stable short hash of a dataclass config (its JSON with sorted keys)."""
    return json_hash(dataclasses.asdict(config), length)


# torch.Generator.manual_seed takes a 64-bit integer.
MAX_SEED = 2**63 - 1
# FID needs the covariance of at least two images; beyond a million images an evaluation
# is a typo (the paper's protocol is 30,000) that would exhaust memory.
MIN_EVAL_IMAGES = 2
MAX_EVAL_IMAGES = 1_000_000

# Revision of what one trial computes for a given config. Bump it when the loop's numbers
# change for the same config (revision 2: prompt dropout only in the fake-score update, a
# prompt batch per update, the EMA counting images before the step), so trial ids change
# and finished trials or checkpoints of the old loop are never reused as if they were current.
# Revision 3: one random stream per role (distill/streams.py), so a seed pairs the arms.
ALGORITHM_REVISION = 3


def trial_id(config: DistillConfig) -> str:
    """A trial's stable id: the hash of its resolved config and :data:`ALGORITHM_REVISION`."""
    return json_hash({"algorithm_revision": ALGORITHM_REVISION,
                       "config": dataclasses.asdict(config)}, 12)


@dataclass(frozen=True)
class DistillConfig:
    """One distillation trial, fully resolved. Names follow the paper's symbols.

    Guidance: ``strategy`` maps κ to (kappa1, kappa2 = kappa3, kappa4) as in
    docs/algorithm.md, "Guidance strategies" (see :func:`distill.guidance.guidance_scales`).
    """

    teacher: str = "embedded:default"  # "embedded:<size>" or a path to an SD-layout directory
    strategy: str = "lsg"
    kappa: float = 2.0
    alpha: float = 1.0  # SiD-LSG uses 1; SiD on EDM used 1.2
    t_init: int = 625
    t_min: int = 20
    t_max: int = 979
    batch_size: int = 16  # global batch per iteration (images)
    micro_batch_size: int = 16  # gradient accumulation splits the batch into these
    lr_generator: float = 1e-4
    lr_fake_score: float = 1e-4
    # Both learning rates fall linearly to zero over this last fraction of the iterations
    # (0: constant, as the official loop). A variance lever measured on the pilot
    # (RESULTS.md, "Pilot"): the trajectory oscillates, and annealing damps the last steps.
    lr_anneal_fraction: float = 0.0
    adam_beta1: float = 0.0
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    # 100: chosen on pilot seeds that are never reported (RESULTS.md, "Pilot";
    # `python -m results.pilot`): of the budgets and evaluation windows that fit
    # `make ablation-lsg`'s 15 minutes and are past the transient, one evaluation at 100
    # gives the most precision per CPU-second (3.7x today's 150, seeds and CPUs together).
    iterations: int = 100
    ema_halflife_kimg: float = 0.5
    ema_rampup_ratio: float | None = 0.5
    prompt_dropout: float = 0.1
    precision: Literal["fp32", "bf16"] = "fp32"
    # Speed and memory at Stable Diffusion scale (distill/speed.py); off = the paper's fp32 run.
    gradient_checkpointing: bool = False  # recompute activations of ψ, G and φ in backward
    allow_tf32: bool = False  # TF32 matmuls/convolutions on Ampere+ GPUs
    teacher_bf16: bool = False  # φ in bf16: only its input gradients are needed
    seed: int = 0
    prompts: str = "embedded:train"  # "embedded:train" or a text file, one prompt per line
    log_every: int = 10  # iterations between report() calls of losses and images/s
    checkpoint_every: int = 50  # iterations between checkpoints (0: only at the end)
    eval_every: int = 0  # iterations between evaluations (0: only at the end)
    eval_num_images: int = 2000

    def __post_init__(self):
        # inf and nan pass every comparison below one way or another; a trial would then
        # "diverge" at its first iteration (or never get a GPU) after Ray has started.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} = {value!r}: must be a finite number")
        for key, holds, why in _RULES:
            if not holds(self):
                raise ConfigError(f"{key} = {getattr(self, key)!r}: {why.format(c=self)}")


# What a DistillConfig must satisfy: (field named in the error, condition, why), checked in
# order after the finiteness of every float; the first that fails is the error.
_RULES: tuple[tuple[str, Callable[[DistillConfig], bool], str], ...] = (
    ("strategy", lambda c: c.strategy in STRATEGIES,
     f"unknown strategy; choose one of {', '.join(STRATEGIES)}"),
    ("kappa", lambda c: c.kappa > 0, "the guidance scale must be > 0"),
    ("t_init", lambda c: 1 <= c.t_init <= 999, "must be in 1..999"),
    ("t_max", lambda c: 0 <= c.t_min < c.t_max <= 999,
     "need 0 <= t_min ({c.t_min}) < t_max <= 999"),
    *((key, lambda c, key=key: getattr(c, key) >= 1, "must be >= 1")
      for key in ("batch_size", "micro_batch_size", "iterations", "log_every")),
    ("batch_size", lambda c: c.batch_size % c.micro_batch_size == 0,
     "must be divisible by micro_batch_size ({c.micro_batch_size})"),
    *((key, lambda c, key=key: getattr(c, key) > 0, "must be > 0")
      for key in ("lr_generator", "lr_fake_score", "ema_halflife_kimg", "adam_eps")),
    *((key, lambda c, key=key: 0 <= getattr(c, key) < 1, "Adam's betas must be in [0, 1)")
      for key in ("adam_beta1", "adam_beta2")),
    ("ema_rampup_ratio", lambda c: c.ema_rampup_ratio is None or c.ema_rampup_ratio > 0,
     "must be > 0, or null for no ramp-up"),
    ("seed", lambda c: 0 <= c.seed <= MAX_SEED,
     "must be in 0..2^63-1 (torch.Generator.manual_seed takes 64 bits)"),
    ("eval_num_images", lambda c: MIN_EVAL_IMAGES <= c.eval_num_images <= MAX_EVAL_IMAGES,
     f"must be in {MIN_EVAL_IMAGES}..{MAX_EVAL_IMAGES:,}: FID needs a covariance of at least "
     "2 images, and the paper's protocol is 30,000"),
    ("prompt_dropout", lambda c: 0 <= c.prompt_dropout < 1, "must be in [0, 1)"),
    ("lr_anneal_fraction", lambda c: 0 <= c.lr_anneal_fraction <= 1, "must be in [0, 1]"),
    ("checkpoint_every", lambda c: c.checkpoint_every >= 0, "must be >= 0"),
    ("eval_every", lambda c: c.eval_every >= 0, "must be >= 0"),
)


# Per-size overrides of DistillConfig that the orchestrator (and `ablate distill --size`)
# apply on top of a config: the same code at a smaller scale, never a forked test path.
SIZE_PRESETS: dict[str, dict[str, Any]] = {
    # Seconds: the smoke teacher (trained in seconds), two checkpoints, a tiny evaluation.
    "smoke": {"teacher": "embedded:smoke", "iterations": 4, "batch_size": 4,
              "micro_batch_size": 2, "log_every": 1, "checkpoint_every": 2,
              "eval_num_images": 16},
    "default": {},
}


# A plan, profile or distill config is a page of YAML; anything larger is a mistake (or an
# attack), refused before it is parsed.
MAX_CONFIG_BYTES = 1 << 20
# Prompt and caption files: the paper's 30,000 COCO captions are ~2 MB; 64 MB is a typo's
# or a device's size, refused before it is read.
MAX_TEXT_BYTES = 64 << 20
MAX_YAML_DEPTH = 16
# Error messages quote at most this much of a parser's own text.
MAX_QUOTED = 300


def read_text_file(path: str | Path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A UTF-8 text file's contents; every way it can be unreadable is a :class:`ConfigError`
    that names the file and says what to do.

    The one reader of every text input (plans, profiles, configs, prompts, captions): it
    refuses what is not a regular file before opening it (a FIFO would block, /dev/zero
    never ends) and a file over ``max_bytes`` before reading it, and reads at most that
    much even from a file that grows meanwhile."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{path}: is a folder; give a {what} file")
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{path}: not a regular file (a {_file_kind(mode)}); give a "
                              f"{what} file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ConfigError(f"{path}: {size:,} bytes; a {what} file is at most "
                              f"{max_bytes:,} bytes")
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ConfigError(f"{path}: grew past {max_bytes:,} bytes while being read")
        return data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied; make the {what} file readable "
                          f"(chmod u+r {path})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} is "
                          f"{exc.object[exc.start]:#04x}); the {what} must be a text "
                          "file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc}); give a readable "
                          f"{what} file") from None


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def _check_plain(data, path: Path) -> None:
    """YAML that parses but is not the shape of a config: a key that is not a string, a
    nesting deeper than any config needs, an integer no field can hold, a float that is
    not finite. Walked without recursion, so the walk itself cannot overflow."""
    stack = [(data, 0, "top level")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{path}: nested deeper than {MAX_YAML_DEPTH} levels at "
                              f"{where}; a config is a few levels of mappings")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConfigError(f"{path}: key {_quote(key)} at {where} is a "
                                      f"{type(key).__name__}; keys are names (strings)")
                stack.append((item, depth + 1, key))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, where) for item in value)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int) and value.bit_length() > 64:
            raise ConfigError(f"{path}: {where}: an integer of {len(str(abs(value)))} digits; "
                              "no setting holds more than 64 bits (seeds: 0..2^63-1)")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{path}: {where}: {value} is not a finite number")


def _quote(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def _strict_loader():
    """PyYAML's safe loader, refusing what a hand-written config never needs and what
    makes a config mean something other than it reads: duplicate keys (the last would
    silently win) and aliases (``*name``; a few lines of them expand to gigabytes)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"YAML aliases (*{event.anchor}) are not allowed in a config "
                    "file; write the value out", event.start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key; the base class says so
                    break
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}: each key may appear once in a "
                        "mapping", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return StrictLoader


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing, unreadable, oversized, binary or invalid file, a
    duplicate key or an alias -> ConfigError naming the file, on one line."""
    import yaml

    path = Path(path)
    text = read_text_file(path, "config", MAX_CONFIG_BYTES)
    try:
        data = yaml.load(text, Loader=_strict_loader())
    except RecursionError:
        raise ConfigError(f"{path}: nested deeper than the YAML reader follows; a config is "
                          "a few levels of mappings") from None
    except ValueError as exc:  # e.g. an integer past Python's 4300-digit conversion limit
        raise ConfigError(f"{path}: a value cannot be read ({_quote(str(exc))})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None)
        detail = " ".join(str(problem if problem else exc).split())
        if mark is not None:
            detail += f" (line {mark.line + 1}, column {mark.column + 1})"
        if len(detail) > MAX_QUOTED:
            detail = detail[:MAX_QUOTED] + "…"
        raise ConfigError(f"{path}: not valid YAML: {detail}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    _check_plain(data, path)
    return data
