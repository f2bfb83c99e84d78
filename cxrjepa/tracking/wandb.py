"""Weights & Biases: offline by default, in ``ARTIFACT/wandb/``; ``wandb sync`` uploads it later.

The mode is ``WANDB_MODE`` when set (``online`` streams to the server, which needs a login), else
``offline``: no network and no API key are needed, and the run folder
(``ARTIFACT/wandb/offline-run-*``) is synced by the user with ``wandb sync``. The project is
``WANDB_PROJECT`` or ``cxrjepa`` (entity: ``WANDB_ENTITY``). A resumed stage continues the same W&B run id.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrjepa.tracking.base import FINISHED, KILLED, Tracker, TrackerMissing
from cxrjepa.tracking.registry import register_tracker

#: W&B makes its own ``wandb/`` folder inside the artifact folder
WANDB_DIR = "wandb"
PROJECT = "cxrjepa"
#: seconds ``wandb.init`` may take in online mode before it is given up
INIT_TIMEOUT_S = 60.0


@register_tracker
class WandbTracker(Tracker):
    name = "wandb"
    label = "W&B"
    install = "cxrjepa[wandb]"

    @classmethod
    def where(cls, folder: Path) -> str:
        return f"{Path(folder) / WANDB_DIR}, {_mode()}"

    def open(self, previous: Mapping[str, Any] | None) -> tuple[dict, bool]:
        try:
            import wandb
        except ImportError:
            raise TrackerMissing("wandb") from None
        mode = _mode()
        run_id = previous.get("id") if previous else None
        # console="off": our output stays ours (no stdout capture); silent: cxrjepa says where the run is
        settings = wandb.Settings(console="off", silent=True, init_timeout=INIT_TIMEOUT_S)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or PROJECT,
            name=self.info.name,
            id=run_id,
            resume="allow" if run_id else None,
            dir=str(self.info.folder),
            mode=mode,
            job_type=self.info.stage,
            tags=[self.info.stage],
            config={**self.info.config, "cxrjepa": self.info.all_tags},
            settings=settings,
        )
        self._wandb = wandb
        return {"id": self.run.id, "project": self.run.project, "mode": mode, "dir": WANDB_DIR}, bool(run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=int(step))

    def log_files(self, files: Mapping[str, Path]) -> None:
        """Files are copied into the run's files (as they are now: a later rerun may change the originals);
        a folder (the encoder) becomes a ``model`` artifact."""
        for name, path in files.items():
            if path.is_dir():
                artifact = self._wandb.Artifact(f"{name}-{self.run.id}", type="model")
                artifact.add_dir(str(path))
                self.run.log_artifact(artifact)
            else:
                copy = Path(self.run.dir) / name
                shutil.copyfile(path, copy)
                self.run.save(str(copy), base_path=self.run.dir, policy="now")

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.run.config.update({"cxrjepa": {**self.info.all_tags, **tags}}, allow_val_change=True)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == FINISHED else (255 if status == KILLED else 1))


def _mode() -> str:
    """``WANDB_MODE`` when set, else offline."""
    return os.environ.get("WANDB_MODE", "").strip() or "offline"
