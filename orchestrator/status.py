"""A concise live status: one line per trial event, instead of Ray's refreshing table.

Each line: elapsed time, trial name, state, iteration / total, latest metrics.
Results arrive every ``log_every`` iterations; a trial's RUNNING line is printed
at most every ``min_interval_s`` seconds so a sweep of many fast trials stays
readable, while state changes (started, retried, done, error) always print. After
each trial ends, one line counts the plan's trials done / running / pending with an
ETA from the iteration rates measured so far.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ray.tune import Callback

from distill import metrics as registry
from orchestrator import tracking
from orchestrator.spec import of_trial

# The metrics worth a glance while a run is in flight, in this order (FID's keys after).
SHOWN = (registry.LOSS_FAKE_SCORE, registry.LOSS_GENERATOR, registry.IMAGES_PER_SECOND,
         registry.CLIP_SCORE, registry.ADHERENCE)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_line(elapsed_s: float, name: str, state: str, iteration: int | None,
                total: int | None, metrics: dict) -> str:
    shown = [(m.short, m.key) for m in SHOWN if m.key in metrics] + sorted(
        (k, k) for k in metrics if registry.FID.matches(k))
    parts = []
    for short, key in shown:
        value = metrics[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{short}={value:.4g}")
    progress = f"it {iteration}/{total}" if iteration is not None else ""
    return f"[{elapsed_s:6.0f}s] {name:<34} {state:<9} {progress:<12} {' '.join(parts)}".rstrip()


class StatusLine(Callback):
    def __init__(self, out: TextIO, iterations: dict[str, int], min_interval_s: float = 5.0,
                 on_result=None):
        self.out = out
        # Called at every trial result (the driver's baseline waits on it).
        self.on_result = on_result
        self.iterations = iterations  # trial id -> total iterations
        self.min_interval_s = min_interval_s
        self.start = time.monotonic()
        self._last_print: dict[str, float] = {}
        self._starts: dict[str, int] = {}
        self._ended: set[str] = set()
        # trial id -> (time, iteration) at its (re)start and at its latest result.
        self._since: dict[str, tuple[float, int]] = {}
        self._latest: dict[str, tuple[float, int]] = {}

    # Tune pickles its callbacks into the experiment state; a stream (pytest's captured
    # stdout, a pipe) cannot be pickled, so it is dropped there and stdout used on restore.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "out": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.out = self.out or sys.stdout

    def _print(self, trial, state: str, result: dict | None = None) -> None:
        spec = of_trial(trial)
        result = result or {}
        line = format_line(time.monotonic() - self.start, spec.name, state,
                           result.get("iteration"), self.iterations.get(spec.trial_id),
                           result)
        self._emit(line)
        self._last_print[spec.trial_id] = time.monotonic()

    def _emit(self, line: str) -> None:
        """One write per line: ``print`` writes the text and its newline separately, and a
        Ctrl-C or SIGTERM handled between the two left the driver's last words glued to a
        half line ("... img/s=8.047interrupted (SIGTERM): ...")."""
        self.out.write(line + "\n")
        self.out.flush()

    def on_trial_start(self, iteration, trials, trial, **info):
        trial_id = of_trial(trial).trial_id
        self._starts[trial_id] = self._starts.get(trial_id, 0) + 1
        done = self._latest.get(trial_id, (0.0, 0))[1]
        self._since[trial_id] = self._latest[trial_id] = (time.monotonic(), done)
        self._print(trial, "STARTED" if self._starts[trial_id] == 1 else "RETRYING")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._print(trial, "CRASHED", trial.last_result)
        self._print_error(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.on_result is not None:
            self.on_result()
        trial_id = of_trial(trial).trial_id
        if isinstance(result.get("iteration"), int):
            self._latest[trial_id] = (time.monotonic(), result["iteration"])
        if time.monotonic() - self._last_print.get(trial_id, 0.0) >= self.min_interval_s:
            self._print(trial, "RUNNING", result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        self._print(trial, str(result.get("done_status", "DONE")).upper(), result)
        self._ended.add(of_trial(trial).trial_id)
        self._emit(self.summary())

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trial, "ERROR", trial.last_result)
        self._print_error(trial)
        self._ended.add(of_trial(trial).trial_id)
        self._emit(self.summary())

    def summary(self) -> str:
        """"<done> done, <running> running, <pending> pending; ETA": the ETA divides the
        iterations left by the summed rates of the running trials (trials run side by side,
        so their rates add up); none before a trial has reported twice."""
        now = time.monotonic()
        running = [t for t in self._since if t not in self._ended]
        pending = len(self.iterations) - len(self._ended) - len(running)
        rate = 0.0
        for trial_id in running:
            (t0, i0), (t1, i1) = self._since[trial_id], self._latest[trial_id]
            if t1 > t0 and i1 > i0:
                rate += (i1 - i0) / (t1 - t0)
        left = sum(total - self._latest.get(t, (0.0, 0))[1]
                   for t, total in self.iterations.items() if t not in self._ended)
        eta = f"; ETA {_duration(left / rate)}" if rate > 0 and left > 0 else ""
        return (f"[{now - self.start:6.0f}s] {len(self._ended)} done, {len(running)} running, "
                f"{pending} pending{eta}")

    def _print_error(self, trial) -> None:
        """The exception's last line (the full trace stays in Tune's error file)."""
        lines = [line for line in str(trial.get_error() or "").splitlines() if line.strip()]
        if lines:
            self._emit(f"{'':10} {lines[-1].strip()[:300]}")


class RunStatuses(Callback):
    """Keeps the MLflow status of a trial's run true while Tune retries it: a crashed trial
    waiting for its retry is SCHEDULED again (the trial sets RUNNING when it restarts), not
    a stale RUNNING beside the trial that runs in its place."""

    def __init__(self, uri: str, run_ids: dict[str, str]):
        self.uri = uri
        self.run_ids = run_ids  # trial id -> MLflow run id
        self._client = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._stop_if_tracking_lost(trial)
        self._client = self._client or tracking.client(self.uri)
        run_id = self.run_ids[of_trial(trial).trial_id]
        tracking.retry_locked(self._client.update_run, run_id, status="SCHEDULED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._stop_if_tracking_lost(trial)

    def _stop_if_tracking_lost(self, trial) -> None:
        """A trial failed and the tracking server is gone: every other trial would fail the
        same way after its retries, so Tune stops here (an error raised by a callback ends
        ``Tuner.fit``) and the driver says what to do (runner.PlanRun.execute)."""
        why = tracking.gone(self.uri)
        if why is not None:
            raise tracking.TrackingLost(f"{trial}: the tracking server {self.uri} is gone "
                                        f"({why})")
