"""Builders of small artifacts that follow docs/artifacts.md exactly, for the report's tests.

The other stages (ingest, pretrain, embed, probe) are built in parallel, so these helpers make a
dataset, runs, embeddings and probes the way the contract describes them: manifests through
``cxrjepa.core.artifact.begin(...).finish()``, a dataset through ``write_dataset``, encoders exported with
``export_encoder`` from random tiny ViTs, features computed with those encoders, and probe metrics
computed with scikit-learn in the agreed metrics.json schema. Swap a builder for the real stage to test
the report against real outputs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
import zarr

from cxrjepa.core.artifact import Artifact, begin, input_refs
from cxrjepa.core.fingerprint import hash_bytes
from cxrjepa.data import layout
from cxrjepa.data.store import default_meta, intensity_stats, write_arrays, write_dataset
from cxrjepa.models.export import Normalization, export_encoder, load_encoder
from cxrjepa.models.vit import EncoderConfig, create_vit

LABEL = "finding"
CLASSES = ["NORMAL", "PNEUMONIA"]
SIZE = 64


# ---------------------------------------------------------------- dataset


def phantom(rng: np.random.Generator, size: int, pneumonia: bool) -> np.ndarray:
    """A chest-radiograph-like phantom: bright body, dark lungs, a heart, an opacity when ``pneumonia``."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.15 + 0.55 * (((xx - 0.5) / 0.45) ** 2 + ((yy - 0.55) / 0.5) ** 2 < 1)
    for cx in (0.32, 0.68):
        img = np.where(((xx - cx) / 0.14) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1, 0.25, img)
    img = np.where(((xx - 0.58) / 0.11) ** 2 + ((yy - 0.66) / 0.1) ** 2 < 1, 0.6, img)
    if pneumonia:
        cx, cy = rng.choice([0.3, 0.68]), rng.uniform(0.4, 0.65)
        img = img + rng.uniform(0.08, 0.25) * np.exp(-(((xx - cx) / 0.08) ** 2 + ((yy - cy) / 0.08) ** 2))
    img = img * rng.uniform(0.8, 1.15) + rng.normal(0, 0.06, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def dataset_frame(n: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    meta = default_meta(n)
    patient = np.arange(n) // 2  # two images per patient
    meta["patient_key"] = [f"p{p:015x}" for p in patient]
    meta["study_key"] = [f"s{i:015x}" for i in range(n)]
    labels = np.where(patient % 2 == 1, "PNEUMONIA", "NORMAL")
    meta[LABEL] = labels
    meta["sex"] = np.where(rng.random(n) < 0.5, "F", "M")
    meta.loc[n - 1, "sex"] = ""  # unknown
    age = rng.uniform(18, 90, n).round(0)
    age[::11] = np.nan
    meta["age"] = age
    meta["view"] = np.where(rng.random(n) < 0.7, "PA", "AP")
    meta["modality"] = np.where(np.arange(n) % 3 == 0, "CR", "DX")
    meta["manufacturer"] = np.where(np.arange(n) % 4 < 2, "VendorA", "VendorB")
    meta["source_index"] = (np.arange(n) % 4 < 2).astype(np.int64)
    meta["format"] = "dicom"
    meta["burned_in_annotation"] = False
    meta.loc[0, "burned_in_annotation"] = True
    images = np.stack([phantom(rng, SIZE, lab == "PNEUMONIA") for lab in labels])
    return images, meta


def make_dataset(path: Path, n: int = 48, seed: int = 0, rejections: dict[str, int] | None = None) -> Artifact:
    """A dataset artifact with label, sex, age, view, modality and manufacturer columns.

    With ``rejections`` (reason -> count) the dataset also has a failure ledger and the matching counts.
    """
    images, meta = dataset_frame(n, seed)
    if not rejections:
        return write_dataset(path, images, meta, label_columns=[LABEL])
    b = begin(path, "dataset", {"source": "in-memory", "size": SIZE}, force=True)
    write_arrays(b.path, images, meta)
    with open(b.path / layout.FAILURES, "w") as fh:
        for reason, k in rejections.items():
            for i in range(k):
                fh.write(json.dumps({"path": f"in/{reason[:3]}{i}.dcm", "reason": reason}) + "\n")
    total = sum(rejections.values())
    b.counts.update(
        {
            "inputs": n + total,
            "samples": n,
            "frames": n,
            "rejected": total,
            "duplicates": 0,
            "by_reason": dict(rejections),
            "by_modality": meta["modality"].value_counts().to_dict(),
        }
    )
    b.contents.update(
        {
            "images": {
                "path": f"{layout.ZARR}/{layout.IMAGES}",
                "shape": list(images.shape),
                "dtype": str(images.dtype),
            },
            "metadata": layout.METADATA,
            "failures": layout.FAILURES,
            "label_columns": [LABEL],
            "normalization": intensity_stats(images, 255.0),
            "size": SIZE,
        }
    )
    return b.finish(hash_bytes(images.tobytes()))


# ---------------------------------------------------------------- run


def training_log(steps: int, seed: int, collapse: bool = False) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(steps):
        t = s / max(steps - 1, 1)
        warm = min(1.0, s / max(steps * 0.1, 1))
        lr = 5e-4 * warm * (0.5 * (1 + math.cos(math.pi * t)))
        std = 0.6 * (1 - 0.98 * t) if collapse else 0.6 - 0.1 * t + rng.normal(0, 0.01)
        rows.append(
            {
                "step": s,
                "epoch": s // 10,
                "loss": float(0.9 * math.exp(-3 * t) + 0.1 + rng.normal(0, 0.01)),
                "lr": lr,
                "wd": 0.04 + 0.36 * t,
                "momentum": 0.996 + 0.004 * t,
                "grad_norm": float(1.5 * math.exp(-t) + abs(rng.normal(0, 0.05))),
                "feat_std": float(std),
                "rankme": float(40 * (1 - 0.9 * t) if collapse else 30 + 20 * t + rng.normal(0, 1)),
                "images_per_s": float(55 + rng.normal(0, 2)),
                "time_s": 0.5 * s,
            }
        )
    return rows


def make_run(
    path: Path,
    dataset: Path,
    objective: str = "ijepa",
    steps: int = 60,
    seed: int = 0,
    collapse: bool = False,
    metrics: bool = True,
) -> Artifact:
    """A run artifact: config.yaml, metrics.jsonl (+ csv), and an encoder exported from a random tiny ViT."""
    params = {
        "objective": objective,
        "model": {"size": "tiny", "patch_size": 16, "image_size": SIZE},
        "optim": {"lr": 5e-4, "batch_size": 16},
        "steps": steps,
        "seed": seed,
    }
    b = begin(path, "run", params, input_refs({"dataset": dataset}), force=True)
    (b.path / "config.yaml").write_text(yaml.safe_dump(params))
    if metrics:
        log = training_log(steps, seed, collapse)
        with open(b.path / "metrics.jsonl", "w") as fh:
            for row in log:
                fh.write(json.dumps(row) + "\n")
        pd.DataFrame(log).to_csv(b.path / "metrics.csv", index=False)
    torch.manual_seed(seed)
    cfg = EncoderConfig(size="tiny", patch_size=16, image_size=SIZE)
    norm = yaml.safe_load((Path(dataset) / "manifest.yaml").read_text())["contents"].get("normalization") or {}
    export_encoder(create_vit(cfg), cfg, b.path / "encoder", Normalization(**norm))
    b.counts.update({"steps": steps, "planned_steps": steps, "epochs": steps // 10})
    b.contents.update(
        {
            "objective": objective,
            "config": "config.yaml",
            "metrics": ["metrics.jsonl", "metrics.csv"],
            "encoder": {"weights": "encoder/encoder.safetensors", "config": "encoder/config.json"},
            "stopped_early": False,
        }
    )
    return b.finish()


# ---------------------------------------------------------------- embeddings


def encode(run: Path, images: np.ndarray) -> np.ndarray:
    enc = load_encoder(run)
    x = enc.normalization.apply(torch.as_tensor(images)[:, None])
    with torch.inference_mode():
        return enc.model(x).numpy()


def make_embeddings(path: Path, dataset: Path, run: Path) -> Artifact:
    """features.zarr (features (N, D) float16, features_last4) + index.parquet, row i = dataset sample i."""
    b = begin(
        path, "embeddings", {"pool": "mean", "layers": "last"}, input_refs({"dataset": dataset, "run": run}), force=True
    )
    images = np.asarray(zarr.open_group(str(Path(dataset) / layout.ZARR), mode="r")[layout.IMAGES][:])
    feats = encode(run, images).astype(np.float16)
    root = zarr.open_group(str(b.path / "features.zarr"), mode="w")
    arr = root.create_array("features", shape=feats.shape, dtype="float16", chunks=(16, feats.shape[1]))
    arr[:] = feats
    last4 = root.create_array(
        "features_last4", shape=(len(feats), 4 * feats.shape[1]), dtype="float16", chunks=(16, 4 * feats.shape[1])
    )
    last4[:] = np.tile(feats, (1, 4))
    meta = pd.read_parquet(Path(dataset) / layout.METADATA)
    meta.insert(0, "row", np.arange(len(meta)))
    meta.to_parquet(b.path / "index.parquet", index=False)
    b.counts.update({"samples": len(feats)})
    ds_manifest = yaml.safe_load((Path(dataset) / "manifest.yaml").read_text())
    run_manifest = yaml.safe_load((Path(run) / "manifest.yaml").read_text())
    b.contents.update(
        {
            "arrays": {
                "features": {"path": "features.zarr/features", "shape": list(feats.shape), "dtype": "float16"},
                "features_last4": {
                    "path": "features.zarr/features_last4",
                    "shape": list(last4.shape),
                    "dtype": "float16",
                },
            },
            "index": "index.parquet",
            "label_columns": [LABEL],
            "encoder": {"spec": str(run), "source": "cxrjepa", "fingerprint": run_manifest["content_fingerprint"]},
            "dataset": {"path": str(dataset), "fingerprint": ds_manifest["content_fingerprint"]},
        }
    )
    return b.finish(hash_bytes(feats.tobytes()))


# ---------------------------------------------------------------- probe


def split_of(patient_keys: pd.Series) -> np.ndarray:
    p = patient_keys.map(lambda k: int(k[1:], 16)).to_numpy()
    return np.asarray(["train", "train", "val", "test"], dtype=object)[(p // 2) % 4]


def _bootstrap(fn, y, s, rng, n=60) -> dict:
    value = float(fn(y, s))
    vals = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if len(set(y[i])) < 2:
            continue
        vals.append(fn(y[i], s[i]))
    lo, hi = np.percentile(vals, [2.5, 97.5]) if vals else (value, value)
    return {"value": value, "ci": [float(lo), float(hi)]}


def _binary_metrics(y: np.ndarray, score: np.ndarray, rng) -> dict:
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        balanced_accuracy_score,
        f1_score,
        roc_auc_score,
    )

    pred = (score >= 0.5).astype(int)
    return {
        "auroc": _bootstrap(roc_auc_score, y, score, rng),
        "auprc": _bootstrap(average_precision_score, y, score, rng),
        "macro_f1": _bootstrap(lambda a, b: f1_score(a, (b >= 0.5).astype(int), average="macro"), y, score, rng),
        "accuracy": {"value": float(accuracy_score(y, pred)), "ci": None},
        "balanced_accuracy": {"value": float(balanced_accuracy_score(y, pred))},
    }


def _fit(kind: str, x, y):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    model = LogisticRegression(C=1.0, max_iter=2000) if kind == "linear" else KNeighborsClassifier(min(5, len(x)))
    return model.fit(x, y)


def make_probe(path: Path, embeddings: Path, dataset: Path, run: Path, seed: int = 0) -> Artifact:
    """metrics.json/yaml in the agreed schema, predictions.parquet and split.csv, computed with scikit-learn."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import confusion_matrix, mean_absolute_error, r2_score, roc_auc_score, roc_curve

    rng = np.random.default_rng(seed)
    b = begin(
        path,
        "probe",
        {"tasks": [LABEL], "probes": ["linear", "knn"]},
        input_refs({"embeddings": embeddings}),
        force=True,
    )
    feats = np.asarray(
        zarr.open_group(str(Path(embeddings) / "features.zarr"), mode="r")["features"][:], dtype=np.float32
    )
    index = pd.read_parquet(Path(embeddings) / "index.parquet")
    split = split_of(index["patient_key"])
    pd.DataFrame({"sample_id": index["sample_id"], "patient_key": index["patient_key"], "split": split}).to_csv(
        b.path / "split.csv", index=False
    )
    y = (index[LABEL] == "PNEUMONIA").to_numpy().astype(int)
    tr, te = split == "train", split == "test"
    task = {
        "type": "binary",
        "classes": CLASSES,
        "positive": "PNEUMONIA",
        "n": {k: int((split == k).sum()) for k in ("train", "val", "test")},
        "probes": {},
        "fewshot": {},
    }
    preds = []
    models = {}
    for kind in ("linear", "knn"):
        model = _fit(kind, feats[tr], y[tr])
        models[kind] = model
        score_all = model.predict_proba(feats)[:, 1]
        s = score_all[te]
        fpr, tpr, _ = roc_curve(y[te], s)
        metrics = _binary_metrics(y[te], s, rng)
        task["probes"][kind] = {
            "params": {"C": 1.0} if kind == "linear" else {"k": 5},
            "metrics": metrics,
            "per_class": {
                "PNEUMONIA": {"auroc": metrics["auroc"], "auprc": metrics["auprc"], "f1": metrics["macro_f1"]}
            },
            "curves": {
                "roc": {"PNEUMONIA": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}},
                "confusion": {
                    "labels": CLASSES,
                    "matrix": confusion_matrix(y[te], (s >= 0.5).astype(int), labels=[0, 1]).tolist(),
                },
            },
        }
        preds.append(
            pd.DataFrame(
                {
                    "sample_id": index["sample_id"],
                    "task": LABEL,
                    "probe": kind,
                    "split": split,
                    "target": np.asarray(CLASSES)[y],
                    "prediction": np.asarray(CLASSES)[(score_all >= 0.5).astype(int)],
                    "score_NORMAL": 1 - score_all,
                    "score_PNEUMONIA": score_all,
                }
            )
        )
        pts = []
        for frac in (0.25, 0.5):
            vals = []
            for sd in range(3):
                r = np.random.default_rng(sd)
                idx = np.flatnonzero(tr)
                idx = r.choice(idx, max(4, int(frac * len(idx))), replace=False)
                if len(set(y[idx])) < 2:
                    continue
                vals.append(roc_auc_score(y[te], _fit(kind, feats[idx], y[idx]).predict_proba(feats[te])[:, 1]))
            pts.append(
                {
                    "fraction": frac,
                    "n_train": int(frac * tr.sum()),
                    "seeds": 3,
                    "metrics": {"auroc": {"mean": float(np.mean(vals)), "std": float(np.std(vals))}},
                }
            )
        task["fewshot"][kind] = pts
    # subgroups of the linear probe
    s_lin = models["linear"].predict_proba(feats)[:, 1]
    sub = {}
    for attr, values in (
        ("sex", index["sex"].replace("", np.nan)),
        ("age_band", pd.cut(index["age"], [0, 50, 120], labels=["<50", "50+"]).astype(str)),
    ):
        groups = {}
        for g in sorted(set(values[te].dropna())):
            m = te & (values == g).to_numpy()
            if m.sum() >= 2 and len(set(y[m])) == 2:
                groups[g] = {"n": int(m.sum()), "metrics": {"auroc": _bootstrap(roc_auc_score, y[m], s_lin[m], rng)}}
        if len(groups) >= 2:
            v = {g: d["metrics"]["auroc"]["value"] for g, d in groups.items()}
            hi, lo = max(v, key=v.get), min(v, key=v.get)
            sub[attr] = {"groups": groups, "gap": {"metric": "auroc", "value": v[hi] - v[lo], "between": [hi, lo]}}
    task["subgroups"] = sub
    # corruption: blur the test images, embed them again, apply the clean linear probe
    images = np.asarray(zarr.open_group(str(Path(dataset) / layout.ZARR), mode="r")[layout.IMAGES][:])
    rob = {"clean": {"auroc": {"value": task["probes"]["linear"]["metrics"]["auroc"]["value"]}}, "blur": []}
    for sev in (1, 2, 3):
        k = 2 * sev + 1
        t = torch.as_tensor(images[te], dtype=torch.float32)[:, None]
        blurred = (
            torch.nn.functional.avg_pool2d(t, k, stride=1, padding=k // 2, count_include_pad=False)[:, 0]
            .numpy()
            .astype(np.uint8)
        )
        s_b = models["linear"].predict_proba(encode(run, blurred))[:, 1]
        rob["blur"].append({"severity": sev, "metrics": {"auroc": {"value": float(roc_auc_score(y[te], s_b))}}})
    task["robustness"] = rob
    # attributes
    sex_known = index["sex"].isin(["F", "M"]).to_numpy()
    ys = (index["sex"] == "F").to_numpy().astype(int)
    m_tr, m_te = tr & sex_known, te & sex_known
    sex_score = _fit("linear", feats[m_tr], ys[m_tr]).predict_proba(feats[m_te])[:, 1]
    age = index["age"].to_numpy(float)
    a_tr, a_te = tr & np.isfinite(age), te & np.isfinite(age)
    age_pred = Ridge(1.0).fit(feats[a_tr], age[a_tr]).predict(feats[a_te])
    attributes = {
        "sex": {"metrics": {"auroc": _bootstrap(roc_auc_score, ys[m_te], sex_score, rng)}},
        "age": {
            "metrics": {
                "mae": {"value": float(mean_absolute_error(age[a_te], age_pred))},
                "r2": {"value": float(r2_score(age[a_te], age_pred))},
            }
        },
    }
    enc_ref = yaml.safe_load((Path(run) / "manifest.yaml").read_text())
    metrics = {
        "encoder": {"path": str(run), "fingerprint": enc_ref.get("content_fingerprint")},
        "tasks": {LABEL: task},
        "attributes": attributes,
    }
    (b.path / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (b.path / "metrics.yaml").write_text(yaml.safe_dump(metrics, sort_keys=False))
    pd.concat(preds).to_parquet(b.path / "predictions.parquet", index=False)
    b.counts.update({"samples": len(index), "tasks": 1})
    b.contents.update(
        {
            "metrics": "metrics.json",
            "metrics_yaml": "metrics.yaml",
            "predictions": "predictions.parquet",
            "split": {"path": "split.csv"},
            "tasks": {LABEL: "binary"},
        }
    )
    return b.finish()


# ---------------------------------------------------------------- a whole chain


@dataclass
class Chain:
    root: Path
    dataset: Path
    runs: list[Path] = field(default_factory=list)
    embeddings: list[Path] = field(default_factory=list)
    probes: list[Path] = field(default_factory=list)


def build_chain(
    root: Path, objectives: tuple[str, ...] = ("ijepa", "salt"), n: int = 48, rejections: dict[str, int] | None = None
) -> Chain:
    """dataset -> one run per objective -> embeddings -> probe, under ``root``."""
    root = Path(root)
    chain = Chain(root, root / "dataset")
    make_dataset(
        chain.dataset,
        n=n,
        rejections=rejections if rejections is not None else {"unsupported transfer syntax": 2, "constant image": 1},
    )
    for i, obj in enumerate(objectives):
        run = root / f"run-{obj}"
        make_run(run, chain.dataset, objective=obj, seed=i)
        emb = root / f"emb-{obj}"
        make_embeddings(emb, chain.dataset, run)
        probe = root / f"probe-{obj}"
        make_probe(probe, emb, chain.dataset, run, seed=i)
        chain.runs.append(run)
        chain.embeddings.append(emb)
        chain.probes.append(probe)
    return chain


def shared_chain(tmp_path_factory) -> Chain:
    """One chain per test session (built once, reused by every report test module)."""
    root = tmp_path_factory.getbasetemp() / "report-chain"
    done = root / ".built"
    if not done.exists():
        build_chain(root)
        done.write_text("ok")
    return Chain(
        root,
        root / "dataset",
        [root / f"run-{o}" for o in ("ijepa", "salt")],
        [root / f"emb-{o}" for o in ("ijepa", "salt")],
        [root / f"probe-{o}" for o in ("ijepa", "salt")],
    )


def shared_report(tmp_path_factory) -> Path:
    """The report of the shared chain's two probes (built once per session through the Python API)."""
    from cxrjepa.report import ReportConfig, run_report

    chain = shared_chain(tmp_path_factory)
    out = tmp_path_factory.getbasetemp() / "report-full"
    if not (out / "index.html").exists():
        run_report(out, ReportConfig(map_points=500), artifacts=chain.probes, device="cpu")
    return out


def bare_artifact(path: Path, kind: str, inputs: dict | None = None, params: dict | None = None) -> Artifact:
    """A complete artifact with only a manifest (for lineage tests that never read outputs)."""
    b = begin(path, kind, params or {"name": Path(path).name}, input_refs(inputs or {}), force=True)
    return b.finish()


# ---------------------------------------------------------------- reading back what a stage wrote


def unread_fields(raw, typed, path: str = "") -> list[str]:
    """Paths of ``raw`` (a file or manifest part as written) whose value a reader's typed view
    (``cxrjepa.core.config.to_dict`` of it) does not hold unchanged: fields the reader drops or alters."""
    if isinstance(raw, dict):
        if not isinstance(typed, dict):
            return [path or "(top level)"]
        out = []
        for k, v in raw.items():
            where = f"{path}.{k}" if path else str(k)
            out += unread_fields(v, typed[k], where) if k in typed else [where]
        return out
    if isinstance(raw, list):
        if not isinstance(typed, list) or len(typed) != len(raw):
            return [path]
        return [p for i, (a, b) in enumerate(zip(raw, typed)) for p in unread_fields(a, b, f"{path}[{i}]")]
    return [] if raw == typed else [path]


# ---------------------------------------------------------------- checking a page


#: attributes through which a browser loads or follows something
URL_ATTRIBUTES = {
    "src",
    "href",
    "srcset",
    "action",
    "formaction",
    "poster",
    "data",
    "background",
    "manifest",
    "xlink:href",
    "ping",
}


@dataclass
class PageFacts:
    tags: list[tuple[str, dict]]
    h1: int = 0
    imgs: list[dict] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    text: str = ""


def inspect_html(text: str) -> PageFacts:
    """Every start tag with its attributes, and external references: a URL in *any* attribute, a
    URL-bearing attribute (src, href, ...) that is neither a data: URI nor an in-page anchor, CSS url()/@import."""
    import re
    from html.parser import HTMLParser

    facts = PageFacts([])
    chunks: list[str] = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            a = {k: (v or "") for k, v in attrs}
            facts.tags.append((tag, a))
            if tag == "h1":
                facts.h1 += 1
            if tag == "img":
                facts.imgs.append(a)
            if "id" in a:
                facts.ids.add(a["id"])
            for k, v in a.items():
                low = v.strip().lower()
                if re.search(r"(https?|ftp|file|wss?)://", low):
                    facts.external.append(f"<{tag} {k}={v[:80]}>")
                if k in URL_ATTRIBUTES and not (low.startswith("data:") or low.startswith("#")):
                    facts.external.append(f"<{tag} {k}={v[:80]}>")

        handle_startendtag = handle_starttag

        def handle_data(self, data):
            chunks.append(data)

    P().feed(text)
    facts.text = " ".join(chunks)
    for m in re.finditer(r"url\(([^)]*)\)|@import", text):
        facts.external.append(m.group(0)[:80])
    return facts
