"""Lung segmentation from frozen patch tokens of several pretrained encoders at an equal CPU budget, vs the
same ViT at random init and a U-Net trained from scratch with the same CPU budget.

    pip download torchxrayvision==1.5.7 --no-deps -d /tmp/txv     # ships data/semantic_masks_v7labs_lungs.zip
    unzip -j /tmp/txv/torchxrayvision-*.whl 'torchxrayvision/data/semantic_masks_v7labs_lungs.zip' -d /tmp/txv
    unzip -q /tmp/txv/semantic_masks_v7labs_lungs.zip -d /tmp/v7masks
    PYTHONPATH=. python benchmarks/segmentation.py --images /work/shared/data/covid_chestxray_ieee8023 \\
        --masks /tmp/v7masks/semantic_masks_v7labs_lungs --work /tmp/segbench \\
        --contenders ijepa,lejepa,jepa-sigreg --budget-cpu 600 --write benchmarks/results/segmentation.md

Steps (each a cxrjepa command, printed and written to the results file):

1. ``cxrjepa ingest`` the ieee8023 images (all of them: pretraining is unlabeled) with ``--masks lung=DIR``
   (V7 Labs lung masks named after the images) and the dataset's patient ids (for patient-level splits);
2. ``cxrjepa pretrain`` each contender of ``--contenders`` (``benchmarks/contenders.py``, the chest X-ray
   configs: the same encoders as ``quality.py``'s, ViT-Tiny/8 with 4 blocks at 64 px: an 8 x 8 token grid)
   within ``--budget-cpu`` CPU seconds each (``benchmarks/budget.py``: two short calibration runs give the
   CPU seconds per step and the fixed cost, ``train.steps`` is set to fit; the measured CPU seconds of the
   real run are reported beside the budget);
3. ``cxrjepa embed --patch-tokens`` with every pretrained encoder and its architecture randomly initialised
   (``random:RUN``, one twin per distinct model section);
4. ``cxrjepa probe --task segmentation`` on each, on one patient-level split (the first probe's split.csv,
   reused by the others): a linear head per patch and a small conv head, test Dice/IoU with patient-bootstrap
   intervals, and each pretrained encoder's test Dice minus its random twin's (same head) with a paired
   patient-bootstrap interval, from the probes' per-image Dice (``segmentation.parquet``);
5. a U-Net (segmentation_models_pytorch, ResNet-18 encoder, random init, 1 input channel) trained from
   scratch on the same training images at the stored size (``--size``) for the same ``--budget-cpu`` CPU
   seconds (this process's CPU time, ``getrusage(RUSAGE_SELF)``, around its training loop), the epoch with
   the best validation Dice kept, scored on the same test images with the same Dice/IoU code.

Every contender runs with ``--threads`` threads. Reruns skip what is finished (calibrations, runs, embeddings,
probes; the U-Net's result is kept in ``WORK/unet.json``), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CXRJEPA_SALT", "benchmark-salt-not-secret")

from benchmarks import contenders as cont  # noqa: E402
from benchmarks.budget import Meter, self_cpu  # noqa: E402
from benchmarks.results_file import write_keeping_notes  # noqa: E402


def patient_csv(images_root: Path, out: Path) -> Path:
    """The dataset's labels.csv reduced to the file name and the patient (for patient-level splits)."""
    import pandas as pd

    df = pd.read_csv(images_root / "labels.csv", dtype=str)
    df = pd.DataFrame({"file": df["file"].str.rsplit("/", n=1).str[-1], "patient_id": df["patient_id"]})
    path = out / "patients.csv"
    df.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- a U-Net from scratch


def unet_baseline(data: Path, split_csv: Path, budget: float, seed: int = 0, batch: int = 8) -> dict:
    """U-Net (ResNet-18 encoder, random init) trained on the split's training images for ``budget`` CPU
    seconds of this process (all its threads), the epoch with the best validation Dice kept."""
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
    meter = Meter(self_cpu)
    model.train()
    while meter.stop().cpu_s < budget:
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
            if meter.stop().cpu_s >= budget:
                break
        epochs += 1
        d, _ = dice_of(sel)
        val = float(np.nanmean(d))
        if val > best:
            best, best_state = val, {k: v.detach().clone() for k, v in model.state_dict().items()}
    meter.stop()
    model.load_state_dict(best_state)
    dice, iou = dice_of(idx["test"])
    patients = meta["patient_key"].astype(str).to_numpy()[idx["test"]]
    ev = seg_metrics.evaluate(dice, iou, patients, ["lung"], n_boot=1000, seed=seed)
    return {
        "metrics": ev["metrics"],
        "epochs": epochs,
        "steps": steps,
        "budget": budget,
        "cpu_s": meter.cpu_s,
        "wall_s": meter.wall_s,
        "val_dice": best,
        "params": n_params,
        "n": {k: int(len(v)) for k, v in idx.items()},
        "test": {"sample_id": meta["sample_id"].astype(str).to_numpy()[idx["test"]].tolist(), "dice": dice.tolist()},
    }


def unet_cached(path: Path, data: Path, split_csv: Path, budget: float, seed: int) -> dict:
    """The U-Net's result, trained once per budget (kept in ``path``: a rerun reads it back)."""
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("budget") == budget:
            return old
    out = unet_baseline(data, split_csv, budget, seed=seed)
    path.write_text(json.dumps(out))
    return out


# ---------------------------------------------------------------- paired differences


def per_image_dice(probe: Path, head: str):
    """(sample ids, patient keys, Dice (n, k)) of a segmentation probe's head on its test images."""
    import pandas as pd

    from cxrjepa.probe.layout import SEGMENTATION_TABLE

    df = pd.read_parquet(probe / SEGMENTATION_TABLE)
    df = df[(df["head"] == head) & (df["split"] == "test")]
    wide = df.pivot_table(index=["sample_id", "patient_key"], columns="class", values="dice", dropna=False)
    wide = wide.sort_index()
    return (
        wide.index.get_level_values(0).to_numpy(),
        wide.index.get_level_values(1).to_numpy(),
        wide.to_numpy(float),
    )


def paired_dice(a: Path, b: Path, head: str, seed: int) -> dict:
    """Test Dice of probe ``a``'s head minus probe ``b``'s on the same images, paired patient bootstrap."""
    import numpy as np

    from cxrjepa.probe import seg_metrics

    ids, groups, da = per_image_dice(a, head)
    ids_b, _, db = per_image_dice(b, head)
    if not np.array_equal(ids, ids_b):
        raise SystemExit(f"{a} and {b} scored different test images: cannot pair them.")
    return seg_metrics.paired_difference(da, db, groups, n_boot=1000, seed=seed)


# ---------------------------------------------------------------- report


def fmt(m: dict | None, signed: bool = False) -> str:
    if not m or m.get("value") is None:
        return ""
    ci, f = m.get("ci"), "+.3f" if signed else ".3f"
    return f"{m['value']:{f}} ({ci[0]:{f}} to {ci[1]:{f}})" if ci else f"{m['value']:{f}}"


def write_results(path: Path, args, log: list[str], rows: list[tuple], info: dict, pretrained: list[dict]) -> None:
    n, unet = info["n"], info["unet"]
    lines = [
        "# Lung segmentation: frozen cxrjepa patch tokens at an equal CPU budget vs random init vs a U-Net",
        "",
        f"Data: the {info['images']} images of the ieee8023 COVID chest X-ray set in `shared/data/covid_chestxray_ieee8023`; "
        f"{info['masks']} of them have a V7 Labs lung mask (`semantic_masks_v7labs_lungs.zip` shipped in the torchxrayvision "
        "wheel). Pretraining uses all images without labels; segmentation uses the images with masks, split by patient "
        f"(train {n['train']}, val {n['val']}, test {n['test']} images). Stored at {args.size} px (the U-Net's input); "
        "the encoders read them at their own input size.",
        "",
        f"Budget: {args.budget_cpu:.0f} CPU seconds for each contender's pretraining and for the U-Net's training, "
        f"{args.threads} thread(s) each. The U-Net ran {unet['steps']} steps ({unet['epochs']} epochs, batch 8) in "
        f"{unet['cpu_s']:.0f} CPU s ({unet['wall_s']:.0f} s wall); the probes' heads are not counted.",
        "",
        "| encoder / model | head | trained parameters | test Dice (95 % CI) | test IoU (95 % CI) | Dice minus random twin (paired 95 % CI) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines += [
        "",
        "Dice and IoU are means over test images (lung = foreground), 95 % intervals from 1000 patient-level bootstrap "
        "resamples; the paired differences score both encoders on the same resamples; heads and U-Net epoch chosen on "
        "the validation images.",
        "",
        "## Pretraining budget",
        "",
        *cont.BUDGET_HEADER,
        *(cont.budget_row(p, "ieee8023 (all images)" if i == 0 else "") for i, p in enumerate(pretrained)),
        "",
        "## Commands",
        "",
        "```bash",
        *log,
        f"# U-Net: benchmarks/segmentation.py unet_baseline(), {args.budget_cpu:.0f} CPU s, batch 8, AdamW 1e-3, "
        f"CE + Dice, OMP_NUM_THREADS={args.threads}",
        "```",
        "",
        "Reproduce everything with:",
        "",
        "```bash",
        "PYTHONPATH=. python " + " ".join(sys.argv),
        "```",
    ]
    write_keeping_notes(path, "\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=Path("/work/shared/data/covid_chestxray_ieee8023"))
    ap.add_argument("--masks", type=Path, required=True, help="folder of the unzipped V7 Labs lung masks")
    ap.add_argument("--work", type=Path, default=Path("/tmp/segbench"))
    ap.add_argument(
        "--contenders",
        default="ijepa,lejepa,jepa-sigreg",
        help=f"comma-separated pretrained contenders, from {', '.join(cont.CONTENDERS)} (benchmarks/contenders.py)",
    )
    ap.add_argument(
        "--budget-cpu", type=float, default=600.0, help="CPU seconds of pretraining per contender, and of the U-Net"
    )
    ap.add_argument("--size", type=int, default=128, help="stored size (the U-Net's input)")
    ap.add_argument("--seed", type=int, default=0, help="pretraining, probe and U-Net seed")
    ap.add_argument("--set", action="append", default=[], help="extra pretrain --set KEY=VALUE for every contender")
    ap.add_argument("--write", type=Path, default=None, help="write the results table (Markdown) here")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of every contender (on a busy 2-core machine 2 threads ran 4x slower than 1)",
    )
    args = ap.parse_args()
    if not args.budget_cpu > 0:
        raise SystemExit("--budget-cpu must be positive.")
    contenders = cont.parse_contenders(args.contenders)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    sh = cont.Runner()
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
        ]
    )
    from cxrjepa.data.store import DatasetArtifact

    dsa = DatasetArtifact.open(data)
    pretrained = [
        cont.pretrain(sh, c, "cxr", data, w / c.name, args.budget_cpu, seed=args.seed, extra=tuple(args.set))
        for c in contenders
    ]
    twins = cont.twins(pretrained)
    twin_of = {c: t["name"] for t in twins.values() for c in t["serves"]}
    encoders = {p["contender"].name: p["run"] for p in pretrained} | {
        t["name"]: f"random:{t['run']}" for t in twins.values()
    }
    probes: dict[str, Path] = {}
    seg = ["--task", "segmentation", "--fewshot", "10,50,100", "--seeds", "3", "--set", f"seed={args.seed}", "--quiet"]
    for name, spec in encoders.items():
        emb, probe = w / name / "emb", w / name / "probe"
        sh(["embed", "--encoder", spec, "--data", data, "--out", emb, "--patch-tokens", "--device", "cpu", "--quiet"])
        split = ["--split", next(iter(probes.values())) / "split.csv"] if probes else []
        sh(["probe", "--embeddings", emb, "--out", probe, *split, *seg])
        probes[name] = probe
    sh(["report", *probes.values(), "--out", w / "report", "--quiet"])
    first = next(iter(probes.values()))
    print(f"$ U-Net from scratch, {args.budget_cpu:.0f} CPU s", flush=True)
    unet = unet_cached(w / "unet.json", data, first / "split.csv", args.budget_cpu, args.seed)
    titles = {p["contender"].name: f"cxrjepa {p['contender'].title}, pretrained" for p in pretrained}
    for t in twins.values():
        who = "" if t["name"] == "random" else f" ({', '.join(t['serves'])})"
        titles[t["name"]] = f"same ViT{who}, random init"
    rows = []
    for name, probe in probes.items():
        m = json.loads((probe / "metrics.json").read_text())["segmentation"]
        g = m["grid"]
        for head, body in m["probes"].items():
            params = "1x1 conv on the token grid" if head == "linear" else "3x3 conv + BN + ReLU + 1x1 conv"
            delta = paired_dice(probe, probes[twin_of[name]], head, args.seed) if name in twin_of else None
            rows.append(
                (
                    titles[name],
                    f"{head} ({g[0]}×{g[1]} tokens)",
                    params,
                    fmt(body["metrics"]["dice"]),
                    fmt(body["metrics"]["iou"]),
                    fmt(delta, signed=True),
                )
            )
    rows.append(
        (
            "U-Net (ResNet-18 encoder) from scratch",
            "whole network",
            f"{unet['params'] / 1e6:.1f} M (all)",
            fmt(unet["metrics"]["dice"]),
            fmt(unet["metrics"]["iou"]),
            "",
        )
    )
    info = {
        "images": len(dsa.meta),
        "masks": int(dsa.meta["has_mask"].sum()),
        "n": json.loads((first / "metrics.json").read_text())["segmentation"]["n"],
        "unet": unet,
    }
    for r in rows:
        print(" | ".join(r))
    for p in pretrained:
        print(cont.budget_row(p, ""))
    if args.write:
        write_results(args.write, args, sh.log, rows, info, pretrained)


if __name__ == "__main__":
    main()
