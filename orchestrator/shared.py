"""What every trial of a plan shares, loaded once by the driver before the trials start:
the teachers (trained here once for the embedded sizes, rather than by each trial at
once), the prompt sets' hashes and the evaluation suites (their reference statistics
cached before trials read them)."""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass

from orchestrator import profiles, tracking
from orchestrator.plan import Trial


@dataclass(frozen=True)
class SharedInputs:
    """Loaded by :func:`load_shared`, read by the driver's phases and the child runs' tags."""

    teachers: dict  # teacher spec -> loaded Teacher
    prompt_hashes: dict[str, str]
    suites: dict  # eval_num_images -> EvalSuite


def load_shared(trials: list[Trial], profile: profiles.Profile, size: str,
                uri: str) -> SharedInputs:
    """Also checks the tracking store answers: this runs beside Ray's start-up."""
    from distill import world
    from distill.inputs import load_config_teacher, load_prompts

    tracking.check_reachable(uri)
    teachers = {spec: load_config_teacher(spec)
                for spec in sorted({t.config.teacher for t in trials})}
    prompt_hashes = {spec: world.prompt_set_hash(load_prompts(spec))
                     for spec in {t.config.prompts for t in trials}}
    # Built once here so reference statistics are cached before trials share them.
    suites = {n: profiles.build_suite(profile, size, n)
              for n in sorted({t.config.eval_num_images for t in trials})}
    return SharedInputs(teachers, prompt_hashes, suites)


def in_background(fn, *args) -> concurrent.futures.Future:
    """``fn(*args)`` in a daemon thread; its result or error through the future."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def work() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
            future.set_exception(exc)

    threading.Thread(target=work, name="setup", daemon=True).start()
    return future
