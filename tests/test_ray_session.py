"""A driver SIGKILLed while its local Ray starts leaves no Ray process behind.

Ray binds its head processes to the driver, but not the raylet's agents: without the
watchdog (orchestrator/ray_watchdog.py) ray::DashboardAgent and ray::RuntimeEnvAgent
outlive the killed driver for good.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from orchestrator.ray_session import ray_temp_dir

# Ray, end-to-end plans or minutes of compute: `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

PLAN = """\
    name: orphans
    axes:
      strategy: [lsg]
    resources: {cpu: 1}
    evaluation: {teacher_baseline: off}
    sizes:
      smoke: {iterations: 10, batch_size: 4, micro_batch_size: 4, log_every: 2,
              checkpoint_every: 2, eval_num_images: 48}
"""


def _record(root: int, seen: dict[int, psutil.Process]) -> None:
    """Add the root's descendants, and those of every recorded process still alive (a
    killed driver's children are reparented, so the root alone would lose them)."""
    by_parent = defaultdict(list)
    for proc in psutil.process_iter():
        try:
            by_parent[proc.ppid()].append(proc)
        except psutil.Error:
            continue
    pending = [root, *(pid for pid, p in seen.items() if _alive(p))]
    while pending:
        for child in by_parent[pending.pop()]:
            if child.pid not in seen or not _alive(seen[child.pid]):
                seen[child.pid] = child
                pending.append(child.pid)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return "?"


def _raylet_started_agents(seen: dict[int, psutil.Process]) -> bool:
    """The raylet has forked its first agent: the moment the agents used to escape."""
    raylets = {pid for pid, p in seen.items() if _name(p) == "raylet"}
    return any(_ppid(p) in raylets for p in seen.values())


def _ppid(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except psutil.Error:
        return None


def test_driver_sigkilled_while_ray_starts_leaves_no_ray_process(tmp_path, monkeypatch):
    plan_path = tmp_path / "orphans.yaml"
    plan_path.write_text(textwrap.dedent(PLAN))
    # No RAY_ADDRESS: the driver starts (and owns) a local Ray.
    env = {**os.environ, "ABLATE_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "ABLATE_STORAGE"):
        env.pop(name, None)
    log_path = tmp_path / "driver.log"
    seen: dict[int, psutil.Process] = {}
    with log_path.open("w") as log:
        # Its own session, as a driver started from a terminal has.
        driver = subprocess.Popen([PYTHON, "-m", "orchestrator.cli", "run", str(plan_path),
                                   "--size", "smoke"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # imports are slow when other jobs share the cores
        while not _raylet_started_agents(seen):
            assert driver.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the driver's Ray did not start"
            _record(driver.pid, seen)
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)  # the fault under test
        driver.wait()
        gone_by = time.monotonic() + 15
        while (left := [p for p in seen.values() if _alive(p)]) and time.monotonic() < gone_by:
            _record(driver.pid, seen)  # whatever the survivors fork is theirs too
            time.sleep(0.2)
        assert not left, f"alive 15 s after the driver's SIGKILL: {sorted(map(_name, left))}"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for proc in seen.values():  # only what this test saw the driver start
            if _alive(proc):
                proc.kill()
        monkeypatch.setenv("ABLATE_HOME", str(tmp_path / "home"))
        shutil.rmtree(ray_temp_dir(), ignore_errors=True)  # /tmp/ablate-ray-<hash>: a long path
