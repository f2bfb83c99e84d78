"""The training loop shared by every objective: devices, precision, parallelism, schedules, checkpoints,
monitors and the final export. The objective supplies the modules, masks and loss."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
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
from cxrjepa.pretrain import distributed as D
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
from cxrjepa.pretrain.monitors import CollapseWatch, MetricsLog, feature_std, format_row, peak_flops, rankme
from cxrjepa.pretrain.objectives import build_objective, objective_class
from cxrjepa.pretrain.objectives.base import ObjectiveInputs, TrainEnv
from cxrjepa.pretrain.optim import apply_schedule, build_optimizer
from cxrjepa.pretrain.schedules import Schedules


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
    if (src.embed_dim, src.depth, src.patch_size, src.in_chans) != (dst.embed_dim, dst.depth, dst.patch_size, dst.in_chans):
        raise UsageError(
            f"The init encoder '{init}' ({src.size}, {src.depth} blocks, patch {src.patch_size}) does not fit "
            f"model ({dst.size}, {dst.depth} blocks, patch {dst.patch_size}); use the same width, depth and patch."
        )
    if src.is_clip and not dst.is_clip:
        raise UsageError(f"The init encoder '{init}' is a clip encoder; an image student cannot start from it.")
    if src.is_clip and src.tubelet != dst.tubelet:
        raise UsageError(f"The init clip encoder '{init}' has tubelets of {src.tubelet} frames, the model {dst.tubelet}.")
    state = dict(loaded.model.vit.state_dict())
    if dst.is_clip and not src.is_clip:
        state = inflate_state_dict(state, dst)
    if tuple(src.grid) != tuple(dst.grid):
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=dst.grid, old_size=src.grid,
                                                    num_prefix_tokens=0)
    if dst.is_clip and state["time_embed"].shape[1] != dst.frames // dst.tubelet:
        from cxrjepa.models.tubelet import time_positions

        state["time_embed"] = time_positions(state["time_embed"], dst.frames // dst.tubelet).contiguous()
    for encoder in objective.init_encoders():
        encoder.vit.load_state_dict(state)
    return {"path": str(init), "fingerprint": loaded.fingerprint, "inflated": dst.is_clip and not src.is_clip}


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the global torch RNG for ``step`` on ``rank`` (drop-path): resumes need no RNG state."""
    return int(np.random.SeedSequence([seed, 4, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


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


class _NullTask:
    def advance(self, n: float = 1) -> None:
        pass

    def update(self, **kwargs) -> None:
        pass


class Trainer:
    """Trains ``config``'s objective on ``data`` into the run folder ``run``."""

    def __init__(
        self,
        run: str | Path,
        config: PretrainConfig,
        data: DatasetArtifact,
        info: D.DistInfo,
        *,
        max_steps: int | None = None,
        tensorboard: bool = False,
        resume: bool = True,
        fingerprint: str = "",
        inputs: ObjectiveInputs | None = None,
    ):
        self.run = Path(run)
        self.config = config
        self.data = data
        self.info = info
        self.max_steps = max_steps
        self.tensorboard = tensorboard
        self.resume = resume
        self.fingerprint = fingerprint
        self.rt = config.runtime
        self.device = info.device
        self.amp = autocast_dtype(config.train.precision, self.device)
        self.normalization = dict(data.normalization)
        self.normalizer = Normalizer(self.normalization)
        self.inputs = inputs or ObjectiveInputs()
        self.inputs.normalization = self.normalization
        self.selection = None
        self.init_info = None

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
            D.set_activation_checkpointing(obj.student, True)
        if rt.compile:
            D.compile_blocks(obj)
        self.strategy = D.resolve_strategy(rt.strategy, cfg.model.size, info)
        if self.strategy == "fsdp":
            D.shard(obj.student, self.amp)
            for module in obj.shard_frozen():
                D.shard(module, self.amp)
        self.wrapped = D.wrap_student(obj.student, self.strategy, info)
        self.optimizer = build_optimizer(obj.student, cfg.optim, fused=rt.fused_optim and self.device.type == "cuda")
        self.params = [p for p in obj.student.parameters() if p.requires_grad]

    def _restore(self) -> int:
        folder = ckpt.latest_checkpoint(self.run) if self.resume else None
        if folder is None:
            return 0
        state = ckpt.load_checkpoint(
            folder,
            self.objective.checkpoint_modules(),
            self.objective.student,
            self.optimizer,
            sharded=self.strategy == "fsdp",
        )
        self.objective.load_extra_state(state.get("objective", {}))
        step = int(state["step"])
        if self.info.is_main:
            console.info(f"Resuming from {folder.relative_to(self.run)} (step {step}).")
        return step

    def _data(self, start: int) -> None:
        cfg, rt, info = self.config, self.rt, self.info
        size = cfg.model.image_size
        cache = FrameCache.resolve(rt.frame_cache, self.data)
        if cache is not None:
            if info.local_rank == 0 and cache.build():
                console.info(f"Copied {cache.shape[0]} frames to the frame cache {cache.path}.")
            D.barrier(info)
        extras = self.objective.item_extras()
        items = self.train_items if len(self.holdout_items) else None
        images = training_images(cfg, self.data, cache, items=items, extras=extras, views=self.objective.views())
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
            batches = holdout_batches(cfg, self.data, self.holdout_items, self.objective.masks(grid), max_items,
                                      cache, extras=extras)
            self.selection = HoldoutSelection(self.run, batches, len(self.holdout_items), self.holdout_patients,
                                              self.objective.holdout_fraction(cfg), every, export_best)
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

    def _checkpoint(self, step: int) -> None:
        ckpt.save_checkpoint(
            self.run,
            step,
            self.objective.checkpoint_modules(),
            self.objective.student,
            self.optimizer,
            self._state(step),
            write=self.info.is_main,
            sharded=self.strategy == "fsdp",
            keep_last=self.rt.keep_last,
        )
        D.barrier(self.info)

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

    # ------------------------------------------------------------------ preemption
    @contextlib.contextmanager
    def _stop_signals(self):
        """SIGTERM / SIGUSR1 (cluster preemption, ``scancel``) ask for a checkpoint and a clean stop."""
        self._stop_signal: int | None = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, _frame):
            self._stop_signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGUSR1)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _stop_requested(self, sync_point: bool) -> bool:
        """Whether to stop now; in a process group every rank must agree, so only at sync points."""
        flag = self._stop_signal is not None
        if not self.info.distributed:
            return flag
        if not sync_point:
            return False
        box = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(D.all_reduce_mean(box, self.info).item() > 0)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainOutcome:
        self._setup_backend()
        self._build()
        cfg, rt, info = self.config, self.rt, self.info
        self.train_items, self.holdout_items, self.holdout_patients = item_split(cfg, self.data)
        self.total = planned_steps(cfg.train, len(self.train_items))
        self.stop = min(self.total, self.max_steps) if self.max_steps else self.total
        self.schedules = Schedules(cfg.optim, self.total)
        start = self._restore()
        self._data(start)
        self._scalars: dict[str, float] = {}
        outcome = TrainOutcome(steps=start, total_steps=self.total, stopped_early=self.stop < self.total,
                               resumed_from=start, world=info.world, strategy=self.strategy)
        log = MetricsLog(self.run, enabled=info.is_main, tensorboard=self.tensorboard,
                         resume_step=start if start > 0 else None)
        best_rank = max((float(r["rankme"]) for r in MetricsLog.read(self.run) if "rankme" in r and r["step"] <= start),
                        default=0.0) if start else 0.0
        watch = CollapseWatch(rt.collapse_std, rt.collapse_rank, rt.collapse_rank_drop, best_rank)
        peak = peak_flops(self.device, rt.peak_tflops)
        if start == 0 and self.stop > 0:  # every rank: the monitor forward is a collective under FSDP
            std, rank = self.monitor()
            watch.best_rank = rank
            log.write({"step": 0, "epoch": 0.0, "feat_std": std, "rankme": rank})
        try:
            with self._stop_signals():
                outcome.last = self._loop(start, log, watch, peak, outcome)
        finally:
            log.close()
        outcome.steps = max(outcome.steps, start)
        outcome.collapse_warnings = watch.warnings
        outcome.describe = self.objective.describe()
        outcome.init = self.init_info
        if outcome.steps >= self.stop:
            outcome.export = self._export(outcome.steps)
            if self.selection is not None:
                outcome.selection = self.selection.summary(int(outcome.export.get("step", outcome.steps) or outcome.steps))
            D.barrier(info)
        return outcome

    def _loop(self, start: int, log: MetricsLog, watch: CollapseWatch, peak: float | None, outcome: TrainOutcome) -> dict:
        cfg, rt, info = self.config, self.rt, self.info
        obj, accum = self.objective, rt.grad_accum
        obj.train()
        batches = iter(self.loader)
        window_loss = torch.zeros((), device=self.device)
        window_steps, window_flops = 0, 0.0
        t0 = time.perf_counter()
        t_start = t0
        last_row: dict = {}
        rank_cap = min(len(self.fixed), obj.export_encoder().embed_dim)
        progress = console.progress("pretrain", total=self.stop) if info.is_main else contextlib.nullcontext(_NullTask())
        with progress as task:
            task.update(completed=start)
            for step in range(start, self.stop):
                sched = self.schedules.at(step)
                apply_schedule(self.optimizer, sched["lr"], sched["wd"])
                torch.manual_seed(step_seed(cfg.train.seed, step, info.rank))
                step_loss = torch.zeros((), device=self.device)
                for micro in range(accum):
                    batch = self._to_device(next(batches))
                    if batch["step"] != step:  # the loader and the loop must agree (see data.StepSampler)
                        raise CxrjepaError(f"Internal error: the data stream is at step {batch['step']}, not {step}.")
                    with D.grad_sync(self.wrapped, self.strategy, micro == accum - 1):
                        with self._autocast():
                            loss, _extra = obj.loss(self.wrapped, batch)
                        (loss / accum).backward()
                    step_loss += loss.detach()
                    window_flops += obj.step_flops(batch)
                done = step + 1
                select_now = self.selection is not None and self.selection.due(done, self.total)  # on schedule only (not at --max-steps)
                log_now = done % rt.log_every == 0 or done == self.stop or select_now
                monitor_now = (rt.monitor_every and done % rt.monitor_every == 0) or done == self.stop
                grad_norm = None
                if cfg.optim.clip_grad > 0 or log_now or monitor_now:
                    grad_norm = self._grad_norm(cfg.optim.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self._scalars = obj.after_step(step, self.total)
                window_loss += step_loss / accum
                window_steps += 1
                task.advance(1)
                outcome.steps = done
                if log_now or monitor_now:
                    mean_loss = float(D.all_reduce_mean(window_loss / window_steps, info))
                    now = time.perf_counter()
                    elapsed = max(now - t0, 1e-9)
                    row = {
                        "step": done,
                        "epoch": round(self.sampler.epoch_at(done), 4),
                        "loss": mean_loss,
                        "lr": sched["lr"],
                        "wd": sched["wd"],
                        **self._scalars,
                        "grad_norm": float(grad_norm) if grad_norm is not None else None,
                        "images_per_s": window_steps * cfg.train.batch_size / elapsed,
                        "time_s": round(now - t_start, 3),
                    }
                    if peak:
                        row["mfu"] = window_flops / elapsed / peak
                    if self.device.type == "cuda":
                        row["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                        torch.cuda.reset_peak_memory_stats(self.device)
                    if not math.isfinite(mean_loss):
                        raise CxrjepaError(
                            f"The loss became {mean_loss} at step {done}; lower optim.lr (or check the data) and rerun "
                            "to resume from the last checkpoint."
                        )
                    if monitor_now:
                        std, rank = self.monitor()
                        row["feat_std"], row["rankme"] = std, rank
                        if info.is_main:
                            watch.check(done, std, rank, rank_cap)
                    if select_now:  # before the checkpoint of this step: a resume never loses a best
                        held = self.selection.evaluate(obj, self._to_device, self._autocast)
                        row["holdout_loss"] = held
                        self.selection.update(done, held, obj.selection_modules(), write=info.is_main,
                                              sharded=self.strategy == "fsdp")
                        D.barrier(info)
                    row = {k: v for k, v in row.items() if v is not None}
                    log.write(row)
                    if info.is_main:
                        task.update(status=f"loss {mean_loss:.4f}  {row['images_per_s']:.0f} img/s")
                        if not console.progress_enabled():
                            console.info(format_row(row, self.stop))
                    last_row = row
                    window_loss.zero_()
                    window_steps, window_flops = 0, 0.0
                    t0 = time.perf_counter()  # checkpoint and monitor time is not counted as training time
                stop = self._stop_requested(log_now or monitor_now)
                if done % rt.checkpoint_every == 0 or done == self.stop or stop:
                    self._checkpoint(done)
                    t0 = time.perf_counter()
                if stop:
                    raise CxrjepaError(
                        f"Stopped by a signal at step {done} after saving a checkpoint; rerun the same command to resume."
                    )
        return last_row
