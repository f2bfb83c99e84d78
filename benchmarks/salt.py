"""Step cost of SALT vs I-JEPA on the same student encoder (CPU; GPU section when CUDA is present).

Each figure is the trainer's step on prepared batches -- objective loss, backward, AdamW with its parameter
groups, and (I-JEPA) the EMA update -- timed back to back in one process, so the ratios compare numbers taken
seconds apart. Rows:

* ``ijepa``               I-JEPA: context encoder + predictor trained, EMA target forward on the full image.
* ``pixel``               the stage-1 pixel-reconstruction teacher's own step (for budgeting SALT's stage 1).
* ``salt (teacher = student)``  SALT with a frozen teacher of the student's architecture, run live.
* ``salt (recipe teacher)``     SALT with the recipe's smaller teacher (fewer blocks), run live.
* ``salt (cached targets)``     SALT reading fp16 teacher targets (runtime.teacher_cache): no teacher forward.

Ratios are I-JEPA step time / row step time (> 1 = faster than I-JEPA). CPU time per step is measured with
``time.process_time`` as well, so a loaded machine changes wall time more than the ratios; the model-FLOP
ratio (the objectives' ``step_flops``: 3x forward for trained parts, 1x for the teacher/target forward) is
the noise-free expectation the timed ratios scatter around.

    PYTHONPATH=. python benchmarks/salt.py [--sections cpu,gpu] [--steps 20] [--threads 2] [--json out.json]

CPU timings on a machine shared with other jobs are noisy; run under ``flock /work/bench.lock`` there.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrjepa.core.config import load_config  # noqa: E402
from cxrjepa.models.export import Normalization, export_encoder  # noqa: E402
from cxrjepa.models.vit import EncoderConfig, create_vit  # noqa: E402
from cxrjepa.pretrain import PretrainConfig  # noqa: E402
from cxrjepa.pretrain.objectives import build_objective  # noqa: E402
from cxrjepa.pretrain.objectives.base import ObjectiveInputs, TrainEnv  # noqa: E402
from cxrjepa.pretrain.optim import build_optimizer  # noqa: E402

#: the CPU student of pipelines/us-salt-cpu.yaml (and the I-JEPA it is compared with): 4-block ViT-Tiny/8, 64 px
CPU_MODEL = {"size": "tiny", "layers": 4, "patch_size": 8, "image_size": 64, "pos_embed": "sincos"}
CPU_HEAD = {"depth": 2, "width": 96, "heads": 2}
CPU_MASKS = {"targets": 4, "target_scale": [0.15, 0.2], "min_context": 8}
#: the GPU student of pipelines/us-salt-vitb16.yaml: ViT-B/16 at 224 px, bf16
GPU_MODEL = {"size": "base", "patch_size": 16, "image_size": 224, "pos_embed": "sincos"}
GPU_HEAD = {"depth": 6, "width": 384}
GPU_MASKS = {"targets": 4, "target_scale": [0.15, 0.2], "min_context": 10}


def config(objective: str, model: dict, head: dict, masks: dict, batch: int) -> PretrainConfig:
    layers = [
        {
            "objective": objective,
            "model": model,
            "train": {"batch_size": batch},
            "ijepa": {"predictor": head, "masks": masks},
            "salt": {"predictor": head, "masks": masks, "holdout": 0.0, "export": "last"},
            "pixel": {"decoder": head, "masks": masks},
        }
    ]
    return load_config(PretrainConfig, layers=layers)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def teacher_export(folder: Path, model: dict, layers: int | None, size: str | None = None) -> Path:
    """A randomly initialised export of the teacher architecture (weights do not change a step's cost)."""
    cfg = EncoderConfig(**{**model, **({"layers": layers} if layers else {}), **({"size": size} if size else {})})
    export_encoder(create_vit(cfg), cfg, folder, Normalization())
    return folder


def measure(
    cfg: PretrainConfig,
    device: torch.device,
    steps: int,
    *,
    teacher: Path | None = None,
    cached: bool = False,
    amp: bool = False,
    warm: int = 3,
) -> dict:
    """Wall and CPU seconds per training step (loss + backward + AdamW + after_step) on prepared batches."""
    torch.manual_seed(0)
    inputs = ObjectiveInputs(teacher=str(teacher) if teacher else None, normalization={"mean": 0.5, "std": 0.25})
    obj = build_objective(cfg, inputs).to(device).train()
    dtype = torch.bfloat16 if amp else None
    obj.prepare(TrainEnv(device, dtype, None, None, None, cfg.runtime))
    opt = build_optimizer(obj.student, cfg.optim, fused=device.type == "cuda")
    b, size = cfg.train.batch_size, cfg.model.image_size
    grid = cfg.model.token_grid(cfg.model.input_shape)
    gen = obj.masks(grid)
    rng = np.random.default_rng(0)
    images = torch.randn(b, 1, size, size, device=device)
    batches = []
    for _ in range(warm + steps):
        m = gen(rng, b)
        batches.append(
            {
                "images": images,
                "context": torch.from_numpy(m.context).to(device),
                "targets": torch.from_numpy(m.targets).to(device),
            }
        )
    if cached:  # what the loader hands over from the cache: fp16 tokens of every frame
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            tokens = obj.teacher(images * 0.25 + 0.5, grid).to(torch.float16)
        tokens = tokens.clone()
        for bt in batches:
            bt["teacher_tokens"] = tokens

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = obj.loss(obj.student, batches[i])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        obj.after_step(i, 1000)

    for i in range(warm):
        step(i)
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(warm, warm + steps):
        step(i)
    sync(device)
    wall, cpu = (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps
    flops = sum(obj.step_flops(batches[i]) for i in range(warm, warm + steps)) / steps
    out = {"step_s": wall, "cpu_s": cpu, "images_per_s": b / wall, "gflop": flops / 1e9}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def section(
    device: torch.device,
    model: dict,
    head: dict,
    masks: dict,
    batch: int,
    steps: int,
    amp: bool,
    recipe_teacher: dict,
    tmp: Path,
) -> list[dict]:
    same = teacher_export(tmp / "same", model, None)
    small = teacher_export(tmp / "small", model, recipe_teacher.get("layers"), recipe_teacher.get("size"))
    rows = []
    plan = [
        ("ijepa", "ijepa", None, False),
        ("pixel (teacher stage 1, recipe size)", "pixel", None, False),
        ("salt (teacher = student architecture)", "salt", same, False),
        (f"salt (recipe teacher: {recipe_teacher})", "salt", small, False),
        ("salt (cached targets)", "salt", same, True),
    ]
    for name, objective, teacher, cached in plan:
        m = dict(model)
        if objective == "pixel":
            m.update(recipe_teacher)
        cfg = config(objective, m, head, masks, batch)
        r = measure(cfg, device, steps, teacher=teacher, cached=cached, amp=amp)
        rows.append({"row": name, **r})
    base = rows[0]["step_s"]
    base_cpu = rows[0]["cpu_s"]
    for r in rows:
        r["speedup_vs_ijepa"] = base / r["step_s"]
        r["cpu_speedup_vs_ijepa"] = base_cpu / r["cpu_s"] if r["cpu_s"] > 0 else None
        r["flop_ratio_vs_ijepa"] = rows[0]["gflop"] / r["gflop"] if r["gflop"] > 0 else None
    return rows


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}\n")
    print(
        "| step | wall s/step | CPU s/step | images/s | GFLOP/step | speed-up vs I-JEPA (wall) | (CPU time) "
        "| (model FLOPs) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = f"{r['cpu_speedup_vs_ijepa']:.2f}x" if r.get("cpu_speedup_vs_ijepa") else "-"
        flop = f"{r['flop_ratio_vs_ijepa']:.2f}x" if r.get("flop_ratio_vs_ijepa") else "-"
        print(
            f"| {r['row']} | {r['step_s']:.4f} | {r['cpu_s']:.4f} | {r['images_per_s']:.1f} | {r['gflop']:.1f} | "
            f"{r['speedup_vs_ijepa']:.2f}x | {cpu} | {flop} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", default="cpu,gpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32, help="CPU batch (GPU: 128)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is reliable on a shared machine: "
        "more threads spin-wait whenever another job holds a core)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="cxrjepa-salt-bench-") as tmp:
        tmp = Path(tmp)
        if "cpu" in args.sections:
            rows = section(
                torch.device("cpu"),
                CPU_MODEL,
                CPU_HEAD,
                CPU_MASKS,
                args.batch,
                args.steps,
                False,
                {"layers": 2},
                tmp / "cpu",
            )
            results["cpu"] = {"model": CPU_MODEL, "batch": args.batch, "rows": rows}
            print_rows(f"CPU: ViT-Tiny/8, 4 blocks, 64 px, batch {args.batch}, fp32, {args.threads} threads", rows)
        if "gpu" in args.sections:
            if torch.cuda.is_available():
                torch.backends.cuda.matmul.allow_tf32 = True
                rows = section(
                    torch.device("cuda"),
                    GPU_MODEL,
                    GPU_HEAD,
                    GPU_MASKS,
                    128,
                    args.steps,
                    True,
                    {"size": "small"},
                    tmp / "gpu",
                )
                results["gpu"] = {
                    "model": GPU_MODEL,
                    "batch": 128,
                    "device": torch.cuda.get_device_name(),
                    "rows": rows,
                }
                print_rows(f"GPU ({torch.cuda.get_device_name()}): ViT-B/16, 224 px, batch 128, bf16", rows)
            else:
                print("\n(GPU section skipped: no CUDA device)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
