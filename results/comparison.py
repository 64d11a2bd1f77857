"""What a plan compares: its arms, the reference arm, the metrics of the verdict, the smallest
effect of interest of each, and whether seeds pair across arms.

A plan declares it in a ``compare:`` section (ablations/README.md, "compare"); a plan without
one compares every value of its first axis with that axis's first value. The driver checks
the section with the plan (:func:`from_plan`, exit 2 naming the key) and logs the resolved
comparison on the parent run (``plan/comparison.json``), which is what tables, verdict,
plots, the parent's summary and the terminal read: nothing in ``results`` decides what to
compare from a plan's name or from a strategy's.

``compare.trend`` declares the dose-response question of a numeric axis (results/trend.py):
which axis, a line or a quadratic, and the smallest slope of interest per unit of the axis.
Left out, the first numeric axis with three or more values is the trend axis, fitted as a
line with the registry's δ per unit; ``trend: false`` switches it off.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from distill import metrics as registry

ARTIFACT = "plan/comparison.json"
KEYS = ("arms", "reference", "metrics", "delta", "paired", "trend")
TREND_KEYS = ("axis", "model", "delta")
TREND_MODELS = ("line", "quadratic")
TREND_LEAST_VALUES = 3  # a slope from two values has no lack-of-fit test and no check


class ComparisonError(ValueError):
    """A ``compare:`` section that does not fit its plan; the message names the key."""


@dataclass(frozen=True)
class Trend:
    """The trend question of a plan: ``metric ~ axis`` fitted as a ``model`` ('line' or
    'quadratic') over every finished trial; ``delta`` maps each metric to its smallest slope
    of interest per unit of the axis (a ratio per unit for log-scale metrics), the margin of
    "flat"."""

    axis: str
    model: str = "line"
    delta: tuple[tuple[str, float], ...] = ()
    declared: bool = True  # False: the default rule chose the axis

    def delta_of(self, metric: str) -> float:
        given = dict(self.delta)
        if metric in given:
            return given[metric]
        default = registry.by_name(metric)
        return float(default.delta) if default is not None and default.delta else math.nan

    def to_dict(self) -> dict:
        return {"axis": self.axis, "model": self.model, "delta": dict(self.delta),
                "declared": self.declared}

    @classmethod
    def from_dict(cls, data: dict) -> Trend:
        return cls(str(data["axis"]), str(data.get("model", "line")),
                   tuple((k, float(v)) for k, v in (data.get("delta") or {}).items()),
                   bool(data.get("declared", True)))


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
    # The trend axis (results/trend.py); None with trend_off False: the default rule, applied
    # to the runs (comparisons logged before trends existed carry neither).
    trend: Trend | None = None
    trend_off: bool = False

    def delta_of(self, metric: str) -> float:
        return dict(self.delta)[metric]

    def reference_text(self) -> str:
        return ", ".join(f"{k} = {_text(v)}" for k, v in zip(self.arms, self.reference))

    def to_json(self) -> str:
        return json.dumps({"arms": list(self.arms), "reference": list(self.reference),
                           "metrics": list(self.metrics), "delta": dict(self.delta),
                           "paired": self.paired, "declared": self.declared,
                           "trend": False if self.trend_off else
                           (self.trend.to_dict() if self.trend else None)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Comparison:
        data = json.loads(text)
        trend = data.get("trend")
        return cls(tuple(data["arms"]), tuple(data["reference"]), tuple(data["metrics"]),
                   tuple((k, float(v)) for k, v in data["delta"].items()),
                   bool(data.get("paired", False)), bool(data.get("declared", True)),
                   Trend.from_dict(trend) if isinstance(trend, dict) else None,
                   trend is False)


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
    return Comparison((key,), (values[0],), names, default_delta(names), declared=False,
                      trend=default_trend(axes))


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
    trend = raw.get("trend")
    if trend is True:  # the default rule, said out loud
        trend = None
    if trend is False:
        return Comparison(tuple(arms), reference, tuple(names), delta, paired, trend_off=True)
    return Comparison(tuple(arms), reference, tuple(names), delta, paired,
                      trend=default_trend(axes) if trend is None else
                      _parse_trend(trend, axes, names, f"{where}.trend"))


def numeric_values(values: tuple) -> bool:
    """An axis the trend can be fitted over: every value a number (not a bool)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def default_trend(axes: list[tuple[str, tuple]]) -> Trend | None:
    """The first numeric axis with three or more distinct values, as a line; None if none."""
    for key, values in axes:
        if numeric_values(values) and len({float(v) for v in values}) >= TREND_LEAST_VALUES:
            return Trend(key, declared=False)
    return None


def _parse_trend(raw: Any, axes: list[tuple[str, tuple]], names: list[str], where: str) -> Trend:
    """``trend: kappa`` or ``trend: {axis: kappa, model: quadratic, delta: {clip: 0.01}}``."""
    if isinstance(raw, str):
        raw = {"axis": raw}
    if not isinstance(raw, dict):
        raise ComparisonError(f"{where}: an axis name, false, or a mapping with keys "
                              f"{', '.join(TREND_KEYS)}; got {raw!r}")
    unknown = sorted(str(k) for k in raw if k not in TREND_KEYS)
    if unknown:
        raise ComparisonError(f"{where}.{unknown[0]}: unknown key; known keys: "
                              f"{', '.join(TREND_KEYS)}")
    axis = _parse_trend_axis(raw.get("axis"), dict(axes), f"{where}.axis")
    model = raw.get("model", "line")
    if model not in TREND_MODELS:
        raise ComparisonError(f"{where}.model: must be one of {', '.join(TREND_MODELS)}, got "
                              f"{model!r}")
    delta = _parse_delta(raw.get("delta", {}), names, where, among="the compared metrics",
                         per=f" per unit of {axis}")
    return Trend(axis, model, delta)


def _parse_trend_axis(axis: Any, values: dict, where: str) -> str:
    """A numeric axis of the plan with three or more distinct values."""
    if axis not in values:
        raise ComparisonError(f"{where}: {axis!r} is not an axis of the plan; known: "
                              f"{', '.join(values)}")
    if not numeric_values(values[axis]):
        raise ComparisonError(f"{where}: {axis!r} is not numeric (values "
                              f"{', '.join(map(_text, values[axis]))}); a trend needs numbers")
    distinct = len({float(v) for v in values[axis]})
    if distinct < TREND_LEAST_VALUES:
        raise ComparisonError(f"{where}: {axis!r} has {distinct} distinct values; a trend "
                              f"needs at least {TREND_LEAST_VALUES}")
    return str(axis)


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


def _parse_delta(given: Any, names: list[str], where: str, among: str = "",
                 per: str = "") -> tuple[tuple[str, float], ...]:
    """Each metric's δ: the plan's where given (a finite number > 0), else the registry's.
    ``among`` names the metrics a δ may be given for (default: ``<where>.metrics``);
    ``per`` says what the δ is per (the trend's " per unit of kappa")."""
    if not isinstance(given, dict):
        raise ComparisonError(f"{where}.delta: must map metric names to numbers > 0{per}, "
                              "e.g. {fid: 0.1, clip: 0.01}")
    for name, value in given.items():
        if name not in names:
            raise ComparisonError(f"{where}.delta.{name}: not one of {among or where + '.metrics'} "
                                  f"({', '.join(map(str, names))})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value <= 0:
            raise ComparisonError(f"{where}.delta.{name}: must be a finite number > 0{per}, "
                                  f"got {value!r}")
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
