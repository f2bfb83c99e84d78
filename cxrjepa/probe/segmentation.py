"""Dense probes: does a frozen encoder's patch-token grid localise anatomy? (``cxrjepa probe --task segmentation``)

For every sample with a mask (``has_mask``; masks come from the dataset the embeddings were made from):

1. patch tokens (L = gh x gw, D) from the embeddings' ``patch_tokens`` (``cxrjepa embed --patch-tokens``),
   or computed in batches with the embeddings' own encoder and settings;
2. a head on the token grid, trained on the patient-level training split: ``linear`` (one 1x1 convolution,
   i.e. a linear classifier per patch, on tokens standardised with training statistics) and ``conv`` (a
   small head: 3x3 convolution, batch norm, ReLU, 1x1 convolution); logits are upsampled bilinearly to the
   stored image size and trained with cross-entropy, soft Dice or both (label 255 is ignored);
3. the learning rate is chosen on the validation split by mean Dice; test Dice and IoU per class with
   patient-bootstrap 95 % intervals (:mod:`cxrjepa.probe.seg_metrics`), a per-image table and the predicted
   test masks; few-shot: the linear head trained on a share of the training images, several seeds.

The result is the ``segmentation`` part of metrics.json (docs/probe.md), shaped like a task entry so the
report reads it with the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cxrjepa.core import console
from cxrjepa.core.errors import UsageError
from cxrjepa.probe import seg_metrics
from cxrjepa.probe.config import IGNORE, SegmentationConfig
from cxrjepa.probe.layout import SEGMENTATION_MASKS as PREDICTIONS
from cxrjepa.probe.layout import SEGMENTATION_TABLE as PER_IMAGE

# ---------------------------------------------------------------- data


@dataclass
class SegData:
    """Tokens (n, L, D) float16, masks (n, S, S) as class indices (255 = ignore), their rows and classes."""

    rows: np.ndarray
    tokens: np.ndarray
    targets: np.ndarray
    grid: tuple[int, int]
    values: list[int]  # label value of each class index (index 0 = background = value 0)
    names: list[str]  # names of the foreground classes (values[1:])
    source: str


def _classes(ds) -> tuple[list[int], list[str]]:
    info = ds.artifact.contents.get("masks")
    classes = (info or {}).get("classes") if isinstance(info, dict) else None
    if classes:
        values = sorted(int(k) for k in classes)
        return [0, *values], [str(classes[str(v)]) for v in values]
    present = sorted(
        {int(v) for v in np.unique(np.asarray(ds.masks[: min(64, ds.masks.shape[0])])) if 0 < v < IGNORE}
    ) or [1]
    return [0, *present], [str(v) for v in present]


def load_data(emb, index: pd.DataFrame, config: SegmentationConfig, *, device: str, batch_size: int) -> SegData:
    """Patch tokens and masks of the samples that have a mask."""
    from cxrjepa.embed.extract import PATCH, embed_rows, output_shapes
    from cxrjepa.embed.store import open_arrays
    from cxrjepa.probe.robustness import source_of

    use_tokens = config.source == "patch_tokens" or (config.source == "auto" and PATCH in emb.arrays)
    ds, enc, cfg, dev = source_of(emb, device, "the segmentation probe reads the masks from it", encoder=not use_tokens)
    if ds.masks is None:
        raise UsageError(f"The dataset '{ds.path}' has no masks; ingest it with --masks (see docs/segmentation.md).")
    has = (
        ds.meta["has_mask"].fillna(False).astype(bool).to_numpy()
        if "has_mask" in ds.meta
        else np.zeros(len(ds.meta), bool)
    )
    if len(ds.meta) != len(index) or not np.array_equal(
        ds.meta["sample_id"].astype(str).to_numpy(), index["sample_id"].astype(str).to_numpy()
    ):
        raise UsageError("The embeddings' rows are not the samples of their dataset; re-run 'cxrjepa embed'.")
    rows = np.flatnonzero(has & (ds.meta["frame_count"].to_numpy() == 1))
    if len(rows) == 0:
        raise UsageError(f"No sample of the dataset '{ds.path}' has a mask; check the --masks folder given to ingest.")
    values, names = _classes(ds)
    lut = np.full(256, IGNORE, np.uint8)
    lut[np.asarray(values)] = np.arange(len(values), dtype=np.uint8)
    starts = ds.meta["frame_start"].to_numpy(np.int64)
    targets = np.stack([lut[np.asarray(ds.masks[int(starts[r])])] for r in rows])
    if use_tokens:
        if PATCH not in emb.arrays:
            raise UsageError(
                "The embeddings hold no patch_tokens; re-run 'cxrjepa embed --patch-tokens' or set segmentation.source=encoder."
            )
        tokens = np.asarray(open_arrays(emb.path)[PATCH].oindex[rows], dtype=np.float16)
        grid = tuple((emb.artifact.contents.get("arrays") or {}).get(PATCH, {}).get("grid") or ())
        source = "patch_tokens"
    else:
        console.info(f"Segmentation: computing patch tokens of {len(rows)} images with the embeddings' encoder.")
        from dataclasses import replace

        pcfg = replace(cfg, patch_tokens=True, clip_frames=1, clip_pool="middle")
        tokens = np.zeros((len(rows), *output_shapes(pcfg, enc)[PATCH]), np.float16)
        for lo in range(0, len(rows), 256):  # bounded memory: float32 tokens of 256 images at a time
            tokens[lo : lo + 256] = embed_rows(enc, ds, rows[lo : lo + 256], pcfg, device=dev, batch_size=batch_size)[
                PATCH
            ]
        size = pcfg.image_size or enc.image_size
        grid = enc.grid(size, size)
        source = "encoder"
    if len(grid) != 2 or grid[0] * grid[1] != tokens.shape[1]:
        side = int(round(math.sqrt(tokens.shape[1])))
        if side * side != tokens.shape[1]:
            raise UsageError("The patch tokens do not form a known grid; re-run 'cxrjepa embed --patch-tokens'.")
        grid = (side, side)
    return SegData(rows, tokens, targets, (int(grid[0]), int(grid[1])), values, names, source)


# ---------------------------------------------------------------- heads


class Head(nn.Module):
    """Patch tokens (B, L, D) -> class logits on the token grid (B, K, gh, gw)."""

    def __init__(
        self,
        kind: str,
        dim: int,
        n_classes: int,
        grid: tuple[int, int],
        mean: torch.Tensor,
        std: torch.Tensor,
        hidden: int = 128,
    ):
        super().__init__()
        self.grid = grid
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))
        if kind == "linear":
            self.net = nn.Conv2d(dim, n_classes, 1)
        else:
            self.net = nn.Sequential(
                nn.Conv2d(dim, hidden, 3, padding=1),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, n_classes, 1),
            )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, _, d = tokens.shape
        x = tokens.float().transpose(1, 2).reshape(b, d, *self.grid)
        return self.net((x - self.mean) / self.std)


def upsample(logits: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def seg_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Cross-entropy and/or soft Dice (mean over foreground classes) at full resolution; 255 ignored."""
    loss = logits.new_zeros(())
    if "ce" in kind.split("+"):
        loss = loss + F.cross_entropy(logits, target.long(), ignore_index=IGNORE)
    if "dice" in kind.split("+"):
        valid = (target != IGNORE).unsqueeze(1)
        prob = logits.softmax(dim=1) * valid
        onehot = F.one_hot(torch.where(target == IGNORE, 0, target).long(), logits.shape[1]).permute(0, 3, 1, 2) * valid
        inter = (prob * onehot).sum(dim=(0, 2, 3))
        total = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
        dice = (2 * inter + 1.0) / (total + 1.0)
        loss = loss + (1 - dice[1:]).mean()
    return loss


def _stats(tokens: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    d = tokens.shape[-1]
    acc = np.zeros(d, np.float64)
    acc2 = np.zeros(d, np.float64)
    n = 0
    for lo in range(0, len(tokens), 64):
        t = tokens[lo : lo + 64].astype(np.float64).reshape(-1, d)
        acc += t.sum(0)
        acc2 += (t * t).sum(0)
        n += len(t)
    mean = acc / max(n, 1)
    std = np.sqrt(np.maximum(acc2 / max(n, 1) - mean * mean, 1e-8))
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(np.maximum(std, 1e-3), dtype=torch.float32)


def train_head(
    kind: str,
    data: SegData,
    train: np.ndarray,
    *,
    lr: float,
    config: SegmentationConfig,
    seed: int,
    device: torch.device,
) -> Head:
    """A head trained on the images at positions ``train`` of ``data``."""
    torch.manual_seed(seed)
    mean, std = _stats(data.tokens[train])
    head = Head(kind, data.tokens.shape[-1], len(data.values), data.grid, mean, std, config.hidden).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=config.weight_decay)
    size = data.targets.shape[-1]
    gen = np.random.default_rng(seed)
    bs = min(config.batch_size, len(train))
    steps = config.epochs * max(1, math.ceil(len(train) / bs))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    head.train()
    for _ in range(config.epochs):
        order = gen.permutation(train)
        for lo in range(0, len(order), bs):
            idx = np.sort(order[lo : lo + bs])
            if kind == "conv" and len(idx) < 2:  # batch norm needs two images
                continue
            tok = torch.from_numpy(data.tokens[idx]).to(device)
            tgt = torch.from_numpy(data.targets[idx]).to(device)
            loss = seg_loss(upsample(head(tok), size), tgt, config.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    return head


@torch.inference_mode()
def predict(head: Head, data: SegData, idx: np.ndarray, device: torch.device, batch: int = 32) -> np.ndarray:
    """Predicted class indices (n, S, S) uint8."""
    size = data.targets.shape[-1]
    out = np.zeros((len(idx), size, size), np.uint8)
    for lo in range(0, len(idx), batch):
        tok = torch.from_numpy(data.tokens[idx[lo : lo + batch]]).to(device)
        out[lo : lo + batch] = upsample(head(tok), size).argmax(dim=1).to(torch.uint8).cpu().numpy()
    return out


def scores(
    data: SegData, idx: np.ndarray, pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(dice, iou) over foreground classes (n, K-1), and the intersection / predicted / true pixel counts."""
    inter, p_cnt, t_cnt = seg_metrics.confusion_counts(pred, data.targets[idx], len(data.values), IGNORE)
    dice, iou = seg_metrics.dice_iou(inter[:, 1:], p_cnt[:, 1:], t_cnt[:, 1:])
    return dice, iou, inter[:, 1:], p_cnt[:, 1:], t_cnt[:, 1:]


# ---------------------------------------------------------------- the probe


def run_segmentation(
    out: Path, emb, index: pd.DataFrame, split: np.ndarray, patients: np.ndarray, probe_config, options
) -> dict:
    """Train and score the heads; writes segmentation.parquet and segmentation.zarr; returns the metrics part."""
    config: SegmentationConfig = probe_config.segmentation
    device = torch.device("cuda" if options.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    data = load_data(emb, index, config, device=options.device, batch_size=options.batch_size)
    threads = torch.get_num_threads()
    if device.type == "cpu" and data.tokens.size < 50_000_000:
        torch.set_num_threads(1)  # small heads: extra threads only wait on each other (10x slower on a busy machine)
    try:
        return _run(out, data, index, split, patients, probe_config, config, device)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, data: SegData, index, split, patients, probe_config, config: SegmentationConfig, device) -> dict:
    side = split[data.rows]
    pos = {s: np.flatnonzero(side == s) for s in ("train", "val", "test")}
    n = {s: int(len(v)) for s, v in pos.items()}
    if n["train"] < 1 or n["test"] < 1:
        raise UsageError(f"Too few images with masks for a segmentation probe (train {n['train']}, test {n['test']}).")
    sel = pos["val"] if n["val"] else pos["train"]
    console.info(
        f"Segmentation: {len(data.rows)} images with masks (train {n['train']}, val {n['val']}, test {n['test']}), "
        f"classes {', '.join(data.names)}, grid {data.grid[0]}x{data.grid[1]} from {data.source}."
    )
    seed = int(probe_config.seed)
    te = pos["test"]
    entry: dict = {
        "type": "segmentation",
        "classes": list(data.names),
        "values": data.values[1:],
        "n": n,
        "features": data.source,
        "grid": list(data.grid),
        "image_size": int(data.targets.shape[-1]),
        "loss": config.loss,
        "probes": {},
    }
    per_image: list[pd.DataFrame] = []
    preds: dict[str, np.ndarray] = {}
    chosen_lr: dict[str, float] = {}
    for kind in config.heads:
        best = None
        for lr in config.lr_grid:
            head = train_head(kind, data, pos["train"], lr=lr, config=config, seed=seed, device=device)
            d, i, *_ = scores(data, sel, predict(head, data, sel, device))
            val = seg_metrics.point(d, i)["dice"]
            val = -1.0 if val is None else val
            if best is None or val > best[0] + 1e-9:
                best = (val, lr, head)
        val_dice, lr, head = best
        chosen_lr[kind] = lr
        pred = predict(head, data, te, device)
        dice, iou, inter, p_cnt, t_cnt = scores(data, te, pred)
        ev = seg_metrics.evaluate(
            dice, iou, patients[data.rows[te]], data.names, n_boot=probe_config.bootstrap, seed=seed
        )
        params = {
            "lr": lr,
            "epochs": config.epochs,
            "weight_decay": config.weight_decay,
            "val_score": round(float(val_dice), 6),
            "selected_on": "val" if n["val"] else "train",
        }
        if kind == "conv":
            params["hidden"] = config.hidden
        entry["probes"][kind] = {"params": params, **ev}
        preds[kind] = np.asarray(data.values, np.uint8)[pred]
        per_image.append(_per_image(index, data, te, kind, dice, iou, inter, p_cnt, t_cnt))
        m = ev["metrics"]["dice"]
        console.info(
            f"Segmentation {kind}: test Dice {m['value']:.3f}"
            + (f" [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]" if m.get("ci") else "")
            + f" (lr {lr:g}, val Dice {val_dice:.3f})."
        )
    if probe_config.fewshot and "linear" in config.heads:
        entry["fewshot"] = {
            "linear": _fewshot(
                data,
                pos["train"],
                te,
                [p / 100.0 for p in probe_config.fewshot],
                probe_config.fewshot_seeds,
                chosen_lr["linear"],
                config,
                seed,
                device,
            )
        }
    table = pd.concat(per_image, ignore_index=True)
    tmp = out / f".{PER_IMAGE}.tmp"
    table.to_parquet(tmp, index=False)
    tmp.replace(out / PER_IMAGE)
    _write_predictions(out / PREDICTIONS, index["sample_id"].astype(str).to_numpy()[data.rows[te]], preds)
    entry["per_image"] = PER_IMAGE
    entry["predictions"] = PREDICTIONS
    return entry


def _per_image(index, data: SegData, te, kind, dice, iou, inter, p_cnt, t_cnt) -> pd.DataFrame:
    rows = data.rows[te]
    k = len(data.names)
    return pd.DataFrame(
        {
            "sample_id": np.repeat(index["sample_id"].astype(str).to_numpy()[rows], k),
            "patient_key": np.repeat(
                index["patient_key"].astype(str).to_numpy()[rows] if "patient_key" in index else "", k
            ),
            "split": "test",
            "head": kind,
            "class": np.tile(np.asarray(data.names, dtype=object), len(rows)),
            "dice": dice.reshape(-1),
            "iou": iou.reshape(-1),
            "true_pixels": t_cnt.reshape(-1),
            "pred_pixels": p_cnt.reshape(-1),
            "intersection": inter.reshape(-1),
            "prediction_index": np.repeat(np.arange(len(rows)), k),
        }
    )


def _fewshot(
    data: SegData,
    train: np.ndarray,
    te: np.ndarray,
    fractions,
    seeds: int,
    lr: float,
    config: SegmentationConfig,
    seed: int,
    device,
) -> list[dict]:
    """The linear head on a share of the training images (at least one), ``seeds`` draws; test Dice/IoU."""
    out = []
    for frac in fractions:
        runs, sizes = [], []
        n_seeds = 1 if frac >= 1.0 else seeds
        for s in range(n_seeds):
            rng = np.random.default_rng(seed + 1000 * s + 1)
            k = len(train) if frac >= 1.0 else max(1, int(round(frac * len(train))))
            sub = np.sort(rng.choice(train, size=k, replace=False))
            head = train_head("linear", data, sub, lr=lr, config=config, seed=seed + s, device=device)
            d, i, *_ = scores(data, te, predict(head, data, te, device))
            runs.append(seg_metrics.point(d, i))
            sizes.append(k)
        summary = {}
        for name in ("dice", "iou"):
            vals = np.array([r[name] for r in runs if r.get(name) is not None], dtype=np.float64)
            if len(vals):
                summary[name] = {
                    "mean": round(float(vals.mean()), 6),
                    "std": round(float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, 6),
                }
        out.append(
            {"fraction": float(frac), "n_train": int(round(np.mean(sizes))), "seeds": len(runs), "metrics": summary}
        )
    return out


def _write_predictions(path: Path, sample_ids: np.ndarray, preds: dict[str, np.ndarray]) -> None:
    """Predicted test label maps per head (n_test, S, S) uint8, one image per chunk; ``sample_id`` beside."""
    import shutil

    import zarr

    from cxrjepa.data.store import create_frames_array

    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    root = zarr.open_group(str(tmp), mode="w")
    for kind, arr in preds.items():
        a = create_frames_array(root, kind, arr.shape[0], arr.shape[-1], "uint8")
        a[:] = arr
    root.attrs["sample_id"] = [str(s) for s in sample_ids]
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
