"""Clip encoders: tube masks, tubelet embedding and inflation, clip sampling, exports, held-out splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrjepa.core.config import load_config
from cxrjepa.core.errors import ConfigError
from cxrjepa.data.store import DatasetArtifact, default_meta, write_dataset
from cxrjepa.models.export import Normalization, export_encoder, load_encoder
from cxrjepa.models.tubelet import inflate_state_dict
from cxrjepa.models.vit import EncoderConfig, ViTEncoder, create_vit
from cxrjepa.pretrain import PretrainConfig
from cxrjepa.pretrain.data import PretrainClips, clip_frames, split_holdout, training_items
from cxrjepa.pretrain.masks import MaskConfig, MultiBlockMasks, TubeMasks, block_masks
from cxrjepa.pretrain.objectives.pixel import patchify


@pytest.mark.parametrize("grid", [(4, 8, 8), (2, 6, 10)])
def test_tube_masks_repeat_the_same_blocks_at_every_time_step(grid):
    t, h, w = grid
    cfg = MaskConfig(min_context=4)
    gen = block_masks(cfg, grid)
    assert isinstance(gen, TubeMasks) and isinstance(block_masks(cfg, (h, w)), MultiBlockMasks)
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = gen(rng, 5)
        hw = h * w
        b, n_blocks, per_block = m.targets.shape
        th, tw = m.target_block
        assert (b, n_blocks, per_block) == (5, cfg.targets, t * th * tw)
        for i in range(b):
            ctx = m.context[i]
            assert np.all(np.diff(ctx) > 0) and ctx.max() < t * hw  # sorted, unique, on the grid
            slices = [ctx[(ctx >= s * hw) & (ctx < (s + 1) * hw)] - s * hw for s in range(t)]
            for s in range(1, t):  # the context covers the same spatial positions at every time step
                np.testing.assert_array_equal(slices[s], slices[0])
            for block in m.targets[i]:
                per_t = block.reshape(t, th * tw)
                for s in range(t):
                    assert np.all(per_t[s] // hw == s)  # time step s holds slice s
                    np.testing.assert_array_equal(per_t[s] - s * hw, per_t[0])  # the same block over time
            assert np.intersect1d(ctx, m.targets[i].ravel()).size == 0  # no target is visible at any time


def test_tube_masks_are_the_spatial_masks_in_time_major_order():
    cfg = MaskConfig(min_context=4)
    spatial = MultiBlockMasks(cfg, (8, 8))(np.random.default_rng(3), 4)
    tube = TubeMasks(cfg, (3, 8, 8))(np.random.default_rng(3), 4)
    np.testing.assert_array_equal(tube.context[:, : spatial.context.shape[1]], spatial.context)
    np.testing.assert_array_equal(tube.context[:, -spatial.context.shape[1] :], spatial.context + 2 * 64)


def test_clip_config_validation():
    with pytest.raises(ConfigError, match="multiple of 'model.tubelet'"):
        EncoderConfig(frames=5, tubelet=2).validate()
    with pytest.raises(ConfigError, match="multiple"):
        EncoderConfig(frames=1, tubelet=2).validate()
    cfg = EncoderConfig(size="tiny", patch_size=8, image_size=32, frames=4, tubelet=2)
    assert cfg.is_clip and cfg.input_shape == (4, 32, 32) and cfg.token_grid((4, 32, 32)) == (2, 4, 4)


def test_inflated_image_encoder_gives_the_image_tokens_on_a_still_clip():
    image = EncoderConfig(size="tiny", patch_size=8, image_size=32, layers=2, pos_embed="learned")
    clip = EncoderConfig(size="tiny", patch_size=8, image_size=32, layers=2, pos_embed="learned", frames=4, tubelet=2)
    torch.manual_seed(0)
    img_enc = ViTEncoder(image).eval()
    with torch.no_grad():
        img_enc.vit.pos_embed.normal_()  # a trained-looking position table
    clip_enc = ViTEncoder(clip).eval()
    clip_enc.vit.load_state_dict(inflate_state_dict(img_enc.vit.state_dict(), clip))
    x = torch.randn(2, 1, 32, 32)
    still = x.unsqueeze(2).expand(-1, -1, 4, -1, -1)
    with torch.no_grad():
        want = img_enc.embed(x)  # (2, 16, D)
        got = clip_enc.embed(still)  # (2, 2 * 16, D), time-major
    torch.testing.assert_close(got.reshape(2, 2, 16, -1), want.unsqueeze(1).expand(-1, 2, -1, -1))
    # the time embedding is learned (and interpolated for other clip lengths)
    assert clip_enc.vit.time_embed.requires_grad and clip_enc.vit.time_embed.shape == (1, 2, 192)
    with torch.no_grad():
        assert clip_enc.tokens(torch.randn(1, 1, 8, 32, 32)).shape == (1, 4 * 16, 192)


def test_clip_encoder_export_loads_with_load_encoder_only(tmp_path):
    cfg = EncoderConfig(size="tiny", patch_size=8, image_size=32, layers=1, frames=4, tubelet=2)
    torch.manual_seed(0)
    vit = create_vit(cfg)
    with torch.no_grad():
        vit.time_embed.normal_()
    export_encoder(vit, cfg, tmp_path / "enc", Normalization())
    meta = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert meta["timm_loadable"] is False and meta["encoder"]["frames"] == 4
    loaded = load_encoder(tmp_path / "enc")
    x = torch.randn(1, 1, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.tokens(x), ViTEncoder(cfg, vit).eval().tokens(x))
    with pytest.raises(ValueError, match="clips"):
        loaded.model.tokens(torch.randn(1, 1, 32, 32))


def test_patchify_orders_pixels_like_the_tokens():
    cfg = EncoderConfig(size="tiny", patch_size=8, image_size=16, frames=4, tubelet=2)
    x = torch.arange(4 * 16 * 16, dtype=torch.float32).reshape(1, 1, 4, 16, 16)
    p = patchify(x, cfg)
    assert p.shape == (1, 2 * 2 * 2, 2 * 8 * 8)
    # token (t=1, y=0, x=1) holds frames 2-3, rows 0-7, columns 8-15
    token = 1 * 4 + 0 * 2 + 1
    np.testing.assert_array_equal(np.sort(p[0, token].numpy()), np.sort(x[0, 0, 2:4, 0:8, 8:16].reshape(-1).numpy()))


@pytest.fixture()
def clip_data(tmp_path):
    """Samples of 1 (a still), 3 and 12 frames; each frame is constant with value 10 * frame index + 1."""
    counts = [1, 3, 12]
    n = sum(counts)
    images = np.stack([np.full((24, 24), 10 * i + 1, np.uint8) for i in range(n)])
    meta = default_meta(3, counts)
    meta["patient_key"] = ["p0", "p1", "p0"]
    write_dataset(tmp_path / "ds", images, meta)
    return DatasetArtifact.open(tmp_path / "ds")


def test_clips_take_strided_frames_of_one_sample_with_one_crop(clip_data):
    from cxrjepa.pretrain.augment import AugmentConfig

    ds = PretrainClips(clip_data, 16, AugmentConfig(), seed=0, length=4, stride=2)
    for pos in range(20):
        item = ds[(pos, pos, 2)]  # the 12-frame sample (frames 4..15)
        frames = item["frames"]
        assert frames.shape == (4,) and np.all(np.diff(frames) == 2) and frames[0] >= 4 and frames[-1] <= 15
        # every output frame is the stored frame it names (a crop of a constant frame is that constant)
        np.testing.assert_array_equal(item["image"][0, :, 0, 0], 10 * frames + 1)
        assert item["image"].shape == (1, 4, 16, 16) and item["image"].dtype == np.uint8
    still = ds[(0, 0, 0)]
    np.testing.assert_array_equal(still["frames"], [0, 0, 0, 0])  # a still becomes a static clip
    short = ds[(0, 0, 1)]
    np.testing.assert_array_equal(short["frames"], [1, 3, 3, 3])  # past the end the last frame repeats
    np.testing.assert_array_equal(clip_frames(4, 12, 4, 2, 3), [7, 9, 11, 13])


def test_items_and_patient_level_holdout(clip_data):
    cfg = load_config(PretrainConfig, overrides=["model.frames=4", "model.tubelet=2", "model.size=tiny"])
    items, patients = training_items(cfg, clip_data)
    np.testing.assert_array_equal(items, [0, 1, 2])
    assert patients[0] == patients[2] != patients[1]
    img = load_config(PretrainConfig)
    frames, frame_patients = training_items(img, clip_data)
    assert len(frames) == 16 and len(np.unique(frame_patients)) == 2
    train, held = split_holdout(frames, frame_patients, 0.05, seed=0)
    assert len(held) > 0 and len(train) + len(held) == 16
    held_patients = set(frame_patients[held])
    assert not held_patients & set(frame_patients[train])  # whole patients on one side
    again = split_holdout(frames, frame_patients, 0.05, seed=0)
    np.testing.assert_array_equal(again[1], held)
    np.testing.assert_array_equal(split_holdout(frames, frame_patients, 0.0, seed=0)[0], frames)


def test_holdout_split_over_many_patients_is_close_to_the_fraction():
    rng = np.random.default_rng(0)
    patients = rng.integers(0, 400, 5000)
    items = np.arange(5000)
    train, held = split_holdout(items, patients, 0.05, seed=1)
    assert 0.05 <= len(held) / 5000 < 0.06
    assert not set(patients[held]) & set(patients[train])
