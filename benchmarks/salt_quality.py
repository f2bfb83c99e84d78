"""Quality at equal CPU compute: I-JEPA vs SALT (pixel teacher) vs random init, linear-probe macro-F1.

Datasets (``/work/shared/data``, never copied into the repo):

* ``pocus`` -- POCUS lung ultrasound: videos and stills, 86 samples of 60 patients. Task: covid / pneumonia /
  regular (the 3 ``viral`` samples are dropped: too few for a patient-level split). Patient ids from
  labels.csv (``patient_id``).
* ``busi`` -- BUSI breast ultrasound, 469 PNG images: benign / malignant / normal. No patient ids exist: the
  near-duplicate groups of labels.csv (``dup_group``, images of the same lesion) are used as patients, every
  other image is its own group, so no near-duplicate pair straddles train and test (the same woman may
  still appear on both sides; the numbers are optimistic in absolute terms, not between methods).

For each dataset and pretraining seed: ingest once (64 px, 2-98 percentile rescale), then

* ``ijepa``  -- the I-JEPA stage of pipelines/us-salt-cpu.yaml for ``budget / c_ijepa`` steps;
* ``salt``   -- its pixel teacher for ``teacher_share x budget / c_pixel`` steps, then its SALT student for the
  rest of the budget (``c_*``: CPU seconds per step, calibrated here on the same model and batch);
* ``random`` -- the student's architecture at random initialisation (the same seed);

each embedded (``cxrjepa embed``: mean-pooled patch tokens, clips averaged over 16 frames) and probed with a
logistic-regression linear probe (``cxrjepa probe``) on ``--splits`` (20) seeded patient-level splits
(70/10/20 % of patients, stratified); macro-F1 on the test split is averaged over the splits, then mean +- sd
over the pretraining seeds (POCUS has ~17 test samples per split: single splits range from 0.15 to 0.95).
Every pretraining call's real CPU time (getrusage, loader in-process) is reported next to it.

    PYTHONPATH=. flock /work/bench.lock python benchmarks/salt_quality.py --budget 240 --seeds 0,1,2 --jobs 2

(benchmarks/results/salt.md was made with ``--budget 180``: ~30 min of wall time on 2 cores.)

Results go to ``--work`` (artifacts, results.json) and the table to ``--out`` (Markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path("/work/shared/data")
DATASETS = {
    "pocus": {"folder": DATA / "pocus_lung_ultrasound", "patient_column": "auto", "drop": ["viral"]},
    "busi": {"folder": DATA / "busi_breast_ultrasound_256", "patient_column": "dup_group", "drop": []},
}
RECIPE = ROOT / "pipelines" / "us-salt-cpu.yaml"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def recipe_params(stage: str) -> dict:
    import yaml

    return yaml.safe_load(RECIPE.read_text())["stages"][stage]["params"]


def ingest(name: str, work: Path, size: int) -> Path:
    from cxrjepa.ingest.api import run_ingest
    from cxrjepa.ingest.config import IngestConfig, IngestOptions

    spec = DATASETS[name]
    out = work / name / "dataset"
    salt = work / "salt.txt"
    if not salt.exists():
        salt.parent.mkdir(parents=True, exist_ok=True)
        salt.write_text("cxrjepa-salt-benchmark\n")
    cfg = IngestConfig(
        size=size, percentile_low=2.0, percentile_high=98.0, labels_patient_column=spec["patient_column"]
    )
    run_ingest(
        out,
        cfg,
        sources=[spec["folder"]],
        labels=spec["folder"] / "labels.csv",
        options=IngestOptions(workers=1, salt_file=salt),
    )
    return out


def labels_file(name: str, dataset: Path) -> Path:
    """sample_id -> task label (``label``, minus the dropped classes)."""
    import pandas as pd

    meta = pd.read_parquet(dataset / "metadata.parquet", columns=["sample_id", "label"])
    meta = meta[~meta["label"].isin(DATASETS[name]["drop"])].rename(columns={"label": "task"})
    path = dataset.parent / "labels-task.csv"
    meta.to_csv(path, index=False)
    return path


def calibrate(threads: int) -> dict:
    """CPU seconds per training step of each recipe stage (benchmarks/salt.py's measurement)."""
    import tempfile

    import torch

    from benchmarks.salt import measure, teacher_export
    from cxrjepa.core.config import load_config
    from cxrjepa.pretrain import PretrainConfig

    torch.set_num_threads(threads)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        teacher_model = recipe_params("teacher")["model"]
        t = teacher_export(Path(tmp) / "t", teacher_model, None)
        for stage in ("ijepa", "teacher", "student"):
            p = recipe_params(stage)
            cfg = load_config(PretrainConfig, layers=[p], overrides=["salt.holdout=0", "salt.export=last"])
            r = measure(cfg, torch.device("cpu"), 8, teacher=t if stage == "student" else None, warm=2)
            out[stage] = r["cpu_s"]
    return out


def pretrain(stage: str, out: Path, data: Path, steps: int, seed: int, teacher: Path | None = None) -> dict:
    from cxrjepa.core.config import load_config
    from cxrjepa.pretrain import PretrainConfig, PretrainOptions, run_pretrain

    cfg = load_config(
        PretrainConfig,
        layers=[recipe_params(stage)],
        overrides=[
            f"train.steps={steps}",
            f"train.seed={seed}",
            "runtime.workers=0",
            f"runtime.checkpoint_every={steps}",
        ],
    )
    t0, c0 = time.time(), cpu_seconds()
    art = run_pretrain(out, cfg, data=data, teacher=teacher, options=PretrainOptions(gpus=0))
    return {
        "steps": steps,
        "cpu_s": round(cpu_seconds() - c0, 1),
        "wall_s": round(time.time() - t0, 1),
        "final": art.contents.get("final", {}),
        "selection": art.contents.get("selection"),
    }


def probe_f1(emb: Path, labels: Path, out: Path, splits: int) -> list[float]:
    from cxrjepa.probe.api import run_probe
    from cxrjepa.probe.config import ProbeConfig

    scores = []
    for split in range(splits):
        cfg = ProbeConfig(
            tasks=["task"], probes=["linear"], bootstrap=0, fewshot=[], subgroups=[], attributes=False, seed=split
        )
        art = run_probe(out / f"split{split}", cfg, embeddings=emb, labels=labels)
        metrics = json.loads((art.path / "metrics.json").read_text())
        scores.append(float(metrics["tasks"]["task"]["probes"]["linear"]["metrics"]["macro_f1"]["value"]))
    return scores


def unit(
    name: str, seed: int, work: Path, budget: float, share: float, costs: dict, threads: int, size: int, splits: int
) -> dict:
    """One dataset x one seed: the three encoders, embedded and probed."""
    import torch

    from cxrjepa.embed.api import EmbedConfig, EmbedOptions, run_embed

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    data = work / name / "dataset"
    labels = work / name / "labels-task.csv"
    root = work / name / f"seed{seed}"
    steps = {
        "ijepa": max(1, round(budget / costs["ijepa"])),
        "teacher": max(1, round(share * budget / costs["teacher"])),
    }
    steps["student"] = max(1, round((budget - steps["teacher"] * costs["teacher"]) / costs["student"]))
    runs = {
        "ijepa": pretrain("ijepa", root / "ijepa", data, steps["ijepa"], seed),
        "teacher": pretrain("teacher", root / "teacher", data, steps["teacher"], seed),
    }
    runs["salt"] = pretrain("student", root / "salt", data, steps["student"], seed, teacher=root / "teacher")
    result = {"dataset": name, "seed": seed, "steps": steps, "runs": runs, "f1": {}}
    encoders = {"ijepa": root / "ijepa", "salt": root / "salt", "random": f"random:{root / 'salt'}"}
    for method, enc in encoders.items():
        emb = run_embed(
            root / f"emb-{method}",
            EmbedConfig(seed=seed),
            encoder=enc,
            data=data,
            options=EmbedOptions(device="cpu", workers=0),
        )
        result["f1"][method] = probe_f1(emb.path, labels, root / f"probe-{method}", splits)
    (root / "result.json").write_text(json.dumps(result, indent=2))
    return result


def table(results: list[dict], args, costs: dict) -> str:
    import numpy as np

    splits = len(results[0]["f1"]["ijepa"])
    lines = [
        "| dataset | method | linear-probe macro-F1 (mean +- sd over seeds) | per seed (mean of "
        f"{splits} splits) | "
        "pretraining CPU-s per seed |",
        "|---|---|---|---|---|",
    ]
    for name in sorted({r["dataset"] for r in results}):
        rows = [r for r in results if r["dataset"] == name]
        for method in ("ijepa", "salt", "random"):
            per_seed = [float(np.mean(r["f1"][method])) for r in rows]
            if method == "ijepa":
                cpu = [r["runs"]["ijepa"]["cpu_s"] for r in rows]
            elif method == "salt":
                cpu = [r["runs"]["teacher"]["cpu_s"] + r["runs"]["salt"]["cpu_s"] for r in rows]
            else:
                cpu = [0.0 for _ in rows]
            label = {"ijepa": "I-JEPA", "salt": "SALT (pixel teacher)", "random": "random init"}[method]
            lines.append(
                f"| {name} | {label} | {np.mean(per_seed):.3f} +- {np.std(per_seed):.3f} | "
                + ", ".join(f"{v:.3f}" for v in per_seed)
                + " | "
                + ", ".join(f"{c:.0f}" for c in cpu)
                + " |"
            )
    lines.append("")
    lines.append(
        f"Budget: {args.budget:.0f} CPU-s per model per seed ({args.threads} torch thread), teacher share "
        f"{args.teacher_share:.3f}; calibrated CPU-s per step: "
        + ", ".join(f"{k} {v:.3f}" for k, v in costs.items())
        + "."
    )
    steps = results[0]["steps"]
    lines.append("Steps (batch 32): " + ", ".join(f"{k} {v}" for k, v in steps.items()) + ".")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="pocus,busi")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=float, default=240.0, help="CPU seconds per model per seed")
    ap.add_argument("--teacher-share", type=float, default=1 / 6, help="share of SALT's budget spent on its teacher")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--splits", type=int, default=20, help="seeded patient-level probe splits per encoder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="(dataset, seed) units run in parallel processes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cxrjepa-salt-quality"))
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    names = [n for n in args.datasets.split(",") if n]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    args.work.mkdir(parents=True, exist_ok=True)
    for name in names:
        labels_file(name, ingest(name, args.work, args.size))
    cost_file = args.work / "costs.json"
    if cost_file.exists():
        costs = json.loads(cost_file.read_text())
    else:
        costs = calibrate(args.threads)
        cost_file.write_text(json.dumps(costs))
    print("CPU s/step:", costs, flush=True)
    units = [(n, s) for n in names for s in seeds]
    if args.jobs > 1:
        import multiprocessing

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [
                pool.submit(
                    unit, n, s, args.work, args.budget, args.teacher_share, costs, args.threads, args.size, args.splits
                )
                for n, s in units
            ]
            results = [f.result() for f in futures]
    else:
        results = [
            unit(n, s, args.work, args.budget, args.teacher_share, costs, args.threads, args.size, args.splits)
            for n, s in units
        ]
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    text = table(results, args, costs)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
