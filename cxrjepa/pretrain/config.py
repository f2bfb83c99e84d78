"""The pretrain config: science settings (fingerprinted) plus a ``runtime`` section (not fingerprinted).

Precedence: these defaults < ``--config`` files < CLI flags < ``--set a.b=value``. The defaults are the
RadJEPA-like recipe (ViT-B/16 at 224 px, I-JEPA); the recipes in ``recipes/`` change them.

``runtime`` holds how the run is executed (parallelism strategy, compile, activation checkpointing,
gradient accumulation, loader workers, logging and checkpoint cadence). Changing it never makes a run
stale: a run interrupted on 8 GPUs can resume on 4 with another ``runtime.grad_accum`` and continue the
same training, because the global batch, the data order and the masks do not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cxrjepa.core.config import to_dict
from cxrjepa.core.errors import ConfigError
from cxrjepa.embed.config import zones
from cxrjepa.models.vit import EncoderConfig
from cxrjepa.pretrain.augment import AugmentConfig
from cxrjepa.pretrain.objectives.ijepa import IJEPAConfig
from cxrjepa.pretrain.objectives.jepa_sigreg import JEPASigRegConfig
from cxrjepa.pretrain.objectives.lejepa import LeJEPAConfig
from cxrjepa.pretrain.objectives.pixel import PixelConfig
from cxrjepa.pretrain.objectives.salt import SALTConfig
from cxrjepa.pretrain.optim import OptimConfig
from cxrjepa.pretrain.sigreg import SIGRegConfig

#: config section -> the objective it belongs to (left out of the fingerprint of runs of other objectives)
OBJECTIVE_SECTIONS = {
    "ijepa": "ijepa",
    "pixel": "pixel",
    "salt": "salt",
    "lejepa": "lejepa",
    "jepa_sigreg": "jepa-sigreg",
}
#: objectives that always use the ``sigreg`` section (others only with ``sigreg.weight`` > 0)
SIGREG_OBJECTIVES = ("lejepa", "jepa-sigreg")
#: objectives that take ``sigreg.weight`` as an optional extra term
SIGREG_EXTRA = ("ijepa", "salt")


@dataclass
class TrainConfig:
    """How long and on how much data per step."""

    #: global batch (all processes and accumulation steps together)
    batch_size: int = 256
    epochs: float = 100.0
    #: total optimizer steps; overrides ``epochs`` when set
    steps: int | None = None
    seed: int = 0
    #: auto = bf16 autocast on CUDA (fp32 master weights, no loss scaler), fp32 on CPU
    precision: Literal["auto", "bf16", "fp32"] = "auto"

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("'train.batch_size' must be at least 1.")
        if self.steps is None and self.epochs <= 0:
            raise ConfigError("'train.epochs' must be positive (or set 'train.steps').")
        if self.steps is not None and self.steps < 1:
            raise ConfigError("'train.steps' must be at least 1.")


@dataclass
class RuntimeConfig:
    """How the run is executed. Not part of the fingerprint: changing it never restarts a run."""

    #: auto = FSDP2 (fully_shard per block) for huge/giant encoders, DDP otherwise
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    #: torch.compile each transformer block (CUDA)
    compile: bool = False
    #: recompute block activations in the backward pass (saves memory, costs ~30 % speed)
    activation_checkpointing: bool = False
    #: split each process's share of the global batch into this many micro-batches
    grad_accum: int = 1
    #: data-loader worker processes per training process; empty = automatic
    workers: int | None = None
    prefetch: int = 4
    #: node-local folder for an uncompressed memory-mapped copy of the frames (fast random reads; costs
    #: frames x H x W bytes of disk once); ``auto`` = the temporary folder ($TMPDIR) when it has room;
    #: empty = read the zarr store directly
    frame_cache: str | None = None
    pin_memory: bool = True
    persistent_workers: bool = True
    #: TF32 matrix multiplies for the remaining fp32 work on CUDA
    tf32: bool = True
    #: fused AdamW on CUDA
    fused_optim: bool = True
    #: deterministic algorithms (slower on CUDA; CPU runs are deterministic anyway)
    deterministic: bool = False
    log_every: int = 10
    #: target-feature std / RankMe on a fixed batch every this many steps (0 = only at the end)
    monitor_every: int = 100
    monitor_batch: int = 256
    #: warn loudly when the target-feature std falls below this (healthy runs stay near 1)
    collapse_std: float = 0.05
    #: ... or when RankMe falls below this fraction of its highest value in the run (0 = off)
    collapse_rank_drop: float = 0.25
    #: ... or below this fraction of min(monitor batch, width) (0 = off; similar images, e.g. aligned
    #: radiographs, have a low RankMe from the start, so the relative rule above is the default)
    collapse_rank: float = 0.0
    checkpoint_every: int = 500
    keep_last: int = 2
    #: peak dense bf16 TFLOP/s per GPU for MFU; empty = known value for the GPU model
    peak_tflops: float | None = None
    #: SALT: folder of teacher-target caches (each teacher/dataset/grid gets its own subfolder, reused by later
    #: runs); needs whole-frame crops. Empty = run the teacher every step (cxrjepa.pretrain.targets)
    teacher_cache: str | None = None
    #: refuse to start when the estimated peak memory does not fit this machine (docs/pretrain.md, "Memory check")
    memory_check: bool = True
    #: in-training probes (docs/pretrain.md, "In-training probes"): linear and kNN probes on frozen features of a
    #: labelled patient-level subset every this many steps and at the planned end, when the dataset has label
    #: columns or --probe-labels is given. Empty = at every checkpoint (runtime.checkpoint_every); 0 = off
    probe_every: int | None = None
    #: at most this many labelled samples (whole patients) in the probe subset
    probe_items: int = 512
    #: label columns probed (dataset label columns, or columns of --probe-labels); empty = all of them
    probe_tasks: list[str] = field(default_factory=list)
    #: join key of --probe-labels: a column of the CSV and of the dataset's metadata, or CSVCOL=METACOL
    #: (e.g. path=source_path)
    probe_key: str = "sample_id"
    #: the logged column ``selection: probe`` chooses the exported encoder by (``probe/<task>/<probe>_<metric>``);
    #: empty = the first task's linear probe on its main metric (AUROC; MAE, lower is better, for regression)
    probe_select: str | None = None
    #: how the probes pool the encoder's tokens: mean, or grid:RxC zones (as ``cxrjepa embed --pooling``)
    probe_pooling: str = "mean"

    def probe_cadence(self) -> int:
        """Steps between in-training probes (``probe_every``, else ``checkpoint_every``; 0 = off)."""
        return self.checkpoint_every if self.probe_every is None else int(self.probe_every)

    def validate(self) -> None:
        if self.grad_accum < 1:
            raise ConfigError("'runtime.grad_accum' must be at least 1.")
        if self.workers is not None and self.workers < 0:
            raise ConfigError("'runtime.workers' must not be negative.")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ConfigError("'runtime.log_every' and 'runtime.checkpoint_every' must be at least 1.")
        if self.keep_last < 1:
            raise ConfigError("'runtime.keep_last' must be at least 1.")
        if self.monitor_every < 0 or self.monitor_batch < 2:
            raise ConfigError("'runtime.monitor_every' must not be negative and 'runtime.monitor_batch' at least 2.")
        if (self.probe_every is not None and self.probe_every < 0) or self.probe_items < 8:
            raise ConfigError("'runtime.probe_every' must not be negative and 'runtime.probe_items' at least 8.")
        try:
            grid = zones(self.probe_pooling)
        except ConfigError:
            grid = None
        if self.probe_pooling != "mean" and grid is None:
            raise ConfigError(f"'runtime.probe_pooling' must be mean or grid:RxC, not '{self.probe_pooling}'.")


@dataclass
class ClipConfig:
    """How clips are drawn from clip datasets (clip encoders: ``model.frames > 1``)."""

    #: take every ``stride``-th stored frame (ingest stores clips at ``clip_fps``, 15 fps by default: stride 2
    #: makes a 16-frame clip span about 2 s). Samples shorter than a clip repeat their last frame (stills
    #: become static clips)
    stride: int = 1

    def validate(self) -> None:
        if self.stride < 1:
            raise ConfigError("'clips.stride' must be at least 1.")


def _default_model() -> EncoderConfig:
    # fixed 2-D sin-cos positions, as in the I-JEPA reference encoder
    return EncoderConfig(size="base", patch_size=16, image_size=224, pos_embed="sincos")


@dataclass
class PretrainConfig:
    """Everything ``cxrjepa pretrain`` needs besides paths and devices."""

    #: pretraining objective (see cxrjepa.pretrain.objectives)
    objective: str = "ijepa"
    model: EncoderConfig = field(default_factory=_default_model)
    ijepa: IJEPAConfig = field(default_factory=IJEPAConfig)
    #: stage-1 pixel-reconstruction teacher (``objective: pixel``)
    pixel: PixelConfig = field(default_factory=PixelConfig)
    #: SALT student of a frozen teacher (``objective: salt``)
    salt: SALTConfig = field(default_factory=SALTConfig)
    #: LeJEPA: multi-view invariance + SIGReg, no teacher (``objective: lejepa``)
    lejepa: LeJEPAConfig = field(default_factory=LeJEPAConfig)
    #: I-JEPA masks and predictor with SIGReg instead of an EMA target (``objective: jepa-sigreg``)
    jepa_sigreg: JEPASigRegConfig = field(default_factory=JEPASigRegConfig)
    #: the SIGReg statistic (lejepa, jepa-sigreg) and an optional extra SIGReg term for ijepa / salt
    sigreg: SIGRegConfig = field(default_factory=SIGRegConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    #: which checkpoint becomes the exported encoder: ``auto`` = the objective's rule (the last one; SALT: the
    #: lowest held-out loss, salt.export), ``probe`` = the best held-out score of the in-training probes
    #: (runtime.probe_select; docs/pretrain.md, "In-training probes")
    selection: Literal["auto", "probe"] = "auto"

    def validate(self) -> None:
        from cxrjepa.pretrain.objectives import OBJECTIVES

        if self.objective not in OBJECTIVES:
            raise ConfigError(f"'objective' must be one of {', '.join(sorted(OBJECTIVES))}, not '{self.objective}'.")
        if self.selection == "probe" and self.runtime.probe_cadence() == 0:
            raise ConfigError("'selection: probe' needs in-training probes; set runtime.probe_every above 0.")
        if self.sigreg.weight and self.objective not in SIGREG_EXTRA:
            where = {"lejepa": "lejepa.sigreg_weight", "jepa-sigreg": "jepa_sigreg.sigreg_weight"}.get(self.objective)
            raise ConfigError(
                f"'sigreg.weight' is an extra term for {' and '.join(SIGREG_EXTRA)}, not {self.objective}"
                + (f"; set {where} instead." if where else ".")
            )

    def objective_section(self) -> Any:
        """The settings section of the run's objective (``jepa_sigreg`` for ``jepa-sigreg``), or None."""
        names = {objective: section for section, objective in OBJECTIVE_SECTIONS.items()}
        return getattr(self, names.get(self.objective, self.objective), None)

    def science(self) -> dict:
        """The fingerprinted part: everything but ``runtime``, without the sections of other objectives, without
        ``sigreg`` where it plays no part, and, for image encoders, without the clip settings (so adding
        objectives or settings never makes a run stale).

        ``selection: probe`` enters with the probe settings that choose the exported encoder (cadence, subset,
        tasks, join key, metric, a zone pooling); the default selection leaves no trace, so runs made before it stay valid."""
        data = to_dict(self)
        data.pop("runtime")
        if data.pop("selection") == "probe":
            rt = self.runtime
            data["selection"] = {
                "by": "probe",
                "every": rt.probe_cadence(),
                "items": rt.probe_items,
                "tasks": list(rt.probe_tasks),
                "key": rt.probe_key,
                "metric": rt.probe_select,
            }
            if rt.probe_pooling != "mean":  # zones change the scores that choose (mean leaves no trace)
                data["selection"]["pooling"] = rt.probe_pooling
        for section, objective in OBJECTIVE_SECTIONS.items():
            if objective != self.objective:
                data.pop(section, None)
        if self.objective not in SIGREG_OBJECTIVES and not self.sigreg.weight:
            data.pop("sigreg")
        if not self.model.is_clip:
            data.pop("clips")
            data["model"].pop("frames")
        return data
