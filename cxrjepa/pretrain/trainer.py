"""The training loop shared by every objective: devices, precision, parallelism, schedules and the final
export. The objective supplies the modules, masks and loss.

The loop itself (:meth:`Trainer._loop`) is three parts, in the manner of torchtitan's trainer:
:meth:`Trainer.train_step` (one optimizer step), the :class:`~cxrjepa.pretrain.metrics.MetricsProcessor`
(which steps are logged, their rows, the collapse monitor, SALT's selection and any extra hooks and sinks)
and the :class:`~cxrjepa.pretrain.checkpoint.Checkpointer` (when to save, what to keep, resume).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cxrjepa.core import console
from cxrjepa.core.errors import CxrjepaError
from cxrjepa.data.store import DatasetArtifact
from cxrjepa.models.export import CONFIG, EXPORT_DIR, Normalization, export_encoder
from cxrjepa.models.vit import create_vit
from cxrjepa.pretrain import checkpoint as ckpt
from cxrjepa.pretrain import parallel
from cxrjepa.pretrain.config import PretrainConfig, TrainConfig
from cxrjepa.pretrain.data import (
    Collator,
    FrameCache,
    Normalizer,
    StepSampler,
    build_loader,
    default_workers,
    fixed_batch,
    split_holdout,
    training_images,
    training_items,
)
from cxrjepa.pretrain.metrics import Hook, MetricsProcessor, Sink, StepResult
from cxrjepa.pretrain.monitors import CollapseWatch, FeatureMonitor, MetricsLog, feature_std, peak_flops, rankme
from cxrjepa.pretrain.objectives import build_objective, objective_class
from cxrjepa.pretrain.objectives.base import ObjectiveInputs, TrainEnv
from cxrjepa.pretrain.optim import apply_schedule, build_optimizer
from cxrjepa.pretrain.schedules import Schedules
from cxrjepa.runtime import DistInfo, StopSignals, barrier


def planned_steps(train: TrainConfig, frames: int) -> int:
    """Optimizer steps of the whole run: ``train.steps``, else ``epochs`` over ``frames`` items (frames, or
    samples for clip encoders)."""
    if train.steps is not None:
        return int(train.steps)
    return max(1, math.ceil(train.epochs * frames / train.batch_size))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def item_split(config: PretrainConfig, data: DatasetArtifact) -> tuple[np.ndarray, np.ndarray, int]:
    """``(train items, held-out items, held-out patients)`` of a run (cxrjepa.pretrain.data.split_holdout)."""
    items, patients = training_items(config, data)
    fraction = objective_class(config.objective).holdout_fraction(config)
    train, held = split_holdout(items, patients, fraction, config.train.seed)
    held_patients = len(np.unique(patients[np.isin(items, held)])) if len(held) else 0
    return train, held, held_patients


def load_init(objective, init: str | Path, config: PretrainConfig) -> dict:
    """Load the encoder weights of the run / export ``init`` into the objective's encoders (an image encoder
    is inflated to tubelets for a clip student; positions are resampled to the training grid)."""
    from timm.layers import resample_abs_pos_embed

    from cxrjepa.core.errors import UsageError
    from cxrjepa.models.export import load_encoder
    from cxrjepa.models.tubelet import inflate_state_dict

    loaded = load_encoder(init)
    src, dst = loaded.config, config.model
    if (src.embed_dim, src.depth, src.patch_size, src.in_chans) != (
        dst.embed_dim,
        dst.depth,
        dst.patch_size,
        dst.in_chans,
    ):
        raise UsageError(
            f"The init encoder '{init}' ({src.size}, {src.depth} blocks, patch {src.patch_size}) does not fit "
            f"model ({dst.size}, {dst.depth} blocks, patch {dst.patch_size}); use the same width, depth and patch."
        )
    if src.is_clip and not dst.is_clip:
        raise UsageError(f"The init encoder '{init}' is a clip encoder; an image student cannot start from it.")
    if src.is_clip and src.tubelet != dst.tubelet:
        raise UsageError(
            f"The init clip encoder '{init}' has tubelets of {src.tubelet} frames, the model {dst.tubelet}."
        )
    state = dict(loaded.model.vit.state_dict())
    if dst.is_clip and not src.is_clip:
        state = inflate_state_dict(state, dst)
    if tuple(src.grid) != tuple(dst.grid):
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"], new_size=dst.grid, old_size=src.grid, num_prefix_tokens=0
        )
    if dst.is_clip and state["time_embed"].shape[1] != dst.frames // dst.tubelet:
        from cxrjepa.models.tubelet import time_positions

        state["time_embed"] = time_positions(state["time_embed"], dst.frames // dst.tubelet).contiguous()
    for encoder in objective.init_encoders():
        encoder.vit.load_state_dict(state)
    return {"path": str(init), "fingerprint": loaded.fingerprint, "inflated": dst.is_clip and not src.is_clip}


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the global torch RNG for ``step`` on ``rank`` (drop-path): resumes need no RNG state."""
    return int(np.random.SeedSequence([seed, 4, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


class StoppedBySignal(CxrjepaError):
    """The run stopped on a stop signal (preemption, ``scancel``) after saving a checkpoint."""


@dataclass
class TrainOutcome:
    steps: int
    total_steps: int
    stopped_early: bool
    resumed_from: int
    world: int
    strategy: str
    last: dict = field(default_factory=dict)
    collapse_warnings: int = 0
    export: dict = field(default_factory=dict)
    #: model selection summary (contents.selection), when the objective holds data out
    selection: dict | None = None
    #: the objective's extra manifest contents (SALT: teacher)
    describe: dict = field(default_factory=dict)
    init: dict | None = None


class Trainer:
    """Trains ``config``'s objective on ``data`` into the run folder ``run``.

    ``hooks``: factories called with the trainer once it is built (the objective, device and process group
    are then in place), each making a :class:`~cxrjepa.pretrain.metrics.Hook` that adds columns to the rows
    of the steps it chooses (in-training probes); ``sinks`` receive every metrics row on rank 0 (trackers).
    """

    def __init__(
        self,
        run: str | Path,
        config: PretrainConfig,
        data: DatasetArtifact,
        info: DistInfo,
        *,
        max_steps: int | None = None,
        resume: bool = True,
        fingerprint: str = "",
        inputs: ObjectiveInputs | None = None,
        hooks: Sequence[Callable[[Trainer], Hook]] = (),
        sinks: Sequence[Sink] = (),
    ):
        self.run = Path(run)
        self.config = config
        self.data = data
        self.info = info
        self.max_steps = max_steps
        self.resume = resume
        self.fingerprint = fingerprint
        self.rt = config.runtime
        self.device = info.device
        self.amp = autocast_dtype(config.train.precision, self.device)
        self.normalization = dict(data.normalization)
        self.normalizer = Normalizer(self.normalization)
        self.inputs = inputs or ObjectiveInputs()
        self.inputs.normalization = self.normalization
        self.hook_factories = list(hooks)
        self.sinks = list(sinks)
        self.selection = None
        self.init_info = None
        #: optimizer steps done so far
        self.step = 0

    # ------------------------------------------------------------------ setup
    def _setup_backend(self) -> None:
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.rt.tf32
            torch.backends.cudnn.allow_tf32 = self.rt.tf32
        if self.rt.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

    def _build(self) -> None:
        cfg, rt, info = self.config, self.rt, self.info
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        obj = build_objective(cfg, self.inputs)
        if self.inputs.init:
            self.init_info = load_init(obj, self.inputs.init, cfg)
        obj = obj.to(self.device)
        self.objective = obj
        obj.prepare(TrainEnv(self.device, self.amp, info, self.data, self.run, rt))
        if rt.activation_checkpointing:
            parallel.set_activation_checkpointing(obj.student, True)
        if rt.compile:
            parallel.compile_blocks(obj)
        self.strategy = parallel.resolve_strategy(rt.strategy, cfg.model.size, info)
        if self.strategy == "fsdp":
            parallel.shard(obj.student, self.amp)
            for module in obj.shard_frozen():
                parallel.shard(module, self.amp)
        self.wrapped = parallel.wrap_student(obj.student, self.strategy, info)
        self.optimizer = build_optimizer(obj.student, cfg.optim, fused=rt.fused_optim and self.device.type == "cuda")
        self.params = [p for p in obj.student.parameters() if p.requires_grad]

    def _data(self, start: int) -> None:
        cfg, rt, info = self.config, self.rt, self.info
        size = cfg.model.image_size
        cache = FrameCache.resolve(rt.frame_cache, self.data)
        if cache is not None:
            if info.local_rank == 0 and cache.build():
                console.info(f"Copied {cache.shape[0]} frames to the frame cache {cache.path}.")
            barrier(info)
        extras = self.objective.item_extras()
        items = self.train_items if len(self.holdout_items) else None
        images = training_images(cfg, self.data, cache, items=items, extras=extras)
        self.frames = len(images)
        self.sampler = StepSampler(
            self.frames,
            cfg.train.batch_size,
            cfg.train.seed,
            self.stop,
            start_step=start,
            world=info.world,
            rank=info.rank,
            accum=rt.grad_accum,
        )
        grid = cfg.model.token_grid(cfg.model.input_shape)
        collator = Collator(self.objective.masks(grid), cfg.train.batch_size, cfg.train.seed)
        workers = rt.workers if rt.workers is not None else default_workers(info.local_world)
        self.loader = build_loader(
            images,
            self.sampler,
            collator,
            workers=workers,
            pin_memory=rt.pin_memory and self.device.type == "cuda",
            prefetch=rt.prefetch,
            persistent=rt.persistent_workers,
        )
        self.fixed = fixed_batch(self.data, rt.monitor_batch, size, self.normalization, cfg).to(self.device)
        if len(self.holdout_items):
            from cxrjepa.pretrain.selection import HoldoutSelection, holdout_batches

            every, export_best, max_items = self.objective.selection()
            batches = holdout_batches(
                cfg, self.data, self.holdout_items, self.objective.masks(grid), max_items, cache, extras=extras
            )
            self.selection = HoldoutSelection(
                self.run,
                batches,
                len(self.holdout_items),
                self.holdout_patients,
                self.objective.holdout_fraction(cfg),
                every,
                export_best,
            )
            self.selection.restore(start, MetricsLog.read(self.run) if start else [])

    # ------------------------------------------------------------------ pieces of a step
    def _to_device(self, batch: dict) -> dict:
        out = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        out["images"] = self.normalizer(out["images"])
        return out

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def _grad_norm(self, clip: float) -> torch.Tensor:
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        if clip > 0:
            torch.nn.utils.clip_grads_with_norm_(self.params, clip, norm, foreach=True)
        return norm

    @torch.no_grad()
    def monitor(self) -> tuple[float, float]:
        """(feat_std, rankme) of the watched features on the fixed batch."""
        pooled, tokens = [], []
        with self._autocast():
            for chunk in self.fixed.split(64):
                t = self.objective.monitor_tokens(chunk).float()
                tokens.append(t)
                pooled.append(t.mean(dim=1))
        return feature_std(torch.cat(tokens)), rankme(torch.cat(pooled))

    def _state(self, step: int) -> dict:
        sched = self.schedules.at(step)
        return {
            "epoch": self.sampler.epoch_at(step),
            "images_seen": step * self.config.train.batch_size,
            "total_steps": self.total,
            "sampler": {"position": step * self.config.train.batch_size, "seed": self.config.train.seed},
            "schedules": {**sched, **{k: v for k, v in self._scalars.items()}},
            "objective": {"name": self.objective.name, **self.objective.extra_state()},
            "rng": {"seed": self.config.train.seed, "derivation": "per step: (seed, step, rank)"},
            "world_size": self.info.world,
            "fingerprint": self.fingerprint,
        }

    def _export(self, step: int) -> dict:
        encoder = self.objective.export_encoder()
        state = ckpt.module_state(encoder, self.strategy == "fsdp")
        if not self.info.is_main:
            return {}
        extra = {"objective": self.objective.name, "step": step}
        sel = self.selection
        if sel is not None and sel.export_best:
            best = sel.best_encoder_state()
            if best is not None:
                state = best
                extra.update({"step": sel.best_step, "selected_by": "holdout_loss", "holdout_loss": sel.best_loss})
        if self.config.model.is_clip:
            extra["clip_stride"] = self.config.clips.stride
        vit = create_vit(self.config.model)
        vit.load_state_dict({k.removeprefix("vit."): v for k, v in state.items()})
        folder = export_encoder(
            vit,
            self.config.model,
            self.run / EXPORT_DIR,
            Normalization(**{k: float(self.normalization[k]) for k in ("divide_by", "mean", "std")}),
            extra=extra,
        )
        return json.loads((folder / CONFIG).read_text())

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainOutcome:
        self._setup_backend()
        self._build()
        cfg, rt = self.config, self.rt
        self.train_items, self.holdout_items, self.holdout_patients = item_split(cfg, self.data)
        self.total = planned_steps(cfg.train, len(self.train_items))
        self.stop = min(self.total, self.max_steps) if self.max_steps else self.total
        self.schedules = Schedules(cfg.optim, self.total)
        self.checkpointer = ckpt.Checkpointer(
            self.run,
            self.objective,
            self.optimizer,
            self.info,
            every=rt.checkpoint_every,
            keep_last=rt.keep_last,
            sharded=self.strategy == "fsdp",
            state=self._state,
        )
        start = self.checkpointer.restore() if self.resume else 0
        self._data(start)
        self._scalars: dict[str, float] = {}
        self.step = start
        metrics = self._metrics(start)
        try:
            with StopSignals() as signals, metrics.progress(start):
                self._loop(start, metrics, signals)
        finally:
            metrics.close()
        return self._outcome(start, metrics)

    def _loop(self, start: int, metrics: MetricsProcessor, signals: StopSignals) -> None:
        """Steps ``start`` .. ``self.stop``: train, log when due, checkpoint when due; a stop signal ends the
        loop after a checkpoint."""
        self.objective.train()
        batches = iter(self.loader)
        for step in range(start, self.stop):
            done = step + 1
            logged = metrics.should_log(done)
            result = self.train_step(step, batches, grad_norm=logged)
            metrics.record(result)
            if logged:
                metrics.log(done, result)
            self.step = done
            stopping = signals.requested(self.info, sync_point=logged)
            if self.checkpointer.maybe_save(done, last=done == self.stop, stop=stopping):
                metrics.restart_clock()  # checkpoint time is not counted as training time
            if stopping:
                raise StoppedBySignal(
                    f"Stopped by a signal at step {done} after saving a checkpoint; rerun the same command to resume."
                )

    def train_step(self, step: int, batches: Iterator[dict], *, grad_norm: bool = False) -> StepResult:
        """Optimizer step ``step`` (0-based) over ``runtime.grad_accum`` micro-batches: schedules, the step's
        seed, forward and backward (gradients synchronised on the last micro-batch only), clipping, the
        optimizer, the objective's update after the step (EMA). ``grad_norm``: measure the gradient norm
        even when it is not clipped."""
        cfg, obj, accum = self.config, self.objective, self.rt.grad_accum
        sched = self.schedules.at(step)
        apply_schedule(self.optimizer, sched["lr"], sched["wd"])
        torch.manual_seed(step_seed(cfg.train.seed, step, self.info.rank))
        step_loss = torch.zeros((), device=self.device)
        flops = 0.0
        for micro in range(accum):
            batch = self._to_device(next(batches))
            if batch["step"] != step:  # the loader and the loop must agree (see data.StepSampler)
                raise CxrjepaError(f"Internal error: the data stream is at step {batch['step']}, not {step}.")
            with parallel.grad_sync(self.wrapped, self.strategy, micro == accum - 1):
                with self._autocast():
                    loss, _extra = obj.loss(self.wrapped, batch)
                (loss / accum).backward()
            step_loss += loss.detach()
            flops += obj.step_flops(batch)
        norm = None
        if cfg.optim.clip_grad > 0 or grad_norm:
            norm = self._grad_norm(cfg.optim.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._scalars = obj.after_step(step, self.total)
        return StepResult(step_loss / accum, flops, norm, sched, self._scalars)

    def _metrics(self, start: int) -> MetricsProcessor:
        """The metrics processor of a run resumed at ``start``: the metrics files (cut back to ``start``),
        the collapse monitor, SALT's selection and the extra hooks and sinks; the step-0 row of a new run."""
        rt, info = self.rt, self.info
        log = MetricsLog(self.run, enabled=info.is_main, resume_step=start if start > 0 else None)
        best_rank = (
            max(
                (float(r["rankme"]) for r in MetricsLog.read(self.run) if "rankme" in r and r["step"] <= start),
                default=0.0,
            )
            if start
            else 0.0
        )
        self.collapse = CollapseWatch(rt.collapse_std, rt.collapse_rank, rt.collapse_rank_drop, best_rank)
        rank_cap = min(len(self.fixed), self.objective.export_encoder().embed_dim)
        features = FeatureMonitor(
            self.monitor, self.collapse, every=rt.monitor_every, last=self.stop, rank_cap=rank_cap, check=info.is_main
        )
        hooks: list[Hook] = [features]
        if self.selection is not None:
            from cxrjepa.pretrain.selection import SelectionHook

            hooks.append(
                SelectionHook(
                    self.selection,
                    self.objective,
                    self._to_device,
                    self._autocast,
                    info,
                    total=self.total,
                    sharded=self.strategy == "fsdp",
                )
            )
        hooks += [make(self) for make in self.hook_factories]
        metrics = MetricsProcessor(
            info,
            batch_size=self.config.train.batch_size,
            log_every=rt.log_every,
            last_step=self.stop,
            epoch_at=self.sampler.epoch_at,
            peak_flops=peak_flops(self.device, rt.peak_tflops),
            hooks=hooks,
            sinks=[log, *self.sinks],
        )
        if start == 0 and self.stop > 0:  # every rank: the monitor forward is a collective under FSDP
            metrics.write({"step": 0, "epoch": 0.0, **features.baseline()})
        return metrics

    def _outcome(self, start: int, metrics: MetricsProcessor) -> TrainOutcome:
        """What the run did; the export (and the selection summary) once it reached its stop."""
        outcome = TrainOutcome(
            steps=self.step,
            total_steps=self.total,
            stopped_early=self.stop < self.total,
            resumed_from=start,
            world=self.info.world,
            strategy=self.strategy,
            last=metrics.last_row,
            collapse_warnings=self.collapse.warnings,
            describe=self.objective.describe(),
            init=self.init_info,
        )
        if outcome.steps >= self.stop:
            outcome.export = self._export(outcome.steps)
            if self.selection is not None:
                outcome.selection = self.selection.summary(
                    int(outcome.export.get("step", outcome.steps) or outcome.steps)
                )
            barrier(self.info)
        return outcome
