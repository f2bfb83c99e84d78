"""Per-input functions that decode workers run in tests instead of ``process_input``
(``pool.process_units(..., process=...)``): they crash, hang or allocate on inputs named for it, like a
native decoder would, and process every other input for real. They live in a module (not a test file) so
that worker processes can import them by name."""

from __future__ import annotations

import os
import signal
import time

from cxrjepa.ingest import dicom_pixels, ledger
from cxrjepa.ingest.dicom_pixels import PluginWatch, watch_plugins
from cxrjepa.ingest.ledger import Record
from cxrjepa.ingest.process import process_input


def hostile(item, ctx):
    """ABORT: abort() (a C++ terminate); SEGV: a segmentation fault; HANG: never returns; BOMB: asks for
    64 GB; GDCM: aborts when the gdcm plugin is tried on it (as gdcm does on some corrupt files)."""
    name = item.rel
    if "ABORT" in name:
        os.abort()
    if "SEGV" in name:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "HANG" in name:
        time.sleep(3600)
    if "BOMB" in name:
        bytearray(64 * 2**30)
    if "GDCM" in name:
        outer = dicom_pixels._watch

        def announce(plugin: str) -> None:
            if outer.announce is not None:
                outer.announce(plugin)
            if plugin == "gdcm":
                os.abort()

        with watch_plugins(PluginWatch(announce, outer.avoid)):
            return process_input(item, ctx)
    return process_input(item, ctx)


def first_plugin(item, ctx):
    """Like :func:`hostile` for ABORT inputs; any other input is decoded for real and ledgered with the
    plugins tried on it, in order, as its detail (so a test sees the decoder preference in the worker)."""
    if "ABORT" in item.rel:
        os.abort()
    tried: list[str] = []
    outer = dicom_pixels._watch

    def announce(plugin: str) -> None:
        if outer.announce is not None:
            outer.announce(plugin)
        if plugin:
            tried.append(plugin)

    with watch_plugins(PluginWatch(announce, outer.avoid)):
        process_input(item, ctx)
    return Record(item.rel, item.source_index, ledger.SKIPPED, "plugins tried", ",".join(tried))
