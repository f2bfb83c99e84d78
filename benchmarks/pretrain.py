"""Pretraining throughput: cxrjepa's I-JEPA step, its data loader, and lightly's I-JEPA as a peer.

Every figure is measured in this run, and the ratios compare numbers taken seconds apart on the same machine.

Sections (``--sections``, comma-separated; default: all that can run here):

* ``cpu``     images/s of the ``tiny`` test config and the ``cxr-small-cpu`` recipe on the CPU: the training step
              alone (objective + backward + AdamW + EMA on a prepared batch) and end to end (``run_pretrain``
              with its loader, from the run's metrics).
* ``loader``  the data loader alone with default workers vs the training step, same recipe and image size
              (and the 224-px ViT-B/16 loader reading 256-px frames, the number a GPU step must be fed at).
* ``lightly`` cxrjepa vs lightly's I-JEPA (``lightly.models.modules`` timm I-JEPA: MaskedVisionTransformerTIMM +
              IJEPAPredictorTIMM, lightly's update_momentum, default AdamW) on the same timm ViT, the same masks,
              batch and precision. CPU at the small recipe's size; GPU at ViT-B/16 224 px bf16 when CUDA is present.
* ``gpu``     ViT-B/16 at 224 px, bf16, batch 256: images/s and MFU, eager and ``torch.compile`` per block.

    PYTHONPATH=. python benchmarks/pretrain.py [--sections cpu,loader,lightly,gpu] [--steps 10] [--json out.json]

CPU numbers on a shared machine are noisy; the ratios are the meaningful part.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrjepa.core.config import load_config  # noqa: E402
from cxrjepa.data.store import DatasetArtifact, write_dataset  # noqa: E402
from cxrjepa.models.vit import create_vit  # noqa: E402
from cxrjepa.pretrain import PretrainConfig, PretrainOptions, run_pretrain  # noqa: E402
from cxrjepa.pretrain.data import (  # noqa: E402
    Collator,
    FrameCache,
    PretrainImages,
    StepSampler,
    build_loader,
    default_workers,
)
from cxrjepa.pretrain.masks import MultiBlockMasks  # noqa: E402
from cxrjepa.pretrain.monitors import MetricsLog, peak_flops  # noqa: E402
from cxrjepa.pretrain.objectives.ijepa import IJEPA  # noqa: E402
from cxrjepa.pretrain.optim import build_optimizer  # noqa: E402

TINY = {
    "model": {"size": "tiny", "patch_size": 8, "image_size": 32, "layers": 2},
    "ijepa": {"predictor": {"depth": 1, "width": 32, "heads": 2}, "masks": {"min_context": 4}},
    "train": {"batch_size": 8},
}


def recipe(name: str, *sets: str) -> PretrainConfig:
    if name == "tiny":
        return load_config(PretrainConfig, layers=[TINY], overrides=list(sets))
    return load_config(PretrainConfig, files=[ROOT / "recipes" / f"{name}.yaml"], overrides=list(sets))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mask_sets(cfg: PretrainConfig, batch: int, n: int, seed: int = 0):
    size = cfg.model.image_size
    gen = MultiBlockMasks(cfg.ijepa.masks, cfg.model.token_grid((size, size)))
    rng = np.random.default_rng(seed)
    return [gen(rng, batch) for _ in range(n)]


def autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


def release(device: torch.device) -> None:
    """Free one model's GPU memory before the next is built."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def time_loop(step, n_warm: int, n_steps: int, device: torch.device) -> float:
    """Seconds per step of ``step(i)`` after ``n_warm`` warm-up calls."""
    for i in range(n_warm):
        step(i)
    sync(device)
    t = time.perf_counter()
    for i in range(n_warm, n_warm + n_steps):
        step(i)
    sync(device)
    return (time.perf_counter() - t) / n_steps


def cxrjepa_step(
    cfg: PretrainConfig,
    batch: int,
    device: torch.device,
    steps: int,
    *,
    compile_blocks: bool = False,
    amp: bool = False,
    warm: int = 2,
) -> dict:
    """The trainer's step (objective loss, backward, AdamW with schedule groups, EMA) on prepared batches."""
    torch.manual_seed(0)
    obj = IJEPA(cfg).to(device).train()
    if compile_blocks:
        from cxrjepa.pretrain.parallel import compile_blocks as compile_all

        compile_all(obj)
    opt = build_optimizer(obj.student, cfg.optim, fused=device.type == "cuda")
    size = cfg.model.image_size
    images = torch.randn(batch, 1, size, size, device=device)
    masks = mask_sets(cfg, batch, warm + steps)
    batches = [
        {
            "images": images,
            "context": torch.from_numpy(m.context).to(device),
            "targets": torch.from_numpy(m.targets).to(device),
        }
        for m in masks
    ]

    def step(i):
        with autocast(device, amp):
            loss, _ = obj.loss(obj.student, batches[i])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        obj.after_step(i, 1000)

    dt = time_loop(step, warm, steps, device)
    flops = np.mean([obj.step_flops(b) for b in batches[warm:]])
    out = {"images_per_s": batch / dt, "step_s": dt, "tflop_per_step": flops / 1e12}
    peak = peak_flops(device)
    if peak:
        out["mfu"] = flops / dt / peak
    return out


def lightly_step(
    cfg: PretrainConfig, batch: int, device: torch.device, steps: int, *, amp: bool = False, warm: int = 2
) -> dict:
    """lightly's timm I-JEPA (reference forward: target -> layer norm -> apply_masks; context encoder on kept
    tokens -> IJEPAPredictorTIMM), default AdamW, lightly.models.utils.update_momentum; same ViT and masks."""
    from lightly.models import utils as lutils
    from lightly.models.modules.ijepa_timm import IJEPAPredictorTIMM
    from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM

    torch.manual_seed(0)
    size = cfg.model.image_size
    grid = cfg.model.token_grid((size, size))
    encoder = MaskedVisionTransformerTIMM(
        create_vit(cfg.model), weight_initialization="skip", pos_embed_initialization="skip"
    ).to(device)
    target = copy.deepcopy(encoder).requires_grad_(False)
    p = cfg.ijepa.predictor
    predictor = IJEPAPredictorTIMM(
        num_patches=grid[0] * grid[1],
        depth=p.depth,
        mlp_dim=cfg.model.embed_dim,
        predictor_embed_dim=p.width,
        num_heads=p.num_heads,
    ).to(device)
    params = list(encoder.parameters()) + list(predictor.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay[0])
    images = torch.randn(batch, 1, size, size, device=device)
    masks = mask_sets(cfg, batch, warm + steps)
    batches = [
        (
            [torch.from_numpy(m.context).to(device)],
            [torch.from_numpy(m.targets[:, j]).to(device) for j in range(m.targets.shape[1])],
        )
        for m in masks
    ]

    def step(i):
        masks_enc, masks_pred = batches[i]
        with autocast(device, amp):
            with torch.no_grad():
                h = target.encode(images)
                h = F.layer_norm(h, (h.size(-1),))
                h = lutils.apply_masks(h, masks_pred)
                h = lutils.repeat_interleave_batch(h, batch, repeat=len(masks_enc))
            z = encoder.encode(images, idx_keep=masks_enc[0])
            z = predictor(z, masks_enc, masks_pred)
            loss = F.smooth_l1_loss(z.float(), h.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            lutils.update_momentum(encoder, target, 0.996)

    dt = time_loop(step, warm, steps, device)
    return {"images_per_s": batch / dt, "step_s": dt}


def phantom_dataset(folder: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.where(((xx - 0.5) / 0.45) ** 2 + ((yy - 0.5) / 0.48) ** 2 < 1, 170, 25).astype(np.float32)
    images = np.clip(base[None] + rng.normal(0, 20, (n, size, size)), 0, 255).astype(np.uint8)
    write_dataset(folder, images)
    return folder


def loader_rate(
    cfg: PretrainConfig, data: Path, batch: int, batches: int, workers: int | None = None, cache_dir: Path | None = None
) -> dict:
    ds = DatasetArtifact.open(data)
    workers = default_workers(1) if workers is None else workers
    cache = None
    if cache_dir is not None:
        cache = FrameCache(cache_dir, ds)
        cache.build()
    images = PretrainImages(ds, cfg.model.image_size, cfg.augment, seed=0, cache=cache)
    size = cfg.model.image_size
    sampler = StepSampler(len(images), batch, 0, batches + 2)
    loader = build_loader(
        images,
        sampler,
        Collator(MultiBlockMasks(cfg.ijepa.masks, cfg.model.token_grid((size, size))), batch, 0),
        workers=workers,
        persistent=False,
    )
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t
    return {"images_per_s": batches * batch / dt, "workers": workers}


def end_to_end(cfg_name: str, data: Path, steps: int, tmp: Path) -> dict:
    cfg = recipe(
        cfg_name,
        "runtime.log_every=1000",
        "runtime.monitor_every=0",
        "runtime.checkpoint_every=100000",
        "runtime.monitor_batch=8",
        "runtime.collapse_std=0",
        "runtime.collapse_rank=0",
        "runtime.collapse_rank_drop=0",
    )  # a throughput run on noise phantoms: no collapse alarms
    run = run_pretrain(tmp / f"run-{cfg_name}", cfg, data=data, options=PretrainOptions(gpus=0, max_steps=steps))
    rows = [r for r in MetricsLog.read(run.path) if "images_per_s" in r]
    return {"images_per_s": rows[-1]["images_per_s"], "steps": steps}


def fmt(x: float) -> str:
    return f"{x:,.1f}"


def main(argv: list[str] | None = None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="cxrjepa-bench-"))
    try:
        return _main(argv, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _main(argv: list[str] | None, tmp: Path) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", default="cpu,loader,lightly,gpu")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    cuda = torch.cuda.is_available()
    cpu = torch.device("cpu")
    results: dict = {"threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if cuda else None}
    small = recipe("cxr-small-cpu")
    small_batch = small.train.batch_size
    small_data = None

    if "cpu" in sections or "loader" in sections:
        small_data = phantom_dataset(tmp / "small", 512, 96)

    if "cpu" in sections:
        print("== CPU: training step and end to end (images/s)")
        tiny_data = phantom_dataset(tmp / "tiny", 128, 40)
        for name, data, batch in (("tiny", tiny_data, 8), ("cxr-small-cpu", small_data, small_batch)):
            step = cxrjepa_step(recipe(name), batch, cpu, args.steps)
            e2e = end_to_end(name, data, args.steps + 2, tmp)
            results[f"cpu_{name}"] = {"step": step, "end_to_end": e2e}
            print(
                f"  {name:14s} step {fmt(step['images_per_s'])} img/s   end to end {fmt(e2e['images_per_s'])} img/s"
                f"   (batch {batch}, {step['tflop_per_step'] * 1e3:.1f} GFLOP/step,"
                f" {step['tflop_per_step'] * 1e3 / step['step_s']:.1f} GFLOP/s)"
            )

    if "loader" in sections:
        print("== Loader alone vs training step (default workers)")
        workers = default_workers(1)
        load = loader_rate(small, small_data, small_batch, max(args.steps, 10))
        step = results.get("cpu_cxr-small-cpu", {}).get("step") or cxrjepa_step(small, small_batch, cpu, args.steps)
        ratio = load["images_per_s"] / step["images_per_s"]
        results["loader_cxr-small-cpu"] = {**load, "step_images_per_s": step["images_per_s"], "ratio": ratio}
        print(
            f"  cxr-small-cpu  loader {fmt(load['images_per_s'])} img/s ({workers} workers) vs step "
            f"{fmt(step['images_per_s'])} img/s  -> {ratio:.1f}x"
        )
        big = recipe("cxr-ijepa-vitb16")
        big_data = phantom_dataset(tmp / "big", 512, 256)
        for label, cache in (("zarr", None), ("frame cache", tmp / "cache")):
            load = loader_rate(big, big_data, 64, 8, cache_dir=cache)
            results[f"loader_vitb16_224_{label.replace(' ', '_')}"] = load
            print(
                f"  vitb16 224 px  loader {fmt(load['images_per_s'])} img/s from 256-px frames, {label} "
                f"({load['workers']} workers here; {fmt(load['images_per_s'] / max(load['workers'], 1))} img/s per worker)"
            )

    if "lightly" in sections:
        print("== cxrjepa vs lightly I-JEPA (same ViT, masks, batch, precision)")
        a = cxrjepa_step(small, small_batch, cpu, args.steps)
        b = lightly_step(small, small_batch, cpu, args.steps)
        results["lightly_cpu_small"] = {"cxrjepa": a, "lightly": b, "ratio": a["images_per_s"] / b["images_per_s"]}
        print(
            f"  CPU cxr-small-cpu fp32: cxrjepa {fmt(a['images_per_s'])} img/s, lightly {fmt(b['images_per_s'])} img/s"
            f"  -> {a['images_per_s'] / b['images_per_s']:.2f}x"
        )

    if cuda and ("gpu" in sections or "lightly" in sections):
        gpu = torch.device("cuda", 0)
        torch.backends.cuda.matmul.allow_tf32 = True
        vitb = recipe("cxr-ijepa-vitb16")
        batch = 256
        print(f"== GPU {results['cuda']}: ViT-B/16 224 px, bf16, batch {batch}")
        eager = cxrjepa_step(vitb, batch, gpu, args.steps * 2, amp=True, warm=3)
        release(gpu)
        comp = cxrjepa_step(vitb, batch, gpu, args.steps * 2, amp=True, compile_blocks=True, warm=8)
        release(gpu)
        results["gpu_vitb16"] = {"eager": eager, "compiled": comp}
        for name, r in (("eager", eager), ("compiled", comp)):
            mfu = f"{r['mfu']:.1%}" if "mfu" in r else "n/a"
            print(f"  cxrjepa {name:9s} {fmt(r['images_per_s'])} img/s  MFU {mfu}")
        if "lightly" in sections:
            peer = lightly_step(vitb, batch, gpu, args.steps * 2, amp=True, warm=3)
            results["gpu_vitb16"]["lightly"] = peer
            print(
                f"  lightly   eager     {fmt(peer['images_per_s'])} img/s  -> cxrjepa eager "
                f"{eager['images_per_s'] / peer['images_per_s']:.2f}x, compiled {comp['images_per_s'] / peer['images_per_s']:.2f}x"
            )
        if "loader" in sections:
            need = comp["images_per_s"] * 2
            for key in ("loader_vitb16_224_zarr", "loader_vitb16_224_frame_cache"):
                load = results[key]
                per_worker = load["images_per_s"] / max(load["workers"], 1)
                print(
                    f"  loader headroom ({key.split('224_')[1]}): {default_workers(1)} default workers x "
                    f"{fmt(per_worker)} img/s per worker vs 2 x compiled step = {fmt(need)} img/s"
                )
    elif "gpu" in sections:
        print("== GPU: no CUDA device here; skipped")

    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return results


if __name__ == "__main__":
    main()
