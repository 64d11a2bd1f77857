"""A concise live status: one line per trial event, instead of Ray's refreshing table.

Each line: elapsed time, trial name, state, iteration / total, latest metrics.
Results arrive every ``log_every`` iterations; a trial's RUNNING line is printed
at most every ``min_interval_s`` seconds so a sweep of many fast trials stays
readable, while state changes (started, retried, done, error) always print.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ray.tune import Callback

from results import schema

# The metrics worth a glance while a run is in flight, in this order.
SHOWN = ("loss_fake_score", "loss_generator", "images_per_second", schema.CLIP_SCORE,
         schema.ADHERENCE)


def _short(key: str) -> str:
    return {"loss_fake_score": "L_psi", "loss_generator": "L_G",
            "images_per_second": "img/s", schema.ADHERENCE: "adherence"}.get(key, key)


def format_line(elapsed_s: float, name: str, state: str, iteration: int | None,
                total: int | None, metrics: dict) -> str:
    shown = [k for k in SHOWN if k in metrics] + sorted(k for k in metrics if k.startswith("fid"))
    parts = []
    for key in shown:
        value = metrics[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{_short(key)}={value:.4g}")
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

    # Tune pickles its callbacks into the experiment state; a stream (pytest's captured
    # stdout, a pipe) cannot be pickled, so it is dropped there and stdout used on restore.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "out": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.out = self.out or sys.stdout

    def _print(self, trial, state: str, result: dict | None = None) -> None:
        spec = trial.config["spec"]
        result = result or {}
        line = format_line(time.monotonic() - self.start, spec["name"], state,
                           result.get("iteration"), self.iterations.get(spec["trial_id"]),
                           result)
        print(line, file=self.out, flush=True)
        self._last_print[spec["trial_id"]] = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        trial_id = trial.config["spec"]["trial_id"]
        self._starts[trial_id] = self._starts.get(trial_id, 0) + 1
        self._print(trial, "STARTED" if self._starts[trial_id] == 1 else "RETRYING")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._print(trial, "CRASHED", trial.last_result)
        self._print_error(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.on_result is not None:
            self.on_result()
        trial_id = trial.config["spec"]["trial_id"]
        if time.monotonic() - self._last_print.get(trial_id, 0.0) >= self.min_interval_s:
            self._print(trial, "RUNNING", result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        self._print(trial, str(result.get("done_status", "DONE")).upper(), result)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trial, "ERROR", trial.last_result)
        self._print_error(trial)

    def _print_error(self, trial) -> None:
        """The exception's last line (the full trace stays in Tune's error file)."""
        lines = [line for line in str(trial.get_error() or "").splitlines() if line.strip()]
        if lines:
            print(f"{'':10} {lines[-1].strip()[:300]}", file=self.out, flush=True)
