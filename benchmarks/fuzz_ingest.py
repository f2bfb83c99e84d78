"""A hostile archive through ``cxrjepa ingest``: the seeded fuzz corpus of tests/fuzz_corpus.py at scale.

    python benchmarks/fuzz_ingest.py                       # 1000 cases, 2 workers then 1 worker
    python benchmarks/fuzz_ingest.py --cases 200 --workers 2 --json

The corpus is built from pydicom's bundled files (byte flips, truncations, wrong transfer syntaxes,
headers that disagree with the pixel data, size claims, NaN / odd LUTs, deep sequences, a PNG claiming
100000 x 100000 pixels, a FIFO, a dangling link), every DICOM file carrying planted identifying values.
For each worker count it prints: the exit code (goal 3), whether a traceback was printed (goal no), wall
time, the peak resident memory of the whole process tree (main process, fork server, workers; polled
every 20 ms; goal < 2 GB), the accounting (samples + rejected + skipped + duplicates = inputs; inputs +
ignored = entries written; every entry exactly once in the table or the ledger), the ledger by reason, and
any planted value found in an output (goal none). The default limits are used (time limit 300 s per
input, automatic memory limit). Wall times on a busy machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    from tests.fuzz_corpus import accounting, build, leaks, run_measured

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=str, default="2,1", help="worker counts to run, comma-separated")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", type=Path, default=None, help="build the corpus and outputs here and keep them")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="cxrjepa-fuzz-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CXRJEPA_SALT": os.environ.get("CXRJEPA_SALT", "fuzz-benchmark-salt"),
        "XDG_CONFIG_HOME": str(work / "cfg"),
    }
    results = []
    try:
        corpus = build(work / "corpus", args.cases, args.seed)
        print(
            f"corpus: {len(corpus.files)} entries under {corpus.root}: "
            + ", ".join(f"{k} {v}" for k, v in corpus.kinds.most_common()),
            file=sys.stderr,
        )
        for workers in (int(w) for w in args.workers.split(",")):
            out = work / f"out-w{workers}"
            cmd = [
                sys.executable,
                "-m",
                "cxrjepa",
                "ingest",
                str(corpus.root),
                "--out",
                str(out),
                "--size",
                str(args.size),
                "--workers",
                str(workers),
                "--json",
                "--force",
            ]
            run = run_measured(cmd, env, timeout=6 * 3600)
            figures, problems = accounting(corpus, out) if (out / "manifest.yaml").is_file() else ({}, ["no manifest"])
            ledger_file = out / "failures.jsonl"
            ledger = (
                [json.loads(line) for line in ledger_file.read_text().splitlines()] if ledger_file.is_file() else []
            )
            results.append(
                {
                    "workers": workers,
                    "exit_code": run.returncode,
                    "traceback": "Traceback" in run.stderr or "Traceback" in run.stdout,
                    "wall_s": round(run.wall_s, 1),
                    "peak_rss_mb": round(run.peak_rss / 2**20),
                    **figures,
                    "accounting_problems": problems,
                    "planted_values_found": (
                        leaks(out, run.stdout, run.stderr) if (out / "metadata.parquet").is_file() else ["no output"]
                    ),
                    "by_reason": dict(Counter(f"{r['status']}: {r['reason']}" for r in ledger).most_common()),
                }
            )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(
                f"\n--workers {r['workers']}: exit {r['exit_code']}, traceback {'YES' if r['traceback'] else 'no'}, "
                f"wall {r['wall_s']} s, peak memory of the process tree {r['peak_rss_mb']} MB"
            )
            if "entries" in r:
                print(
                    f"  {r['entries']} entries = {r['inputs']} inputs + {r['ignored']} ignored; {r['samples']} samples + "
                    f"{r['rejected']} rejected + {r['skipped']} skipped + {r['duplicates']} duplicates = {r['inputs']}; "
                    f"{r['ledger_rows']} ledger rows"
                )
            print(
                f"  accounting problems: {r['accounting_problems'] or 'none'}; planted values found: "
                f"{r['planted_values_found'] or 'none'}"
            )
            for reason, n in r["by_reason"].items():
                print(f"  {n:>6}  {reason}")
    ok = all(
        r["exit_code"] == 3
        and not r["traceback"]
        and not r["accounting_problems"]
        and not r["planted_values_found"]
        and r["peak_rss_mb"] < 2048
        for r in results
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
