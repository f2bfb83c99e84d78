"""How pretraining spreads one model over the processes of a launch: DDP or FSDP2, per-block compile,
activation checkpointing, gradient sync under accumulation (the processes themselves come from
:mod:`cxrjepa.runtime`).

* DDP by default; FSDP2 (``fully_shard`` on every transformer block, then the root) for huge/giant
  encoders or ``runtime.strategy: fsdp``. Frozen modules (EMA target, teacher) are sharded the same way.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from cxrjepa.runtime import DistInfo


def resolve_strategy(strategy: str, model_size: str, info: DistInfo) -> str:
    """``none`` (one process), ``ddp`` or ``fsdp``."""
    if info.world == 1:
        return "none"
    if strategy == "auto":
        return "fsdp" if model_size in ("huge", "giant") else "ddp"
    return strategy


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """Every transformer block of ``module`` (the members of its ``blocks`` ModuleLists)."""
    out = []
    for name, child in module.named_modules():
        if isinstance(child, nn.ModuleList) and name.split(".")[-1] == "blocks":
            out.extend(child)
    return out


def compile_blocks(module: nn.Module) -> None:
    """``torch.compile`` each transformer block in place (parameter names are unchanged)."""
    for blk in transformer_blocks(module):
        blk.compile()


def set_activation_checkpointing(module: nn.Module, enable: bool) -> None:
    for child in module.modules():
        if child is not module and hasattr(child, "set_grad_checkpointing") and hasattr(child, "grad_checkpointing"):
            child.set_grad_checkpointing(enable)


#: methods besides ``forward`` that run a sharded module (FSDP2 only hooks ``forward`` by default)
FORWARD_METHODS = ("tokens",)


def shard(module: nn.Module, mp_dtype: torch.dtype | None) -> None:
    """FSDP2: ``fully_shard`` every transformer block, then the root (whose ``tokens`` method also gathers
    the root's parameters, like ``forward``)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    kwargs = {}
    if mp_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32)
    for blk in transformer_blocks(module):
        fully_shard(blk, **kwargs)
    fully_shard(module, **kwargs)
    for name in FORWARD_METHODS:
        if callable(getattr(module, name, None)):
            register_fsdp_forward_method(module, name)


def wrap_student(student: nn.Module, strategy: str, info: DistInfo):
    """The callable the training step runs: the module itself, a DDP wrapper, or the FSDP-sharded module."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(student, device_ids=ids, gradient_as_bucket_view=True)
    return student


def grad_sync(wrapped, strategy: str, sync: bool):
    """Context for one micro-batch: skip the gradient all-reduce except on the last one."""
    if strategy == "ddp" and not sync:
        return wrapped.no_sync()
    if strategy == "fsdp":
        wrapped.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()
