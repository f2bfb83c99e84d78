"""embed --pooling grid:RxC: each zone's mean patch token, concatenated row by row; refused where it cannot hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.core.errors import ConfigError
from cxrjepa.data.store import default_meta, write_dataset
from cxrjepa.embed.api import EmbedConfig, run_embed
from cxrjepa.embed.config import zones
from cxrjepa.embed.extract import pool_tokens
from cxrjepa.embed.store import Embeddings
from cxrjepa.models.export import Normalization, export_encoder
from cxrjepa.models.vit import EncoderConfig, create_vit

SIZE = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, SIZE, SIZE), dtype=np.uint8)
    write_dataset(root / "ds", images, default_meta(len(images), np.ones(len(images), dtype=int)))
    cfg = EncoderConfig(size="tiny", image_size=SIZE, patch_size=8)  # a 4 x 4 token grid
    torch.manual_seed(0)
    export_encoder(create_vit(cfg), cfg, root / "enc", Normalization(mean=0.5, std=0.25))
    return root


def _embed(root, out, pooling, **kw):
    cfg = EmbedConfig(pooling=pooling, patch_tokens=True, patch_dtype="float32", **kw)
    return Embeddings.open(run_embed(out, cfg, encoder=root / "enc", data=root / "ds").path)


def test_grid_features_are_the_zone_means_of_the_patch_tokens(setup, tmp_path):
    emb = _embed(setup, tmp_path / "g2", "grid:2")
    tokens = emb.array("patch_tokens").reshape(12, 4, 4, 192)
    feats = emb.array()
    assert feats.shape == (12, 4 * 192)
    assert emb.artifact.manifest["contents"]["arrays"]["features"]["shape"] == [12, 768]
    expected = tokens.reshape(12, 2, 2, 2, 2, 192).mean(axis=(2, 4)).reshape(12, -1)  # zones row by row
    np.testing.assert_allclose(feats, expected, atol=1e-5)
    np.testing.assert_allclose(feats[:, 192:384], tokens[:, :2, 2:].mean(axis=(1, 2)), atol=1e-5)  # top right

    rows = _embed(setup, tmp_path / "r4", "grid:4x1", last4=True)
    t4 = rows.array("patch_tokens").reshape(12, 4, 4, 192)
    np.testing.assert_allclose(rows.array(), t4.mean(axis=2).reshape(12, -1), atol=1e-5)  # four horizontal bands
    last4 = rows.array("features_last4")
    assert last4.shape == (12, 4 * 768)
    np.testing.assert_allclose(last4[:, -768:], rows.array(), atol=1e-5)  # the last block pooled the same way
    # mean pooling is unchanged: the mean of the zone means of equal zones
    mean = _embed(setup, tmp_path / "m", "mean").array()
    np.testing.assert_allclose(mean, feats.reshape(12, 4, 192).mean(axis=1), atol=1e-5)


def test_uneven_zones_overlap_like_adaptive_average_pooling():
    tokens = torch.arange(16, dtype=torch.float32).reshape(1, 16, 1)  # a 4 x 4 grid, one channel
    out = pool_tokens(tokens, (4, 4), "grid:3x1").flatten()
    grid = tokens.reshape(4, 4)
    expected = torch.stack([grid[0:2].mean(), grid[1:3].mean(), grid[2:4].mean()])
    torch.testing.assert_close(out, expected)
    clip = torch.cat([tokens, tokens + 100], dim=1)  # (T'=2, 4, 4): time is averaged first
    torch.testing.assert_close(pool_tokens(clip, (2, 4, 4), "grid:2x2"), pool_tokens(tokens + 50, (4, 4), "grid:2"))


@pytest.mark.parametrize("bad", ["grid", "grid:0", "grid:2x", "grid:65", "max", "grid:2x2x2"])
def test_bad_pooling_values_are_refused(bad):
    with pytest.raises(ConfigError, match="'pooling' must be mean, cls or grid:RxC"):
        zones(bad)


def test_cli_refuses_grids_the_encoder_cannot_fill(setup, tmp_path):
    runner = CliRunner()
    base = ["embed", "--data", str(setup / "ds"), "--quiet"]
    res = runner.invoke(app, [*base, "--encoder", "pixels:16", "--out", str(tmp_path / "p"), "--pooling", "grid:2"])
    assert res.exit_code == 2 and "needs a token grid of at least 2 x 2" in res.stderr
    assert not (tmp_path / "p").exists()  # refused before anything was written
    res = runner.invoke(app, [*base, "--encoder", str(setup / "enc"), "--out", str(tmp_path / "b"), "--pooling", "max"])
    assert res.exit_code == 2 and "'pooling' must be mean, cls or grid:RxC" in res.stderr
    res = runner.invoke(
        app, [*base, "--encoder", str(setup / "enc"), "--out", str(tmp_path / "g"), "--pooling", "grid:4x2"]
    )
    assert res.exit_code == 0, res.output
    assert Embeddings.open(tmp_path / "g").array().shape == (12, 8 * 192)
