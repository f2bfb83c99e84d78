"""Preemption: SIGTERM / SIGUSR1 (a cluster's time-limit warning, ``scancel``) as a request to stop cleanly.

A launcher passes them on to its workers (:func:`forwarding`); a worker notes them (:class:`StopSignals`) and
stops at the next point where every rank agrees, after saving its work.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator

import torch

from cxrjepa.runtime.group import DistInfo, all_reduce_mean

#: the signals that ask a run to stop (SLURM's ``--signal=USR1@300`` warning, preemption, ``scancel``)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _handling(handler) -> Iterator[None]:
    """Install ``handler`` for the stop signals (main thread only: Python allows no other) and restore the
    previous handlers on the way out."""
    if not _main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class StopSignals:
    """``with StopSignals() as stop:`` notes a stop signal instead of dying; ``stop.requested(info, ...)``
    tells every rank whether any rank got one."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._ctx: contextlib.AbstractContextManager | None = None

    def _note(self, signum, _frame) -> None:
        self.signum = signum

    def __enter__(self) -> StopSignals:
        self.signum = None
        self._ctx = _handling(self._note)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        assert self._ctx is not None
        self._ctx.__exit__(*exc)
        self._ctx = None
        return False

    def requested(self, info: DistInfo, *, sync_point: bool) -> bool:
        """Whether to stop now. In a process group every rank must agree, so only at ``sync_point`` steps
        (the ranks all-reduce the flag there); a single process stops at once."""
        flag = self.signum is not None
        if not info.distributed:
            return flag
        if not sync_point:
            return False
        box = torch.tensor([1.0 if flag else 0.0], device=info.device)
        return bool(all_reduce_mean(box, info).item() > 0)


@contextlib.contextmanager
def forwarding(proc: subprocess.Popen) -> Iterator[None]:
    """Pass a stop signal that reaches this launcher on to ``proc`` as SIGTERM (torchrun hands it to its
    workers, which checkpoint and stop)."""

    def forward(_signum, _frame):
        proc.send_signal(signal.SIGTERM)

    with _handling(forward):
        yield
