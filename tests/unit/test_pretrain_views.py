"""Multi-view data (LeJEPA): global and local crops, grey-level jitter, clip views, split invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrjepa.core.config import load_config
from cxrjepa.core.errors import ConfigError
from cxrjepa.data.store import DatasetArtifact, default_meta, write_dataset
from cxrjepa.pretrain import PretrainConfig
from cxrjepa.pretrain.augment import AugmentConfig, IntensityConfig, IntensityJitter, MultiCrop, ViewsConfig
from cxrjepa.pretrain.data import (
    Collator,
    PretrainClipViews,
    PretrainViews,
    StepSampler,
    build_loader,
    multi_crop,
    training_images,
)

NO_JITTER = IntensityConfig(jitter_p=0.0, blur_p=0.0, noise_p=0.0)
WHOLE = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = (rng.random((20, 48, 48)) * 200).astype(np.uint8)
    path = tmp_path_factory.mktemp("views") / "ds"
    write_dataset(path, images)
    return DatasetArtifact.open(path), images


def config(*sets: str) -> PretrainConfig:
    base = ["objective=lejepa", "model.size=tiny", "model.patch_size=8", "model.image_size=32"]
    return load_config(PretrainConfig, overrides=base + list(sets))


def test_items_carry_global_and_local_views_in_the_stored_dtype(dataset):
    data, _ = dataset
    cfg = config("lejepa.views.global_views=2", "lejepa.views.local_views=3")
    ds = training_images(cfg, data, views=cfg.lejepa.views)
    assert isinstance(ds, PretrainViews)
    item = ds[(4, 1, 7)]
    # local crops: half the image size on the patch grid (32 / 2 = 16 = 2 patches of 8)
    assert item["image"].shape == (2, 1, 32, 32) and item["local"].shape == (3, 1, 16, 16)
    assert item["image"].dtype == np.uint8 and item["local"].dtype == np.uint8
    again = training_images(cfg, data, views=cfg.lejepa.views)[(4, 1, 7)]
    assert np.array_equal(item["image"], again["image"]) and np.array_equal(item["local"], again["local"])
    other = ds[(4, 2, 7)]  # the same frame at another position of the batch: other views
    assert not np.array_equal(item["image"], other["image"])
    assert not np.array_equal(item["image"][0], item["image"][1])  # each view its own crop and jitter
    assert multi_crop(config("lejepa.views.local_size=20"), data, cfg.lejepa.views).local_size == 16
    assert multi_crop(config("model.image_size=64"), data, cfg.lejepa.views).local_size == 32


def test_without_jitter_whole_crops_are_the_frame_itself(dataset):
    data, raw = dataset
    crops = MultiCrop(
        ViewsConfig(global_views=2, local_views=1, local_scale=(1.0, 1.0), intensity=NO_JITTER), WHOLE, 48, 24, 255.0
    )
    item = PretrainViews(data, crops, seed=0)[(0, 0, 5)]
    assert np.array_equal(item["image"][0, 0], raw[5]) and np.array_equal(item["image"][1, 0], raw[5])
    import cv2

    np.testing.assert_array_equal(item["local"][0, 0], cv2.resize(raw[5], (24, 24), interpolation=cv2.INTER_AREA))


def test_grey_level_jitter_is_seeded_stays_in_range_and_changes_the_view():
    img = np.tile(np.linspace(0, 250, 64).astype(np.uint8), (64, 1))
    cfg = IntensityConfig(jitter_p=1.0, blur_p=1.0, noise_p=1.0, noise_std=(0.02, 0.05))
    jitter = IntensityJitter(cfg, 255.0)
    a = jitter(img, np.random.default_rng(1))
    assert a.dtype == np.uint8 and a.shape == img.shape
    assert np.array_equal(a, jitter(img, np.random.default_rng(1)))
    assert not np.array_equal(a, jitter(img, np.random.default_rng(2)))
    assert np.abs(a.astype(int) - img).mean() > 2
    wide = IntensityJitter(IntensityConfig(jitter_p=1.0, contrast=0.9, brightness=1.0, blur_p=0.0, noise_p=0.0), 255.0)
    outs = np.stack([wide(img, np.random.default_rng(s)) for s in range(30)])
    assert outs.min() == 0 and outs.max() == 255  # clipped to the stored range, never wrapped around
    off = IntensityJitter(NO_JITTER, 255.0)
    assert off(img, np.random.default_rng(0)) is img
    # 16-bit data: the range is the dataset's divide_by, not 65535
    img16 = img.astype(np.uint16) * 16
    out16 = IntensityJitter(cfg, 4095.0)(img16, np.random.default_rng(1))
    assert out16.dtype == np.uint16 and out16.max() > 1000 and out16.max() <= 65535


def test_speckle_is_multiplicative_gaussian_noise_is_not():
    img = np.zeros((32, 32), np.uint8)
    img[:, 16:] = 200
    for kind, black_stays in (("speckle", True), ("gaussian", False)):
        cfg = IntensityConfig(jitter_p=0.0, blur_p=0.0, noise_p=1.0, noise=kind, noise_std=(0.1, 0.1))
        out = IntensityJitter(cfg, 255.0)(img, np.random.default_rng(0))
        assert (out[:, :16].max() == 0) == black_stays, kind
        assert out[:, 16:].std() > 5


def test_views_are_never_flipped_by_default():
    img = np.tile(np.linspace(0, 250, 64, dtype=np.float32), (64, 1)).astype(np.uint8)  # brighter to the right
    views = ViewsConfig(intensity=IntensityConfig(jitter_p=0.8, blur_p=0.0, noise_p=0.0))  # monotone jitter only
    crops = MultiCrop(views, AugmentConfig(), 32, 16, 255.0)
    flipping = MultiCrop(views, AugmentConfig(hflip=True), 32, 16, 255.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        g, loc = crops(img, rng)
        for v in list(g) + list(loc):
            assert np.all(np.diff(v.astype(float).mean(0)) >= 0)
    assert any(np.any(np.diff(flipping(img, rng)[0][0].astype(float).mean(0)) < 0) for _ in range(20))


def test_multi_view_batches_do_not_depend_on_the_split(dataset):
    """Two ranks x two micro-batches see exactly the global batch's views (global and local)."""
    data, _ = dataset
    cfg = config("lejepa.views.local_views=2")
    ds = training_images(cfg, data, views=cfg.lejepa.views)
    whole = list(build_loader(ds, StepSampler(20, 8, 0, 2), Collator(None, 8, 0), workers=0))
    assert whole[0]["images"].shape == (8, 2, 1, 32, 32) and whole[0]["local"].shape == (8, 2, 1, 16, 16)
    for step in range(2):
        parts = []
        for rank in range(2):
            it = iter(
                build_loader(
                    ds,
                    StepSampler(20, 8, 0, 2, start_step=step, world=2, rank=rank, accum=2),
                    Collator(None, 8, 0),
                    workers=0,
                )
            )
            parts += [next(it), next(it)]
        for key in ("images", "local", "index"):
            assert torch.equal(torch.cat([p[key] for p in parts]), whole[step][key]), key
    workers = list(build_loader(ds, StepSampler(20, 8, 0, 2), Collator(None, 8, 0), workers=2, persistent=False))
    for a, b in zip(whole, workers):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["local"], b["local"])


@pytest.fixture()
def clip_data(tmp_path):
    """Samples of 1 (a still), 3 and 12 frames; each frame is constant with value 10 * frame index + 1."""
    counts = [1, 3, 12]
    images = np.stack([np.full((24, 24), 10 * i + 1, np.uint8) for i in range(sum(counts))])
    write_dataset(tmp_path / "ds", images, default_meta(3, counts))
    return DatasetArtifact.open(tmp_path / "ds")


def test_clip_views_are_spatio_temporal_crops_of_one_sample(clip_data):
    cfg = load_config(
        PretrainConfig,
        overrides=[
            "objective=lejepa",
            "model.size=tiny",
            "model.patch_size=8",
            "model.image_size=16",
            "model.frames=4",
            "model.tubelet=2",
            "clips.stride=2",
            "lejepa.views.local_views=3",
            "lejepa.views.intensity.jitter_p=0",
            "lejepa.views.intensity.blur_p=0",
            "lejepa.views.intensity.noise_p=0",
        ],
    )
    ds = training_images(cfg, clip_data, views=cfg.lejepa.views)
    assert isinstance(ds, PretrainClipViews)
    starts = set()
    for pos in range(12):
        item = ds[(0, pos, 2)]  # the 12-frame sample: stored frames 4..15
        assert item["image"].shape == (2, 1, 4, 16, 16) and item["local"].shape == (3, 1, 2, 8, 8)
        for view in list(item["image"][:, 0]) + list(item["local"][:, 0]):
            values = view[:, 0, 0].astype(int)
            frames = (values - 1) // 10
            assert np.all(np.diff(frames) == 2) and frames[0] >= 4 and frames[-1] <= 15  # strided, inside the sample
            assert np.all(view == view[:, :1, :1])  # one crop of constant frames: constant
            starts.add(int(frames[0]))
    assert len(starts) > 3  # each view draws its own window
    still = ds[(0, 0, 0)]
    assert np.all(still["image"] == 1) and np.all(still["local"] == 1)  # a still becomes static clips


def test_views_settings_are_checked():
    with pytest.raises(ConfigError, match="at least 2 views"):
        config("lejepa.views.global_views=1", "lejepa.views.local_views=0")
    with pytest.raises(ConfigError, match="local_scale"):
        config("lejepa.views.local_scale=[0.5,0.2]")
    with pytest.raises(ConfigError, match="gamma"):
        config("lejepa.views.intensity.gamma=[0,1]")
    with pytest.raises(ConfigError, match="sigreg_weight"):
        config("lejepa.sigreg_weight=1.5")
    with pytest.raises(ConfigError, match="knots"):
        config("sigreg.knots=16")
