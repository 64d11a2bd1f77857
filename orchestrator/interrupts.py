"""Ctrl-C and SIGTERM during ``ablate run``, in every phase: one line, exit 130 or 143.

Inside :func:`handled` both signals raise :class:`Interrupted` in the main thread, once:
the driver's own ``finally`` blocks then end the runs KILLED and stop Ray, and a second
signal while they do is ignored, so the closing completes. Two handlers that would
otherwise take over are kept out: Ray Tune's SIGINT handler (a "graceful" stop that lets
the trials run on and prints ``Tuner.restore`` advice, not how this tool resumes) is
switched off by its environment variable, and the SIGTERM handler ``ray.init`` installs
(it kills Ray and exits 1) is replaced again by :func:`reassert` once Ray is up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_active = threading.Event()
# The signal that ended the run: libraries on the way up (Ray Tune) may catch the
# exception and raise a plain KeyboardInterrupt of their own, which forgets which it was.
_received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """A signal ended the run; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum, frame):
    _received.append(signum)
    for sig in SIGNALS:  # once: the closing that follows must not be cut short
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted inside; the previous handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only; a caller in a thread keeps its own
        return
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    _received.clear()
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, _raise)
    _active.set()
    try:
        yield
    finally:
        _active.clear()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def received() -> int | None:
    """The signal that interrupted the last run, if one did."""
    return _received[0] if _received else None


def reassert() -> None:
    """Ours again after a library installed its own (``ray.init``'s SIGTERM handler),
    unless a signal already arrived (then both stay ignored until the run is closed)."""
    if not _active.is_set() or threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _raise)
