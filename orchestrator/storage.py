"""Where a plan's trials live: the storage folder, each trial's stable workdir, the lock
that keeps one ``ablate run`` per plan and folder, and the adoption of trials that a
finished trial in the same folder has already computed."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
from pathlib import Path

from distill.config import ConfigError, DistillConfig, trial_id
from distill.paths import output_root
from orchestrator.plan import Plan, Trial
from orchestrator.trial import RESULT_FILE, read_result, write_result


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


def adopt_finished(storage: Path, plan: Plan, trials: list[Trial]) -> dict[str, str]:
    """Link in the trials of ``plan`` that a finished trial in ``storage`` (of any plan)
    has already computed, instead of running them again. The match is
    :func:`distill.guidance.computation_key`: the resolved config with strategy and κ
    replaced by the four guidance scales, so the κ sweep's κ = 2 trials adopt the LSG
    plan's lsg trials (the same trial id) and its κ = 1 trials the LSG plan's none trials
    (every scale 1 under both). Returns trial id -> a line saying where it came from.

    Only a trial with no workdir of its own is adopted (its own checkpoint resumes as
    before). The folder is assembled under a hidden name and renamed into place, so a crash
    never leaves a half-adopted trial that looks finished. The checkpoint files are hard
    links (a copy across file systems; checkpoints are written to new files, never in
    place, so neither folder can change the other's); result.json is this trial's own,
    with ``adopted_from`` naming the source. Call it under :func:`plan_lock`."""
    from distill.guidance import computation_key  # torch: not on the fail-fast path

    wanted: dict[str, list[Trial]] = {}  # one plan may hold several trials of one key
    for t in trials:
        if not trial_workdir(storage, plan, t).exists():
            wanted.setdefault(computation_key(t.config), []).append(t)
    adopted: dict[str, str] = {}
    for source, record in _finished_trials(storage) if wanted else ():
        for trial in wanted.pop(_key_of(source, record, computation_key) or "", []):
            _adopt(source, record, trial_workdir(storage, plan, trial), trial)
            adopted[trial.trial_id] = (f"computed by plan {source.parent.name} as "
                                       f"{record.get('name')}")
        if not wanted:
            break
    return adopted


def _adopt(source: Path, record: dict, dst: Path, trial: Trial) -> None:
    """``source`` linked in as ``dst``, staged and renamed, with ``trial``'s own result.json."""
    staging = dst.parent / f".adopting-{trial.trial_id}"
    shutil.rmtree(staging, ignore_errors=True)  # left by a crash mid-adoption
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, staging, copy_function=_link_or_copy,
                    ignore=shutil.ignore_patterns(RESULT_FILE))
    write_result(staging, {**record, "config": dataclasses.asdict(trial.config),
                           "name": trial.name, "trial_id": trial.trial_id,
                           "adopted_from": {"plan": source.parent.name,
                                            "trial_id": source.name,
                                            "name": record.get("name")}})
    staging.rename(dst)


def _finished_trials(storage: Path):
    """(workdir, result.json) of every finished trial under ``storage``, in a fixed order."""
    for folder in sorted((storage / "trials").glob("*/*")):
        record = read_result(folder) if folder.is_dir() else None
        if record is not None and record.get("status") == "finished":
            yield folder, record


def _key_of(folder: Path, record: dict, computation_key) -> str | None:
    """The record's computation key, or None unless it was computed by this loop: its
    folder is named by the trial id, which hashes the revision the record's config lacks."""
    try:
        config = DistillConfig(**record["config"])
    except (KeyError, TypeError, ValueError, ConfigError):  # another revision's fields
        return None
    return computation_key(config) if trial_id(config) == folder.name else None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed there
        shutil.copy2(src, dst)


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
