"""One writer per output folder (issue 16, item 8): the lock is taken before anything is read or cleared,
lives next to the folder (clearing cannot remove it), names its holder, and a dead holder's lock is taken
over by exactly one of several contenders. Real processes throughout."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

import cxrjepa
from cxrjepa.core.artifact import begin, read_manifest
from cxrjepa.core.errors import EXIT_USAGE
from cxrjepa.core.lock import OutputLockedError, lock_path, output_lock, read_holder
from tests.dicom_files import make_dataset, phantom, write_dicom

ROOT = str(Path(cxrjepa.__file__).parent.parent)


def _env(tmp: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": ROOT,
        "CXRJEPA_SALT": "lock-test-salt-0123456789",
        "XDG_CONFIG_HOME": str(tmp / "cfg"),
    }


def _wait_for(cond, timeout: float = 120.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    for i in range(6):
        write_dicom(make_dataset(phantom(48, 40 + i, seed=i, bits=12), bits_stored=12), root / f"img{i}.dcm")
    return root


# a CLI ingest that pauses after it has planned and written its partial manifest, until GO exists
PAUSED_INGEST = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import cxrjepa.ingest.api as api
    go = Path(sys.argv[1])
    real = api._ingest
    def paused(*args, **kwargs):
        Path(str(go) + ".ready").write_text("")
        while not go.exists():
            time.sleep(0.05)
        return real(*args, **kwargs)
    api._ingest = paused
    from cxrjepa.cli.app import app
    app(sys.argv[2:], prog_name="cxrjepa")
""")


def test_a_second_ingest_with_other_settings_is_refused_naming_the_holder(archive, tmp_path):
    out, go = tmp_path / "ds", tmp_path / "go"
    env = _env(tmp_path)
    first = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PAUSED_INGEST,
            str(go),
            "ingest",
            str(archive),
            "--out",
            str(out),
            "--size",
            "64",
            "--workers",
            "1",
            "--quiet",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: Path(str(go) + ".ready").exists() or first.poll() is not None, what="the first ingest")
        assert first.poll() is None, first.stderr.read()
        holder = read_holder(out)
        assert holder is not None and holder.pid == first.pid and holder.stage == "ingest"
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "cxrjepa",
                "ingest",
                str(archive),
                "--out",
                str(out),
                "--size",
                "32",
                "--workers",
                "1",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == EXIT_USAGE
        err = second.stderr.strip()
        assert f"pid {first.pid}" in err and socket.gethostname() in err and "started" in err
        assert "Traceback" not in err and len(err.splitlines()) == 1
        assert read_manifest(out)["params"]["size"] == 64  # the second writer changed nothing
        go.write_text("")
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        go.write_text("")
        if first.poll() is None:
            first.kill()
    m = read_manifest(out)
    assert m["status"] == "complete" and m["params"]["size"] == 64
    import zarr

    images = zarr.open_group(str(out / "data.zarr"), mode="r")["images"]
    assert list(images.shape) == m["contents"]["images"]["shape"] and images.shape[1:] == (64, 64)
    assert not lock_path(out).exists()  # released and removed


def test_a_dead_holders_lock_is_taken_over_by_exactly_one_contender(tmp_path):
    out = tmp_path / "out"
    env = _env(tmp_path)
    dead = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import os, signal
        from cxrjepa.core.lock import output_lock
        with output_lock({str(out)!r}, "ingest"):
            os.kill(os.getpid(), signal.SIGKILL)
    """),
        ],
        env=env,
    )
    assert dead.returncode == -signal.SIGKILL
    stale = read_holder(out)
    assert stale is not None and stale.stage == "ingest" and stale.alive_here() is False  # left behind, holder gone

    contender = textwrap.dedent("""
        import json, os, sys, time
        from pathlib import Path
        from cxrjepa.core.lock import OutputLockedError, output_lock
        out, me, start, release = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
        while time.time() < start:
            pass
        try:
            with output_lock(out, "embed") as lock:
                me.write_text(json.dumps({"won": True, "previous": lock.previous.pid if lock.previous else None}))
                while not release.exists():
                    time.sleep(0.02)
        except OutputLockedError as exc:
            me.write_text(json.dumps({"won": False, "message": exc.message, "code": exc.exit_code}))
    """)
    release = tmp_path / "release"
    start = time.time() + 3.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", contender, str(out), str(tmp_path / f"r{i}"), str(start), str(release)], env=env
        )
        for i in range(2)
    ]
    try:
        _wait_for(lambda: all((tmp_path / f"r{i}").exists() for i in range(2)), what="both contenders")
        results = [json.loads((tmp_path / f"r{i}").read_text()) for i in range(2)]
    finally:
        release.write_text("")
        for p in procs:
            p.wait(timeout=60)
    winners = [i for i, r in enumerate(results) if r["won"]]
    assert len(winners) == 1, results
    w, loser = winners[0], results[1 - winners[0]]
    assert results[w]["previous"] == stale.pid  # it knew it took over the dead holder's lock
    assert loser["code"] == EXIT_USAGE and f"pid {procs[w].pid}" in loser["message"]
    assert not lock_path(out).exists()


def test_lock_lives_beside_the_folder_and_survives_clearing(tmp_path):
    out = tmp_path / "ds"
    b = begin(out, "dataset", {"size": 64})
    (out / "data.txt").write_text("x")
    b.finish()
    with output_lock(out, "ingest") as lock:
        assert lock.path == tmp_path / ".ds.lock" and lock.path.exists()
        b = begin(out, "dataset", {"size": 32})  # other settings: the folder is cleared under the lock
        assert b.action == "overwrite" and not (out / "data.txt").exists()
        assert lock.still_held() and read_holder(out).pid == os.getpid()
        with output_lock(out, "ingest") as again:  # re-entrant in the holder
            assert again is lock
        b.finish()
    assert not lock.path.exists()


def test_another_process_is_refused_and_dry_runs_take_no_lock(tmp_path):
    out, ready, release = tmp_path / "ds", tmp_path / "ready", tmp_path / "release"
    env = _env(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        from pathlib import Path
        from cxrjepa.core.lock import output_lock
        with output_lock({str(out)!r}, "probe"):
            Path({str(ready)!r}).write_text("")
            while not Path({str(release)!r}).exists():
                time.sleep(0.02)
    """),
        ],
        env=env,
    )
    try:
        _wait_for(ready.exists, what="the holder")
        assert begin(out, "dataset", {"size": 1}, dry_run=True).action == "create"  # no lock taken, nothing written
        with pytest.raises(OutputLockedError) as exc:
            begin(out, "dataset", {"size": 1})
        assert exc.value.exit_code == EXIT_USAGE
        assert f"pid {holder.pid}" in exc.value.message and "cxrjepa probe" in exc.value.message
        assert not out.exists()
    finally:
        release.write_text("")
        holder.wait(timeout=60)
    begin(out, "dataset", {"size": 1}).finish()  # free again once the holder is gone
    assert read_manifest(out)["status"] == "complete"


def test_a_lost_lock_stops_the_complete_manifest(tmp_path):
    from cxrjepa.core.lock import LockLostError

    out = tmp_path / "ds"
    with output_lock(out, "ingest") as lock:
        b = begin(out, "dataset", {"size": 64})
        lock.path.unlink()  # someone removed the lock file: another writer could have started meanwhile
        with pytest.raises(LockLostError, match="was removed or replaced"):
            b.finish()
    assert read_manifest(out)["status"] == "partial"


def test_a_failed_command_leaves_no_empty_parent_folders(tmp_path):
    out = tmp_path / "a" / "b" / "ds"
    with pytest.raises(RuntimeError), output_lock(out, "ingest"):
        assert lock_path(out).exists()
        raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()
    with output_lock(out, "ingest"):
        begin(out, "dataset", {"size": 1}).finish()
    assert (out / "manifest.yaml").exists() and not lock_path(out).exists()
    assert yaml.safe_load((out / "manifest.yaml").read_text())["status"] == "complete"
