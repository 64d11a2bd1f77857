"""The MLflow layout: what the orchestrator writes and ``results`` reads.

One place for these names so writer and reader cannot drift apart.

- One experiment per plan, named ``EXPERIMENT_PREFIX + plan name`` (e.g. ``ablate/lsg``).
- One parent run per invocation of ``ablate run``: tag ``ROLE = "parent"``, tag ``PLAN``,
  tag ``PROFILE`` (``embedded``, ``sd15`` or ``sd21base``; the tables add the paper's
  published numbers for the SD profiles).
- One child run per trial (tag ``mlflow.parentRunId`` = parent run id, ``ROLE = "trial"``),
  with every resolved config field as a param (``strategy``, ``kappa``, ``kappa1``..``kappa4``,
  ``seed``, ...), tags ``TRIAL_ID``, ``GIT_COMMIT``, ``TEACHER_ID``, ``TEACHER_HASH``,
  ``PROMPT_SET_HASH``, ``EVAL_PROTOCOL``, and the outcome tag ``STATUS`` (one of ``STATUSES``).
- A teacher-baseline child run (``ROLE = "teacher"``) carries the same final metrics for the
  teacher's multi-step samples, with params ``sampler``, ``sampler_steps``, ``kappa``.
- Final metrics are logged at the last step under the registry's keys (distill/metrics.py);
  curves (losses, images/s) and evaluation metrics at intermediate points use the same
  keys with their step.
- Cost metrics of a trial (final step): ``train_seconds`` (the distillation span),
  ``device_hours`` (train_seconds x devices / 3600) and ``unet_passes_per_image``.
- The parent run's artifacts: the plan file and ``plan/trials.json`` under ``plan/``, and
  ``plan/comparison.json``, what the plan compares (results/comparison.py).
- Artifacts: ``config.json`` and ``samples/grid_<step>.png`` / ``samples/grid_final.png``;
  optionally ``GRID_FINAL_LAYOUT`` beside the final grid, a JSON object
  ``{"prompts": [p, ...], "cells": [[[left, top, right, bottom], ...], ...]}``: per prompt
  (in the grid's row order), the pixel boxes of its images in ``grid_final.png``. With it
  the report's ``samples.png`` has one row per prompt across the arms; without it, one
  panel per run showing the whole grid.
"""

import contextlib
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from distill.errors import ConfigError
from distill.paths import home

EXPERIMENT_PREFIX = "ablate/"

ROLE = "ablate.role"
PLAN = "ablate.plan"
TRIAL_ID = "ablate.trial_id"
STATUS = "ablate.status"
GIT_COMMIT = "ablate.git_commit"
TEACHER_ID = "ablate.teacher_id"
TEACHER_HASH = "ablate.teacher_hash"
PROMPT_SET_HASH = "ablate.prompt_set_hash"
EVAL_PROTOCOL = "ablate.eval_protocol"  # e.g. "embedded-16px-clip" or "coco2014-30k-256"
NODE = "ablate.node"  # the Ray node (its --node-name, else its IP) a trial ran on
PROFILE = "ablate.profile"  # on the parent run; orchestrator.tracking.PROFILE must equal it

STATUSES = ("finished", "diverged", "failed")

# Plain tags on every trial's child run, so the dashboard groups and searches runs by them
# without `params.` prefixes (the params hold the same values).
GROUP_TAGS = ("strategy", "kappa", "seed", "plan", "size", "profile")
# MLflow shows this tag as a run's (or an experiment's) description.
DESCRIPTION = "mlflow.note.content"

# Metric keys, names and directions: distill/metrics.py, the metric registry.
# The sample grid of an evaluation, as an MLflow image (the dashboard's image panel).
SAMPLES_IMAGE_KEY = "samples"

GRID_FINAL = "samples/grid_final.png"
GRID_FINAL_LAYOUT = "samples/grid_final.json"
CONFIG_ARTIFACT = "config.json"

# Where the store lives unless MLFLOW_TRACKING_URI says otherwise: one SQLite file in the
# output folder, so writer (orchestrator) and reader (results, `ablate mlflow-ui`) agree.
TRACKING_DB = "mlflow.db"
# Artifacts go beside it (not MLflow's default ./mlruns, which depends on the working dir).
ARTIFACT_DIR = "mlartifacts"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``sqlite:///rel`` or ``sqlite:////abs``,
    SQLAlchemy's forms, any ``?query`` dropped); None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///"):].split("?", 1)[0]))


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def probe_server(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why a tracking server does not answer at all (refused, timed out), or None if it
    answers something (or ``uri`` is no server). One attempt, no retries: a yes/no before
    waiting on MLflow's, which the user's MLFLOW_HTTP_REQUEST_* may make minutes long."""
    import urllib.error
    import urllib.request

    if not is_server(uri):
        return None
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None  # it answered: a proxy without /health is still a server
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(getattr(reason, "strerror", None) or reason)
    return None


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / TRACKING_DB}"


# How long a command waits for a SQLite store another process holds locked before it gives
# up naming the store and the holder: $ABLATE_STORE_WAIT seconds, default 30.
DEFAULT_STORE_WAIT_S = 30.0


def store_wait_seconds() -> float:
    text = os.environ.get("ABLATE_STORE_WAIT", "")
    try:
        value = float(text) if text else DEFAULT_STORE_WAIT_S
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise ConfigError(f"ABLATE_STORE_WAIT={text!r}: give seconds between 0 and 3600")
    return value


def locked_store(path: Path, write: bool) -> str | None:
    """None if the SQLite store at ``path`` can be read (and, with ``write``, written)
    within store_wait_seconds(); else why not, naming the store and, where /proc shows
    it, the process holding it. The probe takes the lock a writer needs (BEGIN IMMEDIATE)
    and releases it at once; a reader's probe is one read of the schema."""
    import sqlite3

    wait = store_wait_seconds()
    if not path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=wait,
                                                isolation_level=None)) as db:
            if write:
                db.execute("BEGIN IMMEDIATE")
                db.execute("ROLLBACK")
            else:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:  # OperationalError ("locked") or a damaged file
        if "locked" not in str(exc) and "busy" not in str(exc):
            return None  # damaged or foreign: the callers' own checks name those
        holders = _holders(path)
        held = f" (held by {holders})" if holders else ""
        return (f"the MLflow store {path} stayed locked for {wait:g} s{held}; wait for that "
                "process, stop it, or raise ABLATE_STORE_WAIT")
    return None


def _holders(path: Path) -> str:
    """'pid 123 (python3)', ... of the processes with ``path`` open, as far as /proc shows."""
    target = str(path.resolve())
    found = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        pid = fd_dir.parent.name
        if pid == str(os.getpid()):
            continue
        try:
            if any(os.readlink(fd) == target for fd in fd_dir.iterdir()):
                name = (fd_dir.parent / "comm").read_text().strip()
                found.append(f"pid {pid} ({name})")
        except OSError:
            continue  # gone, or not ours to inspect
    return ", ".join(found[:3])


# A process may wait this long in total for a locked SQLite file before it gives up.
LOCK_RETRY_SECONDS = 120.0
T = TypeVar("T")


def _is_locked(exc: BaseException) -> bool:
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


def retry_locked(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn``, retrying with jittered back-off while SQLite says it is locked: every
    MLflow write (the orchestrator's, and the report's to its parent run) goes through it,
    as several processes write one SQLite store at once."""
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MLflow wraps SQLAlchemy's OperationalError in several ways
            if not _is_locked(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)
