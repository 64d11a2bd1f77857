"""The driver's status lines when a signal lands mid-line (orchestrator/status.py)."""

from __future__ import annotations

import io

import pytest

from orchestrator.status import StatusLine


class _SignalAfterFirstWrite(io.StringIO):
    """A terminal on which Ctrl-C arrives right after the first write: the interrupt
    handler's exception comes out of whatever the driver calls next (a write or a flush)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def _next(self) -> None:
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt

    def write(self, s: str) -> int:
        self._next()
        return super().write(s)

    def flush(self) -> None:
        self._next()


def test_an_interrupt_between_writes_leaves_whole_lines():
    # print() writes the text and its newline separately; the interrupt landed between
    # them and the driver's last line was glued to the status line
    # ("... img/s=8.047interrupted (SIGTERM): ...", seen in tests/test_faults.py).
    out = _SignalAfterFirstWrite()
    status = StatusLine(out, {"t": 10})
    with pytest.raises(KeyboardInterrupt):
        status._emit("[    20s] strategy=cfg,kappa=2,seed=0  RUNNING  it 2/10")
    assert out.getvalue() == "[    20s] strategy=cfg,kappa=2,seed=0  RUNNING  it 2/10\n"
