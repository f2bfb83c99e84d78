"""The trackers of one stage run: opened together, fenced off from the run, continued on resume.

* A tracker whose package is missing, or that cannot start (a bad URI, a server that does not answer), is
  one warning and is left out; one that fails later is one warning and is switched off for the rest of the
  run. Neither fails the stage: its own files (metrics.jsonl, metrics.json) keep everything.
* ``trackers.json`` in the artifact folder (written atomically after every change) remembers each tracker's
  run (MLflow run id, W&B run id) and the last step it holds. A resumed stage continues those runs; an
  artifact redone from scratch (``--force``, new settings) starts with an empty folder and so new runs.
* A continued tracker receives only steps after its last one, and first catches up from the stage's own
  log (``history``) on the steps it missed -- after a kill, or while it was switched off -- so its history
  matches metrics.jsonl, each step once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrjepa.core import console
from cxrjepa.core.atomic import atomic_write_json
from cxrjepa.tracking.base import FINISHED, RunInfo, Tracker, TrackerMissing, describe_error, row_metrics
from cxrjepa.tracking.registry import tracker_class

#: the tracker runs of an artifact (in its folder)
STATE_FILE = "trackers.json"
FORMAT = "cxrjepa.trackers/1"


def read_state(folder: str | Path) -> dict[str, dict]:
    """``trackers.json`` of ``folder`` (tracker name -> what its open returned, plus ``last_step``); empty
    when missing or unreadable (the trackers then start new runs)."""
    try:
        data = json.loads((Path(folder) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}


class TrackerSet:
    """The open trackers of a stage run (rank 0 only); a metrics sink of the training loop
    (:class:`cxrjepa.pretrain.metrics.Sink`: ``write(row)``, ``close()``)."""

    def __init__(
        self,
        info: RunInfo,
        trackers: Mapping[str, Tracker],
        state: dict[str, dict],
        *,
        history: Callable[[], list[dict]] | None = None,
    ):
        self.info = info
        self.active: dict[str, Tracker] = dict(trackers)
        self.state = state
        self.history = history
        self._caught_up = False

    @classmethod
    def open(
        cls, names: Sequence[str], info: RunInfo, *, history: Callable[[], list[dict]] | None = None
    ) -> TrackerSet:
        """Open the trackers ``names`` for the artifact ``info.folder``, continuing the runs trackers.json
        names. ``history``: the stage's metric rows so far (metrics.jsonl), to catch up from."""
        state = read_state(info.folder)
        opened: dict[str, Tracker] = {}
        for name in names:
            tracker = tracker_class(name)(info)
            previous = state.get(name)
            try:
                ids, continued = tracker.open(previous)
            except TrackerMissing:
                console.warn(
                    f"{tracker.label} is not installed (pip install '{tracker.install}'); this run is not "
                    f"logged to it ({_keeps(info.stage)})."
                )
                continue
            except Exception as exc:  # a bad URI, a server down, a broken install: the run goes on without it
                console.warn(
                    f"{tracker.label} could not start ({describe_error(exc)}); this run is not logged to "
                    f"it ({_keeps(info.stage)})."
                )
                continue
            last = None
            if continued and previous:
                known = [s for s in (previous.get("last_step"), _quietly(tracker.last_step)) if s is not None]
                last = max(known) if known else None
            state[name] = {**ids, "last_step": last}
            opened[name] = tracker
            console.info(
                f"Logging to {tracker.label}: {tracker.where(info.folder)}"
                + (" (continuing its run)" if continued and previous else "")
                + "."
            )
        trackers = cls(info, opened, state, history=history)
        trackers._save()
        return trackers

    @property
    def names(self) -> list[str]:
        return list(self.active)

    # ------------------------------------------------------------------ metrics
    def write(self, row: Mapping[str, Any]) -> None:
        """One metrics row of the training loop (``step`` plus columns), as ``stage/column`` metrics."""
        step = int(row["step"])
        if not self._caught_up:
            self.catch_up(before=step)
        self.log(row_metrics(self.info.stage, row), step)

    def catch_up(self, before: int | None = None) -> None:
        """Log the rows of ``history`` that a tracker does not hold yet (steps after its last one and before
        ``before``): a resumed run's trackers miss the steps logged after the tracker last succeeded."""
        self._caught_up = True
        if self.history is None or not self.active:
            return
        for row in sorted(self.history(), key=lambda r: int(r.get("step", 0))):
            step = int(row.get("step", 0))
            if before is None or step < before:
                self.log(row_metrics(self.info.stage, row), step)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """``metrics`` at ``step`` to every tracker that does not hold that step yet."""
        changed = False
        for name, tracker in list(self.active.items()):
            last = self.state[name].get("last_step")
            if last is not None and step <= last:
                continue
            if self._guard(name, tracker.log_metrics, metrics, step, when=f"at step {step}"):
                self.state[name]["last_step"] = step
                changed = True
        if changed:
            self._save()

    # ------------------------------------------------------------------ the end
    def close(self) -> None:
        """The training loop has ended (the sink's close): make what was logged durable. The tracker runs
        stay open for :meth:`finish` (the manifest and the encoder) or :meth:`end`."""
        for name, tracker in list(self.active.items()):
            self._guard(name, tracker.flush, when="while flushing")

    def finish(self, files: Mapping[str, Path] | None = None, tags: Mapping[str, str] | None = None) -> None:
        """The stage is complete: attach its files and final tags, end the tracker runs as finished."""
        if not self._caught_up:
            self.catch_up()
        present = {k: Path(p) for k, p in (files or {}).items() if Path(p).exists()}
        for name, tracker in list(self.active.items()):
            if tags:
                self._guard(name, tracker.set_tags, tags, when="while tagging the run")
            if present and name in self.active:
                self._guard(name, tracker.log_files, present, when="while attaching the artifact's files")
        self.end(FINISHED)

    def end(self, status: str) -> None:
        """End every tracker run with ``status`` (finished, failed, killed); the set is empty afterwards."""
        for name, tracker in list(self.active.items()):
            self._guard(name, tracker.close, status, when="while closing the run")
        self.active.clear()

    # ------------------------------------------------------------------ internals
    def _guard(self, name: str, fn: Callable, *args, when: str) -> bool:
        """Call a tracker; on an error warn once and switch the tracker off for the rest of the run."""
        try:
            fn(*args)
            return True
        except Exception as exc:
            tracker = self.active.pop(name, None)
            label = tracker.label if tracker is not None else name
            console.warn(
                f"{label} logging failed {when} ({describe_error(exc)}); it is off for the rest of this "
                f"run ({_keeps(self.info.stage)}; resuming or rerunning the command catches it up)."
            )
            if tracker is not None and fn != tracker.close:
                _quietly(tracker.close, "failed")
            return False

    def _save(self) -> None:
        if not self.state:
            return
        try:
            atomic_write_json(self.info.folder / STATE_FILE, {"format": FORMAT, **self.state})
        except OSError as exc:  # the artifact's own files are what matters; say so once per failure
            console.warn(
                f"Could not write {STATE_FILE} ({describe_error(exc)}); a resumed run may start new tracker runs."
            )


def _keeps(stage: str) -> str:
    return "metrics.jsonl keeps every row" if stage == "pretrain" else "metrics.json keeps every metric"


def _quietly(fn: Callable, *args) -> Any:
    """``fn(*args)``, or ``None`` when it fails (a best effort whose failure changes nothing)."""
    try:
        return fn(*args)
    except Exception:
        return None
