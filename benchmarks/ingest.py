"""Ingest throughput and memory, measured against a decode-only baseline in the same run.

    python benchmarks/ingest.py                      # 200 files of 1024x1024, both speed figures
    python benchmarks/ingest.py --files 40 --rows 512 --rss 200,1000   # a quick check

Figures (printed as a table and, with --json, as JSON):

* decode-only: plain ``pydicom.dcmread(f).pixel_array`` over the same files, one process;
* ingest with 1 worker, end to end (discovery, decode, pipeline, staging, final zarr, tables,
  manifest): images/s and its ratio to decode-only (goal >= 0.85);
* ingest with 2 workers: images/s and speed-up over 1 worker (goal >= 1.7 on an idle 2-core machine); how
  many cores the 1-worker run kept busy (gdcm decodes JPEG 2000 with threads in a single process, which caps
  the speed-up on few cores); and the speed-up over 1 worker using the pool workers' single-threaded
  decoders (scaling of the worker design itself);
* peak resident memory (main process + workers) of whole ``cxrjepa ingest`` runs over two input counts of
  small synthetic files (goal: flat, under 2 GB).

The synthetic archive mixes the transfer syntaxes of real CR/DX archives (JPEG lossless, JPEG-LS,
JPEG 2000 lossless, uncompressed) with 12-bit phantoms, MONOCHROME1 and window tags. Timings taken on a
busy machine are noisy: rerun on an idle one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CXRJEPA_SALT", "benchmark-salt-not-secret")


def make_archive(root: Path, n: int, rows: int, cols: int, syntaxes: list[str]) -> list[Path]:
    from tests.dicom_files import make_dataset, phantom, write_dicom

    base = [phantom(rows, cols, seed=s, bits=12) for s in range(4)]
    paths = []
    for i in range(n):
        px = base[i % 4].copy()
        px[i % rows, :] ^= 1 + i  # every file differs (no pixel duplicates)
        ds = make_dataset(
            px,
            bits_stored=12,
            photometric="MONOCHROME1" if i % 4 == 0 else None,
            window=(2000, 3000) if i % 3 == 0 else None,
        )
        paths.append(write_dicom(ds, root / f"d{i // 1000:03d}" / f"img{i:06d}.dcm", syntaxes[i % len(syntaxes)]))
    return paths


def decode_only(paths: list[Path]) -> float:
    import pydicom

    t = time.perf_counter()
    for p in paths:
        pydicom.dcmread(p).pixel_array  # noqa: B018
    return time.perf_counter() - t


def ingest_time(src: Path, out: Path, workers: int, size: int) -> float:
    return ingest_times(src, out, workers, size)[0]


def ingest_times(src: Path, out: Path, workers: int, size: int) -> tuple[float, float]:
    """Wall seconds of one ingest and the CPU seconds this process and its descendants (the decode workers,
    which read every input, and their fork server) used meanwhile, all threads included."""
    import threading

    import psutil

    from cxrjepa.core import console
    from cxrjepa.ingest.api import run_ingest
    from cxrjepa.ingest.config import IngestConfig, IngestOptions

    console.configure(quiet=True)
    shutil.rmtree(out, ignore_errors=True)
    me, cpu, done = psutil.Process(), {}, threading.Event()

    def sample() -> None:  # a process that exits keeps its last sample (at most 20 ms short)
        while not done.wait(0.02):
            for p in me.children(recursive=True):
                try:
                    c = p.cpu_times()
                    cpu[p.pid] = c.user + c.system
                except psutil.Error:
                    pass

    before = {p.pid: sum(p.cpu_times()[:2]) for p in me.children(recursive=True)}  # e.g. a fork server
    sampler = threading.Thread(target=sample)
    sampler.start()
    t, c = time.perf_counter(), time.process_time()
    try:
        art = run_ingest(out, IngestConfig(size=size), sources=[src], options=IngestOptions(workers=workers))
    finally:
        dt, dc = time.perf_counter() - t, time.process_time() - c
        done.set()
        sampler.join()
    assert art.counts["rejected"] == 0, art.counts
    return dt, dc + sum(v - before.get(pid, 0.0) for pid, v in cpu.items())


def peak_rss(src: Path, out: Path, workers: int, size: int) -> tuple[float, float]:
    """Peak total RSS (MB) of a ``cxrjepa ingest`` process tree and the largest single process."""
    import psutil

    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxrjepa",
            "ingest",
            str(src),
            "--out",
            str(out),
            "--size",
            str(size),
            "--workers",
            str(workers),
            "--quiet",
        ],
        env=env,
    )
    top = psutil.Process(proc.pid)
    total = single = 0.0
    while proc.poll() is None:
        try:
            procs = [top, *top.children(recursive=True)]
            rss = []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            total, single = max(total, sum(rss)), max(single, max(rss, default=0))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if proc.returncode not in (0, 3):
        raise SystemExit(f"ingest failed with exit code {proc.returncode}")
    return total / 2**20, single / 2**20


def main() -> None:
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless

    from cxrjepa.ingest import dicom_pixels

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200, help="files for the speed figures (0 skips them)")
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--size", type=int, default=224, help="stored frame size")
    ap.add_argument("--rss", default="1000,10000", help="two input counts for the memory figure ('' to skip)")
    ap.add_argument("--tmp", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    syntaxes = [JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, ExplicitVRLittleEndian]
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="cxrjepa-bench-"))
    results: dict = {
        "files": args.files,
        "shape": [args.rows, args.cols],
        "size": args.size,
        "syntaxes": [s.name for s in syntaxes],
        "cpus": os.cpu_count(),
    }
    try:
        if args.files > 0:
            src = tmp / "speed"
            paths = make_archive(src, args.files, args.rows, args.cols, syntaxes)
            decode_only(paths[: min(8, len(paths))])  # warm imports and caches for both sides
            warm = tmp / "warm"
            for p in paths[:4]:
                (warm / p.name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(p, warm / p.name)
            ingest_time(warm, tmp / "out-warm", 1, args.size)
            t_dec = decode_only(paths)
            t_1, cpu_1 = ingest_times(src, tmp / "out1", 1, args.size)
            ingest_time(warm, tmp / "out-warm", 2, args.size)  # starts the fork server pools fork from (once a run)
            t_2 = ingest_time(src, tmp / "out2", 2, args.size)
            # the same single worker with the decoders pool workers use (one thread each: see dicom_pixels)
            dicom_pixels.prefer_single_threaded(True)
            t_1s = ingest_time(src, tmp / "out1s", 1, args.size)
            dicom_pixels.prefer_single_threaded(False)
            n = len(paths)
            results.update(
                decode_only_img_s=n / t_dec,
                ingest_1w_img_s=n / t_1,
                ingest_2w_img_s=n / t_2,
                ratio_1w_vs_decode=t_dec / t_1,
                speedup_2w_vs_1w=t_1 / t_2,
                cores_busy_1w=cpu_1 / t_1,
                ingest_1w_single_threaded_img_s=n / t_1s,
                speedup_2w_vs_1w_single_threaded=t_1s / t_2,
            )
        if args.rss:
            counts = [int(c) for c in args.rss.split(",")]
            rss = {}
            for c in counts:
                s = tmp / f"rss{c}"
                make_archive(s, c, 64, 64, [ExplicitVRLittleEndian])
                rss[c] = peak_rss(s, tmp / f"rss_out{c}", 2, 64)
                shutil.rmtree(s, ignore_errors=True)
            results["peak_rss_mb"] = {
                str(c): {"total": round(v[0]), "largest_process": round(v[1])} for c, v in rss.items()
            }
    finally:
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    if "decode_only_img_s" in results:
        print(
            f"{results['files']} files {args.rows}x{args.cols} ({', '.join(results['syntaxes'])}) -> {args.size} px, {results['cpus']} CPUs"
        )
        print(f"  decode only (pydicom)   {results['decode_only_img_s']:8.1f} img/s")
        print(
            f"  ingest, 1 worker        {results['ingest_1w_img_s']:8.1f} img/s   x{results['ratio_1w_vs_decode']:.2f} of decode-only (goal >= 0.85)"
        )
        print(
            f"  ingest, 2 workers       {results['ingest_2w_img_s']:8.1f} img/s   x{results['speedup_2w_vs_1w']:.2f} of 1 worker (goal >= 1.7)"
        )
        print(
            f"    1 worker kept {results['cores_busy_1w']:.2f} cores busy (gdcm's JPEG 2000 threads): at most "
            f"x{results['cpus'] / results['cores_busy_1w']:.2f} is left for {results['cpus']} cores"
        )
        print(
            f"  ingest, 1 worker with the pool's single-threaded decoders {results['ingest_1w_single_threaded_img_s']:.1f} img/s;"
            f" 2 workers x{results['speedup_2w_vs_1w_single_threaded']:.2f} of it"
        )
    for c, v in results.get("peak_rss_mb", {}).items():
        print(
            f"  peak RSS, {int(c):>6} files  {v['total']:6d} MB total, {v['largest_process']} MB largest process (goal < 2048, flat)"
        )


if __name__ == "__main__":
    main()
