"""Ablation plans: data files -> frozen, checked plan -> trials (a pure expansion).

A plan names what varies over a base :class:`~distill.config.DistillConfig`;
see ``ablations/README.md`` for the format. Everything is checked here, where
the file enters, so a bad plan fails with the file and the dotted key named
before Ray or MLflow start. :func:`expand` is pure: the same plan and size
always give the same trials, ids and order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import (
    MAX_SEED,
    SIZE_PRESETS,
    ConfigError,
    DistillConfig,
    from_dict,
    load_yaml,
    trial_id,
)
from orchestrator.profiles import EMBEDDED, Profile
from results.comparison import Comparison, ComparisonError, from_plan

SIZES = ("smoke", "default")
# Three seeds unless a plan says otherwise: one seed is an anecdote, and a 95% t-interval
# needs at least two (RESULTS.md shows how far single seeds disagree).
DEFAULT_SEEDS = (0, 1, 2)
# A plan name becomes an MLflow experiment and a folder name: keep it readable.
MAX_NAME_LENGTH = 64
# More trials than this is almost always a typo in an axis; `ablate run --max-trials` raises it.
MAX_TRIALS = 1000
# Keys the plan sets through its own sections, so an axis or base override of
# them would be silently shadowed; they are rejected where they appear.
_PLAN_OWNED = {"seed": "seeds", "eval_every": "evaluation.eval_every",
               "eval_num_images": "evaluation.eval_num_images"}


@dataclass(frozen=True)
class Resources:
    """What one trial holds: CPU threads (torch.set_num_threads) and GPUs (fractions allowed)."""

    cpu: int = 1
    gpu: float = 0.0

    def __post_init__(self):
        if self.cpu < 1:
            raise ConfigError(f"cpu = {self.cpu}: a trial needs at least 1 CPU thread")
        if not math.isfinite(self.gpu) or self.gpu < 0 or (
                self.gpu > 1 and not float(self.gpu).is_integer()):
            raise ConfigError(
                f"gpu = {self.gpu}: use a fraction in [0, 1] or a whole number of GPUs")


@dataclass(frozen=True)
class TeacherBaseline:
    """The teacher's own multi-step samples, evaluated once as the reference row."""

    steps: int = 25
    guidance_scale: float = 2.0

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError(f"steps = {self.steps}: must be >= 1")
        if not self.guidance_scale > 0:
            raise ConfigError(f"guidance_scale = {self.guidance_scale}: must be > 0")


@dataclass(frozen=True)
class Evaluation:
    eval_every: int = 0  # iterations between evaluations; 0: only at the end
    eval_num_images: int = 2000
    teacher_baseline: TeacherBaseline | None = TeacherBaseline()  # None: "off"

    def __post_init__(self):
        if self.eval_every < 0:
            raise ConfigError(f"eval_every = {self.eval_every}: must be >= 0")
        if self.eval_num_images < 1:
            raise ConfigError(f"eval_num_images = {self.eval_num_images}: must be >= 1")


@dataclass(frozen=True)
class Plan:
    """A checked plan file. ``axes`` and ``zip_groups`` hold (key, values) pairs in file order."""

    name: str
    description: str
    source: str  # the file it came from, for messages
    base: tuple[tuple[str, Any], ...]
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    zip_groups: tuple[tuple[tuple[str, tuple[Any, ...]], ...], ...]
    seeds: tuple[int, ...]  # the fastest-varying dimension; default DEFAULT_SEEDS
    resources: Resources
    evaluation: Evaluation
    sizes: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    max_failures: int = 1
    # What the plan compares (its compare: section, or the default rule); None: no axes.
    comparison: Comparison | None = None

    @property
    def name_keys(self) -> tuple[str, ...]:
        """The keys a trial name shows: the two ablation dimensions (strategy, kappa)
        always, so names read the same across plans, then other varied keys, then seed."""
        varied = [k for k, _ in self.axes] + [k for group in self.zip_groups for k, _ in group]
        return ("strategy", "kappa", *(k for k in varied if k not in ("strategy", "kappa")), "seed")

    def size_overrides(self, size: str) -> dict[str, Any]:
        return dict(dict(self.sizes).get(size, ()))


@dataclass(frozen=True)
class Trial:
    """One fully resolved trial. ``trial_id`` is a stable hash of ``config``."""

    config: DistillConfig
    trial_id: str
    name: str  # e.g. "strategy=lsg,kappa=2,seed=0"
    varied: tuple[tuple[str, Any], ...]  # the values that make this trial differ from its siblings


MAX_DESCRIPTION_CHARS = 5000
_TOP_KEYS = {"name", "description", "base", "axes", "zip", "seeds", "resources", "evaluation",
             "sizes", "max_failures", "compare"}


def _fail(source: str, key: str, why: str) -> None:
    raise ConfigError(f"{source}: {key}: {why}")


def _check_values(source: str, key: str, values: Any, distinct: bool = True) -> tuple[Any, ...]:
    """An axis: a non-empty list of (by default distinct) values."""
    if not isinstance(values, list):
        _fail(source, key, f"must be a list of values, got {values!r}")
    if not values:
        _fail(source, key, "is empty; an axis needs at least one value")
    repeated = _first_repeat(values) if distinct else _NO_REPEAT
    if repeated is not _NO_REPEAT:
        _fail(source, key, f"duplicate value {repeated!r}; each value may appear once")
    return tuple(values)


_NO_REPEAT = object()


def _first_repeat(values: list) -> Any:
    """The first value equal to an earlier one, else ``_NO_REPEAT``; in one pass, because
    a typo can make an axis 100,000 values long. Equality is ``==``, so 2 and 2.0 (the same
    κ once stored as float) collide; unhashable values (lists) are compared one by one."""
    hashable: set = set()
    others: list = []
    for value in values:
        try:
            if value in hashable:
                return value
            hashable.add(value)
        except TypeError:
            if value in others:
                return value
            others.append(value)
    return _NO_REPEAT


def _check_seeds(source: str, key: str, seeds: Any) -> tuple[int, ...]:
    seeds = _check_values(source, key, seeds)
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            _fail(source, key, f"seeds must be integers in 0..2^63-1, got {seed!r}")
    return seeds


def parse_seeds(text: str, source: str = "--seeds") -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); a non-integer, negative or duplicate value raises
    :class:`ConfigError` naming it."""
    values = []
    for raw in text.split(","):
        part = raw.strip()
        try:
            values.append(int(part))
        except ValueError:
            raise ConfigError(f"{source} {text}: {part!r} is not an integer; give "
                              "comma-separated integers >= 0, e.g. --seeds 0,1,2") from None
    try:
        return _check_seeds(source, text, values)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; e.g. --seeds 0,1,2") from None


def with_seeds(plan: Plan, seeds: tuple[int, ...], max_trials: int = MAX_TRIALS) -> Plan:
    """The plan with its ``seeds`` replaced (``ablate run --seeds``), checked like the file's."""
    seeds = _check_seeds(plan.source, "seeds", list(seeds))
    plan = dataclasses.replace(plan, seeds=seeds)
    _check_trial_count(plan, max_trials)
    return plan


def _check_field(source: str, key: str, field: str) -> None:
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    if field in _PLAN_OWNED:
        _fail(source, key, f"set {field} through {_PLAN_OWNED[field]}, not here")
    if field not in fields:
        _fail(source, key,
              f"unknown DistillConfig field {field!r}; known: {', '.join(sorted(fields))}")


def _check_mapping(source: str, key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        _fail(source, key, f"must be a mapping, got {value!r}")
    return value


def load_plan(path: str | Path, max_trials: int = MAX_TRIALS) -> Plan:
    """Read and check a plan file; every size it can run at is expanded once as a check.

    Raises :class:`ConfigError` naming the file and the dotted key.
    """
    source = str(path)
    data = load_yaml(path)
    return plan_from_dict(data, source, max_trials)


def trial_count(plan: Plan) -> int:
    """How many trials the plan expands to (at any size), without expanding it."""
    count = len(plan.seeds)
    for _, values in plan.axes:
        count *= len(values)
    for group in plan.zip_groups:
        count *= len(group[0][1])
    return count


def _check_trial_count(plan: Plan, max_trials: int) -> None:
    count = trial_count(plan)
    if count > max_trials:
        raise ConfigError(
            f"{plan.source}: axes x zip x seeds give {count:,} trials, more than the limit of "
            f"{max_trials:,}; check the axes for a typo, or raise the limit with "
            f"`ablate run --max-trials {count}`")


def _check_name(source: str, name: Any) -> str:
    plain = name.replace("-", "").replace("_", "") if isinstance(name, str) else ""
    if not (plain and len(name) <= MAX_NAME_LENGTH and plain.isascii() and plain.isalnum()):
        shown = name if not isinstance(name, str) or len(name) <= 80 else name[:80] + "…"
        _fail(source, "name", f"must be 1 to {MAX_NAME_LENGTH} ASCII letters, digits, - and _; "
              f"got {shown!r}")
    return name


def _check_axes(source: str, raw: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    axes = []
    for key, values in _check_mapping(source, "axes", raw).items():
        _check_field(source, f"axes.{key}", key)
        axes.append((key, _check_values(source, f"axes.{key}", values)))
    return tuple(axes)


def _check_zip_group(source: str, where: str, raw: Any) -> tuple[tuple[str, tuple], ...]:
    group = _check_mapping(source, where, raw)
    if not group:
        _fail(source, where, "is empty")
    entries = []
    for key, values in group.items():
        _check_field(source, f"{where}.{key}", key)
        # A zipped key may repeat a value; the zipped tuples must be distinct.
        entries.append((key, _check_values(source, f"{where}.{key}", values, False)))
    lengths = {k: len(v) for k, v in entries}
    if len(set(lengths.values())) > 1:
        _fail(source, where, f"zipped lists must have equal lengths, got {lengths}")
    repeated = _first_repeat(list(zip(*(v for _, v in entries))))
    if repeated is not _NO_REPEAT:
        _fail(source, where, f"duplicate zipped values {repeated!r}")
    return tuple(entries)


def _check_zip(source: str, raw: Any) -> tuple:
    if not isinstance(raw, list):
        _fail(source, "zip", "must be a list of groups (mappings of key -> equal-length lists)")
    return tuple(_check_zip_group(source, f"zip[{i}]", group) for i, group in enumerate(raw))


def _check_evaluation(source: str, raw: Any) -> Evaluation:
    eval_data = dict(_check_mapping(source, "evaluation", raw))
    baseline = eval_data.pop("teacher_baseline", {})
    # YAML reads a bare `off` as False.
    if baseline in (False, "off", None):
        baseline = None
    else:
        baseline = from_dict(TeacherBaseline,
                             _check_mapping(source, "evaluation.teacher_baseline", baseline),
                             source, "evaluation.teacher_baseline.")
    evaluation = from_dict(Evaluation, eval_data, source, "evaluation.")
    return dataclasses.replace(evaluation, teacher_baseline=baseline)


def _check_sizes(source: str, raw: Any) -> tuple:
    sizes = []
    for size, overrides in _check_mapping(source, "sizes", raw).items():
        if size not in SIZES:
            _fail(source, f"sizes.{size}", f"unknown size; choose among {', '.join(SIZES)}")
        checked = _check_mapping(source, f"sizes.{size}", overrides or {})
        for key in checked:
            if key not in ("eval_every", "eval_num_images"):
                _check_field(source, f"sizes.{size}.{key}", key)
        sizes.append((size, tuple(checked.items())))
    return tuple(sizes)


def plan_from_dict(data: dict, source: str = "<plan>", max_trials: int = MAX_TRIALS) -> Plan:
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        _fail(source, ", ".join(unknown),
              f"unknown key; known keys: {', '.join(sorted(_TOP_KEYS))}")
    name = _check_name(source, data.get("name"))
    description = data.get("description", "")
    if not isinstance(description, str):
        _fail(source, "description", "must be a string")
    if len(description) > MAX_DESCRIPTION_CHARS:
        # MLflow refuses a tag past 20,000 characters; the parent's description also holds
        # the verdict and the table, so the plan's own text is held well below that.
        _fail(source, "description", f"{len(description):,} characters; at most "
              f"{MAX_DESCRIPTION_CHARS:,} (the details belong in a README beside the plan)")
    base = _check_mapping(source, "base", data.get("base", {}))
    for key in base:
        _check_field(source, f"base.{key}", key)
    axes = _check_axes(source, data.get("axes", {}))
    zip_groups = _check_zip(source, data.get("zip", []))
    all_keys = [k for k, _ in axes] + [k for g in zip_groups for k, _ in g]
    repeated = sorted({k for k in all_keys if all_keys.count(k) > 1})
    if repeated:
        _fail(source, repeated[0], "varies in more than one axis or zip group")
    max_failures = data.get("max_failures", 1)
    if not isinstance(max_failures, int) or isinstance(max_failures, bool) or max_failures < 0:
        _fail(source, "max_failures", f"must be an integer >= 0, got {max_failures!r}")
    plan = Plan(
        name=name, description=description, source=source, base=tuple(base.items()),
        axes=axes, zip_groups=zip_groups,
        seeds=_check_seeds(source, "seeds", data.get("seeds", list(DEFAULT_SEEDS))),
        resources=from_dict(Resources,
                            _check_mapping(source, "resources", data.get("resources", {})),
                            source, "resources."),
        evaluation=_check_evaluation(source, data.get("evaluation", {})),
        sizes=_check_sizes(source, data.get("sizes", {})), max_failures=max_failures,
        comparison=_check_compare(source, data.get("compare"), axes, zip_groups))
    _check_trial_count(plan, max_trials)  # before expanding: a typo can mean millions
    _check_every_value(plan)
    return plan


def _check_compare(source: str, raw: Any, axes: tuple, zip_groups: tuple) -> Comparison | None:
    """The plan's comparison (results/comparison.py), checked against its axes and zip keys."""
    try:
        return from_plan(raw, [*axes, *(kv for group in zip_groups for kv in group)])
    except ComparisonError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _check_every_value(plan: Plan) -> None:
    """Build a config for the base and for each single axis value at every size, so an
    error names the value's own key (``axes.kappa``) rather than a combination."""
    for size in SIZES:
        base = _resolve_base(plan, size)
        _build(plan, base, f"base or sizes.{size}", size)
        for key, values in plan.axes:
            for value in values:
                _build(plan, {**base, key: value}, f"axes.{key}", size)
        for i, group in enumerate(plan.zip_groups):
            for j in range(len(group[0][1])):
                _build(plan, {**base, **{k: vs[j] for k, vs in group}}, f"zip[{i}]", size)
        expand(plan, size)


# The layers of a trial's config, lowest first, as ablations/README.md ("Precedence")
# lists them; _resolve_base applies 2-7, expand 8-9, DistillConfig's defaults fill the rest.
PRECEDENCE = (
    "DistillConfig defaults",
    "profile training defaults",
    "base",
    "evaluation",
    "profile evaluation size",
    "size preset",
    "sizes.<size>",
    "axes, zip groups and seeds",
    "profile teacher and prompts",
)


def _resolve_base(plan: Plan, size: str, profile: Profile = EMBEDDED) -> dict[str, Any]:
    """The layers under a trial's own values (:data:`PRECEDENCE` 2-7), lowest first."""
    resolved = dict(profile.distill_defaults)
    resolved.update(plan.base)
    resolved["eval_every"] = plan.evaluation.eval_every
    resolved["eval_num_images"] = plan.evaluation.eval_num_images
    if profile.eval_num_images is not None:
        resolved["eval_num_images"] = profile.eval_num_images
    resolved.update(SIZE_PRESETS.get(size, {}))
    resolved.update(plan.size_overrides(size))
    return resolved


def _build(plan: Plan, values: dict[str, Any], where: str, size: str,
           profile: Profile = EMBEDDED) -> DistillConfig:
    try:
        return from_dict(DistillConfig, values, plan.source)
    except ConfigError as exc:
        # from_dict names the field; say which part of the plan (and profile) supplied it.
        message = str(exc).removeprefix(f"{plan.source}: ")
        under = "" if profile.is_embedded else f" (under {profile.settings})"
        raise ConfigError(f"{plan.source}: {where} (size {size}): {message}{under}") from None


def _label(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def expand(plan: Plan, size: str = "default", profile: Profile = EMBEDDED) -> list[Trial]:
    """All trials of a plan at a size under a profile: product of axes x zip groups x
    seeds, in file order, each resolved once through every layer and hashed once.

    Pure: no files, no globals beyond the core's size presets. A trial's id is a
    hash of its resolved config, so it is stable across runs and machines and
    changes exactly when something that affects the result changes (an SD trial never
    shares an id, or a workdir, with an embedded one: its teacher differs).
    """
    if size not in SIZES:
        raise ConfigError(f"{plan.source}: unknown size {size!r}; choose among {', '.join(SIZES)}")
    base = _resolve_base(plan, size, profile)
    # Each dimension is a list of (where, {key: value}) choices.
    dimensions: list[list[tuple[str, dict[str, Any]]]] = []
    for key, values in plan.axes:
        dimensions.append([(f"axes.{key}", {key: v}) for v in values])
    for i, group in enumerate(plan.zip_groups):
        n = len(group[0][1])
        dimensions.append([(f"zip[{i}]", {k: vs[j] for k, vs in group}) for j in range(n)])
    dimensions.append([("seeds", {"seed": s}) for s in plan.seeds])

    trials = []
    for combination in itertools.product(*dimensions):
        resolved = dict(base)
        varied: dict[str, Any] = {}
        for _, choice in combination:
            resolved.update(choice)
            varied.update(choice)
        resolved.update(profile.world)  # top layer: what the profile means
        where = " x ".join(w for w, _ in combination)
        config = _build(plan, resolved, where, size, profile)
        varied = {k: getattr(config, k) for k in varied}
        name = ",".join(f"{k}={_label(getattr(config, k))}" for k in plan.name_keys)
        trials.append(Trial(config=config, trial_id=trial_id(config), name=name,
                            varied=tuple(varied.items())))
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{plan.source}: axes: two trials resolve to the same config; "
                          "an axis value is overridden by a size preset or duplicates another")
    return trials


def trial_set_hash(trials: list[Trial]) -> str:
    """Identity of a set of trials: an invocation with the same set may resume the last one."""
    return hashlib.sha256(",".join(sorted(t.trial_id for t in trials)).encode()).hexdigest()[:12]
