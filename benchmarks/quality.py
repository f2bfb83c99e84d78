"""Is a CPU-pretrained cxrjepa encoder any good? Several objectives at an equal CPU budget, probed on real
public data against a random-init twin and raw pixels.

    PYTHONPATH=. python benchmarks/quality.py --data-root /work/shared/data --work /tmp/cxrjepa-quality \\
        --contenders ijepa,lejepa,jepa-sigreg --budget-cpu 300 --budget-cpu kermany=600 \\
        --write benchmarks/results/quality.md

For each data set (Kermany pediatric CXR: normal vs pneumonia; ieee8023 CXR: COVID-19 vs other; BUSI breast
ultrasound: benign / malignant / normal; POCUS lung ultrasound: covid / pneumonia / regular), every step a
cxrjepa command (printed, and listed in the results file):

1. ``cxrjepa ingest`` the set's *training* files only (its patient-level ``split`` column), without labels:
   the unlabeled pretraining set; and ``cxrjepa ingest --labels`` of every file: the probing set;
2. ``cxrjepa pretrain`` each contender of ``--contenders`` (``benchmarks/contenders.py``: ``ijepa``,
   ``lejepa``, ``jepa-sigreg``; the shipped CPU recipe for the objective it uses, benchmark configs in
   ``benchmarks/configs/`` for the others, one encoder architecture for all) at the same budget of
   ``--budget-cpu`` CPU seconds (``benchmarks/budget.py``: two short calibration runs give each contender's
   CPU seconds per step on this set and its fixed cost, ``train.steps`` is set to fit the budget, and the real
   run's measured CPU seconds are reported beside it);
3. ``cxrjepa embed`` (a) every pretrained encoder, (b) its architecture randomly initialised (``random:RUN``,
   one twin per distinct model section: one for all when the contenders share the encoder), (c) raw pixels
   area-downsampled to ``--pixels`` x ``--pixels`` (``pixels:N``);
4. ``cxrjepa probe`` each with the same split (the set's own patient-level ``split`` column written as a split
   file): logistic regression on standardized features, regularisation chosen on ``val``, test AUROC
   (one-vs-rest macro for 3 classes) and macro-F1 with patient-bootstrap 95 % intervals; kNN AUROC beside it.
   The ViTs are probed on their mean-pooled last layer and on their last 4 layers (``--features``), or on
   zone-pooled ones (``--pooling grid:4x1``: every ViT, twins included, pooled the same way); each
   pretrained encoder's headline metric (AUROC for the 2-class sets, macro-F1 for the 3-class ones) minus its
   random twin's (same features) and minus raw pixels' gets a paired interval: both probes scored on the same
   patient-bootstrap resamples.

Budgets are CPU seconds, not steps or wall time (the machine is shared): ``--budget-cpu 300`` for every set,
``--budget-cpu kermany=600`` for one. Every stage runs with ``--threads`` torch threads. Reruns skip finished
stages (the calibration is kept in ``WORK/SET/CONTENDER/calibration.json``, finished runs, embeddings and
probes are not redone), so an interrupted run resumes where it stopped; a pretraining resumed after a kill
reports the CPU seconds of its last part only (marked in the table).

Text below the notes marker of an existing ``--write`` file (the hand-written analysis) is kept on rewrite.

POCUS: the 3 ``viral`` clips (all in the training split) are left unlabelled: too few to learn or test a
fourth class, and merging viral into the bacterial ``pneumonia`` class would mix two labels. They still serve
as unlabeled pretraining data. Videos are stored as clips (15 fps, at most 64 frames); pretraining samples
their frames, embed averages 16 evenly spaced frames per clip.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CXRJEPA_SALT", "benchmark-salt-not-secret")

from benchmarks import contenders as cont  # noqa: E402
from benchmarks.budget import parse_budgets  # noqa: E402
from benchmarks.results_file import write_keeping_notes  # noqa: E402


@dataclass
class DataSet:
    name: str
    folder: str
    title: str
    column: str  # label column of labels.csv
    modality: str  # cxr | us: which shipped CPU recipe (and augmentation) its contenders use
    #: label value -> class name (values not listed keep their name); None = drop from probing
    relabel: dict = field(default_factory=dict)
    #: extra ``cxrjepa ingest`` settings (ultrasound: US-JEPA's 2-98 percentile rescale, speckle makes extremes noisy)
    ingest: tuple = ()
    #: the metric the paired differences are taken on (the issue's headline metric for this set)
    metric: str = "auroc"


US_INGEST = ("--set", "percentile_low=2", "--set", "percentile_high=98")
SETS = {
    "kermany": DataSet(
        "kermany",
        "kermany_pediatric_cxr_224",
        "Kermany pediatric CXR",
        "label",
        "cxr",
        {"NORMAL": "normal", "PNEUMONIA": "pneumonia"},
    ),
    "ieee8023": DataSet(
        "ieee8023", "covid_chestxray_ieee8023", "ieee8023 COVID CXR", "covid", "cxr", {"1": "covid", "0": "other"}
    ),
    "busi": DataSet(
        "busi", "busi_breast_ultrasound_256", "BUSI breast US", "label", "us", ingest=US_INGEST, metric="macro_f1"
    ),
    "pocus": DataSet(
        "pocus",
        "pocus_lung_ultrasound",
        "POCUS lung US",
        "label",
        "us",
        {"viral": None},
        ingest=US_INGEST,
        metric="macro_f1",
    ),
}

FEATURE_NAMES = {"features": "last layer", "features_last4": "last 4 layers"}
METRIC_NAMES = {"auroc": "AUROC", "macro_f1": "macro-F1"}


def feature_name(features: str, pooling: str) -> str:
    """'mean-pooled last layer', 'last 4 layers, grid:4x1 zones'."""
    name = FEATURE_NAMES[features]
    return f"mean-pooled {name}" if pooling == "mean" else f"{name}, {pooling} zones"


def pooling_tag(pooling: str) -> str:
    """Folder suffix of a ViT's embeddings and probes: '' for mean pooling (the default), '-grid4x1' else."""
    return "" if pooling == "mean" else "-" + pooling.replace(":", "")


def row_key(encoder: str, features: str) -> str:
    """Probe folder / result key: ``ijepa`` (mean-pooled features), ``ijepa-last4``, ``random``, ``pixels``."""
    return encoder if features == "features" else f"{encoder}-{features.removeprefix('features_')}"


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


def paired_delta(a: Path, b: Path, n: int, seed: int) -> dict:
    """Test AUROC and macro-F1 of probe a's linear probe minus probe b's on the same samples, each with a paired
    patient-bootstrap 95 % interval (cxrjepa.probe.compare, what the report shows): the interval excludes 0
    when one encoder really beats the other."""
    from cxrjepa.probe.compare import compare_probes
    from cxrjepa.probe.layout import Probe

    d = compare_probes(Probe.open(a), Probe.open(b), "target", "linear", n_boot=n, seed=seed)
    if d is None:
        raise SystemExit(f"{a} and {b} scored different test samples: cannot pair them.")
    return {k: d[k] for k in METRIC_NAMES}


def probe_args(args, lab: Path, spl: Path, features: str) -> list:
    return [
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
    ]


def run_set(ds: DataSet, args, env: dict, budget: float, contenders: list) -> dict:
    root, work = Path(args.data_root), Path(args.work) / ds.name
    work.mkdir(parents=True, exist_ok=True)
    sh = cont.Runner(env)
    src = root / ds.folder
    size = str(args.size)
    pre_data = work / "pretrain-data"
    sh(["ingest", f"@{train_list(ds, root, work)}", "--out", pre_data, "--size", size, *ds.ingest, "--quiet"])
    sh(["ingest", src, "--out", work / "data", "--size", size, *ds.ingest, "--labels", src / "labels.csv", "--quiet"])
    extra = tuple(args.set)
    pretrained = [
        cont.pretrain(sh, c, ds.modality, pre_data, work / c.name, budget, seed=args.seed, extra=extra)
        for c in contenders
    ]
    twins = cont.twins(pretrained)
    # encoder name -> (embed spec, folder, is a ViT)
    encoders = {p["contender"].name: (p["run"], work / p["contender"].name, True) for p in pretrained}
    encoders |= {t["name"]: (f"random:{t['run']}", work / t["name"], True) for t in twins.values()}
    encoders["pixels"] = (f"pixels:{args.pixels}", work / "pixels", False)
    lab, spl, info = probe_inputs(ds, work / "data", work)
    feats = args.features.split(",")
    results = {}
    for name, (spec, folder, vit) in encoders.items():
        tag = pooling_tag(args.pooling) if vit else ""
        emb = folder / f"emb{tag}"
        embed = ["embed", "--encoder", spec, "--data", work / "data", "--out", emb, "--quiet"]
        if "features_last4" in feats and vit:
            embed.append("--last4")
        if vit:
            embed += ["--pooling", args.pooling]
        sh(embed)
        for features in feats if vit else ["features"]:
            out = folder / f"probe-{features}{tag}"
            sh(["probe", "--embeddings", emb, "--out", out, *probe_args(args, lab, spl, features)])
            results[row_key(name, features)] = {
                "probe": out,
                "metrics": json.loads((out / "metrics.json").read_text())["tasks"]["target"],
            }
    twin_of = {c: t["name"] for t in twins.values() for c in t["serves"]}
    deltas = {}
    for p in pretrained:
        name = p["contender"].name
        for features in feats:
            row = row_key(name, features)
            mine = results[row]["probe"]
            deltas[row] = {
                "random": paired_delta(
                    mine, results[row_key(twin_of[name], features)]["probe"], args.bootstrap, args.seed
                ),
                "pixels": paired_delta(mine, results["pixels"]["probe"], args.bootstrap, args.seed),
            }
    return {
        "set": ds,
        "log": sh.log,
        "results": results,
        "info": info,
        "deltas": deltas,
        "pretrained": pretrained,
        "twins": twins,
        "frames": int(
            (__import__("yaml").safe_load((pre_data / "manifest.yaml").read_text()).get("counts") or {}).get("frames")
            or 0
        ),
    }


def fmt(m: dict | None, signed: bool = False) -> str:
    if not m or m.get("value") is None:
        return "n/a"
    ci, f = m.get("ci"), "+.3f" if signed else ".3f"
    return f"{m['value']:{f}} [{ci[0]:{f}}, {ci[1]:{f}}]" if ci else f"{m['value']:{f}}"


def encoder_label(o: dict, row: str, args) -> str:
    """'LeJEPA, last 4 layers', 'same ViT, random init, ...', 'raw pixels 16x16'."""
    titles = {p["contender"].name: f"cxrjepa {p['contender'].title}" for p in o["pretrained"]}
    for t in o["twins"].values():
        who = "" if t["name"] == "random" else f" ({', '.join(t['serves'])})"
        titles[t["name"]] = f"same ViT{who}, random init"
    if row == "pixels":
        return f"raw pixels {args.pixels}x{args.pixels}"
    name, feat = (row[: -len("-last4")], "features_last4") if row.endswith("-last4") else (row, "features")
    return f"{titles[name]}, {feature_name(feat, args.pooling)}"


def table(outs: list[dict], args, command: str, budgets: dict) -> str:
    names = ", ".join(p["contender"].title for p in outs[0]["pretrained"]) if outs else ""
    lines = [
        f"# Probe quality: CPU-pretrained cxrjepa encoders ({names}) at an equal CPU budget vs random init vs raw pixels",
        "",
        f"Command: `{command}`",
        "",
        f"Budget: {', '.join(f'{n} {b:.0f}' for n, b in budgets.items())} CPU seconds of pretraining per contender "
        f"(per data set); {args.threads} torch/OpenMP threads; input size {args.size} px; pixel baseline "
        f"{args.pixels} x {args.pixels}; ViT features probed: "
        f"{', '.join(feature_name(f, args.pooling) for f in args.features.split(','))}; {args.bootstrap} patient-bootstrap "
        f"resamples; seed {args.seed}.",
        "",
        "Paired differences: the set's headline metric (named in the first column) of the pretrained encoder minus "
        "that of its random twin with the same features, and minus raw pixels', with a 95 % interval from the "
        "same patient-bootstrap resamples for both probes.",
        "",
        "| data set | test n (classes) | encoder, features | AUROC [95% CI] | macro-F1 [95% CI] | kNN AUROC "
        "| minus random twin [95% CI] | minus raw pixels [95% CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in outs:
        ds, res = o["set"], o["results"]
        test = o["info"]["counts"]["test"]
        for i, row in enumerate(res):
            m = res[row]["metrics"]
            lin = m["probes"]["linear"]["metrics"]
            knn = m["probes"].get("knn", {}).get("metrics", {})
            first = f"{ds.title} (differences: {METRIC_NAMES[ds.metric]})" if i == 0 else ""
            n = f"{sum(test.values())} ({', '.join(f'{k} {v}' for k, v in test.items())})" if i == 0 else ""
            d = o["deltas"].get(row)
            vs_r, vs_p = (fmt(d["random"][ds.metric], True), fmt(d["pixels"][ds.metric], True)) if d else ("", "")
            lines.append(
                f"| {first} | {n} | {encoder_label(o, row, args)} | {fmt(lin.get('auroc'))} | "
                f"{fmt(lin.get('macro_f1'))} | {fmt(knn.get('auroc'))} | {vs_r} | {vs_p} |"
            )
    lines += [
        "",
        "## Pretraining budget (per data set and contender)",
        "",
        "Steps were calibrated per data set and contender from two short runs (CPU seconds of the `cxrjepa "
        "pretrain` process and its data-loader workers); measured CPU s is the real run's.",
        "",
        *cont.BUDGET_HEADER,
    ]
    for o in outs:
        for j, p in enumerate(o["pretrained"]):
            label = f"{o['set'].title} ({o['frames']} frames)" if j == 0 else ""
            lines.append(cont.budget_row(p, label))
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
    ap.add_argument(
        "--contenders",
        default="ijepa,lejepa,jepa-sigreg",
        help=f"comma-separated pretrained contenders, from {', '.join(cont.CONTENDERS)} (benchmarks/contenders.py)",
    )
    ap.add_argument(
        "--budget-cpu",
        action="append",
        default=[],
        metavar="S|SET=S",
        help="CPU seconds of pretraining per contender: S for every set (default 300), SET=S for one (repeatable)",
    )
    ap.add_argument("--size", type=int, default=64, help="stored and model input size (the CPU recipes' 64 px)")
    ap.add_argument("--pixels", type=int, default=16, help="side of the raw-pixel baseline")
    ap.add_argument(
        "--features",
        default="features,features_last4",
        help="comma-separated pooled arrays probed for the ViTs (features, features_last4)",
    )
    ap.add_argument(
        "--pooling",
        default="mean",
        help="how the ViTs (pretrained and random twins) pool their tokens: mean or grid:RxC (cxrjepa embed --pooling)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of every stage")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="pretraining and probe seed")
    ap.add_argument("--set", action="append", default=[], help="extra pretrain --set KEY=VALUE for every contender")
    ap.add_argument("--write", help="write the markdown table here")
    args = ap.parse_args()
    names = [n for n in args.sets.split(",") if n]
    unknown = [n for n in names if n not in SETS]
    if unknown:
        raise SystemExit(f"--sets: unknown '{','.join(unknown)}' (known: {', '.join(SETS)}).")
    budgets = parse_budgets(args.budget_cpu, names)
    contenders = cont.parse_contenders(args.contenders)
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    outs = [run_set(SETS[name], args, env, budgets[name], contenders) for name in names]
    command = "PYTHONPATH=. python benchmarks/quality.py " + " ".join(sys.argv[1:])
    text = table(outs, args, command, budgets)
    print(text)
    if args.write:
        write_keeping_notes(args.write, text)


if __name__ == "__main__":
    main()
