"""``cxrjepa embed --part K/N`` + finalize equals one run: the same features (bit for bit) in dataset order, index,
fingerprint and content fingerprint. Parts run one after another, two at the same time (real processes), a part
killed with SIGKILL and rerun; finalize refuses, naming the part, while one is missing. Multi-node embedding
under torchrun: a part run by two single-process "nodes" (gloo, a world that spans them); a rank that cannot see
the output folder (no shared storage) refuses."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import cxrjepa
from cxrjepa.cli.app import app
from cxrjepa.core.artifact import read_manifest
from cxrjepa.core.parts import PartsIncompleteError
from cxrjepa.data.store import default_meta, write_dataset
from cxrjepa.embed import store
from cxrjepa.embed.api import EmbedOptions, run_embed
from cxrjepa.embed.parts import finalize_embed, run_embed_part
from cxrjepa.embed.store import Embeddings

N = 120  # rows per unit as one process cuts them: 16, so 8 units; 3 parts take 3, 3 and 2 units
N_PARTS = 3
ENCODER = "random:tiny"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("embed-parts") / "ds"
    rng = np.random.default_rng(0)
    counts = np.where(np.arange(N) % 10 == 0, 3, 1)  # a few clips among the stills
    images = rng.integers(0, 256, (int(counts.sum()), 32, 32), dtype=np.uint8)
    meta = default_meta(N, counts)
    meta["finding"] = np.where(np.arange(N) % 3 == 0, "effusion", "normal")
    write_dataset(path, images, meta, label_columns=["finding"])
    return path


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("embed-ref") / "emb"
    run_embed(out, encoder=ENCODER, data=data, options=EmbedOptions(batch_size=16))
    return out


def assert_same_embeddings(got: Path, ref: Path) -> None:
    a, b = Embeddings.open(ref), Embeddings.open(got)
    assert np.array_equal(b.array("features"), a.array("features"))
    pd.testing.assert_frame_equal(b.index, a.index)
    ma, mb = read_manifest(ref), read_manifest(got)
    assert mb["fingerprint"] == ma["fingerprint"] and mb["content_fingerprint"] == ma["content_fingerprint"]
    assert mb["counts"] == ma["counts"] and mb["contents"] == ma["contents"]
    assert not (got / "parts").exists()


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(cxrjepa.__file__).parent.parent)}


def _cmd(data: Path, out: Path, *extra: str, batch_size: int = 16) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cxrjepa",
        "embed",
        "--encoder",
        ENCODER,
        "--data",
        str(data),
        "--out",
        str(out),
        "--batch-size",
        str(batch_size),
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


def test_three_parts_one_after_another_equal_one_run(data, reference, tmp_path):
    out = tmp_path / "emb"
    results = [
        run_embed_part(out, f"{k}/{N_PARTS}", encoder=ENCODER, data=data, options=EmbedOptions(batch_size=16))
        for k in range(N_PARTS)
    ]
    assert [r["units"] for r in results[:2]] == [3, 3]
    assert_same_embeddings(out, reference)
    ledgers = sorted(p.name for p in (out / store.LEDGER).iterdir())
    assert ledgers == [f"part-{k}-of-3.rank-000.jsonl" for k in range(N_PARTS)]
    assert read_manifest(out)["options"]["parts"] == N_PARTS


def test_two_parts_at_the_same_time_then_the_last(data, reference, tmp_path):
    """Parts 0 and 1 as two processes started together on one output folder (both write the shared arrays),
    then part 2, which finalizes."""
    out = tmp_path / "emb"
    procs = [
        subprocess.Popen(
            _cmd(data, out, "--part", f"{k}/{N_PARTS}"),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert read_manifest(out)["status"] == "partial"
    art = run_embed_part(out, f"2/{N_PARTS}", encoder=ENCODER, data=data, options=EmbedOptions(batch_size=16))
    assert art.path == out and read_manifest(out)["status"] == "complete"
    assert_same_embeddings(out, reference)


def test_killed_part_rerun_changes_nothing(data, reference, tmp_path):
    """Part 0 killed with SIGKILL after its first unit: finalize names every part; the rerun resumes it (its
    written units are kept) and the embeddings equal one run."""
    out = tmp_path / "emb"
    ledger = out / store.LEDGER / "part-0-of-3.rank-000.jsonl"
    cmd = _cmd(data, out, "--part", f"0/{N_PARTS}", "--no-auto-finalize", batch_size=1)
    written = 0
    for _ in range(3):  # the kill must land while units remain: retry if the machine was too fast
        proc = subprocess.Popen(
            cmd, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if ledger.is_file() and ledger.read_text().count("\n") >= 1:
                os.killpg(proc.pid, signal.SIGKILL)  # the part and its loader workers, like a lost node
                break
            time.sleep(0.002)
        proc.wait()
        written = ledger.read_text().count("\n") if ledger.is_file() else 0
        if 1 <= written < 3:
            break
        shutil.rmtree(out, ignore_errors=True)
    assert 1 <= written < 3, "the part finished before it could be killed"
    kept = ledger.read_text()
    assert '"status": "running"' in (out / "parts" / "0-of-3" / "part.json").read_text()
    with pytest.raises(
        PartsIncompleteError,
        match=r"Parts 0/3, 1/3 and 2/3 of .* are not complete \(0/3 interrupted; "
        r"1/3 missing; 2/3 missing\)",
    ):
        finalize_embed(out)
    summary = run_embed_part(
        out, f"0/{N_PARTS}", encoder=ENCODER, data=data, options=EmbedOptions(batch_size=16), auto_finalize=False
    )
    assert summary["part_status"] == "complete"
    assert ledger.read_text().startswith(kept)  # resumed: the units written before the kill were not redone
    assert ledger.read_text().count("\n") == 3
    for k in (1, 2):
        run_embed_part(out, f"{k}/{N_PARTS}", encoder=ENCODER, data=data, options=EmbedOptions(batch_size=16))
    assert_same_embeddings(out, reference)


def test_finalize_refuses_a_missing_part(data, reference, tmp_path):
    out = tmp_path / "emb"
    for k in (0, 2):
        run_embed_part(out, f"{k}/{N_PARTS}", encoder=ENCODER, data=data, options=EmbedOptions(batch_size=16))
    assert read_manifest(out)["status"] == "partial"
    with pytest.raises(PartsIncompleteError, match=r"Part 1/3 of .* is not complete \(1/3 missing\).*--array=1 "):
        finalize_embed(out)
    res = CliRunner().invoke(app, ["embed", "--finalize", "--out", str(out)])
    assert res.exit_code == 1 and "Part 1/3" in res.stderr
    run_embed_part(out, f"1/{N_PARTS}", encoder=ENCODER, data=data, options=EmbedOptions(batch_size=16))
    assert_same_embeddings(out, reference)
    res = CliRunner().invoke(app, ["embed", "--finalize", "--out", str(out)])
    assert res.exit_code == 0 and "up to date" in res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _communicate(procs: list[subprocess.Popen]) -> list[subprocess.CompletedProcess]:
    done = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _two_nodes(args: list[str]) -> list[subprocess.CompletedProcess]:
    """``args`` (a cxrjepa command) on two torchrun "nodes" of one CPU process each: WORLD_SIZE 2, LOCAL_RANK 0
    on both, the rendezvous on node 0's port."""
    port = _free_port()
    return _communicate(
        [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nnodes=2",
                    f"--node-rank={r}",
                    f"--rdzv-endpoint=127.0.0.1:{port}",
                    "--nproc-per-node=1",
                    "-m",
                    "cxrjepa",
                    *args,
                ],
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for r in (0, 1)
        ]
    )


def test_multi_node_torchrun(data, reference, tmp_path):
    """Part 0/2 run under torchrun by a world that spans two nodes (WORLD_SIZE 2, LOCAL_WORLD_SIZE 1): node 0's
    rank 0 joins the artifact, both ranks embed their slices of the part's units into the shared folder; part
    1/2 by one process finalizes: the same embeddings as one run."""
    out = tmp_path / "emb"
    for res in _two_nodes(_cmd(data, out, "--part", "0/2")[3:]):
        assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (out / store.LEDGER).iterdir()) == [
        "part-0-of-2.rank-000.jsonl",
        "part-0-of-2.rank-001.jsonl",
    ]
    assert read_manifest(out)["status"] == "partial"
    run_embed_part(out, "1/2", encoder=ENCODER, data=data, options=EmbedOptions(batch_size=16))
    assert_same_embeddings(out, reference)


def test_a_rank_that_cannot_see_the_output_refuses(data, reference, tmp_path):
    """A rank on a node where the output folder rank 0 created is not visible (no shared storage) stops with one
    sentence naming itself, its host and what must be shared, instead of leaving rows unwritten."""
    from cxrjepa.core.errors import CxrjepaError
    from cxrjepa.embed.api import check_shared
    from cxrjepa.runtime import DistInfo

    with pytest.raises(
        CxrjepaError,
        match=rf"Rank 0 on '{socket.gethostname()}' cannot see the embeddings folder "
        r"'.*elsewhere'.*--out and --data must be on storage every node shares",
    ):
        check_shared(DistInfo(), tmp_path / "elsewhere", data)
    check_shared(DistInfo(), reference, data)  # it sees both: nothing to say
