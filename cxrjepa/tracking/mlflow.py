"""MLflow: the run's config as params, its metrics by step, its manifest and encoder as artifacts, fingerprints
as tags.

Where: ``MLFLOW_TRACKING_URI`` when set (a server, ``sqlite:///...``, ``file:...``, Databricks); otherwise a
SQLite store ``mlflow.db`` in the folder that holds the artifact. A SQLite store keeps its artifacts under
``mlartifacts/`` beside the database -- so the stages of a pipeline, written side by side, share one store that
``mlflow ui --backend-store-uri sqlite:///FOLDER/mlflow.db`` opens. The experiment is
``MLFLOW_EXPERIMENT_NAME`` or ``cxrjepa``. A server is asked for ``/health`` first (a few seconds at most),
so one that is down is a warning at the start rather than a stalled run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cxrjepa.tracking.base import FAILED, FINISHED, KILLED, Tracker, TrackerMissing, flat_params, redact
from cxrjepa.tracking.registry import register_tracker

#: the default store, in the folder that holds the artifact
STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
EXPERIMENT = "cxrjepa"
#: seconds a tracking server has to answer /health
HEALTH_TIMEOUT_S = 5.0
#: MLflow's limits: params per log_batch call, metrics per call, characters of a param value
_PARAMS_PER_CALL, _METRICS_PER_CALL, _PARAM_CHARS = 100, 1000, 6000
_STATUS = {FINISHED: "FINISHED", FAILED: "FAILED", KILLED: "KILLED"}


def default_store(folder: str | Path) -> tuple[str, str]:
    """``(tracking URI, artifact location)`` of the default store for the artifact ``folder``."""
    parent = Path(folder).absolute().parent
    return f"sqlite:///{parent / STORE_FILE}", (parent / ARTIFACTS_DIR).as_uri()


def tracking_store(folder: str | Path) -> tuple[str, str | None]:
    """Where the artifact ``folder`` is logged: ``(tracking URI, artifact location of a new experiment)``.

    ``MLFLOW_TRACKING_URI``, else :func:`default_store`. A SQLite store keeps its files in ``mlartifacts/``
    beside its database (MLflow's own default would be ``./mlruns`` in whatever folder the command runs in);
    other stores (a server, ``file:``) keep theirs where MLflow puts them (``None``)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return default_store(folder)
    if uri.startswith("sqlite:///"):
        database = Path(uri[len("sqlite:///") :].split("?", 1)[0]).absolute()
        return uri, (database.parent / ARTIFACTS_DIR).as_uri()
    return uri, None


def check_reachable(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Raise ``ConnectionError`` when the tracking server ``uri`` (http/https) does not answer. An HTTP error
    status is an answer (a server that wants a login is there)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"the MLflow server {redact(uri)} does not answer ({reason})") from None


@contextlib.contextmanager
def _quiet_migrations() -> Iterator[None]:
    """A new SQLite store runs its schema migrations with INFO lines on stderr; keep them out of our output."""
    loggers = [logging.getLogger(name) for name in ("alembic", "mlflow.store.db.utils")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@register_tracker
class MlflowTracker(Tracker):
    name = "mlflow"
    label = "MLflow"
    install = "cxrjepa[mlflow]"

    @classmethod
    def where(cls, folder: Path) -> str:
        return redact(tracking_store(folder)[0])

    def open(self, previous: Mapping[str, Any] | None) -> tuple[dict, bool]:
        try:
            import mlflow  # noqa: F401
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise TrackerMissing("mlflow") from None
        uri, artifacts = tracking_store(self.info.folder)
        check_reachable(uri)
        with _quiet_migrations():
            self.client = MlflowClient(tracking_uri=uri)
            self.run_id = self._continue(previous, uri) if previous else None
            continued = self.run_id is not None
            if not continued:
                experiment = self._experiment(artifacts)
                tags = {"mlflow.runName": self.info.name, **self.info.all_tags}
                self.run_id = self.client.create_run(experiment, run_name=self.info.name, tags=tags).info.run_id
            self._log_params()
        return {"run_id": self.run_id, "tracking_uri": redact(uri)}, continued

    def _continue(self, previous: Mapping[str, Any], uri: str) -> str | None:
        """The run ``previous`` names, set running again; ``None`` when it is in another store or gone."""
        run_id = previous.get("run_id")
        if not run_id or previous.get("tracking_uri") != redact(uri):
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.lifecycle_stage == "deleted":
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _experiment(self, artifacts: str | None) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        if artifacts is not None:
            return self.client.create_experiment(name, artifact_location=f"{artifacts}/{_slug(name)}")
        return self.client.create_experiment(name)

    def _log_params(self) -> None:
        """The resolved config as params; a continued run adds only the keys it does not have (MLflow params
        cannot change, and settings that may change on resume -- runtime ones -- keep their first value)."""
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        params = [Param(k, v[:_PARAM_CHARS]) for k, v in flat_params(self.info.config).items() if k not in have]
        for i in range(0, len(params), _PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[i : i + _PARAMS_PER_CALL])

    def last_step(self) -> int | None:
        keys = self.client.get_run(self.run_id).data.metrics
        steps = [m.step for key in keys for m in self.client.get_metric_history(self.run_id, key)]
        return max(steps) if steps else None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(batch), _METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=batch[i : i + _METRICS_PER_CALL])

    def log_files(self, files: Mapping[str, Path]) -> None:
        for name, path in files.items():
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=name)
            else:
                self.client.log_artifact(self.run_id, str(path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=_STATUS.get(status, "FAILED"))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
