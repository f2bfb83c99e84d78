"""Multi-block mask generator: block counts, scales, aspect ratios, disjoint context, minimum context."""

from __future__ import annotations

import numpy as np
import pytest

from cxrjepa.core.config import from_dict
from cxrjepa.core.errors import ConfigError, CxrjepaError
from cxrjepa.pretrain.masks import MaskConfig, MultiBlockMasks


def _bounds_ok(h: int, w: int, n_tok: int, scale, aspect) -> bool:
    """Block area within the scale range and h/w within the aspect range, allowing one row/column of rounding."""
    area_ok = (h - 1) * (w - 1) <= n_tok * scale[1] and (h + 1) * (w + 1) >= n_tok * scale[0]
    aspect_ok = (h - 0.5) / (w + 0.5) <= aspect[1] and (h + 0.5) / max(w - 0.5, 0.5) >= aspect[0]
    return area_ok and aspect_ok


@pytest.mark.parametrize("grid", [(14, 14), (8, 8), (12, 16)])
def test_masks_properties_over_many_batches(grid):
    cfg = MaskConfig()
    gen = MultiBlockMasks(cfg, grid)
    n_tok = grid[0] * grid[1]
    rng = np.random.default_rng(0)
    for _ in range(50):
        b = int(rng.integers(1, 40))
        m = gen(rng, b)
        th, tw = m.target_block
        assert m.targets.shape == (b, cfg.targets, th * tw)
        assert _bounds_ok(th, tw, n_tok, cfg.target_scale, cfg.target_aspect), (th, tw)
        ch, cw = m.context_block
        assert ch * cw >= int(n_tok * cfg.context_scale[0]) - ch - cw  # context block close to its scale range
        assert m.context.shape[0] == b and m.context.shape[1] >= cfg.min_context
        for i in range(b):
            ctx = m.context[i]
            assert np.all(np.diff(ctx) > 0)  # sorted, unique
            assert ctx.min() >= 0 and ctx.max() < n_tok
            tgt = m.targets[i]
            assert np.intersect1d(ctx, tgt.ravel()).size == 0  # context never sees a target patch
            for blk in tgt:
                rows, cols = np.divmod(blk, grid[1])
                # each target is a full h x w rectangle
                assert rows.max() - rows.min() + 1 == th and cols.max() - cols.min() + 1 == tw
                assert len(np.unique(blk)) == th * tw


def test_masks_are_a_function_of_the_generator_state():
    gen = MultiBlockMasks(MaskConfig(), (14, 14))
    a = gen(np.random.default_rng(7), 16)
    b = gen(np.random.default_rng(7), 16)
    c = gen(np.random.default_rng(8), 16)
    assert np.array_equal(a.context, b.context) and np.array_equal(a.targets, b.targets)
    assert not (np.array_equal(a.context, c.context) and np.array_equal(a.targets, c.targets))


def test_block_scales_cover_the_configured_range():
    cfg = MaskConfig(target_scale=(0.1, 0.3), target_aspect=(0.5, 2.0))
    gen = MultiBlockMasks(cfg, (16, 16))
    rng = np.random.default_rng(1)
    areas = [np.prod(gen.block_size(rng, cfg.target_scale, cfg.target_aspect)) / 256 for _ in range(300)]
    ratios = [np.divide(*gen.block_size(rng, cfg.target_scale, cfg.target_aspect)) for _ in range(300)]
    assert 0.07 < min(areas) < 0.13 and 0.25 < max(areas) < 0.34
    assert min(ratios) < 0.7 and max(ratios) > 1.5


def test_minimum_context_is_kept_when_targets_crowd_the_grid():
    cfg = MaskConfig(targets=6, target_scale=(0.2, 0.25), min_context=12)
    gen = MultiBlockMasks(cfg, (8, 8))
    rng = np.random.default_rng(3)
    for _ in range(30):
        m = gen(rng, 32)
        assert m.context.shape[1] >= 12
        for i in range(32):
            assert np.intersect1d(m.context[i], m.targets[i].ravel()).size == 0


def test_impossible_masks_fail_with_one_sentence():
    cfg = MaskConfig(targets=4, target_scale=(0.9, 1.0), min_context=5)
    with pytest.raises(CxrjepaError, match="fewer than 5 context tokens"):
        MultiBlockMasks(cfg, (4, 4))(np.random.default_rng(0), 4)
    with pytest.raises(ConfigError):
        MultiBlockMasks(MaskConfig(min_context=20), (4, 4))


def test_mask_config_is_validated():
    with pytest.raises(ConfigError, match="target_scale"):
        from_dict(MaskConfig, {"target_scale": [0.3, 0.1]})
    cfg = from_dict(MaskConfig, {"target_scale": [0.1, 0.15], "targets": 2})
    assert cfg.target_scale == (0.1, 0.15)
