"""Training monitors: metrics files, collapse measures, throughput and MFU.

* ``metrics.jsonl`` (one JSON object per logged step) and ``metrics.csv`` (the contract's columns), always:
  the source of truth that experiment trackers (TensorBoard, MLflow, W&B: :mod:`cxrjepa.tracking`) mirror.
  On resume both files are cut back to the checkpoint's step, so they hold each step once.
* ``feat_std``: standard deviation, over the tokens of a fixed batch, of the layer-normed features the
  objective watches (I-JEPA: the EMA target's, i.e. the regression targets), averaged over channels. Healthy
  runs stay near 1; a collapsed target (every token alike) goes to 0.
* ``rankme``: effective rank (exp of the entropy of the normalised singular values; Garrido et al. 2023) of
  the mean-pooled features of the fixed batch; at most min(batch, width).
* ``mfu``: matrix FLOPs the objective needs per step (analytic count) / elapsed time / peak dense bf16 FLOP/s.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from cxrjepa.core import console

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
COLUMNS = (
    "step",
    "epoch",
    "loss",
    "lr",
    "wd",
    "momentum",
    "grad_norm",
    "feat_std",
    "rankme",
    "images_per_s",
    "mfu",
    "gpu_mem_gb",
    "time_s",
)

#: peak dense bf16 tensor-core FLOP/s by GPU model (vendor datasheets, without sparsity)
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM / NVL
    ("H800", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("V100", 125.0),  # fp16 (no bf16)
)


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of ``device`` (None on CPU or an unknown GPU without an override)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


def rankme(features: torch.Tensor, eps: float = 1e-7) -> float:
    """Effective rank of a (N, D) feature matrix."""
    s = torch.linalg.svdvals(features.float())
    p = s / (s.sum() + eps) + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def feature_std(tokens: torch.Tensor) -> float:
    """Mean over channels of the std over all tokens of layer-normed (B, L, D) features."""
    x = F.layer_norm(tokens.float(), (tokens.shape[-1],)).reshape(-1, tokens.shape[-1])
    return float(x.std(dim=0).mean())


class CollapseWatch:
    """Warns loudly (once per episode) when the feature std or RankMe falls below its floor, or RankMe
    below ``rank_drop`` times the highest RankMe of the run (partial, dimensional collapse)."""

    def __init__(self, std_floor: float, rank_fraction: float, rank_drop: float = 0.0, best_rank: float = 0.0):
        self.std_floor = std_floor
        self.rank_fraction = rank_fraction
        self.rank_drop = rank_drop
        self.best_rank = best_rank
        self.alarmed = False
        self.warnings = 0

    def check(self, step: int, std: float, rank: float, rank_cap: int) -> bool:
        self.best_rank = max(self.best_rank, rank)
        rank_floor = max(self.rank_fraction * rank_cap, self.rank_drop * self.best_rank)
        collapsed = std < self.std_floor or rank < rank_floor
        if collapsed and not self.alarmed:
            self.warnings += 1
            console.loud_warning(
                f"representation collapse suspected at step {step}: target-feature std {std:.4f} "
                f"(floor {self.std_floor}), RankMe {rank:.1f} (floor {rank_floor:.1f}). "
                "Check the learning rate, the EMA momentum and the masks; resume from an earlier checkpoint."
            )
        self.alarmed = collapsed
        return collapsed


class FeatureMonitor:
    """The collapse monitor as a metrics hook (:class:`cxrjepa.pretrain.metrics.Hook`): ``feat_std`` and
    ``rankme`` of the watched features on the fixed batch every ``every`` steps and at ``last``; rank 0
    (``check``) also runs the :class:`CollapseWatch`. ``measure`` is the forward pass (a collective under
    FSDP: every rank runs it)."""

    def __init__(
        self,
        measure: Callable[[], tuple[float, float]],
        watch: CollapseWatch,
        *,
        every: int,
        last: int,
        rank_cap: int,
        check: bool,
    ):
        self.measure = measure
        self.watch = watch
        self.every = every
        self.last = last
        self.rank_cap = rank_cap
        self.check = check

    def due(self, step: int) -> bool:
        return bool(self.every and step % self.every == 0) or step == self.last

    def __call__(self, step: int, row: dict) -> None:
        std, rank = self.measure()
        row["feat_std"], row["rankme"] = std, rank
        if self.check:
            self.watch.check(step, std, rank, self.rank_cap)

    def baseline(self) -> dict:
        """The measures before the first step (the step-0 row); RankMe's reference for the drop test."""
        std, rank = self.measure()
        self.watch.best_rank = rank
        return {"feat_std": std, "rankme": rank}


class MetricsLog:
    """Appends metric rows to metrics.jsonl / metrics.csv; a no-op when not ``enabled``."""

    def __init__(self, run: str | Path, *, enabled: bool = True, resume_step: int | None = None):
        self.run = Path(run)
        self.enabled = enabled
        if not enabled:
            return
        self.jsonl = self.run / METRICS_JSONL
        self.csv = self.run / METRICS_CSV
        rows = self.read(self.run) if resume_step is not None else []
        rows = [r for r in rows if int(r.get("step", 0)) <= (resume_step or 0)]
        with open(self.jsonl, "w") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
        with open(self.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    @staticmethod
    def read(run: str | Path) -> list[dict]:
        path = Path(run) / METRICS_JSONL
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut by a crash
                continue
        return rows

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        with open(self.csv, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore").writerow(row)

    def close(self) -> None:
        """Nothing to release: every row is appended and closed as it is written."""


def format_row(row: dict, total: int) -> str:
    parts = [f"step {row['step']}/{total}"]
    for key, fmt in (
        ("loss", "{:.4f}"),
        ("lr", "{:.2e}"),
        ("momentum", "{:.4f}"),
        ("grad_norm", "{:.3f}"),
        ("feat_std", "{:.3f}"),
        ("rankme", "{:.1f}"),
        ("images_per_s", "{:.1f} img/s"),
        ("mfu", "{:.1%} MFU"),
        ("gpu_mem_gb", "{:.1f} GB"),
    ):
        if row.get(key) is not None:
            value = fmt.format(row[key])
            parts.append(value if " " in fmt else f"{key} {value}")
    return "  ".join(parts)
