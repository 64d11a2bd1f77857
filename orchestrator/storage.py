"""Where a plan's trials live: the storage folder, each trial's stable workdir, and the
lock that keeps one ``ablate run`` per plan and folder."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from distill.config import ConfigError
from distill.paths import output_root
from orchestrator.plan import Plan, Trial


def storage_root(storage: str | None) -> Path:
    """Where trial workdirs and Tune's files go: --storage, $ABLATE_STORAGE or the output folder."""
    chosen = storage or os.environ.get("ABLATE_STORAGE")
    root = Path(chosen).expanduser().resolve() if chosen else output_root()
    where = "--storage" if storage else "ABLATE_STORAGE"
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{where}={chosen}: {root} is a file, not a folder; give a folder "
                          "for trial workdirs and checkpoints")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{where}={chosen}: cannot create {root} ({exc.strerror or exc}); "
                          "give a writable folder") from None
    return root


def trial_workdir(storage: Path, plan: Plan, trial: Trial) -> Path:
    return storage / "trials" / plan.name / trial.trial_id


@contextlib.contextmanager
def plan_lock(storage: Path, plan: Plan):
    """One ``ablate run`` per plan and storage folder at a time: two would share one parent
    run, run every trial twice in the same workdirs and log every point twice. The lock
    is the kernel's (flock), so a killed driver never leaves it held."""
    folder = storage / "trials" / plan.name
    path = storage / f".ablate-run-{plan.name}.lock"
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise ConfigError(
                f"{path}: another `ablate run` of plan {plan.name} (pid {holder}) is using "
                f"{folder}; wait for it to finish, or give this run another --storage or "
                "ABLATE_HOME") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield
