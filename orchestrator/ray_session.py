"""Ray for one plan invocation: local or ``RAY_ADDRESS``, sized against the plan, released
in the background once Tune is done (its shutdown is mostly waiting for processes, so it
overlaps the report)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.config import ConfigError
from distill.paths import output_root
from orchestrator.plan import Plan

# Unix socket paths are limited to 107 bytes and Ray nests its sockets 62+ bytes deep
# under the temp dir (session_<date>_<time>_<us>_<pid>/sockets/plasma_store.<n>), so a
# longer output folder gets its Ray files under /tmp/ablate-ray-<hash> instead.
MAX_RAY_TEMP_DIR_CHARS = 35
RAY_START_ATTEMPTS = 3
WATCHDOG = Path(__file__).with_name("ray_watchdog.py")


def ray_temp_dir() -> Path:
    preferred = output_root() / "ray"
    if len(str(preferred)) <= MAX_RAY_TEMP_DIR_CHARS:
        return preferred
    digest = hashlib.sha256(str(output_root()).encode()).hexdigest()[:8]
    return Path("/tmp") / f"ablate-ray-{digest}"


def check_local_resources(plan: Plan) -> None:
    """A trial that asks for more than the machine has would wait forever in Ray's queue."""
    cpus = os.cpu_count() or 1
    if plan.resources.cpu > cpus:
        raise ConfigError(f"{plan.source}: resources.cpu: {plan.resources.cpu} exceeds the "
                          f"{cpus} CPUs of this machine; lower it or set RAY_ADDRESS to a cluster")
    if plan.resources.gpu > 0:
        import torch

        gpus = torch.cuda.device_count()
        if plan.resources.gpu > gpus:
            raise ConfigError(f"{plan.source}: resources.gpu: {plan.resources.gpu} exceeds the "
                              f"{gpus} GPUs of this machine; set gpu: 0 or use a GPU machine")


def check_cluster_resources(plan: Plan) -> None:
    import ray

    available = ray.cluster_resources()
    for key, ray_key in (("cpu", "CPU"), ("gpu", "GPU")):
        wanted = getattr(plan.resources, key)
        if wanted > available.get(ray_key, 0):
            raise ConfigError(
                f"{plan.source}: resources.{key}: {wanted} exceeds the Ray cluster's "
                f"{available.get(ray_key, 0):g} {ray_key}s (RAY_ADDRESS="
                f"{os.environ.get('RAY_ADDRESS', 'local')})")


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A ``host:port`` (or ``ray://host:port``) with nothing listening is an error now, not
    after Ray's minutes of reconnect attempts; ``auto`` and ``local`` are Ray's to resolve."""
    if address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"RAY_ADDRESS={address}: expected host:port (e.g. 10.0.0.1:6379) or "
                          "ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        why = exc.strerror or exc
        raise ConfigError(f"RAY_ADDRESS={address}: no Ray cluster answers there ({why}); start "
                          "its head (`ray start --head`) or unset RAY_ADDRESS to run on this "
                          "machine") from None


@functools.cache
def _watchdog(temp_dir: Path) -> subprocess.Popen:
    """This process's watchdog (ray_watchdog.py): it kills the local Ray this process started
    if the process ends without shutting it down. Cached: the pipe must stay open until exit."""
    # Its own session: Ctrl-C or a kill of the driver's process group must not end it first.
    # No stdout or stderr: it must not hold a `| tee` open through its grace period. Our
    # end of the pipe is close-on-exec, so Ray's processes cannot keep it open.
    argv = [sys.executable, str(WATCHDOG), str(os.getpid()), str(os.getsid(0)), str(temp_dir)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _tell_watchdog(temp_dir: Path, mark: str) -> None:
    pipe = _watchdog(temp_dir).stdin
    if pipe is None:  # never: it is started with stdin=PIPE
        return
    # A watchdog that died is a lost safety net, not a reason to stop the plan.
    with contextlib.suppress(OSError):
        pipe.write(f"{mark}{time.time()}\n".encode())
        pipe.flush()


@contextlib.contextmanager
def _watched(temp_dir: Path) -> Iterator[None]:
    """The processes started inside are this process's Ray: the watchdog records them."""
    _tell_watchdog(temp_dir, "+")
    try:
        yield
    finally:
        _tell_watchdog(temp_dir, "-")


def start_ray() -> bool:
    """Connect to RAY_ADDRESS or start a local Ray; False if this process already had one."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Trials write to MLflow and our status line; Ray's per-worker log forwarding would
    # interleave every worker's stderr with it.
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING,
              "configure_logging": True}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
        return True
    temp_dir = ray_temp_dir()
    temp_dir.mkdir(parents=True, exist_ok=True)
    # Ray starts its workers at niceness 15, below the driver. The trials are the work the
    # user asked for; at 15 anything else on the machine (a test run, an editor's indexer,
    # a driver-side teacher baseline) starved them to ~6% of a core each for minutes.
    # At 0 they share the CPU fairly (BENCHMARKS.md, "End to end"). A user's own setting wins.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # A local Ray is ours to end if this process dies without ray.shutdown(); a cluster
    # joined through RAY_ADDRESS above is not, so only this path is watched.
    with _watched(temp_dir):
        _init_local(temp_dir, kwargs)
    return True


def _init_local(temp_dir: Path, kwargs: dict) -> None:
    import ray

    # Ray gives its raylet a fixed 30 s to come up; on a laptop whose cores are busy with
    # other jobs that can pass, so a timed-out start is tried again before giving up.
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            ray.init(include_dashboard=False, _temp_dir=str(temp_dir), **kwargs)
            return
        except Exception as exc:  # only Ray's start-up timeout is retried; the rest re-raised
            if "timed out during startup" not in str(exc) or attempt == RAY_START_ATTEMPTS:
                raise
        ray.shutdown()


def _shutdown() -> None:
    import ray

    ray.shutdown()


class RaySession:
    """Started (or connected) only when trials are pending; shut down only if this
    process started it (a test's or notebook's own Ray is left alone)."""

    def __init__(self) -> None:
        self.started = False
        self._shutdown = threading.Thread(target=_shutdown, name="ray-shutdown")

    def start(self, plan: Plan) -> None:
        self.started = start_ray()
        if os.environ.get("RAY_ADDRESS"):
            check_cluster_resources(plan)

    def release(self) -> None:
        """Begin the shutdown in the background; :meth:`close` waits for it."""
        if self.started and self._shutdown.ident is None:
            self._shutdown.start()

    def close(self) -> None:
        self.release()
        if self.started:
            self._shutdown.join()
