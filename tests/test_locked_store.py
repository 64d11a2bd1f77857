"""A store another process holds locked: `ablate run` and `ablate tables` wait a bounded
time (ABLATE_STORE_WAIT), then exit 2 with one line naming the store and the holder, before
Ray starts or anything is written (issue: hardening by class; it took 310 s and 207 s)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import cli, ray_session

# Ray, end-to-end plans or minutes of compute: `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
HOLD = ("import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n")


@pytest.fixture
def locked_store(tmp_path, monkeypatch):
    """A real MLflow store in an output folder, held under an exclusive lock by a child
    process (stopped by its PID afterwards)."""
    from mlflow import MlflowClient

    home = tmp_path / "home"
    home.mkdir()
    store = home / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{store}").search_experiments()
    monkeypatch.setenv("ABLATE_HOME", str(home))
    monkeypatch.setenv("ABLATE_STORE_WAIT", "2")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield store, holder.pid
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("argv", [["run", str(REPO / "ablations" / "lsg.yaml"), "--size", "smoke"],
                                  ["tables", "--plan", "lsg"]], ids=["run", "tables"])
def test_a_locked_store_is_refused_after_the_bounded_wait(locked_store, argv, capsys,
                                                          monkeypatch):
    store, pid = locked_store
    monkeypatch.setattr(ray_session, "start_ray",
                        lambda *a, **k: pytest.fail("Ray started on a locked store"))
    before = sorted(p.name for p in store.parent.iterdir())
    started = time.monotonic()
    code = cli.main(argv)
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert str(store) in err and f"pid {pid}" in err and "ABLATE_STORE_WAIT" in err
    # The wait, plus the command's imports (seconds on a loaded 2-core machine).
    assert 2 <= seconds < 2 + 15
    # Nothing but `ablate run`'s own lock (a kernel flock on an empty file) is left.
    after = [p for p in sorted(x.name for x in store.parent.iterdir())
             if not p.startswith(".ablate-run-")]
    assert after == before
