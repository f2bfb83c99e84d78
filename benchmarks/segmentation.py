"""Lung segmentation from frozen patch tokens vs a segmentation network trained from scratch, same CPU budget.

    pip download torchxrayvision --no-deps -d /tmp/txv          # ships data/semantic_masks_v7labs_lungs.zip
    unzip -j /tmp/txv/torchxrayvision-*.whl 'torchxrayvision/data/semantic_masks_v7labs_lungs.zip' -d /tmp/txv
    unzip -q /tmp/txv/semantic_masks_v7labs_lungs.zip -d /tmp/v7masks
    python benchmarks/segmentation.py --images /work/shared/data/covid_chestxray_ieee8023 \\
        --masks /tmp/v7masks/semantic_masks_v7labs_lungs --work /tmp/segbench --budget-s 600 \\
        --write benchmarks/results/segmentation.md

Steps (each a cxrjepa command, printed and written to the results file):

1. ``cxrjepa ingest`` the ieee8023 images (all of them: pretraining is unlabeled) with ``--masks lung=DIR``
   (V7 Labs lung masks named after the images) and the dataset's patient ids (for patient-level splits);
2. ``cxrjepa pretrain`` I-JEPA (``--pretrain-config``, default benchmarks/configs/segmentation-cpu.yaml)
   with ``train.steps`` chosen so training takes about ``--budget-s`` seconds (a 10-step calibration run);
3. ``cxrjepa embed --patch-tokens`` with (a) the pretrained encoder and (b) the same architecture randomly
   initialised (``random:RUN``);
4. ``cxrjepa probe --task segmentation`` on both, on one patient-level split (the second reuses the first's
   split.csv): a linear head per patch and a small conv head, test Dice/IoU with patient-bootstrap intervals;
5. (c) a U-Net (segmentation_models_pytorch, ResNet-18 encoder, random init, 1 input channel) trained from
   scratch on the same training images for the same ``--budget-s`` seconds of wall time, the epoch with the
   best validation Dice kept, scored on the same test images with the same Dice/IoU code.

Timings on a 2-core machine shared with other jobs are noisy; the budget is wall time, so a busier machine
gives every contender fewer steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CXRJEPA_SALT", "benchmark-salt-not-secret")


def sh(cmd: list[str], log: list[str]) -> float:
    """Run a cxrjepa command (printed and recorded); returns its wall time."""
    text = "cxrjepa " + " ".join(str(c) for c in cmd)
    print(f"$ {text}", flush=True)
    log.append(text)
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "cxrjepa", *map(str, cmd)], env={**os.environ, "PYTHONPATH": str(ROOT)})  # noqa: S603
    if res.returncode not in (0, 3):
        raise SystemExit(f"command failed ({res.returncode}): {text}")
    return time.time() - t0


def patient_csv(images_root: Path, out: Path) -> Path:
    """The dataset's labels.csv reduced to the file name and the patient (for patient-level splits)."""
    import pandas as pd

    df = pd.read_csv(images_root / "labels.csv", dtype=str)
    df = pd.DataFrame({"file": df["file"].str.rsplit("/", n=1).str[-1], "patient_id": df["patient_id"]})
    path = out / "patients.csv"
    df.to_csv(path, index=False)
    return path


def calibrate(work: Path, data: Path, config: Path, budget: float, log: list[str]) -> tuple[int, float]:
    """Seconds per pretraining step (10 steps after 2 warm-up steps) -> steps that fit the budget."""
    cal = work / "calibration"
    t_short = sh(
        [
            "pretrain",
            "--data",
            data,
            "--out",
            cal / "a",
            "--config",
            config,
            "--set",
            "train.steps=2",
            "--quiet",
            "--force",
        ],
        [],
    )
    t_long = sh(
        [
            "pretrain",
            "--data",
            data,
            "--out",
            cal / "b",
            "--config",
            config,
            "--set",
            "train.steps=12",
            "--quiet",
            "--force",
        ],
        [],
    )
    per_step = max((t_long - t_short) / 10.0, 1e-3)
    steps = max(20, int(budget / per_step))
    log.append(f"# calibration: {per_step:.2f} s per step -> train.steps={steps} for a {budget:.0f} s budget")
    return steps, per_step


# ---------------------------------------------------------------- (c) a U-Net from scratch


def unet_baseline(data: Path, split_csv: Path, budget: float, seed: int = 0, batch: int = 8) -> dict:
    """U-Net (ResNet-18 encoder, random init) trained on the split's training images for ``budget`` seconds."""
    import numpy as np
    import pandas as pd
    import segmentation_models_pytorch as smp
    import torch

    from cxrjepa.data.store import DatasetArtifact
    from cxrjepa.probe import seg_metrics
    from cxrjepa.probe.segmentation import seg_loss

    torch.manual_seed(seed)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ds = DatasetArtifact.open(data)
    meta = ds.meta
    split = pd.read_csv(split_csv, dtype=str).set_index("sample_id")["split"]
    has = meta["has_mask"].astype(bool).to_numpy()
    side = meta["sample_id"].map(split).fillna("").to_numpy()
    idx = {s: np.flatnonzero(has & (side == s)) for s in ("train", "val", "test")}
    starts = meta["frame_start"].to_numpy()
    x = np.stack([np.asarray(ds.images[int(starts[i])]) for i in range(len(meta))]).astype(np.float32) / ds.max_value
    y = np.stack([np.asarray(ds.masks[int(starts[i])]) for i in range(len(meta))]).astype(np.int64)
    y = np.where(y == 255, 255, (y > 0).astype(np.int64))
    norm = ds.normalization
    x = (x - norm["mean"]) / norm["std"]
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=2)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    rng = np.random.default_rng(seed)

    def predict(rows: np.ndarray) -> np.ndarray:
        model.eval()
        out = []
        with torch.inference_mode():
            for lo in range(0, len(rows), 16):
                out.append(model(torch.from_numpy(x[rows[lo : lo + 16]][:, None])).argmax(1).numpy().astype(np.uint8))
        model.train()
        return np.concatenate(out)

    def dice_of(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inter, p, t = seg_metrics.confusion_counts(predict(rows), y[rows], 2)
        return seg_metrics.dice_iou(inter[:, 1:], p[:, 1:], t[:, 1:])

    sel = idx["val"] if len(idx["val"]) else idx["train"]
    best, best_state, epochs, steps = -1.0, None, 0, 0
    t0 = time.time()
    model.train()
    while time.time() - t0 < budget:
        order = rng.permutation(idx["train"])
        for lo in range(0, len(order), batch):
            b = np.sort(order[lo : lo + batch])
            if len(b) < 2:
                continue
            logits = model(torch.from_numpy(x[b][:, None]))
            loss = seg_loss(logits, torch.from_numpy(y[b]), "ce+dice")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if time.time() - t0 >= budget:
                break
        epochs += 1
        d, _ = dice_of(sel)
        val = float(np.nanmean(d))
        if val > best:
            best, best_state = val, {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_s = time.time() - t0
    model.load_state_dict(best_state)
    dice, iou = dice_of(idx["test"])
    patients = meta["patient_key"].astype(str).to_numpy()[idx["test"]]
    ev = seg_metrics.evaluate(dice, iou, patients, ["lung"], n_boot=1000, seed=seed)
    return {
        "metrics": ev["metrics"],
        "epochs": epochs,
        "steps": steps,
        "train_s": train_s,
        "val_dice": best,
        "params": n_params,
        "n": {k: int(len(v)) for k, v in idx.items()},
    }


# ---------------------------------------------------------------- report


def fmt(m: dict) -> str:
    ci = m.get("ci")
    return f"{m['value']:.3f} ({ci[0]:.3f}–{ci[1]:.3f})" if ci else f"{m['value']:.3f}"


def write_results(path: Path, args, log: list[str], rows: list[tuple], info: dict) -> None:
    n = info["n"]
    lines = [
        "# Lung segmentation: frozen cxrjepa patch tokens vs a U-Net from scratch",
        "",
        f"Data: the {info['images']} images of the ieee8023 COVID chest X-ray set in `shared/data/covid_chestxray_ieee8023`; "
        f"{info['masks']} of them have a V7 Labs lung mask (`semantic_masks_v7labs_lungs.zip` shipped in the torchxrayvision "
        "wheel). Pretraining uses all images without labels; segmentation uses the images with masks, split by patient "
        f"(train {n['train']}, val {n['val']}, test {n['test']} images). Stored at {args.size} px.",
        "",
        f"Budget: {args.budget_s:.0f} s of wall time, {args.threads} CPU thread(s) each, on a shared 2-core machine, for pretraining (a) "
        "and for training the U-Net (c); "
        f"the probes' heads add {info['probe_s']:.0f} s (a) and {info['probe_random_s']:.0f} s (b). "
        f"Pretraining ran {info['steps']} steps ({info['per_step']:.2f} s/step, batch {info['batch']}); "
        f"the U-Net ran {info['unet']['steps']} steps ({info['unet']['epochs']} epochs). "
        "The machine was shared with other jobs: timings are noisy, and a busier machine gives every contender fewer steps.",
        "",
        "| encoder / model | head | trained parameters | test Dice (95 % CI) | test IoU (95 % CI) |",
        "|---|---|---|---|---|",
    ]
    for name, head, params, dice, iou in rows:
        lines.append(f"| {name} | {head} | {params} | {dice} | {iou} |")
    lines += [
        "",
        "Dice and IoU are means over test images (lung = foreground), 95 % intervals from 1000 patient-level bootstrap "
        "resamples; heads and U-Net epoch chosen on the validation images.",
        "",
        "## Commands",
        "",
        "```bash",
        *log,
        f"# (c) U-Net: benchmarks/segmentation.py unet_baseline(), {args.budget_s:.0f} s, batch 8, AdamW 1e-3, CE + Dice, "
        f"OMP_NUM_THREADS={args.threads}",
        "```",
        "",
        "Reproduce everything with:",
        "",
        "```bash",
        "python " + " ".join(sys.argv),
        "```",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=Path("/work/shared/data/covid_chestxray_ieee8023"))
    ap.add_argument("--masks", type=Path, required=True, help="folder of the unzipped V7 Labs lung masks")
    ap.add_argument("--work", type=Path, default=Path("/tmp/segbench"))
    ap.add_argument("--budget-s", type=float, default=600.0, help="wall seconds for pretraining and for the U-Net each")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--pretrain-config", type=Path, default=ROOT / "benchmarks" / "configs" / "segmentation-cpu.yaml")
    ap.add_argument("--steps", type=int, default=0, help="pretraining steps (0: calibrated to the budget)")
    ap.add_argument("--write", type=Path, default=None, help="write the results table (Markdown) here")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of every contender (on a busy 2-core machine 2 threads ran 4x slower than 1)",
    )
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    labels = patient_csv(args.images, w)
    data = w / "dataset"
    sh(
        [
            "ingest",
            args.images / "images",
            "--out",
            data,
            "--masks",
            f"lung={args.masks}",
            "--labels",
            labels,
            "--key",
            "filename",
            "--size",
            args.size,
            "--quiet",
        ],
        log,
    )
    from cxrjepa.data.store import DatasetArtifact

    dsa = DatasetArtifact.open(data)
    steps, per_step = (
        (args.steps, float("nan")) if args.steps else calibrate(w, data, args.pretrain_config, args.budget_s, log)
    )
    run = w / "run"
    t_pre = sh(
        [
            "pretrain",
            "--data",
            data,
            "--out",
            run,
            "--config",
            args.pretrain_config,
            "--set",
            f"train.steps={steps}",
            "--quiet",
        ],
        log,
    )
    emb, emb_r = w / "emb", w / "emb-random"
    sh(["embed", "--encoder", run, "--data", data, "--out", emb, "--patch-tokens", "--device", "cpu", "--quiet"], log)
    sh(
        [
            "embed",
            "--encoder",
            f"random:{run}",
            "--data",
            data,
            "--out",
            emb_r,
            "--patch-tokens",
            "--device",
            "cpu",
            "--quiet",
        ],
        log,
    )
    probe, probe_r = w / "probe", w / "probe-random"
    seg = ["--task", "segmentation", "--fewshot", "10,50,100", "--seeds", "3", "--quiet"]
    t_probe = sh(["probe", "--embeddings", emb, "--out", probe, *seg], log)
    t_probe_r = sh(["probe", "--embeddings", emb_r, "--out", probe_r, "--split", probe / "split.csv", *seg], log)
    sh(["report", probe, probe_r, "--out", w / "report", "--quiet"], log)
    print(f"$ (c) U-Net from scratch, {args.budget_s:.0f} s", flush=True)
    unet = unet_baseline(data, probe / "split.csv", args.budget_s)
    rows = []
    for name, p in (
        ("(a) cxrjepa I-JEPA ViT-Tiny/16, pretrained", probe),
        ("(b) same architecture, random init", probe_r),
    ):
        m = json.loads((p / "metrics.json").read_text())["segmentation"]
        for head, body in m["probes"].items():
            d = m["grid"]
            params = "1x1 conv on the token grid" if head == "linear" else "3x3 conv + BN + ReLU + 1x1 conv"
            rows.append(
                (
                    name,
                    f"{head} ({d[0]}×{d[1]} tokens)",
                    params,
                    fmt(body["metrics"]["dice"]),
                    fmt(body["metrics"]["iou"]),
                )
            )
    rows.append(
        (
            "(c) U-Net (ResNet-18 encoder) from scratch",
            "whole network",
            f"{unet['params'] / 1e6:.1f} M (all)",
            fmt(unet["metrics"]["dice"]),
            fmt(unet["metrics"]["iou"]),
        )
    )
    m0 = json.loads((probe / "metrics.json").read_text())["segmentation"]
    import yaml

    batch = ((yaml.safe_load(args.pretrain_config.read_text()) or {}).get("train") or {}).get("batch_size", "?")
    info = {
        "images": len(dsa.meta),
        "masks": int(dsa.meta["has_mask"].sum()),
        "n": m0["n"],
        "steps": steps,
        "per_step": per_step,
        "batch": batch,
        "unet": unet,
        "probe_s": t_probe,
        "probe_random_s": t_probe_r,
        "pretrain_s": t_pre,
    }
    for r in rows:
        print(" | ".join(r))
    print(json.dumps({"pretrain_s": t_pre, "unet": {k: v for k, v in unet.items() if k != "metrics"}}, default=str))
    if args.write:
        write_results(args.write, args, log, rows, info)


if __name__ == "__main__":
    main()
