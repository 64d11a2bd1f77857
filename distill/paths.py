"""Where generated output goes: one git-ignored folder, ``runs/`` or ``$ABLATE_HOME``."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def output_root() -> Path:
    """The folder for every generated file (caches, MLflow, Ray, checkpoints, tables).

    Created on first use; an unwritable location is a clear error, not a traceback
    from whichever library first tries to write there.
    """
    root = Path(os.environ.get("ABLATE_HOME") or REPO_ROOT / "runs").expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OutputFolderError(
            f"output folder {root} is not writable ({exc.strerror}); "
            "set ABLATE_HOME to a writable folder"
        ) from exc
    return root


class OutputFolderError(RuntimeError):
    pass


def cache_dir(kind: str) -> Path:
    path = output_root() / "cache" / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
