"""Will it fit? Memory a stage has, and the refusal when its estimate does not fit (docs/pretrain.md, "Memory check").

Stages estimate their peak memory before they build a model or load features (pretrain: cxrjepa.pretrain.memory;
embed and probe: the functions below) and call :func:`check_fits`, which refuses, with one sentence naming a
setting that fits, when the estimate exceeds :data:`MARGIN` of the memory available: on the CPU what the kernel
reports available (``MemAvailable``), lowered to the container's cgroup limit when there is one; on a GPU
the free memory nvidia-smi reports (``torch.cuda.mem_get_info`` once CUDA is started).
``runtime.memory_check: false`` (pretrain) and ``memory_check: false`` in the options of embed and probe
(``--no-memory-check``) turn the check off.

The transformer activation coefficients were calibrated on this project's CPU runs (fp32) by least squares
over measured peak RSS; see :data:`TRAIN_BYTES` and docs/pretrain.md for the measurements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cxrjepa.core.errors import EXIT_USAGE, CxrjepaError

#: refuse when the estimate is above this share of the available memory (the rest: the estimate's error, the
#: page cache the data needs, other processes' growth)
MARGIN = 0.9
#: resident memory of a cxrjepa process before its stage allocates anything (Python, torch, timm, zarr, pandas)
BASE_BYTES = 900 * 2**20
#: the same for an embed process, which also holds the dataset reader and the encoder loaders (calibrated)
EMBED_BASE_BYTES = 1024 * 2**20
#: bytes kept for the backward pass per token x width x transformer block of a *trained* sequence, fp32 on the
#: CPU (calibrated, docs/pretrain.md); bf16 autocast on CUDA keeps most of them in 2 bytes
TRAIN_BYTES = {"cpu": 46.0, "cuda": 28.0}
#: bytes per token x width alive at once in a gradient-free forward pass (one block's q, k, v, MLP hidden
#: and the residual stream): inference needs no stored activations
INFER_BYTES = {"cpu": 4.0 * 10, "cuda": 2.0 * 10}
#: bytes per parameter: trained (fp32 weights, gradients and AdamW's two moments), frozen (fp32; a frozen SALT
#: teacher is cast to bf16 on CUDA, the EMA target stays fp32)
TRAINED_PARAM_BYTES = 16
FROZEN_PARAM_BYTES = 4


class MemoryCheckError(CxrjepaError):
    """The stage's estimated peak memory does not fit the memory available."""

    exit_code = EXIT_USAGE


@dataclass
class Estimate:
    """A stage's estimated peak memory per process, by part."""

    device: str  # "cpu" | "cuda"
    parts: dict[str, int] = field(default_factory=dict)
    #: processes sharing the memory (several CPU processes share the machine; GPU processes have one GPU each)
    processes: int = 1

    @property
    def per_process(self) -> int:
        return int(sum(self.parts.values()))

    @property
    def total(self) -> int:
        """Bytes needed from the memory that is checked (all processes on a CPU, one process per GPU)."""
        return self.per_process * (self.processes if self.device == "cpu" else 1)

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "processes": self.processes,
            "total_gb": round(self.total / 2**30, 2),
            "parts_gb": {k: round(v / 2**30, 3) for k, v in self.parts.items()},
        }


def gb(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GB"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Memory left under this container's cgroup limit (v2 or v1), or None without a limit.

    ``/proc/meminfo`` (what psutil reads) shows the host's memory even inside a container whose limit is far
    lower; the kernel's OOM killer acts on the cgroup's. Reclaimable page cache counts as available."""
    v2_limit = root / "memory.max"
    if v2_limit.exists():
        limit, used = _read_int(v2_limit), _read_int(root / "memory.current")
        cache = _cgroup_stat(root / "memory.stat", "inactive_file")
    else:
        v1 = root / "memory"
        limit, used = _read_int(v1 / "memory.limit_in_bytes"), _read_int(v1 / "memory.usage_in_bytes")
        cache = _cgroup_stat(v1 / "memory.stat", "total_inactive_file")
    if limit is None or used is None or limit >= 2**60:
        return None
    return max(0, limit - used + cache)


def _nvidia_smi_free(index: int) -> int | None:
    """Free memory of GPU ``index`` from nvidia-smi (no CUDA context in this process), or None."""
    import os
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    gpu = visible[index] if index < len(visible) else str(index)  # CUDA's index -> nvidia-smi's id (or UUID)
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", gpu],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return int(float(out.stdout.strip().splitlines()[0])) * 2**20 if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def available_bytes(device: str = "cpu", index: int = 0) -> int | None:
    """Memory this process could still use: free GPU memory, or the CPU's available memory (cgroup-aware).

    On a GPU, a process that has not started CUDA (the launcher of a multi-GPU run) asks nvidia-smi instead of
    creating a CUDA context it would then hold on GPU ``index`` for the whole run; None when it cannot tell."""
    if device == "cuda":
        import torch

        if torch.cuda.is_initialized():
            return int(torch.cuda.mem_get_info(index)[0])
        return _nvidia_smi_free(index)
    import psutil

    avail = int(psutil.virtual_memory().available)
    limited = cgroup_available()
    return min(avail, limited) if limited is not None else avail


def check_fits(
    estimate: Estimate,
    what: str,
    advice: Sequence[str],
    *,
    enabled: bool = True,
    switch_words: str = "--set runtime.memory_check=false",
    available: int | None = None,
) -> None:
    """Refuse (exit 2) with one sentence when ``estimate`` does not fit; ``advice``: settings that would fit."""
    if not enabled:
        return
    have = available if available is not None else available_bytes(estimate.device)
    if have is None or estimate.total <= MARGIN * have:
        return
    where = "free on the GPU" if estimate.device == "cuda" else "available"
    fixes = " or ".join(advice) if advice else "a smaller model or batch"
    raise MemoryCheckError(
        f"{what} needs about {gb(estimate.total)} of memory but {gb(have)} is {where}; use {fixes} "
        f"(or {switch_words} to try anyway)."
    )


# ------------------------------------------------------------------------------------------------ transformers
@dataclass(frozen=True)
class Stack:
    """A transformer stack as the estimate sees it: blocks of ``width`` over ``tokens`` per sequence."""

    width: int
    depth: int
    tokens: int
    #: sequences per sample (I-JEPA's predictor runs one per target block)
    sequences: int = 1
    mlp_ratio: float = 4.0

    @property
    def block_params(self) -> int:
        w = self.width
        hidden = int(w * self.mlp_ratio)
        return 4 * w * w + 4 * w + 2 * w * hidden + hidden + w + 4 * w  # qkv+proj, MLP, two norms

    @property
    def units(self) -> int:
        """token x width x block units of one sample."""
        return self.sequences * self.tokens * self.width * self.depth


def train_activation_bytes(stacks: Sequence[Stack], batch: int, device: str) -> int:
    """Activations kept for the backward pass of ``batch`` samples through trained ``stacks``."""
    return int(TRAIN_BYTES[device] * batch * sum(s.units for s in stacks))


def infer_activation_bytes(stack: Stack, batch: int, device: str) -> int:
    """Peak of a gradient-free forward pass of ``batch`` samples (one block alive, plus its output tokens)."""
    per_token = INFER_BYTES[device] * stack.width * max(stack.mlp_ratio, 1.0) / 4.0 + 4 * stack.width
    return int(batch * stack.sequences * stack.tokens * per_token)


def embed_estimate(
    *,
    device: str,
    batch: int,
    image_size: int,
    tokens: int,
    width: int,
    depth: int,
    params: int,
    out_values_per_sample: int,
    unit_rows: int,
    processes: int = 1,
) -> Estimate:
    """Peak memory of an embed process: the encoder, one batch's forward pass and one unit of output rows."""
    stack = Stack(width, depth, tokens)
    return Estimate(
        device,
        {
            "runtime": EMBED_BASE_BYTES,
            "encoder": FROZEN_PARAM_BYTES * params,
            "batch": 4 * batch * 3 * image_size * image_size,
            "forward": infer_activation_bytes(stack, batch, device) + 4 * batch * tokens * width * 2,
            "unit buffer": 4 * unit_rows * out_values_per_sample,
        },
        processes=processes,
    )


def check_embed_memory(
    *,
    device: str,
    batch: int,
    image_size: int,
    tokens: int,
    width: int,
    params: int,
    out_values_per_sample: int,
    unit_rows: int,
    processes: int = 1,
    enabled: bool = True,
    available: int | None = None,
) -> Estimate:
    """Refuse an embed whose batch cannot fit, naming the largest ``--batch-size`` that does."""
    kw = {
        "device": device,
        "image_size": image_size,
        "tokens": tokens,
        "width": width,
        "depth": 1,
        "params": params,
        "out_values_per_sample": out_values_per_sample,
        "unit_rows": unit_rows,
        "processes": processes,
    }
    est = embed_estimate(batch=batch, **kw)
    if not enabled:
        return est
    have = available if available is not None else available_bytes(device)
    if have is None or est.total <= MARGIN * have:
        return est
    fits = next(
        (
            b
            for b in (2**k for k in range(12, -1, -1))
            if b < batch and embed_estimate(batch=b, **kw).total <= MARGIN * have
        ),
        None,
    )
    advice = [f"--batch-size {fits}"] if fits else ["a machine with more memory"]
    if processes > 1 and device == "cpu":
        advice.append("fewer --processes")
    check_fits(
        est,
        f"Embedding {batch} images of {image_size} px per forward pass",
        advice,
        switch_words="--no-memory-check",
        available=have,
    )
    return est


def probe_estimate(*, rows: int, values_per_row: int, patch_values_per_row: int = 0, copies: float = 3.0) -> Estimate:
    """Peak memory of a probe: the feature matrix in float32 and the copies the fits make (train/val/test slices,
    the solver's own), the patch tokens of a segmentation probe (float16), plus the runtime."""
    return Estimate(
        "cpu",
        {
            "runtime": BASE_BYTES,
            "features": int(copies * rows * values_per_row * 4),
            "patch tokens": int(2 * rows * patch_values_per_row),
        },
    )


def check_probe_memory(
    *,
    rows: int,
    values_per_row: int,
    patch_values_per_row: int,
    features: str,
    enabled: bool = True,
    available: int | None = None,
) -> Estimate:
    """Refuse a probe whose features cannot be held in memory."""
    est = probe_estimate(rows=rows, values_per_row=values_per_row, patch_values_per_row=patch_values_per_row)
    if not enabled:
        return est
    advice = ["--features features"] if features != "features" else []
    if patch_values_per_row:
        advice.append("the label tasks without --task segmentation")
    check_fits(
        est,
        f"Probing {rows} samples' {features}" + (" and patch tokens" if patch_values_per_row else ""),
        advice + ["a machine with more memory"],
        switch_words="--no-memory-check",
        available=available,
    )
    return est
