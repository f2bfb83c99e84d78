"""Peak memory of a pretraining run, estimated from its config before anything is built (docs/pretrain.md).

Per training process: the runtime, the parameters (trained ones with gradients and AdamW state, frozen ones
such as I-JEPA's EMA target or SALT's teacher), the activations the backward pass keeps (per token x width x
block of every trained sequence: the student encoder on its context tokens, the predictor on context plus
target tokens once per target block), the frozen forward passes, the monitor and held-out batches, and on a
CPU the data-loader workers. Token counts come from the run's own mask generator (numpy, no model).

Objectives this module does not know are estimated as a student encoder trained on every token plus an
EMA-sized frozen copy (an upper bound for the JEPA family).
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from pathlib import Path

import numpy as np

from cxrjepa.core.memory import (
    BASE_BYTES,
    FROZEN_PARAM_BYTES,
    TRAIN_BYTES,
    TRAINED_PARAM_BYTES,
    Estimate,
    Stack,
    check_fits,
    infer_activation_bytes,
    train_activation_bytes,
)
from cxrjepa.models.vit import SIZES, EncoderConfig
from cxrjepa.pretrain.config import PretrainConfig

#: a data-loader worker on the CPU: its own interpreter state and the batches it prefetches (calibrated)
WORKER_BYTES = 64 * 2**20
#: CUDA context and allocator reserve on a GPU
CUDA_RESERVE_BYTES = 1536 * 2**20


def encoder_params(cfg: EncoderConfig) -> int:
    """Parameters of the ViT ``cfg`` (blocks, patch embedding, positions, final norm)."""
    d = cfg.embed_dim
    stack = Stack(d, cfg.depth, 1, mlp_ratio=cfg.mlp_ratio)
    grid = cfg.token_grid(cfg.input_shape)
    positions = grid[-1] * grid[-2] + (grid[0] if len(grid) == 3 else 0)  # clips: spatial + time embeddings
    patch = cfg.patch_size**2 * cfg.tubelet * cfg.in_chans * d + d
    return cfg.depth * stack.block_params + patch + positions * d + 2 * d


def _tokens(config: PretrainConfig, masks_config) -> tuple[int, int, int, int]:
    """(all tokens, most context tokens, tokens per target block, target blocks) of one training input."""
    from cxrjepa.pretrain.masks import block_masks

    grid = config.model.token_grid(config.model.input_shape)
    n = int(np.prod(grid))
    if masks_config is None:
        return n, n, 0, 0
    from cxrjepa.core.errors import CxrjepaError

    rng = np.random.default_rng(0)
    draws = []
    try:
        gen = block_masks(masks_config, grid)
        for _ in range(32):  # context and block sizes vary by batch: take the largest seen
            with contextlib.suppress(CxrjepaError):  # an unlucky draw is the run's to report, not the estimate's
                draws.append(gen(rng, 1))
    except CxrjepaError:
        pass
    if not draws:
        return n, n, n, int(masks_config.targets)
    context = max(int(m.context.shape[1]) for m in draws)
    target = max(int(m.targets.shape[2]) for m in draws)
    return n, context, target, int(masks_config.targets)


def _safetensors_params(path: Path) -> int | None:
    """Parameters in a safetensors file, from its header alone."""
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100 * 2**20:
                return None
            header = json.loads(fh.read(length))
    except (OSError, ValueError, struct.error):
        return None
    return sum(math.prod(v.get("shape", [])) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict))


def teacher_profile(spec: str, weights: str | None, config: PretrainConfig) -> tuple[int, Stack]:
    """(parameters, forward stack) of SALT's frozen teacher, read from its config or its weights' size."""
    from cxrjepa.encoders import parse_encoder_spec

    student = config.model
    grid = student.token_grid(student.input_shape)[-2:]
    frames = student.frames if student.is_clip else 1
    sp = parse_encoder_spec(spec, weights)
    cfg = None
    if sp.source == "random":
        arch = sp.target.split("/")
        if arch[0] in SIZES:
            cfg = EncoderConfig(
                size=arch[0], patch_size=int(arch[1]) if len(arch) > 1 else 16, image_size=student.image_size
            )
    if cfg is None and (sp.source == "cxrjepa" or (sp.source == "random" and Path(sp.target).exists())):
        from cxrjepa.core.config import from_dict
        from cxrjepa.models.export import CONFIG, find_export

        try:
            cfg = from_dict(EncoderConfig, json.loads((find_export(sp.target) / CONFIG).read_text())["encoder"])
        except Exception:  # unreadable here: the teacher's own loader says why, with the file's name
            cfg = None
    if cfg is not None:
        size = config.salt.teacher.size or cfg.image_size
        tg = grid if config.salt.teacher.grid == "match" else (size // cfg.patch_size,) * 2
        return encoder_params(cfg), Stack(
            cfg.embed_dim, cfg.depth, int(np.prod(tg)), sequences=frames, mlp_ratio=cfg.mlp_ratio
        )
    # timm weights or a Hugging Face folder: parameters from the weights, width from the config if there is one
    files = (
        [Path(sp.weights)]
        if sp.weights
        else sorted(Path(sp.target).glob("*.safetensors")) or sorted(Path(sp.target).glob("*.bin"))
    )
    params = 0
    for f in files:
        n = _safetensors_params(f) if f.suffix == ".safetensors" else None
        params += n if n is not None else (f.stat().st_size // 4 if f.is_file() else 0)
    width, depth = 0, 12
    hf = Path(sp.target) / "config.json"
    if sp.source == "hf" and hf.is_file():
        try:
            meta = json.loads(hf.read_text())
            width, depth = int(meta.get("hidden_size", 0)), int(meta.get("num_hidden_layers", 12))
        except (ValueError, UnicodeDecodeError):
            pass
    width = width or max(64, int(math.sqrt(max(params, 1) / (12 * depth))))
    size = (config.salt.teacher.size or 518) if config.salt.teacher.grid == "resample" else None
    tokens = int(np.prod(grid)) if size is None else (size // 14) ** 2
    return params, Stack(width, depth, tokens, sequences=frames)


def estimate_pretrain(
    config: PretrainConfig,
    *,
    device: str,
    world: int,
    procs_per_node: int,
    frames: int,
    teacher: str | None = None,
    teacher_weights: str | None = None,
    grad_accum: int | None = None,
    checkpointing: bool | None = None,
) -> Estimate:
    """Peak memory of one training process of ``config`` (``grad_accum`` / ``checkpointing`` override the
    config's runtime settings, to find one that fits)."""
    model, rt = config.model, config.runtime
    accum = grad_accum or rt.grad_accum
    ckpt = rt.activation_checkpointing if checkpointing is None else checkpointing
    micro = max(1, math.ceil(config.train.batch_size / (max(world, 1) * max(accum, 1))))
    d = model.embed_dim
    section = getattr(config, config.objective, None)
    masks = getattr(section, "masks", None)
    head = getattr(section, "predictor", None) or getattr(section, "decoder", None)
    n, context, target, blocks = _tokens(config, masks)
    enc = Stack(d, model.depth, context, mlp_ratio=model.mlp_ratio)
    trained = [enc]
    p_trained = encoder_params(model)
    p_frozen = 0
    frozen_pass = 0
    if head is not None and blocks:
        out_dim = d
        if config.objective == "pixel":
            out_dim = model.patch_size**2 * model.tubelet * model.in_chans
        pred = Stack(head.width, head.depth, context + target, sequences=blocks, mlp_ratio=head.mlp_ratio)
        trained.append(pred)
        p_trained += head.depth * pred.block_params + d * head.width + head.width * out_dim + out_dim + 4 * head.width
    if config.objective == "salt" and teacher:
        p_frozen, tstack = teacher_profile(teacher, teacher_weights, config)
        frozen_pass = infer_activation_bytes(tstack, micro, device)
        frozen_bytes = (2 if device == "cuda" else FROZEN_PARAM_BYTES) * p_frozen
    elif config.objective != "pixel":  # I-JEPA's EMA target (and unknown objectives): a frozen copy on all tokens
        p_frozen = encoder_params(model)
        frozen_pass = infer_activation_bytes(Stack(d, model.depth, n, mlp_ratio=model.mlp_ratio), micro, device)
        frozen_bytes = FROZEN_PARAM_BYTES * p_frozen
    else:
        frozen_bytes = 0
    if ckpt:  # only each block's input is kept, and one block is recomputed at a time
        acts = sum(
            int(4 * micro * s.units + TRAIN_BYTES[device] * micro * s.sequences * s.tokens * s.width) for s in trained
        )
    else:
        acts = train_activation_bytes(trained, micro, device)
    pixels = int(np.prod(model.input_shape)) * model.in_chans
    watched = min(rt.monitor_batch, max(frames, 1))
    held = min(config.salt.holdout_items, frames) if config.objective == "salt" and config.salt.holdout else 0
    parts = {
        "runtime": BASE_BYTES if device == "cpu" else CUDA_RESERVE_BYTES,
        "trained parameters": TRAINED_PARAM_BYTES * p_trained,
        "frozen parameters": frozen_bytes,
        "activations": acts,
        "frozen forward": frozen_pass,
        "batches": 4 * pixels * (2 * micro + held) + int(4 * watched * (pixels + 2 * n * d)),
    }
    if device == "cpu":
        from cxrjepa.pretrain.data import default_workers

        workers = rt.workers if rt.workers is not None else default_workers(procs_per_node)
        parts["loader workers"] = workers * (WORKER_BYTES + 4 * pixels * micro * rt.prefetch)
    return Estimate(device, parts, processes=procs_per_node)


def checkpoint_bytes(est: Estimate, config: PretrainConfig) -> int:
    """Disk space of a run's checkpoints (weights and AdamW moments of the trained modules, an EMA target) kept at
    once, plus one being written and the export."""
    per = est.parts.get("trained parameters", 0) * 12 // TRAINED_PARAM_BYTES + est.parts.get("frozen parameters", 0)
    if config.objective == "salt":
        per -= est.parts.get("frozen parameters", 0)  # the teacher is an input, not saved
    return int(per * (config.runtime.keep_last + 2))


def check_pretrain_memory(
    config: PretrainConfig,
    *,
    device: str,
    world: int,
    procs_per_node: int,
    frames: int,
    teacher: str | None = None,
    teacher_weights: str | None = None,
    available: int | None = None,
) -> Estimate:
    """Refuse (exit 2, one sentence naming a setting that fits) a run whose estimate does not fit; returns it."""
    kw = {
        "device": device,
        "world": world,
        "procs_per_node": procs_per_node,
        "frames": frames,
        "teacher": teacher,
        "teacher_weights": teacher_weights,
    }
    est = estimate_pretrain(config, **kw)
    if not config.runtime.memory_check:
        return est
    from cxrjepa.core.memory import MARGIN, available_bytes

    have = available if available is not None else available_bytes(device)
    if have is None or est.total <= MARGIN * have:
        return est
    advice = []
    share = config.train.batch_size // max(world, 1)
    for accum in (2, 4, 8, 16, 32, 64, 128, 256):
        if accum <= config.runtime.grad_accum or share % accum:
            continue
        if estimate_pretrain(config, grad_accum=accum, **kw).total <= MARGIN * have:
            advice.append(f"--set runtime.grad_accum={accum} (the same training in smaller pieces)")
            break
    if (
        not advice
        and not config.runtime.activation_checkpointing
        and estimate_pretrain(config, checkpointing=True, grad_accum=share or 1, **kw).total <= MARGIN * have
    ):
        advice.append(f"--set runtime.grad_accum={share} --set runtime.activation_checkpointing=true")
    if device == "cpu":
        advice.append("a CPU-sized recipe such as --config recipes/cxr-small-cpu.yaml")
    else:
        advice.append("more GPUs (--gpus N) or --set runtime.strategy=fsdp")
    model = config.model
    what = (
        f"Pretraining {model.size} ViT/{model.patch_size} at {model.image_size} px with {config.train.batch_size} "
        f"images per step on {'the CPU' if device == 'cpu' else 'each GPU'}"
    )
    check_fits(est, what, advice, available=have)
    return est
