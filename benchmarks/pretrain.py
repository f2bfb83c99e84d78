"""Pretraining throughput: cxrjepa's I-JEPA step, its data loader, and lightly's I-JEPA as a peer.

Every figure is measured in this run, and the ratios compare numbers taken seconds apart on the same machine.

Sections (``--sections``, comma-separated; default: all that can run here):

* ``cpu``     images/s of the ``tiny`` test config and the ``cxr-small-cpu`` recipe on the CPU: the training step
              alone (objective + backward + AdamW + EMA on a prepared batch) and end to end (``run_pretrain``
              with its loader, from the run's metrics).
* ``loader``  the data loader alone with default workers vs the training step, same recipe and image size
              (and the 224-px ViT-B/16 loader reading 256-px frames, the number a GPU step must be fed at).
* ``lightly`` cxrjepa vs lightly's I-JEPA (``lightly.models.modules`` timm I-JEPA: MaskedVisionTransformerTIMM +
              IJEPAPredictorTIMM, lightly's update_momentum, default AdamW) on the same timm ViT, the same images,
              masks, batch and precision: on the CPU at the small recipe's size (with ``cpu``, or on a machine
              without CUDA), and at ViT-B/16 224 px bf16 with ``gpu`` when CUDA is present. lightly is not a
              cxrjepa dependency (``pip install -e '.[bench]'``); without it the peer is recorded as not installed.
* ``gpu``     ViT-B/16 at 224 px, bf16, batch ``--gpu-batch``: images/s and MFU of each objective in
              ``--objectives`` (any registered name; default ijepa), eager and ``torch.compile`` per block
              (``--modes``). An objective's own recipe ``recipes/cxr-NAME-vitb16.yaml`` is used when there is one,
              else the I-JEPA ViT-B/16 recipe with ``objective=NAME`` (that objective's default settings; SALT
              gets a random teacher of the student's size).
              ``--if-registered`` records names missing from this checkout instead of refusing them.

Every objective's step is the trainer's: its objective built by name, batches from the trainer's data path
(dataset, sampler, collator: the objective's masks, views and per-frame extras) on a phantom dataset, staged on
the device beforehand; then loss, backward, AdamW with the schedule groups and the objective's update after
the step (EMA).

    PYTHONPATH=. python benchmarks/pretrain.py [--sections cpu,loader,lightly,gpu] [--steps 10] [--json out.json]
        [--objectives ijepa,lejepa [--if-registered]] [--gpu-batch 256] [--modes eager,compiled] [--dry-run]

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
import traceback
from importlib.util import find_spec
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
    Normalizer,
    PretrainImages,
    StepSampler,
    build_loader,
    default_workers,
    training_images,
)
from cxrjepa.pretrain.masks import MultiBlockMasks, block_masks  # noqa: E402
from cxrjepa.pretrain.monitors import MetricsLog, peak_flops  # noqa: E402
from cxrjepa.pretrain.objectives import OBJECTIVES, build_objective, objective_class  # noqa: E402
from cxrjepa.pretrain.objectives.base import ObjectiveInputs, TrainEnv  # noqa: E402
from cxrjepa.pretrain.optim import build_optimizer  # noqa: E402
from cxrjepa.runtime import DistInfo  # noqa: E402

SECTIONS = ("cpu", "loader", "lightly", "gpu")
MODES = ("eager", "compiled")

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


def objective_config(name: str, *sets: str) -> tuple[PretrainConfig, str]:
    """The ViT-B/16 224-px config of objective ``name`` and the recipe it came from: the objective's own
    ``recipes/cxr-NAME-vitb16.yaml`` when there is one, else the I-JEPA recipe's model, optimizer and batch
    with ``objective=NAME`` (the objective's own section at its defaults)."""
    own = ROOT / "recipes" / f"cxr-{name}-vitb16.yaml"
    if own.is_file():
        return recipe(own.stem, *sets), own.name
    return recipe("cxr-ijepa-vitb16", f"objective={name}", *sets), f"cxr-ijepa-vitb16.yaml with objective={name}"


def select_objectives(names: list[str], *, if_registered: bool) -> tuple[list[str], list[str]]:
    """(names to time, names missing from this checkout's registry). A missing name is an error unless
    ``if_registered`` (a check script that must run before and after an objective is merged)."""
    missing = [n for n in names if n not in OBJECTIVES]
    if missing and not if_registered:
        raise ValueError(
            f"Unknown objective {', '.join(missing)}; registered: {', '.join(sorted(OBJECTIVES))} "
            "(--if-registered skips names this checkout does not have)."
        )
    return [n for n in names if n in OBJECTIVES], missing


def stream_batches(
    cfg: PretrainConfig, data: DatasetArtifact, device: torch.device, n: int, masks, *, views=None, extras=None
) -> list[dict]:
    """The first ``n`` batches of the trainer's data stream (its dataset, step sampler and collator: crops,
    ``views`` for multi-view objectives, ``masks``, per-frame ``extras``), normalised and staged on
    ``device`` so that the timed loop measures the step alone."""
    images = training_images(cfg, data, extras=extras, **({"views": views} if views is not None else {}))
    batch = cfg.train.batch_size
    sampler = StepSampler(len(images), batch, cfg.train.seed, n)
    loader = build_loader(images, sampler, Collator(masks, batch, cfg.train.seed), workers=0, persistent=False)
    normalizer = Normalizer(data.normalization)
    out = []
    for b in loader:
        b = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}
        b["images"] = normalizer(b["images"])
        out.append(b)
    return out


def objective_step(
    cfg: PretrainConfig,
    data: DatasetArtifact,
    device: torch.device,
    steps: int,
    *,
    compile_blocks: bool = False,
    amp: bool = False,
    warm: int = 2,
    distinct: int = 8,
) -> dict:
    """Images/s (and MFU on a known GPU) of the trainer's step for ``cfg.objective`` at ``cfg.train.batch_size``:
    objective loss, backward, AdamW with schedule groups, the objective's update after the step (EMA). The
    batches are ``distinct`` batches of the trainer's data stream, reused in turn."""
    torch.manual_seed(0)
    # an objective that learns from a frozen teacher (SALT) gets a random one of the student's size: weights do
    # not change a step's cost (benchmarks/salt.py times SALT's other teachers and its cached targets)
    teacher = f"random:{cfg.model.size}" if getattr(objective_class(cfg.objective), "takes_inputs", False) else None
    inputs = ObjectiveInputs(normalization=dict(data.normalization), teacher=teacher)
    obj = build_objective(cfg, inputs).to(device).train()
    dtype = torch.bfloat16 if amp else None
    obj.prepare(TrainEnv(device, dtype, DistInfo(device=device), data, None, cfg.runtime))
    if compile_blocks:
        from cxrjepa.pretrain.parallel import compile_blocks as compile_all

        compile_all(obj)
    opt = build_optimizer(obj.student, cfg.optim, fused=device.type == "cuda")
    grid = cfg.model.token_grid(cfg.model.input_shape)
    views = obj.views() if hasattr(obj, "views") else None  # multi-view objectives (LeJEPA) name their views
    batches = stream_batches(
        cfg, data, device, min(warm + steps, distinct), obj.masks(grid), views=views, extras=obj.item_extras()
    )

    def step(i):
        with autocast(device, amp):
            loss, _ = obj.loss(obj.student, batches[i % len(batches)])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        obj.after_step(i, 1000)

    dt = time_loop(step, warm, steps, device)
    flops = np.mean([obj.step_flops(batches[i % len(batches)]) for i in range(warm, warm + steps)])
    out = {"images_per_s": cfg.train.batch_size / dt, "step_s": dt, "tflop_per_step": flops / 1e12}
    peak = peak_flops(device)
    if peak:
        out["mfu"] = flops / dt / peak
    return out


def lightly_step(
    cfg: PretrainConfig,
    data: DatasetArtifact,
    device: torch.device,
    steps: int,
    *,
    amp: bool = False,
    warm: int = 2,
    distinct: int = 8,
) -> dict:
    """lightly's timm I-JEPA (reference forward: target -> layer norm -> apply_masks; context encoder on kept
    tokens -> IJEPAPredictorTIMM), default AdamW, lightly.models.utils.update_momentum; the same ViT, and the
    same batches (images and I-JEPA masks) as :func:`objective_step` gives cxrjepa's I-JEPA."""
    from lightly.models import utils as lutils
    from lightly.models.modules.ijepa_timm import IJEPAPredictorTIMM
    from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM

    torch.manual_seed(0)
    batch = cfg.train.batch_size
    grid = cfg.model.token_grid(cfg.model.input_shape)
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
    batches = [
        (
            b["images"],
            [b["context"]],
            [b["targets"][:, j] for j in range(b["targets"].shape[1])],
        )
        for b in stream_batches(cfg, data, device, min(warm + steps, distinct), block_masks(cfg.ijepa.masks, grid))
    ]

    def step(i):
        images, masks_enc, masks_pred = batches[i % len(batches)]
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
    ap.add_argument("--sections", default="cpu,loader,lightly,gpu", help=f"comma-separated, of {', '.join(SECTIONS)}")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement (GPU: twice this)")
    ap.add_argument("--objectives", default="ijepa", help="gpu: registered objectives to time, comma-separated")
    ap.add_argument("--if-registered", action="store_true", help="gpu: record objectives this checkout lacks, not fail")
    ap.add_argument("--gpu-batch", type=int, default=256, help="gpu: batch size (the ViT-B/16 recipe's is 256)")
    ap.add_argument("--modes", default="eager,compiled", help=f"gpu: comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--dry-run", action="store_true", help="check the arguments, print what would run, and exit")
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    modes = args.modes.split(",")
    for bad, allowed, what in (
        (sections - set(SECTIONS), SECTIONS, "--sections"),
        (set(modes) - set(MODES), MODES, "--modes"),
    ):
        if bad:
            ap.error(f"{what}: unknown {', '.join(sorted(bad))} (choose from {', '.join(allowed)})")
    if args.steps < 1 or args.gpu_batch < 1:
        ap.error("--steps and --gpu-batch must be positive")
    try:
        objectives, missing = select_objectives(args.objectives.split(","), if_registered=args.if_registered)
    except ValueError as e:
        ap.error(str(e))
    cuda = torch.cuda.is_available()
    if args.dry_run:
        print(
            f"pretrain.py would run sections {','.join(s for s in SECTIONS if s in sections)} "
            f"(CUDA {'present' if cuda else 'absent: the gpu section is skipped'}); gpu: objectives "
            f"{','.join(objectives) or 'none'} (not in this checkout: {','.join(missing) or 'none'}), modes "
            f"{','.join(modes)}, batch {args.gpu_batch}, {2 * args.steps} timed steps; lightly "
            f"{'installed' if find_spec('lightly') else 'not installed'}"
        )
        return {}
    cpu = torch.device("cpu")
    results: dict = {"threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if cuda else None}
    small = recipe("cxr-small-cpu")
    small_batch = small.train.batch_size
    small_data = None
    peer = find_spec("lightly") is not None
    peer_missing = "peer not installed (lightly: pip install -e '.[bench]')"

    if "cpu" in sections or "loader" in sections or ("lightly" in sections and not cuda):
        small_data = phantom_dataset(tmp / "small", 512, 96)

    if "cpu" in sections:
        print("== CPU: training step and end to end (images/s)")
        tiny_data = phantom_dataset(tmp / "tiny", 128, 40)
        for name, data, batch in (("tiny", tiny_data, 8), ("cxr-small-cpu", small_data, small_batch)):
            step = objective_step(recipe(name), DatasetArtifact.open(data), cpu, args.steps)
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
        step = results.get("cpu_cxr-small-cpu", {}).get("step") or objective_step(
            small, DatasetArtifact.open(small_data), cpu, args.steps
        )
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

    if "lightly" in sections and ("cpu" in sections or not cuda):
        print("== cxrjepa vs lightly I-JEPA on the CPU (same ViT, images, masks, batch, precision)")
        if peer:
            data = DatasetArtifact.open(small_data)
            a = objective_step(small, data, cpu, args.steps)
            b = lightly_step(small, data, cpu, args.steps)
            results["lightly_cpu_small"] = {"cxrjepa": a, "lightly": b, "ratio": a["images_per_s"] / b["images_per_s"]}
            print(
                f"  CPU cxr-small-cpu fp32: cxrjepa {fmt(a['images_per_s'])} img/s, lightly "
                f"{fmt(b['images_per_s'])} img/s  -> {a['images_per_s'] / b['images_per_s']:.2f}x"
            )
        else:
            results["lightly_cpu_small"] = {"error": peer_missing}
            print(f"  {peer_missing}")

    if cuda and "gpu" in sections:
        results["gpu_vitb16"] = gpu_section(args, objectives, missing, modes, "lightly" in sections, tmp)
        comp = results["gpu_vitb16"]["objectives"].get("ijepa", {}).get("compiled", {})
        if "loader" in sections and "images_per_s" in comp:
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


def gpu_section(args, objectives: list[str], missing: list[str], modes: list[str], with_peer: bool, tmp: Path) -> dict:
    """ViT-B/16 224 px bf16: each objective's step in each mode, then lightly's I-JEPA on the same batches.
    A measurement that fails (out of memory, an objective's error) is recorded with its error and the next
    one runs."""
    gpu = torch.device("cuda", 0)
    torch.backends.cuda.matmul.allow_tf32 = True
    batch = args.gpu_batch
    data = DatasetArtifact.open(phantom_dataset(tmp / "gpu", batch, 256))
    out: dict = {"batch": batch, "image_size": 224, "steps": 2 * args.steps, "objectives": {}}
    if missing:
        out["not_registered"] = missing
    print(f"== GPU {torch.cuda.get_device_name(0)}: ViT-B/16 224 px, bf16, batch {batch}")
    if missing:
        print(f"  not in this checkout: {', '.join(missing)}")

    def measure(label: str, fn) -> dict:
        try:
            r = fn()
        except Exception as e:  # one failed figure must not lose the others
            traceback.print_exc()
            r = {"error": f"{type(e).__name__}: {e}"[:500]}
        release(gpu)
        mfu = f"MFU {r['mfu']:.1%}" if "mfu" in r else ""
        shown = f"{fmt(r['images_per_s'])} img/s  {mfu}" if "images_per_s" in r else f"failed: {r['error']}"
        print(f"  {label:28s} {shown}")
        return r

    for name in objectives:
        cfg, source = objective_config(name, f"train.batch_size={batch}")
        entry = out["objectives"][name] = {"recipe": source}
        for mode in modes:
            compiled = mode == "compiled"
            entry[mode] = measure(
                f"{name} {mode}",
                lambda cfg=cfg, compiled=compiled: objective_step(
                    cfg,
                    data,
                    gpu,
                    2 * args.steps,
                    amp=True,
                    compile_blocks=compiled,
                    warm=8 if compiled else 3,
                ),
            )
    if with_peer:
        if find_spec("lightly") is None:
            out["lightly"] = {"error": "peer not installed (lightly: pip install -e '.[bench]')"}
            print(f"  lightly: {out['lightly']['error']}")
        else:
            vitb = recipe("cxr-ijepa-vitb16", f"train.batch_size={batch}")
            out["lightly"] = peer = measure(
                "lightly I-JEPA eager", lambda: lightly_step(vitb, data, gpu, 2 * args.steps, amp=True, warm=3)
            )
            ours = out["objectives"].get("ijepa", {})
            ratios = {
                mode: ours[mode]["images_per_s"] / peer["images_per_s"]
                for mode in modes
                if "images_per_s" in ours.get(mode, {}) and "images_per_s" in peer
            }
            if ratios:
                peer["cxrjepa_ratio"] = ratios
                print("  cxrjepa I-JEPA vs lightly: " + ", ".join(f"{m} {r:.2f}x" for m, r in ratios.items()))
    return out


if __name__ == "__main__":
    main()
