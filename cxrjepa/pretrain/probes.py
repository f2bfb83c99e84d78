"""In-training probes: how well the encoder being trained serves labelled tasks, measured while it trains.

A self-supervised loss says little about progress (I-JEPA's often rises while the features improve), so when
the dataset has label columns (ingest's ``--labels``) or ``cxrjepa pretrain --probe-labels CSV`` is given, the
run probes itself:

* **The subset** (:func:`probe_subset`), fixed for the whole run and a pure function of the dataset, the
  labels and ``train.seed``: the labelled samples, whole patients (the dataset's de-identified
  ``patient_key``) in a seeded order until ``runtime.probe_items`` samples, split by patient into train /
  val / test exactly as ``cxrjepa probe`` splits (:func:`cxrjepa.probe.splits.make_split`, stratified by the
  first task's class). The labels are joined by the code ``cxrjepa probe`` uses
  (:func:`cxrjepa.probe.api.build_tasks`): identifying columns of a labels CSV are dropped unread. Only the
  probes read these labels; the objective never sees them and the subset's images stay in the training data.
* **The measurement** (:class:`InTrainingProbe`): frozen features of the subset -- the tokens, mean-pooled
  or zone-pooled (``runtime.probe_pooling: grid:RxC``, as ``cxrjepa embed --pooling``), of the encoder that
  would be exported (I-JEPA: the EMA target; others: the student's encoder), in eval mode,
  without gradients, under the run's precision; whole frames (middle clip windows), as the held-out batches
  of model selection -- each rank computing its equal share, then gathered. Rank 0 fits a linear and a kNN
  probe on the train part (strength / k chosen on val, :func:`cxrjepa.probe.api.fit_probe`) and scores the
  test part (:mod:`cxrjepa.probe.metrics`); the scores are broadcast so every rank logs and selects alike.
* **The hook** (:class:`ProbeHook`): every ``runtime.probe_every`` steps (default: every checkpoint) and at
  the planned end, plus the step-0 row of a new run (the random-init baseline); columns
  ``probe/<task>/<linear|knn>_<metric>`` in ``metrics.jsonl`` / ``metrics.csv`` and the trackers. With
  ``selection: probe`` it feeds a :class:`cxrjepa.pretrain.selection.BestKeeper` (the export is then the
  checkpoint with the best ``runtime.probe_select`` score; step 0 is logged but never selected).

Exact resume holds: the subset, the split and the probes are deterministic and the encoder's weights are
restored exactly, so a resumed run logs the same probe rows as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from cxrjepa.core import console
from cxrjepa.core.errors import ConfigError, UsageError
from cxrjepa.core.phi import is_identifying
from cxrjepa.data.store import DatasetArtifact
from cxrjepa.probe import metrics as probe_metrics
from cxrjepa.probe.config import ProbeConfig
from cxrjepa.probe.splits import make_split, patient_keys
from cxrjepa.probe.tasks import Task
from cxrjepa.runtime import DistInfo, all_gather_rows, barrier, broadcast_object
from cxrjepa.tracking.base import metric_name

#: seed stream of the subset's patient order (other streams: cxrjepa.pretrain.data, selection)
PROBE_STREAM = 7
KINDS = ("linear", "knn")
#: metrics logged per task type (the first is the task's main metric, cxrjepa.probe.metrics.PRIMARY)
LOGGED = {
    "binary": ("auroc", "balanced_accuracy"),
    "multiclass": ("auroc", "macro_f1", "balanced_accuracy"),
    "multilabel": ("auroc", "macro_f1"),
    "regression": ("mae", "r2"),
}
EVAL_BATCH = 64


def column(task: str, kind: str, metric: str) -> str:
    """The metrics column of one score: ``probe/<task>/<kind>_<metric>`` (the task name made tracker-safe)."""
    return metric_name("probe", task, f"{kind}_{metric}")


@dataclass
class ProbeSubset:
    """The fixed labelled subset of a run: per row its dataset sample, training item and split side."""

    samples: np.ndarray
    items: np.ndarray
    split: np.ndarray
    tasks: list[Task]
    patients: int
    #: labels CSV join counts (names of identifying columns left out, never their values)
    join: dict = field(default_factory=dict)

    def columns(self) -> dict[str, bool]:
        """Every column the probes log -> whether higher is better."""
        return {
            column(t.name, kind, m): m not in probe_metrics.LOWER_IS_BETTER
            for t in self.tasks
            for kind in KINDS
            for m in LOGGED[t.type]
        }

    def default_select(self) -> str:
        task = self.tasks[0]
        return column(task.name, "linear", probe_metrics.PRIMARY[task.type])

    def describe(self, every: int, select: str | None) -> dict:
        """``contents.probes`` of the run manifest."""
        return {
            "every": every,
            "samples": len(self.samples),
            "patients": self.patients,
            "split": {s: int((self.split == s).sum()) for s in ("train", "val", "test")},
            "tasks": {t.name: t.type for t in self.tasks},
            "columns": sorted(self.columns()),
            "selects": select,
            "labels_join": self.join or None,
        }


def wants_probes(config, data: DatasetArtifact, labels) -> bool:
    """Whether a run probes itself: a cadence above 0 and labels (a CSV, or the dataset's label columns)."""
    if config.runtime.probe_cadence() == 0:
        return False
    return labels is not None or any(not is_identifying(c) for c in data.label_columns)


def probe_subset(config, data: DatasetArtifact, labels=None, *, warn: bool = True) -> ProbeSubset | None:
    """The run's labelled subset (see the module docstring); ``None`` when the run does not probe itself or
    no task can be probed on it (a warning says why, when ``warn``; with ``selection: probe`` that is an
    error)."""
    from cxrjepa.probe.api import build_tasks, usable

    if not wants_probes(config, data, labels):
        if config.selection == "probe":
            raise UsageError(
                "'selection: probe' needs labels: a dataset ingested with --labels, or --probe-labels CSV."
            )
        return None
    rt, seed = config.runtime, config.train.seed
    settings = ProbeConfig(tasks=list(rt.probe_tasks), key=rt.probe_key, seed=seed)
    meta = data.meta
    tasks, join = build_tasks(settings, meta, data.label_columns, labels, what="dataset", key_flag="--probe-key")
    labelled = np.flatnonzero(np.any([t.mask for t in tasks], axis=0))
    patients = patient_keys(meta)
    groups, inverse, sizes = np.unique(patients[labelled], return_inverse=True, return_counts=True)
    order = np.random.default_rng([seed, PROBE_STREAM]).permutation(len(groups))
    taken = np.zeros(len(groups), dtype=bool)
    total = 0
    for g in order:
        if total + sizes[g] <= rt.probe_items:
            taken[g] = True
            total += int(sizes[g])
    rows = labelled[taken[inverse]]
    tasks = [replace(t, y=t.y[rows], mask=t.mask[rows]) for t in tasks]
    index = meta.iloc[rows].reset_index(drop=True)
    strata = next((t.strata() for t in tasks if t.strata() is not None), None)
    split, _ = make_split(index, strata, tuple(settings.split_fractions), seed)
    kept = []
    for t in tasks:
        why = usable(t, {s: np.flatnonzero(t.mask & (split == s)) for s in ("train", "test")})
        if why is None:
            kept.append(t)
        elif warn:
            console.warn(f"In-training probe: task '{t.name}' left out: {why} among {len(rows)} labelled samples.")
    if not kept:
        if config.selection == "probe":
            raise UsageError("'selection: probe' needs a task the in-training probes can score (see the warnings).")
        if warn:
            console.warn("In-training probes are off: no task can be probed on the labelled subset.")
        return None
    starts, counts = data.frame_index
    items = rows if config.model.is_clip else starts[rows] + counts[rows] // 2  # samples, or middle frames
    return ProbeSubset(rows, items.astype(np.int64), split, kept, len(np.unique(patients[rows])), join)


class InTrainingProbe:
    """Features of the subset (each rank its equal share, gathered) and the probes' held-out scores."""

    def __init__(self, subset: ProbeSubset, config, data: DatasetArtifact, info: DistInfo, cache=None):
        from cxrjepa.pretrain.data import evaluation_images

        self.subset = subset
        self.info = info
        self.settings = ProbeConfig(seed=config.train.seed)
        n = len(subset.items)
        self.per_rank = math.ceil(n / info.world)
        mine = subset.items[info.rank * self.per_rank : (info.rank + 1) * self.per_rank]
        # equal shares (the last rank's padded with the last item): every rank runs as many forwards (FSDP)
        mine = np.concatenate([mine, np.full(self.per_rank - len(mine), subset.items[-1], dtype=np.int64)])
        ds = evaluation_images(config, data, mine, cache)
        self.images = torch.from_numpy(np.stack([ds[(0, j, j)]["image"] for j in range(len(mine))]))
        self.pooling = config.runtime.probe_pooling
        self.grid = config.model.token_grid(tuple(self.images.shape[2:]))

    @torch.no_grad()
    def features(self, encoder, normalizer, autocast, device: torch.device) -> np.ndarray:
        """(n, width) float32 tokens of ``encoder`` pooled as ``runtime.probe_pooling`` says (mean, or zones:
        :func:`cxrjepa.embed.extract.pool_tokens`, what ``cxrjepa embed`` computes); eval mode here, the
        encoder's mode is restored after."""
        from cxrjepa.embed.extract import pool_tokens

        was_training = encoder.training
        encoder.eval()
        try:
            out = []
            for chunk in self.images.split(EVAL_BATCH):
                with autocast():
                    tokens = encoder.tokens(normalizer(chunk.to(device))).float()
                out.append(pool_tokens(tokens, self.grid, self.pooling))
            mine = torch.cat(out)
        finally:
            encoder.train(was_training)
        return all_gather_rows(mine, self.info)[: len(self.subset.items)].cpu().numpy()

    def scores(self, X: np.ndarray) -> dict[str, float | None]:
        """Every logged column for features ``X`` (a column is ``None`` where its metric is undefined)."""
        from threadpoolctl import threadpool_limits

        from cxrjepa.probe.api import fit_probe

        out: dict[str, float | None] = dict.fromkeys(self.subset.columns())
        if not np.isfinite(X).all():
            console.warn("In-training probe skipped: the encoder's features are not finite.")
            return out
        split = self.subset.split
        with threadpool_limits(limits=1):
            for task in self.subset.tasks:
                tr, va, te = (np.flatnonzero(task.mask & (split == s)) for s in ("train", "val", "test"))
                for kind in KINDS:
                    probe = fit_probe(kind, task, X, task.y, tr, va, self.settings)
                    values = probe_metrics.point(task.type, task.y[te], probe.scores(X[te]))
                    for m in LOGGED[task.type]:
                        out[column(task.name, kind, m)] = values.get(m)
        return out

    def measure(self, encoder, normalizer, autocast, device) -> dict[str, float | None]:
        """The scores of ``encoder`` on every rank: features everywhere, probes fitted on rank 0, broadcast."""
        X = self.features(encoder, normalizer, autocast, device)
        got = self.scores(X) if self.info.is_main else None
        return broadcast_object(got, self.info)


class ProbeHook:
    """The in-training probes as a metrics hook (:class:`cxrjepa.pretrain.metrics.Hook`); objective-agnostic:
    it needs only the objective's :meth:`export_encoder`. With ``keeper`` (``selection: probe``) each
    evaluation after step 0 may make the export encoder the run's best (``checkpoints/best``)."""

    def __init__(
        self,
        probe: InTrainingProbe,
        objective,
        normalizer,
        autocast,
        info: DistInfo,
        *,
        every: int,
        total: int,
        keeper=None,
        sharded: bool = False,
    ):
        self.probe = probe
        self.objective = objective
        self.normalizer = normalizer
        self.autocast = autocast
        self.info = info
        self.every = every
        self.total = total
        self.keeper = keeper
        self.sharded = sharded

    def due(self, step: int) -> bool:
        """Every ``every`` steps and at the planned end (never at an early stop: a continued run probes where an
        uninterrupted one does)."""
        return (self.every > 0 and step % self.every == 0) or step == self.total

    def __call__(self, step: int, row: dict) -> None:
        encoder = self.objective.export_encoder()
        scores = self.probe.measure(encoder, self.normalizer, self.autocast, self.info.device)
        row.update({k: v for k, v in scores.items() if v is not None})
        if self.keeper is not None and step > 0:
            self.keeper.update(
                step,
                scores.get(self.keeper.metric),
                {"encoder": encoder},
                write=self.info.is_main,
                sharded=self.sharded,
            )
            barrier(self.info)


def probe_keeper(run, subset: ProbeSubset, select: str | None):
    """The :class:`~cxrjepa.pretrain.selection.BestKeeper` of ``selection: probe`` on ``select`` (default: the
    first task's linear main metric)."""
    from cxrjepa.pretrain.selection import BestKeeper

    columns = subset.columns()
    metric = select or subset.default_select()
    if metric not in columns:
        raise ConfigError(
            f"'runtime.probe_select' is '{metric}', which the in-training probes do not log; "
            f"choose one of {', '.join(sorted(columns))}."
        )
    return BestKeeper(run, metric=metric, higher=columns[metric])
