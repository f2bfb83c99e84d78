"""Schedules, AdamW parameter groups, EMA update."""

from __future__ import annotations

import pytest
import torch

from cxrjepa.core.config import load_config
from cxrjepa.pretrain.config import PretrainConfig
from cxrjepa.pretrain.objectives.ijepa import IJEPA
from cxrjepa.pretrain.optim import OptimConfig, apply_schedule, build_optimizer
from cxrjepa.pretrain.schedules import Schedules, cosine, linear


def test_lr_warms_up_then_follows_a_cosine_to_the_final_value():
    s = Schedules(OptimConfig(lr=1e-3, start_lr=1e-5, final_lr=1e-6, warmup_fraction=0.1), total=100)
    assert s.warmup == 10
    assert s.lr(0) == pytest.approx(1e-5)
    assert s.lr(5) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert s.lr(10) == pytest.approx(1e-3)
    assert s.lr(55) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert s.lr(100) == pytest.approx(1e-6)
    lrs = [s.lr(i) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_weight_decay_rises_and_momentum_ramps_to_one():
    s = Schedules(OptimConfig(weight_decay=(0.04, 0.4)), total=50)
    assert s.wd(0) == pytest.approx(0.04) and s.wd(50) == pytest.approx(0.4)
    assert s.wd(25) == pytest.approx(0.22)
    assert linear(0, 10, 0.996, 1.0) == 0.996 and linear(10, 10, 0.996, 1.0) == 1.0 and linear(20, 10, 0.9, 1.0) == 1.0
    assert cosine(0, 10, 1.0, 0.0) == 1.0


def _tiny_config(**sets) -> PretrainConfig:
    base = [
        "model.size=tiny",
        "model.patch_size=8",
        "model.image_size=32",
        "model.layers=2",
        "ijepa.predictor.depth=1",
        "ijepa.predictor.width=32",
        "ijepa.masks.min_context=4",
    ]
    return load_config(PretrainConfig, overrides=base + [f"{k}={v}" for k, v in sets.items()])


def test_no_weight_decay_on_biases_norms_positions_and_mask_token():
    obj = IJEPA(_tiny_config(**{"model.pos_embed": "learned"}))
    opt = build_optimizer(obj.student, OptimConfig())
    names = {id(p): n for n, p in obj.student.named_parameters()}
    decay = {names[id(p)] for g in opt.param_groups if g["decay"] for p in g["params"]}
    no_decay = {names[id(p)] for g in opt.param_groups if not g["decay"] for p in g["params"]}
    assert all(p.ndim > 1 for n, p in obj.student.named_parameters() if n in decay)
    assert "encoder.vit.blocks.0.attn.qkv.weight" in decay and "predictor.proj.weight" in decay
    for n in (
        "encoder.vit.blocks.0.attn.qkv.bias",
        "encoder.vit.norm.weight",
        "encoder.vit.pos_embed",
        "predictor.mask_token",
        "predictor.blocks.0.norm1.weight",
    ):
        assert n in no_decay
    assert decay | no_decay == set(names.values())
    apply_schedule(opt, 0.1, 0.3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]
    assert all(g["lr"] == 0.1 for g in opt.param_groups)


def test_fixed_sincos_positions_are_not_trained():
    obj = IJEPA(_tiny_config(**{"model.pos_embed": "sincos"}))
    from cxrjepa.models.posembed import sincos_grid

    pe = obj.student.encoder.vit.pos_embed
    torch.testing.assert_close(pe[0], sincos_grid(192, (4, 4)))
    assert not pe.requires_grad
    opt = build_optimizer(obj.student, OptimConfig())
    assert all(p is not pe for g in opt.param_groups for p in g["params"])


def test_ema_update_is_a_lerp_with_the_scheduled_momentum():
    obj = IJEPA(_tiny_config(**{"ijepa.ema": "[0.9, 1.0]"}))
    with torch.no_grad():
        for p in obj.student.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in obj.target.parameters()]
    src = [p.clone() for p in obj.student.encoder.parameters()]
    out = obj.after_step(0, 10)
    assert out["momentum"] == pytest.approx(0.9)
    for t0, s, t in zip(before, src, obj.target.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s)
        assert not t.requires_grad
    obj.after_step(10, 10)  # momentum 1.0: the target stops moving
    frozen = [p.clone() for p in obj.target.parameters()]
    with torch.no_grad():
        for p in obj.student.encoder.parameters():
            p.add_(1.0)
    obj.after_step(10, 10)
    for a, b in zip(frozen, obj.target.parameters()):
        torch.testing.assert_close(a, b)


def test_target_gets_no_gradient_and_stays_in_eval_mode():
    obj = IJEPA(_tiny_config())
    obj.train()
    assert not obj.target.training and obj.student.training
    x = torch.randn(2, 1, 32, 32)
    batch = {
        "images": x,
        "context": torch.tensor([[0, 1, 2, 3, 5], [1, 2, 3, 4, 6]]),
        "targets": torch.tensor([[[10, 11]], [[12, 13]]]),
    }
    loss, _ = obj.loss(obj.student, batch)
    loss.backward()
    assert all(p.grad is None for p in obj.target.parameters())
    assert any(p.grad is not None for p in obj.student.encoder.parameters())
