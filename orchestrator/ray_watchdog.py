"""Ends the local Ray of a driver that died without shutting it down (SIGKILL, OOM kill).

Ray binds its head processes to the driver (PR_SET_PDEATHSIG), but not the raylet's own
children: ray::DashboardAgent and ray::RuntimeEnvAgent were still alive a minute after
a driver's SIGKILL. ``ray_session.start_ray`` runs this file as
``python ray_watchdog.py DRIVER_PID DRIVER_SID RAY_TEMP_DIR`` in its own session, with a
pipe from the driver as stdin, on which the driver marks when its ``ray.init`` begins
(``+TIME``) and ends (``-TIME``). When the pipe closes (the driver exited, however it
exited) and a short grace has passed for a normal shutdown, the watchdog SIGKILLs what
it found to be that Ray and is still alive, then exits.

What is that Ray, and nothing else:

- recorded while the driver lives, every ``POLL_S``: the driver's children started
  during its ``ray.init`` and all their descendants, as psutil processes (pid and start
  time, so a reused pid is never taken for one of them);
- at the end, Ray processes started since the last poll: the raylet dies with the driver,
  so an agent or worker it forked a moment before is reparented to init, out of reach of
  the tree. Ray names its session folder after the driver's pid (``session_<date>_<pid>``)
  and every Ray process names that folder in its command line or holds its logs open
  there, so one started after this watchdog, in the driver's terminal session, that does
  so and was orphaned out of that session is that Ray's too (no name matching: the folder is
  this driver's alone).

Stdlib and psutil only (no Ray, no project imports), so it starts in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

POLL_S = 0.2  # one pass over the process table: a few ms
# After a normal exit Ray is already down (RaySession.close waits for its shutdown); the
# grace is for processes on their way out, not for a killed driver's leftovers.
GRACE_S = 1.0
KILL_S = 5.0
START_SLACK_S = 1.0


class Watchdog:
    def __init__(self, driver_pid: int, driver_sid: int, temp_dir: str) -> None:
        # Whatever the driver started after starting this: its ray.init comes later.
        self.started = psutil.Process().create_time()
        self.driver = _driver(driver_pid, self.started)
        self.driver_pid = driver_pid
        self.driver_sid = driver_sid
        self.session_glob = f"session_*_{driver_pid}"
        self.temp_dir = Path(temp_dir)
        self.windows: list[list[float]] = []  # [begun, ended] of each ray.init, driver's clock
        self.recorded: dict[int, psutil.Process] = {}
        self.driver_gone = threading.Event()

    def read_pipe(self) -> None:
        """The driver's ray.init marks until EOF: its end closes when it exits, even by
        SIGKILL."""
        for line in sys.stdin.buffer:
            with contextlib.suppress(ValueError):  # a partial line from a killed writer
                mark, at = line[:1], float(line[1:])
                if mark == b"+":
                    self.windows.append([at, float("inf")])
                elif mark == b"-" and self.windows:
                    self.windows[-1][1] = at
        self.driver_gone.set()

    def _started_by_ray_init(self, proc: psutil.Process) -> bool:
        """Started during one of the driver's ray.init calls: not this watchdog, nothing the
        driver started before it, nor anything it starts once Ray is up."""
        with contextlib.suppress(psutil.Error):
            created = proc.create_time()
            # psutil counts start times from the boot time in whole seconds, so they may read
            # up to START_SLACK_S early against the driver's clock; the lower bound that
            # counts is this watchdog's start, on psutil's clock.
            return proc.pid != os.getpid() and created >= self.started and any(
                begun - START_SLACK_S <= created <= ended + 0.02 for begun, ended in self.windows)
        return False

    def poll(self) -> None:
        """Record the driver's ray.init children and every descendant of what is recorded."""
        by_parent = defaultdict(list)
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                by_parent[proc.ppid()].append(proc)
        pending = [p for p in self.recorded.values() if p.is_running()]
        if self.driver is not None and _alive(self.driver):  # not one that reused its pid
            pending += [p for p in by_parent[self.driver_pid] if self._started_by_ray_init(p)]
        while pending:
            proc = pending.pop()
            self.recorded[proc.pid] = proc
            pending += [c for c in by_parent[proc.pid] if not self._recorded(c)]

    def _recorded(self, proc: psutil.Process) -> bool:
        known = self.recorded.get(proc.pid)
        return known is not None and known.is_running()  # not a dead one's reused pid

    def _in_session(self, proc: psutil.Process, folders: tuple[str, ...]) -> bool:
        with contextlib.suppress(psutil.Error, OSError):
            if (proc.create_time() < self.started or os.getsid(proc.pid) != self.driver_sid
                    or not self._orphaned(proc)):
                return False
            # Until its logging is set up a Ray process names the folder in its command line;
            # then setproctitle may replace that, but its log files there stay open. (The "/"
            # added: --session-dir=FOLDER ends with the folder, --log-dir=FOLDER/logs not.)
            if any(folder in f"{arg}/" for arg in proc.cmdline() for folder in folders):
                return True
            return any(f.path.startswith(folders) for f in proc.open_files())
        return False

    def _orphaned(self, proc: psutil.Process) -> bool:
        """Reparented to init (or a subreaper, outside the driver's session) when its parent
        died: a `tail -f` of a Ray log, started from the driver's shell, is not."""
        parent = proc.parent()
        return parent is None or parent.pid == 1 or os.getsid(parent.pid) != self.driver_sid

    def record_session(self) -> None:
        """Add the Ray processes started since the last poll (see the module's doc)."""
        sessions = list(self.temp_dir.glob(self.session_glob))
        # As Ray was given them (command lines) and resolved (open files), each with a "/"
        # so that session_..._12 is not taken for session_..._123.
        folders = tuple({f"{path}/" for s in sessions for path in (s, os.path.realpath(s))})
        if folders:
            for proc in psutil.process_iter():
                if not self._recorded(proc) and self._in_session(proc, folders):
                    self.recorded[proc.pid] = proc

    def alive(self) -> list[psutil.Process]:
        self.poll()
        self.record_session()
        return [p for p in self.recorded.values() if _alive(p)]

    def kill_alive(self) -> None:
        """SIGKILL until nothing recorded is left: one may fork while a sweep runs."""
        deadline = time.monotonic() + KILL_S
        while time.monotonic() < deadline and (procs := self.alive()):
            for proc in procs:
                with contextlib.suppress(psutil.Error):  # psutil refuses a reused pid
                    proc.kill()
            psutil.wait_procs(procs, timeout=0.2)

    def run(self) -> None:
        threading.Thread(target=self.read_pipe, daemon=True).start()
        while not self.driver_gone.wait(POLL_S):
            self.poll()
        self.poll()  # before the grace: children of a recorded process that dies in it
        time.sleep(GRACE_S)
        self.kill_alive()


def _alive(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):  # gone, or its pid taken by another process
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    return False


def _driver(pid: int, before: float) -> psutil.Process | None:
    """The driver, or None if it died before this started (its Ray may have started by
    then: the end's search of the session folder still finds it)."""
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        if proc.create_time() <= before:
            return proc
    return None


def main(argv: list[str]) -> int:
    Watchdog(int(argv[1]), int(argv[2]), argv[3]).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
