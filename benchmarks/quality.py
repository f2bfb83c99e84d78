"""Is a CPU-pretrained cxrjepa encoder any good? Probes on real public data against two baselines.

    PYTHONPATH=. python benchmarks/quality.py --data-root /work/shared/data --work /tmp/cxrjepa-quality \\
        --write benchmarks/results/quality.md

For each data set (Kermany pediatric CXR: normal vs pneumonia; ieee8023 CXR: COVID-19 vs other; BUSI breast
ultrasound: benign / malignant / normal; POCUS lung ultrasound: covid / pneumonia / regular), every step a
cxrjepa command (printed, and listed in the results file):

1. ``cxrjepa ingest`` the set's *training* files only (its patient-level ``split`` column), without labels:
   the unlabeled pretraining set; and ``cxrjepa ingest --labels`` of every file: the probing set;
2. ``cxrjepa pretrain`` with the CPU recipe (``recipes/cxr-small-cpu.yaml``, or ``recipes/us-small-cpu.yaml``
   for ultrasound) for a fixed amount of work (the recipe's steps x batch; its CPU time is measured and
   reported), then three encoders are embedded with ``cxrjepa embed``:
   (a) the pretrained I-JEPA encoder, (b) the same architecture randomly initialised (``random:RUN``),
   (c) raw pixels area-downsampled to ``--pixels`` x ``--pixels`` (``pixels:N``);
3. ``cxrjepa probe`` each with the same split (the set's own patient-level ``split`` column written as a split
   file): logistic regression on standardized features, regularisation chosen on ``val``, test AUROC
   (one-vs-rest macro for 3 classes) and macro-F1 with patient-bootstrap 95 % intervals; kNN AUROC beside it.
   The two ViTs are probed on their mean-pooled last layer and on their last 4 layers (``--features``), and
   the I-JEPA encoder's test AUROC minus each baseline's gets a paired patient-bootstrap interval.

Text below the notes marker of an existing ``--write`` file (the hand-written analysis) is kept on rewrite.

POCUS: the 3 ``viral`` clips (all in the training split) are left unlabelled: too few to learn or test a
fourth class, and merging viral into the bacterial ``pneumonia`` class would mix two labels. They still serve
as unlabeled pretraining data. Videos are stored as clips (15 fps, at most 64 frames); pretraining samples
their frames, embed averages 16 evenly spaced frames per clip.

Budgets are work, not wall time (the machine is shared): ``--threads`` torch threads, the recipe's steps and
batch; measured CPU seconds (this process's children) are reported next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CXRJEPA_SALT", "benchmark-salt-not-secret")


@dataclass
class DataSet:
    name: str
    folder: str
    title: str
    column: str  # label column of labels.csv
    recipe: str
    #: label value -> class name (values not listed keep their name); None = drop from probing
    relabel: dict = field(default_factory=dict)
    #: extra ``cxrjepa ingest`` settings (ultrasound: US-JEPA's 2-98 percentile rescale, speckle makes extremes noisy)
    ingest: tuple = ()


SETS = {
    "kermany": DataSet(
        "kermany",
        "kermany_pediatric_cxr_224",
        "Kermany pediatric CXR",
        "label",
        "recipes/cxr-small-cpu.yaml",
        {"NORMAL": "normal", "PNEUMONIA": "pneumonia"},
    ),
    "ieee8023": DataSet(
        "ieee8023",
        "covid_chestxray_ieee8023",
        "ieee8023 COVID CXR",
        "covid",
        "recipes/cxr-small-cpu.yaml",
        {"1": "covid", "0": "other"},
    ),
    "busi": DataSet(
        "busi",
        "busi_breast_ultrasound_256",
        "BUSI breast US",
        "label",
        "recipes/us-small-cpu.yaml",
        ingest=("--set", "percentile_low=2", "--set", "percentile_high=98"),
    ),
    "pocus": DataSet(
        "pocus",
        "pocus_lung_ultrasound",
        "POCUS lung US",
        "label",
        "recipes/us-small-cpu.yaml",
        {"viral": None},
        ingest=("--set", "percentile_low=2", "--set", "percentile_high=98"),
    ),
}

ENCODERS = ("cxrjepa", "random", "pixels")
FEATURE_NAMES = {"features": "mean-pooled last layer", "features_last4": "last 4 layers"}


def row_key(encoder: str, features: str) -> str:
    """Probe folder / result key: ``cxrjepa`` (mean-pooled features), ``cxrjepa-last4``, ``pixels``."""
    return encoder if features == "features" else f"{encoder}-{features.removeprefix('features_')}"


NOTES = "<!-- notes: written by hand, kept when quality.py --write rewrites the tables above -->"


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def sh(cmd: list, log: list[str], env: dict) -> tuple[float, float]:
    """Run a cxrjepa command (printed and recorded); returns (wall seconds, CPU seconds)."""
    text = "cxrjepa " + " ".join(str(c) for c in cmd)
    print(f"$ {text}", flush=True)
    log.append(text)
    t0, c0 = time.time(), child_cpu()
    res = subprocess.run([sys.executable, "-m", "cxrjepa", *map(str, cmd)], env=env)  # noqa: S603
    if res.returncode not in (0, 3):  # 3: finished, some inputs rejected (they are in the ledger)
        raise SystemExit(f"command failed ({res.returncode}): {text}")
    return time.time() - t0, child_cpu() - c0


def train_list(ds: DataSet, root: Path, work: Path) -> Path:
    """The set's training files (its patient-level split), one absolute path per line."""
    import pandas as pd

    df = pd.read_csv(root / ds.folder / "labels.csv", dtype=str)
    files = [str((root / ds.folder / f).resolve()) for f in df.loc[df["split"] == "train", "file"].dropna()]
    out = work / "train-files.txt"
    out.write_text("\n".join(files) + "\n")
    return out


def probe_inputs(ds: DataSet, data: Path, work: Path) -> tuple[Path, Path, dict]:
    """labels.csv (sample_id, target) and split.csv (sample_id, split) from the probing set's index."""
    import pandas as pd

    meta = pd.read_parquet(data / "metadata.parquet", columns=None)
    raw = meta[ds.column].astype("string")
    raw = raw.str.replace(r"\.0$", "", regex=True)  # 1.0 -> 1 (numeric columns read back as floats)
    target = raw.map(lambda v: ds.relabel.get(v, v) if v is not pd.NA else None)
    labels = pd.DataFrame({"sample_id": meta["sample_id"], "target": target})
    split = pd.DataFrame({"sample_id": meta["sample_id"], "split": meta["split"]})
    lab, spl = work / "probe-labels.csv", work / "split.csv"
    labels.to_csv(lab, index=False)
    split.to_csv(spl, index=False)
    kept = labels["target"].notna()
    counts = {
        s: {
            c: int(n) for c, n in labels.loc[kept & (split["split"] == s), "target"].value_counts().sort_index().items()
        }
        for s in ("train", "val", "test")
    }
    return lab, spl, {"counts": counts, "unlabelled": int((~kept).sum())}


def test_scores(prb: Path, patients: dict) -> tuple:
    """(classes, labels, scores (N, C), patient keys) of the linear probe's test predictions, by sample_id."""
    import pandas as pd

    df = pd.read_parquet(prb / "predictions.parquet")
    df = df[(df["probe"] == "linear") & (df["split"] == "test")].sort_values("sample_id")
    cols = sorted(c for c in df.columns if c.startswith("score_"))
    return (
        [c[6:] for c in cols],
        df["target"].astype(str).to_numpy(),
        df[cols].to_numpy(float),
        df["sample_id"].map(patients).to_numpy(),
    )


def auroc(y, scores, classes) -> float:
    from sklearn.metrics import roc_auc_score

    if len(classes) == 2:
        return float(roc_auc_score(y == classes[1], scores[:, 1]))
    return float(roc_auc_score(y, scores, multi_class="ovr", average="macro", labels=classes))


def paired_delta(a: Path, b: Path, patients: dict, n: int, seed: int) -> dict:
    """Test AUROC of probe a minus probe b on the same samples, with a paired patient-bootstrap 95 % interval
    (both probes scored on each resample): the interval excludes 0 when one encoder really beats the other."""
    import numpy as np

    classes, y, sa, pa = test_scores(a, patients)
    _, yb, sb, _ = test_scores(b, patients)
    assert (y == yb).all()
    value = auroc(y, sa, classes) - auroc(y, sb, classes)
    groups = {p: np.flatnonzero(pa == p) for p in dict.fromkeys(pa)}
    keys, rng, deltas = list(groups), np.random.default_rng(seed), []
    for _ in range(n):
        idx = np.concatenate([groups[keys[i]] for i in rng.integers(0, len(keys), len(keys))])
        if len(set(y[idx])) < len(classes):
            continue  # a resample without every class has no AUROC
        deltas.append(auroc(y[idx], sa[idx], classes) - auroc(y[idx], sb[idx], classes))
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return {"value": value, "ci": [float(lo), float(hi)]}


def run_set(ds: DataSet, args, env: dict) -> dict:
    root, work = Path(args.data_root), Path(args.work) / ds.name
    work.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    src = root / ds.folder
    size = str(args.size)
    sh(
        [
            "ingest",
            f"@{train_list(ds, root, work)}",
            "--out",
            work / "pretrain-data",
            "--size",
            size,
            *ds.ingest,
            "--quiet",
        ],
        log,
        env,
    )
    sh(
        ["ingest", src, "--out", work / "data", "--size", size, *ds.ingest, "--labels", src / "labels.csv", "--quiet"],
        log,
        env,
    )
    recipe = ROOT / ds.recipe
    pre = [
        "pretrain",
        "--data",
        work / "pretrain-data",
        "--out",
        work / "run",
        "--config",
        recipe,
        "--gpus",
        "0",
        "--set",
        f"train.seed={args.seed}",
        "--quiet",
    ]
    pre += [x for s in args.set for x in ("--set", s)]
    budget = work / "pretrain-cost.json"  # measured when the run was made; a rerun that skips it reads it back
    finished = (work / "run" / "manifest.yaml").exists() and budget.exists()
    wall, cpu = sh(pre, log, env)
    if finished:
        wall, cpu = (json.loads(budget.read_text())[k] for k in ("wall_s", "cpu_s"))
    else:
        budget.write_text(json.dumps({"wall_s": wall, "cpu_s": cpu}))
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    mon = [r for r in rows if "rankme" in r]
    manifest = __import__("yaml").safe_load((work / "run" / "manifest.yaml").read_text())
    cfg = __import__("yaml").safe_load((work / "run" / "config.yaml").read_text())
    lab, spl, info = probe_inputs(ds, work / "data", work)
    specs = {"cxrjepa": work / "run", "random": f"random:{work / 'run'}", "pixels": f"pixels:{args.pixels}"}
    feats = args.features.split(",")
    results = {}
    for name in ENCODERS:
        emb = work / f"emb-{name}"
        embed = ["embed", "--encoder", specs[name], "--data", work / "data", "--out", emb, "--quiet"]
        if "features_last4" in feats and name != "pixels":
            embed.append("--last4")
        sh(embed, log, env)
        for features in feats if name != "pixels" else ["features"]:
            row = row_key(name, features)
            sh(
                [
                    "probe",
                    "--embeddings",
                    emb,
                    "--out",
                    work / f"probe-{row}",
                    "--labels",
                    lab,
                    "--key",
                    "sample_id",
                    "--label-col",
                    "target",
                    "--split",
                    spl,
                    "--features",
                    features,
                    "--fewshot",
                    "none",
                    "--bootstrap",
                    str(args.bootstrap),
                    "--set",
                    "probes=[linear,knn]",
                    "--set",
                    "subgroups=[]",
                    "--set",
                    "attributes=false",
                    "--set",
                    f"seed={args.seed}",
                    "--quiet",
                ],
                log,
                env,
            )
            results[row] = json.loads((work / f"probe-{row}" / "metrics.json").read_text())["tasks"]["target"]
    import pandas as pd

    meta = pd.read_parquet(work / "data" / "metadata.parquet", columns=["sample_id", "patient_key"])
    patients = dict(zip(meta["sample_id"], meta["patient_key"]))
    # I-JEPA minus the same-pooling random init, and minus raw pixels (I-JEPA's default mean-pooled features)
    pairs = {row_key("random", f): row_key("cxrjepa", f) for f in feats} | {"pixels": "cxrjepa"}
    deltas = {
        b: paired_delta(work / f"probe-{a}", work / f"probe-{b}", patients, args.bootstrap, args.seed)
        for b, a in pairs.items()
    }
    return {
        "set": ds,
        "log": log,
        "results": results,
        "info": info,
        "deltas": deltas,
        "pretrain": {
            "wall_s": wall,
            "cpu_s": cpu,
            "steps": cfg["train"]["steps"],
            "batch": cfg["train"]["batch_size"],
            "frames": int(manifest.get("counts", {}).get("frames", 0) or 0),
            "first": mon[0] if mon else {},
            "last": mon[-1] if mon else {},
        },
    }


def fmt(m: dict | None, signed: bool = False) -> str:
    if not m or m.get("value") is None:
        return "n/a"
    ci, f = m.get("ci"), "+.3f" if signed else ".3f"
    return f"{m['value']:{f}} [{ci[0]:{f}}, {ci[1]:{f}}]" if ci else f"{m['value']:{f}}"


def table(outs: list[dict], args, command: str) -> str:
    lines = [
        "# Probe quality: CPU-pretrained cxrjepa I-JEPA vs random init vs raw pixels",
        "",
        f"Command: `{command}`",
        "",
        f"Threads: {args.threads} torch/OpenMP threads; input size {args.size} px; pixel baseline {args.pixels} x {args.pixels}; "
        f"ViT features probed: {', '.join(FEATURE_NAMES[f] for f in args.features.split(','))}; {args.bootstrap} patient-bootstrap resamples; seed {args.seed}.",
        "",
        "| data set | test n (classes) | encoder, features | AUROC [95% CI] | macro-F1 [95% CI] | kNN AUROC | I-JEPA AUROC minus this [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outs:
        ds, res = o["set"], o["results"]
        test = o["info"]["counts"]["test"]
        rows = [r for r in res]  # cxrjepa[-last4], random[-last4], pixels, in run order
        rows = sorted(rows, key=lambda r: (ENCODERS.index(r.split("-")[0]), r))
        for i, row in enumerate(rows):
            lin = res[row]["probes"]["linear"]["metrics"]
            knn = res[row]["probes"].get("knn", {}).get("metrics", {})
            enc, _, feat = row.partition("-")
            label = {
                "cxrjepa": "cxrjepa I-JEPA",
                "random": "same ViT, random init",
                "pixels": f"raw pixels {args.pixels}x{args.pixels}",
            }[enc]
            if enc != "pixels":
                label += f", {FEATURE_NAMES['features_' + feat if feat else 'features']}"
            first = f"{ds.title}" if i == 0 else ""
            n = f"{sum(test.values())} ({', '.join(f'{k} {v}' for k, v in test.items())})" if i == 0 else ""
            delta = fmt(o["deltas"][row], signed=True) if row in o["deltas"] else ""
            lines.append(
                f"| {first} | {n} | {label} | {fmt(lin.get('auroc'))} | {fmt(lin.get('macro_f1'))} | "
                f"{fmt(knn.get('auroc'))} | {delta} |"
            )
    lines += [
        "",
        "## Pretraining budget (per data set)",
        "",
        "| data set | recipe | pretraining frames | steps x batch | CPU s | wall s | feat_std first -> last | RankMe first -> last |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in outs:
        p, ds = o["pretrain"], o["set"]
        f, la = p["first"], p["last"]
        lines.append(
            f"| {ds.title} | `{ds.recipe}` | {p['frames']} | {p['steps']} x {p['batch']} | {p['cpu_s']:.0f} | {p['wall_s']:.0f} | "
            f"{f.get('feat_std', float('nan')):.2f} -> {la.get('feat_std', float('nan')):.2f} | "
            f"{f.get('rankme', float('nan')):.1f} -> {la.get('rankme', float('nan')):.1f} |"
        )
    lines += ["", "## Splits (labelled samples per class)", ""]
    for o in outs:
        c = o["info"]["counts"]
        extra = f"; {o['info']['unlabelled']} unlabelled" if o["info"]["unlabelled"] else ""
        lines.append(
            f"- {o['set'].title}: "
            + "; ".join(f"{s} {sum(v.values())} ({', '.join(f'{k} {n}' for k, n in v.items())})" for s, v in c.items())
            + extra
        )
    lines += ["", "## Commands", ""]
    for o in outs:
        lines += [f"{o['set'].title}:", "", "```"] + o["log"] + ["```", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="/work/shared/data")
    ap.add_argument("--work", default="/tmp/cxrjepa-quality", help="artifacts land here (reruns skip finished stages)")
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, from {', '.join(SETS)}")
    ap.add_argument("--size", type=int, default=64, help="stored and model input size (the CPU recipes' 64 px)")
    ap.add_argument("--pixels", type=int, default=16, help="side of the raw-pixel baseline")
    ap.add_argument(
        "--features",
        default="features,features_last4",
        help="comma-separated pooled arrays probed for the two ViTs (features, features_last4)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of every stage")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="pretraining and probe seed")
    ap.add_argument("--set", action="append", default=[], help="extra pretrain --set KEY=VALUE (e.g. train.steps=400)")
    ap.add_argument("--write", help="write the markdown table here")
    args = ap.parse_args()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    outs = [run_set(SETS[name], args, env) for name in args.sets.split(",") if name]
    command = "PYTHONPATH=. python benchmarks/quality.py " + " ".join(sys.argv[1:])
    text = table(outs, args, command)
    print(text)
    if args.write:
        path = Path(args.write)
        path.parent.mkdir(parents=True, exist_ok=True)
        old = path.read_text() if path.exists() else ""
        if NOTES in old:  # the hand-written analysis below the marker survives a rerun
            text += "\n" + old[old.index(NOTES) :]
        path.write_text(text)


if __name__ == "__main__":
    main()
