"""The seeded fuzz corpus (100 hostile entries built from pydicom's bundled files, see tests/fuzz_corpus.py)
through ``cxrjepa ingest``, with 2 workers and with 1: the run finishes with exit code 3, prints no
traceback, accounts for every entry exactly once, keeps the whole process tree under 2 GB, lets no planted
identifying value into any output, and gives the same ledger and samples whatever the worker count."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

import cxrjepa
from tests.fuzz_corpus import accounting, build, leaks, run_measured

N_CASES = 100
SEED = 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build(tmp_path_factory.mktemp("fuzz") / "in", N_CASES, SEED)


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-out")
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(cxrjepa.__file__).parent.parent),
        "CXRJEPA_SALT": "fuzz-salt-0123456789",
        "XDG_CONFIG_HOME": str(base / "cfg"),
    }
    done = {}
    for workers in (2, 1):
        out = base / f"w{workers}"
        cmd = [
            sys.executable,
            "-m",
            "cxrjepa",
            "ingest",
            str(corpus.root),
            "--out",
            str(out),
            "--size",
            "32",
            "--workers",
            str(workers),
            "--json",
            "--time-limit",
            "60",
            "--memory-limit",
            "1024",
        ]
        done[workers] = (out, run_measured(cmd, env, timeout=900))
    return done


@pytest.mark.parametrize("workers", [2, 1])
def test_fuzz_corpus_is_ingested_and_accounted(corpus, runs, workers):
    out, run = runs[workers]
    assert run.returncode == 3, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    figures, problems = accounting(corpus, out)
    assert problems == [], problems
    assert figures["samples"] > 10 and figures["rejected"] > 30  # the corpus has both
    assert run.peak_rss < 2 * 2**30, f"peak memory of the process tree {run.peak_rss / 2**20:.0f} MB"
    assert leaks(out, run.stdout, run.stderr) == []


def test_fuzz_outcome_does_not_depend_on_the_worker_count(runs):
    (out2, _), (out1, _) = runs[2], runs[1]
    assert (out2 / "failures.jsonl").read_text() == (out1 / "failures.jsonl").read_text()
    pd.testing.assert_frame_equal(
        pd.read_parquet(out2 / "metadata.parquet"), pd.read_parquet(out1 / "metadata.parquet")
    )
