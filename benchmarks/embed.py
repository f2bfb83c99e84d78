"""Embed throughput vs a bare forward pass of the same encoder on the same batches, and memory vs N.

    PYTHONPATH=. python benchmarks/embed.py --n 512 --size 128 --arch tiny

1. Throughput: a synthetic dataset of N images is embedded with ``run_embed`` (reading zarr, batching,
   bf16 autocast on CUDA, pooling, writing zarr + ledger + index), and the same encoder is run bare on the
   same batches already in memory (prepared tensors, inference mode, same autocast). The ratio
   embed / bare is the pipeline's efficiency (targets: >= 0.8 on CPU, >= 0.9 on GPU).
2. Memory: ``run_embed`` in fresh processes for N and 4N images; peak RSS should not grow with N
   (features are written unit by unit, nothing is held for the whole dataset).

Timings on a shared machine are noisy; run on a quiet one for numbers to keep.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrjepa.data.store import DatasetArtifact, default_meta, write_dataset  # noqa: E402
from cxrjepa.embed.api import EmbedConfig, EmbedOptions, load_encoder_for, run_embed  # noqa: E402
from cxrjepa.embed.extract import Extractor, input_size  # noqa: E402
from cxrjepa.encoders import parse_encoder_spec  # noqa: E402


def make_dataset(path: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    write_dataset(path, images, default_meta(n))
    return path


def bare_forward(spec: str, data: Path, batch_size: int, device: str, repeats: int) -> float:
    """Images/s of the encoder alone on the embed run's batches (prepared on the device beforehand)."""
    ds = DatasetArtifact.open(data)
    cfg = EmbedConfig()
    enc = load_encoder_for(parse_encoder_spec(spec), cfg, ds, device)
    size = input_size(cfg, enc)
    images = np.asarray(ds.images[:])
    batches = []
    with torch.inference_mode():
        for lo in range(0, len(images), batch_size):
            x = torch.from_numpy(images[lo : lo + batch_size]).to(device).float().div_(255.0).unsqueeze(1)
            batches.append(enc.prepare(x, size))
    ext = Extractor(enc, cfg, torch.device(device), 255.0)
    best = 0.0
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        with torch.inference_mode(), ext.autocast():
            for x in batches:
                enc(x)
        _sync(device)
        best = max(best, len(images) / (time.perf_counter() - t))
    return best


def embed_rate(
    spec: str, data: Path, out: Path, batch_size: int, device: str, repeats: int, workers: int | None
) -> float:
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        run_embed(
            out,
            EmbedConfig(),
            encoder=spec,
            data=data,
            force=True,
            options=EmbedOptions(device=device, batch_size=batch_size, workers=workers),
        )
        best = max(best, len(DatasetArtifact.open(data).meta) / (time.perf_counter() - t))
    return best


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def child_rss(spec: str, data: Path, out: Path, batch_size: int, device: str) -> float:
    """Peak RSS (MiB) of a fresh process that only embeds."""
    root = str(Path(__file__).resolve().parents[1])
    code = (
        f"import json, resource, sys; sys.path.insert(0, {root!r})\n"
        "from cxrjepa.embed.api import EmbedConfig, EmbedOptions, run_embed\n"
        f"run_embed({str(out)!r}, EmbedConfig(), encoder={spec!r}, data={str(data)!r}, force=True, "
        f"options=EmbedOptions(device={device!r}, batch_size={batch_size:d}, workers=0))\n"
        "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="images for the throughput run")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--arch", default="tiny", help="random:ARCH encoder (tiny, small, base, ...)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many timed runs")
    ap.add_argument("--workers", type=int, default=None, help="embed reader processes (default: automatic)")
    ap.add_argument("--rss-n", type=int, default=256, help="N for the memory check (also 4N); 0 skips it")
    args = ap.parse_args()
    spec = f"random:{args.arch}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp / "ds", args.n, args.size)
        bare = bare_forward(spec, data, args.batch_size, args.device, args.repeats)
        full = embed_rate(spec, data, tmp / "emb", args.batch_size, args.device, args.repeats, args.workers)
        result = {
            "device": args.device,
            "cpus": os.cpu_count(),
            "encoder": spec,
            "n": args.n,
            "size": args.size,
            "batch_size": args.batch_size,
            "bare_images_per_s": round(bare, 1),
            "embed_images_per_s": round(full, 1),
            "ratio": round(full / bare, 3),
        }
        if args.rss_n:
            small = make_dataset(tmp / "ds_small", args.rss_n, args.size)
            large = make_dataset(tmp / "ds_large", 4 * args.rss_n, args.size)
            rss_small = child_rss(spec, small, tmp / "e1", args.batch_size, args.device)
            rss_large = child_rss(spec, large, tmp / "e2", args.batch_size, args.device)
            result.update(
                {
                    "rss_mib": {str(args.rss_n): round(rss_small, 1), str(4 * args.rss_n): round(rss_large, 1)},
                    "rss_growth_mib": round(rss_large - rss_small, 1),
                }
            )
    result["self_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
