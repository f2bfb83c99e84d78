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
  small synthetic files (goal: flat, under 2 GB);
* ``--scale``: whole ``cxrjepa ingest`` runs over 1k, 10k and 100k small synthetic DICOMs (64x64, 12 bits in
  uint16, uncompressed), written once into a cache folder (``$XDG_CACHE_HOME/cxrjepa-bench``, else
  ``/tmp/cxrjepa-bench-cache``; ``--cache``) and reused by later runs: images/s, peak RSS and open file
  descriptors of the whole process tree (sampled every 50 ms from /proc through psutil, plus the largest
  child's ``ru_maxrss``), and the size of the metadata table (bytes per input), so that the cost per input
  is seen to stay flat; then the parts overhead: ``--parts`` parts run one after another plus ``--finalize``
  against one run, on the first ``--parts-inputs`` inputs (goal: a small constant, every part lists every
  input).

    python benchmarks/ingest.py --scale                                # 1k, 10k, 100k, parts on 10k
    python benchmarks/ingest.py --scale --scale-counts 1000,5000 --parts-inputs 2000   # a quick check

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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CXRJEPA_SALT", "benchmark-salt-not-secret")


def make_archive(root: Path, n: int, rows: int, cols: int, syntaxes: list[str], start: int = 0) -> list[Path]:
    """Files ``start`` .. ``start + n - 1`` of a synthetic archive under ``root`` (1000 a folder)."""
    from tests.dicom_files import make_dataset, phantom, write_dicom

    base = [phantom(rows, cols, seed=s, bits=12) for s in range(4)]
    bits = min(cols, 24)
    paths = []
    for i in range(start, start + n):
        px = base[i % 4].copy()
        # every file differs, also once stored in 8 bits (no pixel duplicates): i in binary, black or white
        px[0, :bits] = np.where((i >> np.arange(bits)) & 1, 4095, 0)
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


#: runs a command and writes the largest ru_maxrss (kB) of the processes it and its children waited for (the
#: command's main process, its pools' workers; not the fork server's children) to a file
_SHIM = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)"
)


def watch(cmd: list[str]) -> dict:
    """Run ``cmd`` (a ``cxrjepa`` command) and watch its process tree every 50 ms: wall seconds, peak total
    and largest-process RSS (MB), peak open file descriptors (all processes together, and the most in one),
    the main process's ``ru_maxrss`` (MB, from the kernel: catches a peak between two samples) and the CPU
    seconds of the whole tree (each process's last sample; less sensitive than wall time to other jobs on a
    shared machine)."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.NamedTemporaryFile("r", suffix=".maxrss") as rec:
        t = time.perf_counter()
        shim = subprocess.Popen([sys.executable, "-c", _SHIM, rec.name, *cmd], env=env)
        top = psutil.Process(shim.pid)  # the shim itself is not counted: only the command's tree
        total = single = fds = fds_one = 0
        cpu: dict[int, float] = {}
        while shim.poll() is None:
            try:
                procs = top.children(recursive=True)
            except psutil.Error:
                procs = []
            rss, nfd = [], []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                    nfd.append(p.num_fds())
                    c = p.cpu_times()
                    cpu[p.pid] = c.user + c.system
                except psutil.Error:
                    pass
            total, single = max(total, sum(rss)), max(single, max(rss, default=0))
            fds, fds_one = max(fds, sum(nfd)), max(fds_one, max(nfd, default=0))
            time.sleep(0.05)
        wall = time.perf_counter() - t
        maxrss_kb = int(rec.read() or 0)
    if shim.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(cmd[2:5])} ... failed with exit code {shim.returncode}")
    return {
        "wall_s": wall,
        "rss_mb": total / 2**20,
        "rss_largest_mb": single / 2**20,
        "fds": fds,
        "fds_largest": fds_one,
        "ru_maxrss_mb": maxrss_kb / 1024,
        "cpu_s": sum(cpu.values()),
        "load_1min_after": os.getloadavg()[0],
    }


def ingest_cmd(sources: list[Path], out: Path, workers: int, size: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cxrjepa",
        "ingest",
        *map(str, sources),
        "--out",
        str(out),
        "--size",
        str(size),
        "--workers",
        str(workers),
        "--quiet",
        *extra,
    ]


def peak_rss(src: Path, out: Path, workers: int, size: int) -> tuple[float, float]:
    """Peak total RSS (MB) of a ``cxrjepa ingest`` process tree and the largest single process."""
    shutil.rmtree(out, ignore_errors=True)
    w = watch(ingest_cmd([src], out, workers, size))
    return w["rss_mb"], w["rss_largest_mb"]


# ------------------------------------------------------------------ --scale

SCALE_PX = 64  # rows = cols of the scale archive's files, and the stored size
PER_FOLDER = 1000


def scale_cache(cache: str | None) -> Path:
    base = (
        Path(cache)
        if cache
        else (
            Path(os.environ["XDG_CACHE_HOME"]) / "cxrjepa-bench"
            if os.environ.get("XDG_CACHE_HOME")
            else Path("/tmp/cxrjepa-bench-cache")
        )
    )
    return base / f"ingest-scale-{SCALE_PX}px"


def _write_folder(root: str, k: int) -> int:
    from pydicom.uid import ExplicitVRLittleEndian

    folder = Path(root) / f"d{k:03d}"
    shutil.rmtree(folder, ignore_errors=True)
    make_archive(Path(root), PER_FOLDER, SCALE_PX, SCALE_PX, [ExplicitVRLittleEndian], start=k * PER_FOLDER)
    (Path(root) / "done" / f"d{k:03d}").touch()  # outside the source folders (a hidden marker would be an entry)
    return k


def scale_archive(cache: Path, n: int) -> list[Path]:
    """The first ``n`` inputs of the cached scale archive as source folders of 1000 files each; folders not
    yet written are written now (in parallel), once for every later run."""
    from concurrent.futures import ProcessPoolExecutor

    if n % PER_FOLDER:
        raise SystemExit(f"--scale-counts and --parts-inputs are multiples of {PER_FOLDER}, not {n}")
    root = cache / "files"
    (root / "done").mkdir(parents=True, exist_ok=True)
    missing = [k for k in range(n // PER_FOLDER) if not (root / "done" / f"d{k:03d}").is_file()]
    if missing:
        print(
            f"writing {len(missing) * PER_FOLDER} synthetic DICOMs into {root} (once; cached) ...",
            file=sys.stderr,
            flush=True,
        )
        t = time.perf_counter()
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for _ in pool.map(_write_folder, [str(root)] * len(missing), missing):
                pass
        print(f"  written in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return [root / f"d{k:03d}" for k in range(n // PER_FOLDER)]


def _table_sizes(out: Path) -> dict:
    from cxrjepa.core.artifact import read_manifest

    counts = read_manifest(out)["counts"]
    meta = (out / "metadata.parquet").stat().st_size
    return {
        "samples": counts.get("samples"),
        "inputs": counts.get("inputs"),
        "metadata_bytes": meta,
        "metadata_bytes_per_input": meta / max(counts.get("inputs") or 1, 1),
        "ledger_bytes": (out / "failures.jsonl").stat().st_size if (out / "failures.jsonl").exists() else 0,
    }


def run_scale(cache: Path, work: Path, counts: list[int], parts: int, parts_inputs: int, workers: int) -> dict:
    """Whole ``cxrjepa ingest`` runs at each count, then ``parts`` parts + finalize against one run."""
    from cxrjepa.core.artifact import read_manifest

    results: dict = {"cache": str(cache), "workers": workers, "px": SCALE_PX, "runs": {}}
    for n in counts:
        sources = scale_archive(cache, n)
        out = work / f"scale{n}"
        shutil.rmtree(out, ignore_errors=True)
        print(f"ingest {n} inputs ...", file=sys.stderr, flush=True)
        w = watch(ingest_cmd(sources, out, workers, SCALE_PX))
        w.update(_table_sizes(out), images_per_s=n / w["wall_s"], cpu_ms_per_input=1000 * w["cpu_s"] / n)
        if w["samples"] != n:
            raise SystemExit(f"{n} inputs gave {w['samples']} samples (the archive should have no duplicates)")
        results["runs"][str(n)] = w
        shutil.rmtree(out, ignore_errors=True)
    if parts > 0 and parts_inputs > 0:
        sources = scale_archive(cache, parts_inputs)
        one, split = work / "parts-one", work / "parts-split"
        for d in (one, split):
            shutil.rmtree(d, ignore_errors=True)
        print(f"one run and {parts} parts + finalize over {parts_inputs} inputs ...", file=sys.stderr, flush=True)
        single = watch(ingest_cmd(sources, one, workers, SCALE_PX))
        part_runs = [
            watch(ingest_cmd(sources, split, workers, SCALE_PX, "--part", f"{k}/{parts}", "--no-auto-finalize"))
            for k in range(parts)
        ]
        fin = watch(
            [
                sys.executable,
                "-m",
                "cxrjepa",
                "ingest",
                "--finalize",
                "--out",
                str(split),
                "--workers",
                str(workers),
                "--quiet",
            ]
        )
        a, b = read_manifest(one), read_manifest(split)
        if (a["content_fingerprint"], a["counts"]) != (b["content_fingerprint"], b["counts"]):
            raise SystemExit("the parts' dataset differs from the single run's")
        total = sum(r["wall_s"] for r in part_runs) + fin["wall_s"]
        cpu = sum(r["cpu_s"] for r in part_runs) + fin["cpu_s"]
        results["parts"] = {
            "inputs": parts_inputs,
            "parts": parts,
            "single_s": single["wall_s"],
            "part_s": [r["wall_s"] for r in part_runs],
            "finalize_s": fin["wall_s"],
            "parts_total_s": total,
            "ratio": total / single["wall_s"],
            "single_cpu_s": single["cpu_s"],
            "part_cpu_s": [r["cpu_s"] for r in part_runs],
            "finalize_cpu_s": fin["cpu_s"],
            "parts_total_cpu_s": cpu,
            "cpu_ratio": cpu / single["cpu_s"],
            "same_dataset": True,
        }
        for d in (one, split):
            shutil.rmtree(d, ignore_errors=True)
    return results


def print_scale(r: dict) -> None:
    print(
        f"scale: {r['px']}x{r['px']} uncompressed 12-bit DICOMs -> {r['px']} px uint8, {r['workers']} workers, "
        f"{os.cpu_count()} CPUs (cache {r['cache']})"
    )
    print(
        f"  {'inputs':>7} {'img/s':>7} {'wall s':>7} {'CPU ms/in':>9} {'RSS MB':>7} {'largest':>7} {'maxrss':>7} "
        f"{'fds':>5} {'1 proc':>6} {'table B':>9} {'B/input':>7} {'load':>5}"
    )
    for n, w in r["runs"].items():
        print(
            f"  {int(n):>7} {w['images_per_s']:7.0f} {w['wall_s']:7.1f} {w['cpu_ms_per_input']:9.2f} {w['rss_mb']:7.0f} "
            f"{w['rss_largest_mb']:7.0f} {w['ru_maxrss_mb']:7.0f} {w['fds']:5d} {w['fds_largest']:6d} "
            f"{w['metadata_bytes']:9d} {w['metadata_bytes_per_input']:7.1f} {w['load_1min_after']:5.1f}"
        )
    if "parts" in r:
        p = r["parts"]
        print(
            f"  parts: {p['parts']} parts one after another ({', '.join(f'{t:.1f}' for t in p['part_s'])} s) + finalize "
            f"{p['finalize_s']:.1f} s = {p['parts_total_s']:.1f} s vs one run {p['single_s']:.1f} s over {p['inputs']} "
            f"inputs: x{p['ratio']:.2f}; CPU {p['parts_total_cpu_s']:.1f} vs {p['single_cpu_s']:.1f} s: "
            f"x{p['cpu_ratio']:.2f} (same dataset: {p['same_dataset']})"
        )


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
    ap.add_argument("--scale", action="store_true", help="only the scale runs (see the docstring)")
    ap.add_argument("--scale-counts", default="1000,10000,100000", help="input counts of the scale runs")
    ap.add_argument("--parts", type=int, default=4, help="parts of the parts-overhead run (0 skips it)")
    ap.add_argument("--parts-inputs", type=int, default=10000, help="inputs of the parts-overhead run")
    ap.add_argument("--workers", type=int, default=0, help="ingest workers of the scale runs (0 = one per core)")
    ap.add_argument("--cache", default=None, help="folder of the cached scale archive")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    if args.scale:
        tmp = Path(args.tmp or tempfile.mkdtemp(prefix="cxrjepa-bench-"))
        try:
            workers = args.workers or len(os.sched_getaffinity(0))
            res = run_scale(
                scale_cache(args.cache),
                tmp,
                [int(c) for c in args.scale_counts.split(",") if c],
                args.parts,
                args.parts_inputs,
                workers,
            )
        finally:
            if not args.tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            print_scale(res)
        return

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
