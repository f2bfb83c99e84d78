"""Checkpoint folders: complete-only resume, keep-last-K, safe formats, durable writes; the best-student swap;
metrics files on resume; monitors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from cxrjepa.pretrain import checkpoint as ckpt
from cxrjepa.pretrain.monitors import COLUMNS, CollapseWatch, MetricsLog, feature_std, rankme
from cxrjepa.pretrain.selection import HoldoutSelection, best_dir, read_best


def _model_and_opt(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def test_save_load_roundtrip_restores_weights_and_optimizer(tmp_path):
    model, opt = _model_and_opt(0)
    folder = ckpt.save_checkpoint(tmp_path, 7, {"model": model}, model, opt, {"epoch": 1.5})
    assert folder.name == "step-000007"
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "optimizer.pt", "state.json"}
    assert safetensors.torch.load_file(str(folder / "model.safetensors")).keys() == model.state_dict().keys()
    torch.load(folder / "optimizer.pt", weights_only=True)  # plain tensors and values only
    other, other_opt = _model_and_opt(1)
    state = ckpt.load_checkpoint(folder, {"model": other}, other, other_opt)
    assert state["step"] == 7 and state["epoch"] == 1.5
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    sa, sb = opt.state_dict()["state"], other_opt.state_dict()["state"]
    for k in sa:
        assert torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) and torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"])


def test_only_complete_checkpoints_count_and_the_last_k_are_kept(tmp_path):
    model, opt = _model_and_opt()
    for step in (2, 4, 6):
        ckpt.save_checkpoint(tmp_path, step, {"model": model}, model, opt, {}, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4, 6]
    # a crash while writing step 8: files but no state.json
    unfinished = ckpt.step_dir(tmp_path, 8)
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000006"
    # a corrupt state.json does not count either
    (ckpt.step_dir(tmp_path, 6) / "state.json").write_text("{trunc")
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000004"
    ckpt.save_checkpoint(tmp_path, 8, {"model": model}, model, opt, {}, keep_last=2)
    # the two newest complete ones stay; the corrupt one is cleared away
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path, complete=False)] == [4, 8]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000008"


def test_a_checkpoint_of_another_objective_is_refused(tmp_path):
    model, opt = _model_and_opt()
    folder = ckpt.save_checkpoint(tmp_path, 1, {"model": model}, model, opt, {})
    from cxrjepa.core.errors import ArtifactError

    with pytest.raises(ArtifactError, match="no teacher weights"):
        ckpt.load_checkpoint(folder, {"teacher": model}, model, None)


def test_metrics_are_cut_back_to_the_resumed_step(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (10, 20, 30):
        log.write({"step": step, "loss": 1.0 / step, "custom": 1})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 40, "lo')  # a line cut by a crash
    resumed = MetricsLog(tmp_path, resume_step=20)
    resumed.write({"step": 30, "loss": 0.5})
    rows = MetricsLog.read(tmp_path)
    assert [r["step"] for r in rows] == [10, 20, 30] and rows[-1]["loss"] == 0.5
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == list(COLUMNS) and len(lines) == 4
    fresh = MetricsLog(tmp_path)
    fresh.close()
    assert MetricsLog.read(tmp_path) == []


def test_rankme_and_feature_std_see_collapse(capsys):
    torch.manual_seed(0)
    healthy = torch.randn(64, 32)
    assert rankme(healthy) > 20
    collapsed = torch.randn(64, 1) @ torch.randn(1, 32)
    assert rankme(collapsed) < 1.5
    tokens = torch.randn(8, 16, 32)
    assert feature_std(tokens) == pytest.approx(1.0, abs=0.1)
    same = torch.randn(1, 1, 32).expand(8, 16, 32)
    assert feature_std(same) < 1e-3
    watch = CollapseWatch(0.05, 0.02)
    assert not watch.check(10, 0.9, 25.0, 64)
    assert watch.check(20, 0.01, 1.0, 64) and watch.warnings == 1
    assert watch.check(30, 0.01, 1.0, 64) and watch.warnings == 1  # once per episode
    assert "collapse" in capsys.readouterr().err


def test_state_json_is_written_last(tmp_path, monkeypatch):
    """If writing the optimizer fails, the folder has no state.json and is not a checkpoint."""
    model, opt = _model_and_opt()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, 3, {"model": model}, model, opt, {})
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert not (ckpt.step_dir(tmp_path, 3) / "state.json").exists()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the fsynced files")
def test_weights_optimizer_and_folder_reach_the_disk_before_state_json(tmp_path, monkeypatch):
    """The fsync order that makes a complete-looking checkpoint complete after a power cut: every weight file
    and the optimizer (under their temporary names, before the rename), then the folder, then state.json;
    the checkpoints folder before older checkpoints are pruned."""
    model, opt = _model_and_opt()
    synced: list[Path] = []
    real = os.fsync

    def record(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        return real(fd)

    monkeypatch.setattr(os, "fsync", record)
    folder = ckpt.save_checkpoint(tmp_path, 3, {"model": model, "head": model}, model, opt, {}).resolve()
    names = [p.name for p in synced]
    state_at = next(i for i, n in enumerate(names) if n.startswith(".state.json."))
    files_at = [names.index(f".{f}.tmp") for f in ("model.safetensors", "head.safetensors", "optimizer.pt")]
    folder_at = [i for i, p in enumerate(synced) if p == folder and i < state_at]
    assert max(files_at) < max(folder_at) < state_at
    assert any(p == folder.parent for p in synced[state_at:])


def _modules(value: float) -> dict[str, nn.Module]:
    enc, pred = nn.Linear(4, 4), nn.Linear(4, 2)
    for m in (enc, pred):
        nn.init.constant_(m.weight, value)
        nn.init.constant_(m.bias, value)
    return {"encoder": enc, "predictor": pred}


def _best_value(run: Path) -> float:
    """The value every weight of the best student holds, after checking that its files agree with its state."""
    state = read_best(run)
    assert state is not None, "no best student"
    values = set()
    for name in state["modules"]:
        for t in safetensors.torch.load_file(str(best_dir(run) / f"{name}.safetensors")).values():
            values |= set(t.flatten().tolist())
    assert len(values) == 1 and state["step"] == int(values.pop())
    return state["step"]


class Killed(BaseException):
    """A kill between two file-system operations."""


class KillAt:
    """Counts the wrapped file-system operations and kills the ``k``-th."""

    def __init__(self, k: int):
        self.k, self.n = k, 0

    def wrap(self, fn):
        def op(*a, **kw):
            self.n += 1
            if self.n == self.k:
                raise Killed
            return fn(*a, **kw)

        return op


@pytest.mark.parametrize("earlier", [1, 2])
def test_a_kill_at_any_moment_of_the_best_swap_leaves_the_old_or_the_new_best(tmp_path, earlier):
    """Kill the swap of a new best after each of its file-system operations in turn: ``checkpoints/best``
    always holds a whole student, the old one or the new one; the next swap then succeeds."""
    ops = [
        (os, "replace"),
        (os, "rename"),
        (os, "symlink"),
        (os, "unlink"),
        (os, "mkdir"),
        (os, "fsync"),
        (shutil, "rmtree"),
        (safetensors.torch, "save_file"),
    ]
    seen, k = set(), 0
    while True:
        k += 1
        run = tmp_path / f"run{earlier}-{k}"
        sel = HoldoutSelection(run, [], 0, 0, 0.1, every=1, export_best=True)
        for step in range(1, earlier + 1):  # earlier bests (the second swap goes back to the first folder)
            sel.update(step, 1.0 / step, _modules(step), write=True, sharded=False)
        new = earlier + 1
        originals = {(mod, name): getattr(mod, name) for mod, name in ops}
        kill = KillAt(k)
        for (mod, name), fn in originals.items():
            setattr(mod, name, kill.wrap(fn))
        try:
            sel.update(new, 1.0 / new, _modules(new), write=True, sharded=False)
            finished = True
        except Killed:
            finished = False
        finally:
            for (mod, name), fn in originals.items():
                setattr(mod, name, fn)
        seen.add(_best_value(run))
        assert seen <= {earlier, new}
        if finished:
            break
        again = HoldoutSelection(run, [], 0, 0, 0.1, every=1, export_best=True)
        again.update(new, 1.0 / new, _modules(new), write=True, sharded=False)  # leftovers do not block a swap
        assert _best_value(run) == new
    assert seen == {earlier, new} and k > 5
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "best-b" if earlier % 2 else "best-a"]


def test_a_best_folder_of_an_older_run_is_adopted(tmp_path):
    old = best_dir(tmp_path)
    old.mkdir(parents=True)
    ckpt.write_modules(old, {"encoder": {"w": torch.ones(2)}})
    (old / "state.json").write_text(json.dumps({"format": ckpt.FORMAT, "step": 5, "holdout_loss": 0.3}))
    sel = HoldoutSelection(tmp_path, [], 0, 0, 0.1, every=1, export_best=True)
    sel.restore(10, [])
    assert sel.best_step == 5
    sel.update(12, 0.2, _modules(12), write=True, sharded=False)
    assert best_dir(tmp_path).is_symlink() and _best_value(tmp_path) == 12
