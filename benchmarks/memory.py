"""Calibrate and check the memory estimate (cxrjepa.pretrain.memory, cxrjepa.core.memory): peak RSS of short
CPU pretraining and embedding runs, next to what the estimate says for the same settings.

    PYTHONPATH=$PWD python benchmarks/memory.py [--only NAME ...] [--embed] [--fit]

Each pretraining run is ``cxrjepa pretrain ... --gpus 0 --max-steps 2 --set runtime.workers=0`` in a fresh
process on a random 48-frame 224 px dataset, measured with ``/usr/bin/time -f %M`` (peak RSS of the training
process; loader workers are off so that the process is all there is). ``--fit`` refits the runtime term and
the activation coefficient (bytes per token x width x block of a trained sequence) by least squares, which is
how ``BASE_BYTES`` and ``TRAIN_BYTES["cpu"]`` were set. ``--embed`` also measures ``cxrjepa embed`` with
random encoders. Runs take minutes each on 2 cores (ViT-B: about 10); results go to stdout as a markdown
table. Latest figures: benchmarks/results/memory.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml


def _cfg(size, patch, img, batch, objective="ijepa", layers=None, monitor=64):
    c = {
        "objective": objective,
        "model": {"size": size, "patch_size": patch, "image_size": img},
        "train": {"batch_size": batch, "steps": 10, "precision": "fp32"},
        "runtime": {"workers": 0, "monitor_batch": monitor, "checkpoint_every": 1000},
    }
    if layers:
        c["model"]["layers"] = layers
    return c


PRETRAIN = {
    "t16-224-b1": _cfg("tiny", 16, 224, 1, monitor=2),
    "t8-64-b32": _cfg("tiny", 8, 64, 32, layers=4, monitor=128),
    "t16-224-b16": _cfg("tiny", 16, 224, 16),
    "t16-224-b64": _cfg("tiny", 16, 224, 64),
    "s16-224-b16": _cfg("small", 16, 224, 16),
    "s16-224-b48": _cfg("small", 16, 224, 48),
    "s16-128-b64": _cfg("small", 16, 128, 64),
    "s16-224-b32-pixel": _cfg("small", 16, 224, 32, objective="pixel"),
    "s16-224-b32-salt": _cfg("small", 16, 224, 32, objective="salt"),
    "b16-224-b8": _cfg("base", 16, 224, 8),
    "b16-224-b24": _cfg("base", 16, 224, 24),
}
TEACHER = "random:small"
#: (encoder, batch, rows): a forward pass never crosses a unit of rows (64 rows for 320, 256 for 1024)
EMBED = [
    ("random:tiny", 8, 320),
    ("random:small", 64, 320),
    ("random:base", 64, 320),
    ("random:tiny", 32, 1024),
    ("random:tiny", 256, 1024),
]
FRAMES = 48


def peak_rss_mb(cmd: list[str]) -> float:
    p = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *cmd],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return int(p.stderr.strip().splitlines()[-1]) / 1024


def estimate_gb(cfg: dict, frames: int) -> tuple[float, float, float]:
    """(estimate, the part that is neither runtime nor activations, activation units x micro-batch) in GB."""
    import cxrjepa.core.memory as M
    import cxrjepa.pretrain.memory as PM
    from cxrjepa.core.config import from_dict
    from cxrjepa.pretrain.config import PretrainConfig

    config = from_dict(PretrainConfig, cfg)
    kw = {
        "device": "cpu",
        "world": 1,
        "procs_per_node": 1,
        "frames": frames,
        "teacher": TEACHER if config.objective == "salt" else None,
    }
    est = PM.estimate_pretrain(config, **kw)
    keep = M.TRAIN_BYTES["cpu"]
    try:
        M.TRAIN_BYTES["cpu"] = 1.0
        units = PM.estimate_pretrain(config, **kw).parts["activations"]
    finally:
        M.TRAIN_BYTES["cpu"] = keep
    known = est.per_process - est.parts["runtime"] - est.parts["activations"]
    return est.total / 2**30, known / 2**30, units / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="pretraining configs to run (default: all)")
    ap.add_argument("--embed", action="store_true", help="also measure cxrjepa embed")
    ap.add_argument("--fit", action="store_true", help="refit the runtime term and the activation coefficient")
    args = ap.parse_args()
    from cxrjepa.data.store import write_dataset

    tmp = Path(tempfile.mkdtemp(prefix="cxrjepa-memory-"))
    rng = np.random.default_rng(0)
    data = tmp / "ds"
    write_dataset(data, rng.integers(0, 255, (FRAMES, 224, 224), dtype=np.uint8))
    rows = []
    print("| objective | model | patch | px | batch | measured GB | estimated GB | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.only or PRETRAIN:
        cfg = PRETRAIN[name]
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        cmd = [
            sys.executable,
            "-m",
            "cxrjepa",
            "pretrain",
            "--data",
            str(data),
            "--out",
            str(tmp / f"run-{name}"),
            "--config",
            str(path),
            "--gpus",
            "0",
            "--max-steps",
            "2",
            "--force",
            "-q",
            "--set",
            "runtime.memory_check=false",
        ]
        if cfg["objective"] == "salt":
            cmd += ["--teacher", TEACHER]
        measured = peak_rss_mb(cmd) / 1024
        est, known, units = estimate_gb(cfg, FRAMES)
        rows.append((name, measured, known, units))
        m = cfg["model"]
        model = m["size"] + (f"/{m['layers']} blocks" if m.get("layers") else "")
        print(
            f"| {cfg['objective']} | {model} | {m['patch_size']} | {m['image_size']} | {cfg['train']['batch_size']} "
            f"| {measured:.2f} | {est:.2f} | {est / measured:.2f} |",
            flush=True,
        )
    if args.fit and len(rows) >= 2:
        x = np.array([[1.0, u] for _, _, _, u in rows])
        y = np.array([m - k for _, m, k, _ in rows])
        (base, coef), *_ = np.linalg.lstsq(x, y, rcond=None)
        print(f"\nfit: runtime {base * 1024:.0f} MB, {coef:.1f} bytes per token x width x block")
    if args.embed:
        print("\n| encoder | batch | rows | measured GB |\n|---|---|---|---|")
        for enc, batch, n in EMBED:
            ds = tmp / f"ds{n}"
            if not ds.exists():
                write_dataset(ds, rng.integers(0, 255, (n, 224, 224), dtype=np.uint8))
            cmd = [
                sys.executable,
                "-m",
                "cxrjepa",
                "embed",
                "--encoder",
                enc,
                "--data",
                str(ds),
                "--out",
                str(tmp / "emb"),
                "--device",
                "cpu",
                "--batch-size",
                str(batch),
                "--workers",
                "0",
                "--force",
                "-q",
                "--no-memory-check",
            ]
            print(f"| {enc} | {batch} | {n} | {peak_rss_mb(cmd) / 1024:.2f} |", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
