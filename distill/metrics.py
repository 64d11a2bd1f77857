"""The metric registry: every metric the project logs, declared once.

A metric's MLflow key, how it is named in a table header, a verdict line and the terminal,
which way is better, how it is printed, and where it appears (tables, curves, verdict) are
all here. Writers (the loop, the evaluation suite, the adherence analyzer) take their keys
from it, readers (``results``, the terminal status line) their names and directions, so a
new metric is one :func:`register` call (``tests/test_metric_registry.py`` shows it reaching
the table, the verdict and the curves).

It lives in ``distill``, the bottom floor, because the loop writes loss keys and every
other package may import ``distill`` (tests/test_layering.py). No torch here: the results
side and ``ablate --help`` import it.

FID is a family of keys: its key carries the number of generated images (``fid2k``,
``fid30k``, :func:`fid_key`), because an FID on 2,000 images is not one on 30,000. What its
features come from is the evaluation protocol's: the embedded world computes the Fréchet
distance in its small CLIP's image features (the network behind its CLIP score), which is
not Inception's FID, so it is labelled "FD-CLIP" there (:func:`Metric.header`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Protocols whose Fréchet distance uses the embedded CLIP's image features, not Inception's
# (evaluation.suite names the embedded protocol with this prefix).
EMBEDDED_PROTOCOL_PREFIX = "embedded-"


@dataclass(frozen=True)
class Metric:
    """One logged metric.

    ``name`` is what a plan's ``compare.metrics`` and ``compare.delta`` call it. ``key`` is
    the MLflow key (for a family such as FID, the prefix of its keys). ``lower_is_better``
    is None for diagnostics (losses, throughput) that are never compared. ``delta`` is the
    default smallest effect of interest in the metric's own units, or, for a metric tested
    on the log scale (``log_scale``), as a ratio: 0.1 means ±10%.
    """

    name: str
    key: str
    label: str
    short: str
    lower_is_better: bool | None = None
    digits: int = 3
    scale: float = 1.0  # 100 shows a fraction as a percentage
    unit: str = ""  # after a printed difference, e.g. " pts"
    final: bool = False  # aggregated over seeds into the CSV
    table: bool = False  # a column in the comparison table
    curve: bool = False  # a panel of the metrics-vs-iteration figure
    verdict: bool = False  # compared in the verdict unless a plan's compare.metrics says otherwise
    delta: float | None = None
    log_scale: bool = False
    family: str | None = None  # regex of the keys after ``key`` (FID: the image count)

    def matches(self, key: str) -> bool:
        if self.family is None:
            return key == self.key
        return re.fullmatch(re.escape(self.key) + self.family, key) is not None

    @property
    def arrow(self) -> str:
        return "" if self.lower_is_better is None else ("↓" if self.lower_is_better else "↑")

    def header(self, key: str | None = None, protocol: str | None = None) -> str:
        """The table header: 'CLIP ↑', 'Adherence (%) ↑', 'FD-CLIP (2k) ↓', 'FID (30k) ↓'."""
        label = self.label_for(key, protocol)
        return f"{label} {self.arrow}".rstrip()

    def label_for(self, key: str | None = None, protocol: str | None = None) -> str:
        if self.name != FID.name:
            return self.label
        count = f" ({key[len(self.key):]})" if key else ""
        return f"{frechet_name(protocol)}{count}"

    def short_for(self, protocol: str | None = None) -> str:
        return frechet_name(protocol) if self.name == FID.name else self.short

    def number(self, value: float) -> str:
        """The value as tables print it ('-0.00' printed as '0.00': no direction)."""
        return unsigned_zero(f"{value * self.scale:.{self.digits}f}")

    def signed(self, value: float) -> str:
        """A difference: '+1.20', '-3.4 pts'."""
        text = self.number(value)
        return (text if text.startswith("-") else "+" + text) + self.unit


def unsigned_zero(text: str) -> str:
    """'-0.00' -> '0.00': a small negative value rounded to zero has no direction, and a
    printed minus would read as one."""
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def frechet_name(protocol: str | None) -> str:
    """'FD-CLIP' for the embedded protocols (CLIP features), 'FID' for Inception's."""
    return "FD-CLIP" if protocol and protocol.startswith(EMBEDDED_PROTOCOL_PREFIX) else "FID"


def fid_key(num_images: int) -> str:
    """Metric key carrying the sample count: 2000 -> fid2k, 30000 -> fid30k, 500 -> fid500."""
    if num_images < 1:
        raise ValueError(f"FID needs at least one image, got num_images={num_images}")
    if num_images % 1000 == 0:
        return f"fid{num_images // 1000}k"
    return f"fid{num_images}"


def fid_num_images(key: str) -> int:
    """How many generated images an FID key was computed on: fid2k -> 2000."""
    match = re.fullmatch(r"fid(\d+(?:\.\d+)?)(k?)", key)
    if not match:
        raise ValueError(f"{key!r} is not an FID metric key (fid<count>[k])")
    return round(float(match.group(1)) * (1000 if match.group(2) else 1))


# The smallest effects of interest (ablations/README.md, "compare", says why each):
# FID/FD-CLIP 10% (tested on the log scale: the metric is right-skewed across seeds, and a
# tenth of the lsg arm's ~4 is the 0.4-0.5 the issue proposed, ~8x the 0.05 that two
# independent real-image sets score against each other); CLIP 0.01 (the paper's CLIP gain
# from κ 1.5 to 2 on SD1.5 is 0.011); adherence 3 points (three times its ~1-point sampling
# sd on 2,000 images).
FID = Metric("fid", "fid", "FID", "FID", lower_is_better=True, digits=2, final=True,
             table=True, curve=True, verdict=True, delta=0.10, log_scale=True,
             family=r"\d+(?:\.\d+)?k?")
CLIP_SCORE = Metric("clip", "clip_score", "CLIP", "CLIP", lower_is_better=False, digits=3,
                    final=True, table=True, curve=True, verdict=True, delta=0.01)
# Colour, shape and size all right (embedded world). Not position: the embedded teacher
# leaves it at chance (RESULTS.md), which would cut every row to a third.
ADHERENCE = Metric("adherence", "colour_shape_size_acc", "Adherence (%)", "adherence",
                   lower_is_better=False, digits=1, scale=100.0, unit=" pts", final=True,
                   table=True, curve=True, verdict=True, delta=0.03)
COLOUR_ACC = Metric("colour_acc", "colour_acc", "Colour (%)", "colour", lower_is_better=False,
                    digits=1, scale=100.0, unit=" pts", final=True, delta=0.03)
SHAPE_ACC = Metric("shape_acc", "shape_acc", "Shape (%)", "shape", lower_is_better=False,
                   digits=1, scale=100.0, unit=" pts", final=True, delta=0.03)
LOSS_FAKE_SCORE = Metric("loss_fake_score", "loss_fake_score", "L_ψ", "L_psi", digits=4)
LOSS_GENERATOR = Metric("loss_generator", "loss_generator", "L_G", "L_G", digits=4)
IMAGES_PER_SECOND = Metric("images_per_second", "images_per_second", "images/s", "img/s",
                           digits=1)
# Cost of a trial, logged at its last iteration: the distill span, that span times the
# devices it held (a CPU trial counts as one device per worker), and UNet passes per image
# per iteration (forward + backward; distill.guidance.GuidanceScales.unet_passes).
TRAIN_SECONDS = Metric("train_seconds", "train_seconds", "train s", "train s", digits=0)
DEVICE_HOURS = Metric("device_hours", "device_hours", "device-hours", "device-hours", digits=4)
UNET_PASSES_PER_IMAGE = Metric("unet_passes_per_image", "unet_passes_per_image",
                               "UNet passes per image", "UNet passes/image", digits=0)

_REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a metric (its name and key must be new); returns it."""
    clash = [m.name for m in _REGISTRY.values()
             if m.name == metric.name or m.matches(metric.key) or metric.matches(m.key)]
    if clash:
        raise ValueError(f"metric {metric.name!r} clashes with registered {clash[0]!r}")
    _REGISTRY[metric.name] = metric
    return metric


for _metric in (FID, CLIP_SCORE, ADHERENCE, COLOUR_ACC, SHAPE_ACC, LOSS_FAKE_SCORE,
                LOSS_GENERATOR, IMAGES_PER_SECOND, TRAIN_SECONDS, DEVICE_HOURS,
                UNET_PASSES_PER_IMAGE):
    register(_metric)


@contextmanager
def registered(metric: Metric) -> Iterator[Metric]:
    """``metric`` registered for the duration of a block (tests, notebooks)."""
    register(metric)
    try:
        yield metric
    finally:
        del _REGISTRY[metric.name]


def all_metrics() -> tuple[Metric, ...]:
    """Every registered metric, in registration order (the order tables show them)."""
    return tuple(_REGISTRY.values())


def by_name(name: str) -> Metric | None:
    return _REGISTRY.get(name)


def for_key(key: str) -> Metric | None:
    """The metric a logged key belongs to ('fid2k' -> FID), None for unregistered keys."""
    return next((m for m in _REGISTRY.values() if m.matches(key)), None)


def names(where: str) -> tuple[str, ...]:
    """Names of the metrics flagged ``where`` ('final', 'table', 'curve', 'verdict')."""
    return tuple(m.name for m in _REGISTRY.values() if getattr(m, where))
