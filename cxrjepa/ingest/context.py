"""What every reader gets: the input it works on and the run's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxrjepa.ingest.config import IngestConfig
from cxrjepa.ingest.phi import Salt


@dataclass(frozen=True)
class InputItem:
    """One entry found by discovery: where it is, its path relative to its source root, which root.

    ``rel`` is always valid UTF-8 (bytes of a non-UTF-8 file name are written as ``\\xNN``, see
    :func:`cxrjepa.ingest.discover.display_name`); ``path`` is the name the file system knows.
    """

    path: str  # absolute (or as given) path to open
    rel: str  # relative to the source root, '/'-separated: what tables and ledgers show
    source_index: int = 0
    #: mask files paired with this input (``--masks``): (path, label); label 0 keeps the file's own values
    #: (binary -> 1, label maps as stored), label k > 0 makes every non-zero pixel class k
    masks: tuple[tuple[str, int], ...] = ()
    #: why pairing failed (a ledger reason), e.g. a mask name that matches several inputs
    mask_error: str = ""
    #: (status, reason, detail) of an entry that discovery already settled (an ignored sidecar, a FIFO, an
    #: unreadable folder or link): it becomes that ledger row and is never opened
    verdict: tuple[str, str, str] = ()

    @property
    def fspath(self) -> Path:
        return Path(self.path)


@dataclass(frozen=True)
class Context:
    config: IngestConfig
    salt: Salt
