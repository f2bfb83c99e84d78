"""artifact_lock: a part waits for another part's join, and a lock released between its try and its look at
the holder (the lock file is unlinked on release) is tried again, not reported as held."""

from __future__ import annotations

import contextlib

import pytest

from cxrjepa.core import parts
from cxrjepa.core.lock import OutputLockedError


def _flaky_lock(fail_times: int):
    calls = []

    @contextlib.contextmanager
    def lock(out, stage):
        calls.append(stage)
        if len(calls) <= fail_times:
            raise OutputLockedError(f"'{out}' is being written by another cxrjepa embed --part 1/3")
        yield None

    return lock, calls


def test_a_lock_released_before_its_holder_is_read_is_tried_again(tmp_path, monkeypatch):
    lock, calls = _flaky_lock(fail_times=1)
    monkeypatch.setattr(parts, "output_lock", lock)
    monkeypatch.setattr(parts, "read_holder", lambda out: None)  # the holder released it: no lock file
    with parts.artifact_lock(tmp_path / "emb", "embed --part 0/3"):
        pass
    assert len(calls) == 2


def test_a_holder_that_is_not_a_part_is_refused_at_once(tmp_path, monkeypatch):
    lock, calls = _flaky_lock(fail_times=5)
    monkeypatch.setattr(parts, "output_lock", lock)
    holder = parts.Holder("host", 1, "now", "embed")  # a whole `cxrjepa embed` writes there
    monkeypatch.setattr(parts, "read_holder", lambda out: holder)
    with pytest.raises(OutputLockedError), parts.artifact_lock(tmp_path / "emb", "embed --part 0/3"):
        pass
    assert len(calls) == 1
