"""The pretraining data stream: epoch-seeded sampler, resumable position, split-invariant crops and masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrjepa.core.errors import ConfigError
from cxrjepa.data.store import DatasetArtifact, write_dataset
from cxrjepa.pretrain.augment import AugmentConfig, RandomResizedCrop
from cxrjepa.pretrain.data import Collator, Normalizer, PretrainImages, StepSampler, build_loader, fixed_batch
from cxrjepa.pretrain.masks import MaskConfig, MultiBlockMasks


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = (rng.random((20, 40, 40)) * 255).astype(np.uint8)
    images[:, 10:30, 10:30] = np.arange(20, dtype=np.uint8)[:, None, None] * 10  # a per-image signature
    path = tmp_path_factory.mktemp("ds") / "ds"
    write_dataset(path, images)
    return DatasetArtifact.open(path), images


def test_sampler_covers_each_epoch_once_in_a_seeded_order():
    s = StepSampler(10, 4, seed=3, total_steps=10)
    stream = np.concatenate([s.global_indices(i) for i in range(10)])  # 40 draws = 4 epochs
    for e in range(4):
        assert sorted(stream[e * 10 : (e + 1) * 10]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:20])  # reshuffled each epoch
    again = StepSampler(10, 4, seed=3, total_steps=10)
    assert np.array_equal(stream, np.concatenate([again.global_indices(i) for i in range(10)]))
    other = StepSampler(10, 4, seed=4, total_steps=10)
    assert not np.array_equal(stream, np.concatenate([other.global_indices(i) for i in range(10)]))
    assert s.epoch_at(5) == 2.0


def test_batches_larger_than_the_dataset_are_drawn_across_epochs():
    s = StepSampler(3, 8, seed=0, total_steps=2)
    idx = s.global_indices(0)
    assert len(idx) == 8 and set(idx) == {0, 1, 2}


def test_ranks_and_micro_batches_partition_the_global_batch():
    single = StepSampler(50, 12, seed=1, total_steps=4)
    keys_single = [k for mb in single for k in mb]
    parts = []
    for rank in range(2):
        s = StepSampler(50, 12, seed=1, total_steps=4, world=2, rank=rank, accum=3)
        assert len(s) == 4 * 3
        mbs = list(s)
        assert all(len(mb) == 2 for mb in mbs)
        parts.extend(k for mb in mbs for k in mb)
    assert sorted(parts) == sorted(keys_single)


def test_sampler_resumes_at_any_step():
    full = list(StepSampler(30, 6, seed=2, total_steps=8))
    resumed = list(StepSampler(30, 6, seed=2, total_steps=8, start_step=5))
    assert resumed == full[5:]


def test_sampler_rejects_a_batch_that_does_not_split():
    with pytest.raises(ConfigError, match="divisible"):
        StepSampler(30, 10, seed=0, total_steps=2, world=4)


def test_random_resized_crop_stays_inside_the_image_and_ratio():
    crop = RandomResizedCrop(32, AugmentConfig(crop_scale=(0.3, 1.0), crop_ratio=(0.75, 4 / 3)))
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = crop.params(rng, 60, 80)
        assert top >= 0 and top + h <= 60 and left >= 0 and left + w <= 80
        assert 0.3 * 4800 * 0.9 <= h * w <= 4800
    img = np.arange(60 * 80, dtype=np.float32).reshape(60, 80)
    out = crop(img, np.random.default_rng(1))
    assert out.shape == (32, 32) and out.dtype == np.float32


def test_no_horizontal_flip_by_default():
    img = np.tile(np.linspace(0, 1, 50, dtype=np.float32), (50, 1))  # brighter to the right
    crop = RandomResizedCrop(16, AugmentConfig())
    flip = RandomResizedCrop(16, AugmentConfig(hflip=True))
    rng = np.random.default_rng(0)
    assert all(np.all(np.diff(crop(img, rng).mean(0)) >= 0) for _ in range(50))
    assert any(np.all(np.diff(flip(img, rng).mean(0)) <= 0) for _ in range(50))


def test_crops_depend_only_on_step_and_position(dataset):
    data, _ = dataset
    images = PretrainImages(data, 24, AugmentConfig(), seed=5)
    keys = [(3, 0, 4), (3, 1, 7), (3, 2, 4)]
    first = [images[k] for k in keys]
    again = [PretrainImages(data, 24, AugmentConfig(), seed=5)[k] for k in keys]
    for a, b in zip(first, again):
        assert np.array_equal(a["image"], b["image"])
    assert not np.array_equal(first[0]["image"], first[2]["image"])  # same frame, other position: other crop
    assert first[0]["image"].shape == (1, 24, 24) and first[0]["image"].dtype == np.uint8  # stored dtype
    other_seed = PretrainImages(data, 24, AugmentConfig(), seed=6)[keys[0]]
    assert not np.array_equal(first[0]["image"], other_seed["image"])


def test_images_are_normalised_with_the_dataset_statistics(dataset):
    data, raw = dataset
    norm = {"divide_by": 255.0, "mean": 0.25, "std": 0.5}
    images = PretrainImages(data, 40, AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)), seed=0)
    item = images[(0, 0, 2)]
    assert np.array_equal(item["image"][0], raw[2])  # a full crop at the stored size is the frame itself
    x = Normalizer(norm)(torch.from_numpy(item["image"]))
    np.testing.assert_allclose(x[0].numpy(), (raw[2] / 255.0 - 0.25) / 0.5, atol=1e-5)
    fixed = fixed_batch(data, 5, 40, norm)
    assert fixed.shape == (5, 1, 40, 40)
    np.testing.assert_allclose(fixed[0, 0].numpy(), (raw[0] / 255.0 - 0.25) / 0.5, atol=1e-5)


def test_loader_batches_do_not_depend_on_the_split(dataset):
    """Two ranks x two micro-batches see exactly the rows of the single-process global batch."""
    data, _ = dataset
    images = PretrainImages(data, 32, AugmentConfig(), seed=1)
    masks = MultiBlockMasks(MaskConfig(min_context=4), (4, 4))
    collate = Collator(masks, 8, seed=1)
    whole = list(build_loader(images, StepSampler(20, 8, 1, 3), collate, workers=0))
    for step in range(3):
        parts = []
        for rank in range(2):
            s = StepSampler(20, 8, 1, 3, start_step=step, world=2, rank=rank, accum=2)
            loader = build_loader(images, s, Collator(masks, 8, seed=1), workers=0)
            it = iter(loader)
            parts += [next(it), next(it)]
        for key in ("images", "context", "targets", "index"):
            assert torch.equal(torch.cat([p[key] for p in parts]), whole[step][key]), key
        assert all(p["step"] == step for p in parts)


def test_loader_with_workers_matches_the_main_process(dataset):
    data, _ = dataset
    images = PretrainImages(data, 32, AugmentConfig(), seed=1)
    masks = MultiBlockMasks(MaskConfig(min_context=4), (4, 4))
    a = list(build_loader(images, StepSampler(20, 4, 1, 3), Collator(masks, 4, 1), workers=0))
    b = list(build_loader(images, StepSampler(20, 4, 1, 3), Collator(masks, 4, 1), workers=2, persistent=False))
    for x, y in zip(a, b):
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["context"], y["context"])


def test_frame_cache_gives_the_same_crops_and_is_built_once(dataset, tmp_path):
    import pickle

    from cxrjepa.pretrain.data import FrameCache

    data, raw = dataset
    cache = FrameCache(tmp_path / "cache", data)
    assert cache.build() and not cache.build()
    assert cache.path.stat().st_size == raw.nbytes
    assert np.array_equal(cache[3], raw[3])
    plain = PretrainImages(data, 24, AugmentConfig(), seed=2)
    cached = PretrainImages(data, 24, AugmentConfig(), seed=2, cache=pickle.loads(pickle.dumps(cache)))
    for key in [(0, 0, 1), (5, 3, 19), (9, 1, 7)]:
        assert np.array_equal(plain[key]["image"], cached[key]["image"])
