"""Does the report stay bounded as data grows? Time and peak memory of `cxrjepa report` on a small and a
large dataset + embeddings (no encoder, so no patch maps), each in a fresh process.

    PYTHONPATH=$PWD python benchmarks/report_scaling.py [--small 2000] [--large 50000] [--size 32]

Prints seconds and peak RSS for each size and the large/small ratios. A bounded report has ratios near 1
while the data (and the time to merely read it all) grows by large/small.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import resource, sys, time, json
from cxrjepa.report import ReportConfig, run_report
t = time.perf_counter()
run_report(sys.argv[2], ReportConfig(map_method="pca"), artifacts=[sys.argv[1]], device="cpu")
print(json.dumps({"s": time.perf_counter() - t, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make(root: Path, n: int, size: int) -> Path:
    import numpy as np
    import zarr

    from cxrjepa.core.artifact import begin, input_refs
    from cxrjepa.data import layout
    from cxrjepa.data.store import create_frames_array, default_meta, intensity_stats

    rng = np.random.default_rng(0)
    ds = root / f"dataset-{n}"
    b = begin(ds, "dataset", {"n": n}, force=True)
    meta = default_meta(n)
    meta["finding"] = np.where(rng.random(n) < 0.3, "PNEUMONIA", "NORMAL")
    meta["sex"] = np.where(rng.random(n) < 0.5, "F", "M")
    meta["age"] = rng.uniform(18, 90, n).round()
    meta["view"] = np.where(rng.random(n) < 0.7, "PA", "AP")
    group = zarr.open_group(str(ds / layout.ZARR), mode="w")
    arr = create_frames_array(group, layout.IMAGES, n, size, "uint8")
    for s in range(0, n, 4096):  # whole shards at a time
        k = min(4096, n - s)
        arr[s : s + k] = rng.integers(0, 255, (k, size, size), dtype=np.uint8)
    meta.to_parquet(ds / layout.METADATA, index=False)
    b.counts.update({"inputs": n, "samples": n, "frames": n, "rejected": 0})
    b.contents.update(
        {
            "images": {"shape": [n, size, size], "dtype": "uint8"},
            "label_columns": ["finding"],
            "normalization": intensity_stats(arr, 255.0),
        }
    )
    b.finish()
    emb = root / f"emb-{n}"
    e = begin(emb, "embeddings", {"n": n}, input_refs({"dataset": ds}), force=True)
    feats = zarr.open_group(str(emb / "features.zarr"), mode="w").create_array(
        "features", shape=(n, 384), dtype="float16", chunks=(4096, 384)
    )
    y = (meta["finding"] == "PNEUMONIA").to_numpy()
    for s in range(0, n, 4096):
        k = min(4096, n - s)
        x = rng.normal(size=(k, 384)).astype(np.float32)
        x[:, 0] += 3 * y[s : s + k]
        feats[s : s + k] = x.astype(np.float16)
    meta.to_parquet(emb / "index.parquet", index=False)
    e.finish()
    return emb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--large", type=int, default=50000)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in (args.small, args.large):
            t = time.perf_counter()
            emb = make(root, n, args.size)
            built = time.perf_counter() - t
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(emb), str(root / f"report-{n}")],
                capture_output=True,
                text=True,
                check=True,
            )
            results[n] = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"n={n:>7,}: report {results[n]['s']:.1f} s, peak RSS {results[n]['rss_mb']:.0f} MB (building the data took {built:.1f} s)"
            )
    small, large = results[args.small], results[args.large]
    print(
        f"data grew {args.large / args.small:.0f}x; report time x{large['s'] / small['s']:.2f}, "
        f"peak memory x{large['rss_mb'] / small['rss_mb']:.2f}"
    )


if __name__ == "__main__":
    main()
