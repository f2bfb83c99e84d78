"""cxrjepa embed end to end: exact features, dataset order, resume, sharding over 2 gloo processes, clips."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.core.artifact import read_manifest
from cxrjepa.data.store import default_meta, write_dataset
from cxrjepa.embed import store
from cxrjepa.embed.api import EmbedConfig, EmbedOptions, run_embed
from cxrjepa.embed.store import Embeddings
from cxrjepa.models.export import Normalization, export_encoder, load_encoder
from cxrjepa.models.vit import EncoderConfig, create_vit

SIZE = 32


def _dataset(path, n=40, frame_counts=None, seed=0):
    rng = np.random.default_rng(seed)
    counts = np.ones(n, dtype=int) if frame_counts is None else np.asarray(frame_counts)
    images = rng.integers(0, 256, (int(counts.sum()), SIZE, SIZE), dtype=np.uint8)
    meta = default_meta(len(counts), counts)
    meta["sex"] = np.where(np.arange(len(counts)) % 2, "F", "M")
    meta["age"] = np.linspace(20, 80, len(counts))
    meta["finding"] = np.where(np.arange(len(counts)) % 3 == 0, "effusion", "normal")
    write_dataset(path, images, meta, label_columns=["finding"])
    return images, meta


def _encoder(path, seed=0):
    cfg = EncoderConfig(size="tiny", image_size=SIZE, patch_size=16)
    torch.manual_seed(seed)
    export_encoder(create_vit(cfg), cfg, path, Normalization(mean=0.5, std=0.25))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    images, meta = _dataset(root / "ds")
    _encoder(root / "enc")
    return root, images, meta


def _bare_features(enc_path, images):
    loaded = load_encoder(enc_path)
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    with torch.no_grad():
        return loaded.model(loaded.normalization.apply(x * 255.0)).numpy()


def test_features_equal_a_bare_forward_in_dataset_order(setup, tmp_path):
    root, images, meta = setup
    art = run_embed(tmp_path / "emb", encoder=root / "enc", data=root / "ds", options=EmbedOptions(batch_size=16))
    emb = Embeddings.open(art.path)
    np.testing.assert_allclose(emb.array("features"), _bare_features(root / "enc", images), rtol=1e-4, atol=1e-5)
    idx = emb.index
    assert idx["row"].tolist() == list(range(len(meta)))
    assert idx["sample_id"].tolist() == meta["sample_id"].tolist()
    assert idx["finding"].tolist() == meta["finding"].tolist() and "sex" in idx and "age" in idx
    m = art.manifest
    assert m["contents"]["label_columns"] == ["finding"]
    assert m["contents"]["encoder"]["fingerprint"].startswith("sha256:")
    assert m["contents"]["dataset"]["fingerprint"] == read_manifest(root / "ds")["content_fingerprint"]
    assert {i["name"] for i in m["inputs"]} == {"data", "encoder"}
    assert m["counts"]["samples"] == len(meta)
    arr = zarr.open_group(str(art.path / store.ZARR), mode="r")["features"]
    assert arr.shape == (len(meta), 192) and str(arr.dtype) == "float32"


def test_rerun_is_up_to_date_and_force_redoes(setup, tmp_path):
    root, _, _ = setup
    a = run_embed(tmp_path / "emb", encoder=root / "enc", data=root / "ds")
    b = run_embed(tmp_path / "emb", encoder=root / "enc", data=root / "ds")
    assert b.manifest["finished"] == a.manifest["finished"] and b.content_fingerprint == a.content_fingerprint
    c = run_embed(tmp_path / "emb", EmbedConfig(dtype="float16"), encoder=root / "enc", data=root / "ds")
    assert c.fingerprint != a.fingerprint and Embeddings.open(c.path).array().dtype == np.float16


def test_resumed_embed_equals_uninterrupted(setup, tmp_path, monkeypatch):
    root, _, _ = setup
    monkeypatch.setattr(store, "unit_rows_for", lambda *a, **k: 8)  # 5 units of 8 rows
    full = run_embed(tmp_path / "full", encoder=root / "enc", data=root / "ds", options=EmbedOptions(batch_size=8))

    import cxrjepa.embed.api as api

    real_call = api.Extractor.__call__
    calls = {"n": 0}

    def flaky(self, frames, counts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_call(self, frames, counts)

    monkeypatch.setattr(api.Extractor, "__call__", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_embed(tmp_path / "part", encoder=root / "enc", data=root / "ds", options=EmbedOptions(batch_size=8))
    assert read_manifest(tmp_path / "part")["status"] == "partial"
    assert sorted(store.Ledger(tmp_path / "part").done()) == [0, 1]
    calls["n"] = -100  # no more failures; count the batches the resumed run does
    resumed = run_embed(tmp_path / "part", encoder=root / "enc", data=root / "ds", options=EmbedOptions(batch_size=8))
    assert calls["n"] == -100 + 3  # only units 2, 3, 4 were embedded again
    np.testing.assert_array_equal(Embeddings.open(resumed.path).array(), Embeddings.open(full.path).array())
    assert resumed.content_fingerprint == full.content_fingerprint


def test_two_gloo_processes_write_dataset_order(setup, tmp_path, monkeypatch):
    root, images, meta = setup
    monkeypatch.setattr(store, "unit_rows_for", lambda *a, **k: 8)
    art = run_embed(
        tmp_path / "emb",
        encoder=root / "enc",
        data=root / "ds",
        options=EmbedOptions(device="cpu", processes=2, batch_size=8),
    )
    ledgers = sorted(p.name for p in (art.path / store.LEDGER).glob("rank-*.jsonl"))
    assert ledgers == ["rank-000.jsonl", "rank-001.jsonl"]
    rows = {
        r: [
            json.loads(line)["rows"]
            for line in (art.path / store.LEDGER / f"rank-{r:03d}.jsonl").read_text().splitlines()
        ]
        for r in (0, 1)
    }
    assert rows[0] == [[0, 8], [8, 16], [16, 24]] and rows[1] == [[24, 32], [32, 40]]
    emb = Embeddings.open(art.path)
    assert emb.index["sample_id"].tolist() == meta["sample_id"].tolist()
    np.testing.assert_allclose(emb.array(), _bare_features(root / "enc", images), rtol=1e-4, atol=1e-5)
    assert art.manifest["options"]["world_size"] == 2


def test_dry_run_plans_gpu_processes_without_looking_for_gpus(setup, tmp_path):
    """--gpus N --dry-run on a login node: the N-process launch is planned and shown, nothing is written."""
    root, _, _ = setup
    out = tmp_path / "never"
    plan = run_embed(out, encoder=root / "enc", data=root / "ds", options=EmbedOptions(gpus=4), dry_run=True)
    assert plan["world_size"] == 4 and plan["device"] == "cuda"
    assert "torch.distributed.run --standalone --nproc-per-node=4 " in plan["launch"]
    assert "-m cxrjepa.cli.worker" in plan["launch"]
    one = run_embed(out, encoder=root / "enc", data=root / "ds", options=EmbedOptions(device="cpu"), dry_run=True)
    assert one["launch"] is None and one["world_size"] == 1 and not out.exists()


def test_last4_patch_tokens_and_exports(setup, tmp_path):
    root, images, _ = setup
    cfg = EmbedConfig(last4=True, patch_tokens=True, patch_dtype="float32", format="npy")
    art = run_embed(tmp_path / "emb", cfg, encoder=root / "enc", data=root / "ds")
    emb = Embeddings.open(art.path)
    feats, last4, patches = emb.array("features"), emb.array("features_last4"), emb.array("patch_tokens")
    assert last4.shape == (len(images), 4 * 192) and patches.shape == (len(images), 4, 192)
    np.testing.assert_allclose(patches.mean(axis=1), feats, atol=1e-5)
    np.testing.assert_allclose(last4[:, -192:], feats, atol=1e-5)  # the last block is the final layer
    assert art.manifest["contents"]["arrays"]["patch_tokens"]["grid"] == [2, 2]
    np.testing.assert_array_equal(np.load(art.path / "features.npy"), feats)
    np.testing.assert_array_equal(np.load(art.path / "features_last4.npy", mmap_mode="r"), last4)

    art2 = run_embed(tmp_path / "emb2", EmbedConfig(format="parquet"), encoder=root / "enc", data=root / "ds")
    table = pd.read_parquet(art2.path / "features.parquet")
    assert table["sample_id"].tolist() == emb.index["sample_id"].tolist()
    np.testing.assert_array_equal(np.stack(table["features"].to_numpy()), feats)


def test_clip_pooling(tmp_path):
    counts = [1, 5, 3, 1]
    images, _ = _dataset(tmp_path / "ds", frame_counts=counts)
    _encoder(tmp_path / "enc")
    per_frame = _bare_features(tmp_path / "enc", images)
    starts = np.cumsum([0] + counts[:-1])
    mean = run_embed(tmp_path / "mean", EmbedConfig(clip_frames=3), encoder=tmp_path / "enc", data=tmp_path / "ds")
    f = Embeddings.open(mean.path).array()
    # clip of 5 frames, 3 evenly spaced picks: frames 0, 2, 4
    np.testing.assert_allclose(f[1], per_frame[starts[1] + np.array([0, 2, 4])].mean(0), atol=1e-5)
    np.testing.assert_allclose(f[2], per_frame[starts[2] : starts[2] + 3].mean(0), atol=1e-5)
    np.testing.assert_allclose(f[[0, 3]], per_frame[[0, starts[3]]], atol=1e-5)
    assert Embeddings.open(mean.path).index["frames_embedded"].tolist() == [1, 3, 3, 1]
    mid = run_embed(tmp_path / "mid", EmbedConfig(clip_pool="middle"), encoder=tmp_path / "enc", data=tmp_path / "ds")
    np.testing.assert_allclose(Embeddings.open(mid.path).array()[1], per_frame[starts[1] + 2], atol=1e-5)


def test_random_encoder_is_seeded(setup, tmp_path):
    root, _, _ = setup
    a = Embeddings.open(run_embed(tmp_path / "a", encoder="random:tiny", data=root / "ds").path).array()
    b = Embeddings.open(run_embed(tmp_path / "b", encoder="random:tiny", data=root / "ds").path).array()
    c = Embeddings.open(
        run_embed(tmp_path / "c", EmbedConfig(seed=1), encoder="random:tiny", data=root / "ds").path
    ).array()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    same_arch = run_embed(tmp_path / "d", encoder=f"random:{root / 'enc'}", data=root / "ds")
    assert same_arch.manifest["contents"]["encoder"]["source"] == "random"


def test_cli_embed_json_and_errors(setup, tmp_path):
    root, _, meta = setup
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "embed",
            "--encoder",
            str(root / "enc"),
            "--data",
            str(root / "ds"),
            "--out",
            str(tmp_path / "emb"),
            "--last4",
            "--json",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["kind"] == "embeddings" and out["counts"]["samples"] == len(meta)
    res = runner.invoke(
        app,
        ["embed", "--encoder", str(tmp_path / "nothing"), "--data", str(root / "ds"), "--out", str(tmp_path / "e2")],
    )
    assert res.exit_code == 1 and "no exported encoder" in res.stderr
    res = runner.invoke(
        app, ["embed", "--encoder", "random:enormous", "--data", str(root / "ds"), "--out", str(tmp_path / "e3")]
    )
    assert res.exit_code == 2 and "random:SIZE" in res.stderr
    res = runner.invoke(
        app,
        [
            "embed",
            "--encoder",
            "random:tiny",
            "--data",
            str(root / "ds"),
            "--out",
            str(tmp_path / "e4"),
            "--pooling",
            "cls",
        ],
    )
    assert res.exit_code == 2 and "no CLS token" in res.stderr


def test_reader_processes_give_the_same_features(setup, tmp_path):
    root, _, _ = setup
    a = run_embed(tmp_path / "a", encoder=root / "enc", data=root / "ds", options=EmbedOptions(batch_size=8, workers=0))
    b = run_embed(tmp_path / "b", encoder=root / "enc", data=root / "ds", options=EmbedOptions(batch_size=8, workers=2))
    np.testing.assert_array_equal(Embeddings.open(a.path).array(), Embeddings.open(b.path).array())
