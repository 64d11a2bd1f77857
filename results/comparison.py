"""What a plan compares: its arms, the reference arm, the metrics of the verdict, the smallest
effect of interest of each, and whether seeds pair across arms.

A plan declares it in a ``compare:`` section (ablations/README.md, "compare"); a plan without
one compares every value of its first axis with that axis's first value. The driver checks
the section with the plan (:func:`from_plan`, exit 2 naming the key) and logs the resolved
comparison on the parent run (``plan/comparison.json``), which is what tables, verdict,
plots, the parent's summary and the terminal read: nothing in ``results`` decides what to
compare from a plan's name or from a strategy's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from distill import metrics as registry

ARTIFACT = "plan/comparison.json"
KEYS = ("arms", "reference", "metrics", "delta", "paired")


class ComparisonError(ValueError):
    """A ``compare:`` section that does not fit its plan; the message names the key."""


@dataclass(frozen=True)
class Comparison:
    """A resolved comparison. ``reference`` gives the reference arm's value of each param in
    ``arms``; ``delta`` maps each metric of ``metrics`` (registry names) to its smallest
    effect of interest (a ratio for metrics tested on the log scale: 0.1 is ±10%)."""

    arms: tuple[str, ...]
    reference: tuple[Any, ...]
    metrics: tuple[str, ...]
    delta: tuple[tuple[str, float], ...]
    paired: bool = False
    declared: bool = True  # False: the default rule (first value of the first axis)

    def delta_of(self, metric: str) -> float:
        return dict(self.delta)[metric]

    def reference_text(self) -> str:
        return ", ".join(f"{k} = {_text(v)}" for k, v in zip(self.arms, self.reference))

    def to_json(self) -> str:
        return json.dumps({"arms": list(self.arms), "reference": list(self.reference),
                           "metrics": list(self.metrics), "delta": dict(self.delta),
                           "paired": self.paired, "declared": self.declared}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Comparison:
        data = json.loads(text)
        return cls(tuple(data["arms"]), tuple(data["reference"]), tuple(data["metrics"]),
                   tuple((k, float(v)) for k, v in data["delta"].items()),
                   bool(data.get("paired", False)), bool(data.get("declared", True)))


def _text(value: Any) -> str:
    return f"{value + 0.0:g}" if isinstance(value, float) else str(value)


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def same_value(a: Any, b: Any) -> bool:
    """Plan values against run params: numbers by value (a plan's 2 is MLflow's '2.0'),
    anything else by its text."""
    if _unset(a) or _unset(b):
        return _unset(a) and _unset(b)  # an unset param (None, MLflow's NaN) is one value
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return str(a) == str(b)


def comparable_metrics() -> list[str]:
    """Registry names a comparison may name: the metrics with a direction."""
    return [m.name for m in registry.all_metrics() if m.lower_is_better is not None]


def default_delta(names: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    out = []
    for name in names:
        metric = registry.by_name(name)
        if metric is None or metric.delta is None:
            raise ComparisonError(f"metric {name!r} has no default smallest effect; "
                                  "give compare.delta." + name)
        out.append((name, metric.delta))
    return tuple(out)


def default(axes: list[tuple[str, tuple]]) -> Comparison | None:
    """Every value of the first axis against its first value; None for a plan with no axis."""
    if not axes:
        return None
    key, values = axes[0]
    names = registry.names("verdict")
    return Comparison((key,), (values[0],), names, default_delta(names), declared=False)


def parse(raw: Any, axes: list[tuple[str, tuple]], where: str = "compare") -> Comparison:
    """Check a ``compare:`` mapping against the plan's axes (``(key, values)`` in file
    order, zip groups' keys included). Raises :class:`ComparisonError` naming the key."""
    if not isinstance(raw, dict):
        raise ComparisonError(f"{where}: must be a mapping with keys {', '.join(KEYS)}")
    unknown = sorted(str(k) for k in raw if k not in KEYS)
    if unknown:
        raise ComparisonError(f"{where}.{unknown[0]}: unknown key; known keys: {', '.join(KEYS)}")
    if not axes:
        raise ComparisonError(f"{where}: the plan has no axes, so there are no arms to compare")
    values = dict(axes)
    arms = _parse_names(raw.get("arms", [axes[0][0]]), list(values), f"{where}.arms",
                        "axis", "{name} is not an axis of the plan")
    reference = _parse_reference(raw.get("reference"), arms, values, where)
    names = _parse_names(raw.get("metrics", list(registry.names("verdict"))),
                         comparable_metrics(), f"{where}.metrics", "metric",
                         "unknown metric {name}")
    delta = _parse_delta(raw.get("delta", {}), names, where)
    paired = raw.get("paired", False)
    if not isinstance(paired, bool):
        raise ComparisonError(f"{where}.paired: must be true or false, got {paired!r}")
    return Comparison(tuple(arms), reference, tuple(names), delta, paired)


def _parse_names(raw: Any, known: list[str], where: str, what: str, unknown: str) -> list[str]:
    """A non-empty list of distinct names among ``known`` (a bare name is a list of one);
    ``unknown`` says what a name outside ``known`` is, with ``{name}`` for it."""
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ComparisonError(f"{where}: must be a non-empty list of {what} names among "
                              f"{', '.join(known)}")
    for name in names:
        if name not in known:
            raise ComparisonError(f"{where}: {unknown.format(name=repr(name))}; known: "
                                  f"{', '.join(known)}")
    if len(set(names)) != len(names):
        raise ComparisonError(f"{where}: {what} named twice")
    return names


def _parse_delta(given: Any, names: list[str], where: str) -> tuple[tuple[str, float], ...]:
    """Each metric's δ: the plan's where given (a finite number > 0), else the registry's."""
    if not isinstance(given, dict):
        raise ComparisonError(f"{where}.delta: must map metric names to numbers > 0, e.g. "
                              "{fid: 0.1, clip: 0.01}")
    for name, value in given.items():
        if name not in names:
            raise ComparisonError(f"{where}.delta.{name}: not one of {where}.metrics "
                                  f"({', '.join(map(str, names))})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value <= 0:
            raise ComparisonError(f"{where}.delta.{name}: must be a finite number > 0, got "
                                  f"{value!r}")
    defaults = dict(default_delta(tuple(n for n in names if n not in given)))
    return tuple((n, float(given[n]) if n in given else defaults[n]) for n in names)


def _parse_reference(raw: Any, arms: list[str], values: dict, where: str) -> tuple:
    if raw is None:
        return tuple(values[arm][0] for arm in arms)
    if not isinstance(raw, dict):
        if len(arms) != 1:
            raise ComparisonError(f"{where}.reference: with several arms give a mapping, "
                                  f"e.g. {{{arms[0]}: ..., {arms[1]}: ...}}")
        raw = {arms[0]: raw}
    extra = [str(k) for k in raw if k not in arms]
    if extra:
        raise ComparisonError(f"{where}.reference.{extra[0]}: not one of {where}.arms "
                              f"({', '.join(arms)})")
    out = []
    for arm in arms:
        if arm not in raw:
            raise ComparisonError(f"{where}.reference.{arm}: missing; the reference arm needs "
                                  "a value of every arm axis")
        value = raw[arm]
        if not any(same_value(value, v) for v in values[arm]):
            raise ComparisonError(
                f"{where}.reference.{arm}: {value!r} is not among the axis's values "
                f"({', '.join(_text(v) for v in values[arm])})")
        out.append(next(v for v in values[arm] if same_value(value, v)))
    return tuple(out)


def from_plan(compare: Any, axes: list[tuple[str, tuple]], where: str = "compare"
              ) -> Comparison | None:
    """A plan's comparison: its ``compare:`` section checked against its axes, or, without
    one (``compare`` None), the default rule; None for a plan with no axis."""
    if compare is None:
        return default(axes)
    return parse(compare, axes, where)


def axes_of_plan_data(data: dict) -> list[tuple[str, tuple]]:
    """(key, values) of a plan file's axes, then its zip groups' keys, in file order, from
    the raw YAML (a plan file as logged on an older parent run)."""
    axes = [(str(k), tuple(v)) for k, v in (data.get("axes") or {}).items()
            if isinstance(v, list) and v]
    for group in data.get("zip") or []:
        if isinstance(group, dict):
            axes += [(str(k), tuple(v)) for k, v in group.items() if isinstance(v, list) and v]
    return axes
