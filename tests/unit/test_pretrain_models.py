"""Predictor, sin-cos positions, encoder sizes / patch 14 / layers, analytic FLOPs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cxrjepa.core.config import from_dict
from cxrjepa.core.errors import ConfigError
from cxrjepa.models.flops import blocks_flops, encoder_flops, linear_flops
from cxrjepa.models.posembed import sincos_grid
from cxrjepa.models.predictor import Predictor, PredictorConfig
from cxrjepa.models.vit import EncoderConfig, ViTEncoder, create_vit


def test_sincos_positions_are_distinct_and_fixed():
    pos = sincos_grid(64, (6, 5))
    assert pos.shape == (30, 64)
    assert torch.cdist(pos, pos).add(torch.eye(30) * 10).min() > 0.1  # every position distinct
    assert torch.equal(pos, sincos_grid(64, (6, 5)))
    assert sincos_grid(48, (2, 3, 4)).shape == (24, 48)  # 3-D (clip) grids too


def test_predictor_shapes_and_mask_token_use():
    torch.manual_seed(0)
    pred = Predictor(PredictorConfig(depth=2, width=32, heads=4), embed_dim=48)
    ctx = torch.randn(3, 7, 48)
    ctx_idx = torch.stack([torch.randperm(16)[:7].sort().values for _ in range(3)])
    tgt_idx = torch.randint(0, 16, (3, 2, 4))
    out = pred(ctx, ctx_idx, tgt_idx, (4, 4))
    assert out.shape == (3, 2, 4, 48)
    # predictions depend on where the targets are (positions), not only on the context
    other = pred(ctx, ctx_idx, (tgt_idx + 1) % 16, (4, 4))
    assert not torch.allclose(out, other)
    # the positional table is fixed (not a parameter); the mask token is learned
    names = {n for n, _ in pred.named_parameters()}
    assert "mask_token" in names and not any("pos" in n for n in names)
    out.sum().backward()
    assert pred.mask_token.grad is not None and pred.mask_token.grad.abs().sum() > 0


def test_predictor_blocks_do_not_mix_target_blocks():
    """Each target block is predicted from the context alone, as in the reference implementation."""
    torch.manual_seed(0)
    pred = Predictor(PredictorConfig(depth=2, width=32, heads=4), embed_dim=16).eval()
    ctx = torch.randn(1, 5, 16)
    ctx_idx = torch.tensor([[0, 1, 2, 3, 4]])
    a = pred(ctx, ctx_idx, torch.tensor([[[8, 9], [12, 13]]]), (4, 4))
    b = pred(ctx, ctx_idx, torch.tensor([[[8, 9], [14, 15]]]), (4, 4))
    torch.testing.assert_close(a[:, 0], b[:, 0])


def test_encoder_config_layers_patch14_and_drop_path():
    cfg = from_dict(EncoderConfig, {"size": "small", "patch_size": 14, "image_size": 56, "layers": 3, "drop_path": 0.1})
    vit = create_vit(cfg)
    assert len(vit.blocks) == 3 and cfg.depth == 3 and vit.embed_dim == 384
    assert vit.patch_embed.proj.kernel_size == (14, 14)
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    enc = ViTEncoder(cfg)
    assert enc.tokens(torch.randn(2, 1, 56, 56)).shape == (2, 16, 384)
    assert enc.tokens(torch.randn(2, 1, 84, 70)).shape == (2, 30, 384)  # other sizes: interpolated positions
    assert cfg.token_grid((56, 56)) == (4, 4)
    with pytest.raises(ConfigError):
        from_dict(EncoderConfig, {"layers": 0})
    assert EncoderConfig(size="base").depth == 12 and "depth" not in EncoderConfig().timm_kwargs()


def _measured(fn) -> int:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # the math attention backend is made of matmuls the counter sees on every device
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_analytic_flops_match_torch_flop_counter():
    cfg = EncoderConfig(size="tiny", patch_size=8, image_size=64, layers=2)
    enc = ViTEncoder(cfg)
    x = torch.randn(2, 1, 64, 64)
    keep = torch.arange(40).expand(2, 40)
    measured = _measured(lambda: enc.tokens(x, keep))
    expected = encoder_flops(cfg, 40, 2, embedded=64)
    assert measured == pytest.approx(expected, rel=0.02)
    pcfg = PredictorConfig(depth=2, width=64, heads=2)
    pred = Predictor(pcfg, 192)
    ctx, tgt = torch.randn(2, 40, 192), torch.randint(0, 64, (2, 3, 6))
    measured = _measured(lambda: pred(ctx, keep, tgt, (8, 8)))
    expected = linear_flops(80, 192, 64) + blocks_flops(46, 64, 2, 4.0, 6) + linear_flops(36, 64, 192)
    assert measured == pytest.approx(expected, rel=0.02)
