"""Test-only fault hooks, in one place: a trial that crashes once, a trial that waits.

The driver reads two environment variables (``faults_for`` and ``hold``) into each
trial's spec; the trial wraps its report in :func:`wrap_report` only when its spec carries
one. With neither variable set (every real run) the trial's report is the plain one.

- ``ABLATE_TEST_FAULTS='{"<trial id>": <iteration>}'``: that trial raises once when it
  reports that iteration (tests/test_orchestrator.py), so a crash and its retry from the
  last checkpoint are exercised through real Ray Tune.
- ``ABLATE_TEST_HOLD='{"iteration": 15, "release": "<file>"}'``: each trial, the first time
  it reports that iteration, writes ``.held`` (its node) in its workdir and waits there
  until the release file exists (tests/test_cluster.py), so a test can take a node away
  from under trials it knows to be mid-way.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FAULTS_ENV = "ABLATE_TEST_FAULTS"
FAULT_MARKER = ".fault-injected"
HOLD_ENV = "ABLATE_TEST_HOLD"
HOLD_MARKER = ".held"
HOLD_LIMIT_S = 600

Report = Callable[[dict[str, float], int], None]


def faults_for(trial_id: str) -> int | None:
    """The iteration at which ``trial_id`` is to crash once, from FAULTS_ENV."""
    raw = os.environ.get(FAULTS_ENV)
    faults = {str(k): int(v) for k, v in json.loads(raw).items()} if raw else {}
    return faults.get(trial_id)


def hold() -> dict[str, Any] | None:
    raw = os.environ.get(HOLD_ENV)
    return json.loads(raw) if raw else None


def wrap_report(report: Report, workdir: Path, fault_at: int | None,
                held: dict[str, Any] | None, node: str | None) -> Report:
    """``report`` with the spec's hooks in front of it, or ``report`` itself if none."""
    if fault_at is None and held is None:
        return report

    def hooked(metrics: dict[str, float], iteration: int) -> None:
        if iteration == fault_at:
            _inject_fault_once(workdir, iteration)
        if held and iteration == held["iteration"]:
            _hold_once(workdir, held, node or "?")
        report(metrics, iteration)

    return hooked


def _inject_fault_once(workdir: Path, iteration: int) -> None:
    """Raise the first time a trial reports ``iteration`` (the marker survives the retry)."""
    marker = workdir / FAULT_MARKER
    if not marker.exists():
        marker.touch()
        raise RuntimeError(f"injected fault at iteration {iteration} ({FAULTS_ENV})")


def _hold_once(workdir: Path, held: dict[str, Any], node: str) -> None:
    """Wait at the held iteration until the release file exists (once per trial: the
    marker survives the retry, which therefore runs through)."""
    marker = workdir / HOLD_MARKER
    if marker.exists():
        return
    marker.write_text(node)
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not Path(held["release"]).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
