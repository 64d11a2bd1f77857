"""Where generated output goes: one git-ignored folder, ``runs/`` or ``$ABLATE_HOME``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from distill.errors import OutputFolderError

REPO_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    """Where the output folder is ($ABLATE_HOME, else runs/ in the repository), untouched:
    a read-only command may name it without creating it."""
    return Path(os.environ.get("ABLATE_HOME") or REPO_ROOT / "runs").expanduser().resolve()


def output_root() -> Path:
    """The folder for every generated file (caches, MLflow, Ray, checkpoints, tables).

    Created on first use; an unwritable location is a clear error, not a traceback
    from whichever library first tries to write there.
    """
    root = home()
    try:
        root.mkdir(parents=True, exist_ok=True)
        # A uniquely named probe: trials and driver threads call this at the same time,
        # and with one fixed name one caller's unlink removed another's probe.
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputFolderError(
            f"output folder {root} is not writable ({exc.strerror}); "
            "set ABLATE_HOME to a writable folder"
        ) from exc
    return root


def cache_dir(kind: str) -> Path:
    path = output_root() / "cache" / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
