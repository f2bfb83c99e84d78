"""The SIGReg objectives' losses (lejepa, jepa-sigreg, ijepa's sigreg.weight) and their config sections."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrjepa.core.config import load_config
from cxrjepa.core.errors import ConfigError
from cxrjepa.pretrain import PretrainConfig
from cxrjepa.pretrain.data import Collator, Normalizer
from cxrjepa.pretrain.objectives import build_objective
from cxrjepa.pretrain.objectives.lejepa import flat_views

MODEL = ["model.size=tiny", "model.patch_size=8", "model.image_size=32", "model.layers=2", "sigreg.slices=64"]
MASKS = [
    "jepa_sigreg.predictor.depth=1",
    "jepa_sigreg.predictor.width=32",
    "jepa_sigreg.predictor.heads=2",
    "jepa_sigreg.masks.min_context=4",
    "ijepa.predictor.depth=1",
    "ijepa.predictor.width=32",
    "ijepa.predictor.heads=2",
    "ijepa.masks.min_context=4",
]
NORM = {"divide_by": 255.0, "mean": 0.4, "std": 0.25}


def config(objective: str, *sets: str) -> PretrainConfig:
    return load_config(PretrainConfig, overrides=[f"objective={objective}", *MODEL, *MASKS, *sets])


def lejepa(*sets: str):
    torch.manual_seed(0)
    obj = build_objective(config("lejepa", "lejepa.projector.hidden=64", "lejepa.projector.out=16", *sets))
    obj.normalizer = Normalizer(NORM)
    return obj


def test_lejepa_loss_is_the_weighted_invariance_plus_per_view_sigreg():
    obj = lejepa("lejepa.sigreg_weight=0.2")
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(6, 2, 1, 32, 32, generator=gen)
    local = torch.randint(0, 255, (6, 3, 1, 16, 16), generator=gen, dtype=torch.uint8)
    batch = {"images": images, "local": local, "step": 3}
    loss, terms = obj.loss(obj.student, batch)
    proj = obj.student(flat_views(images), flat_views(Normalizer(NORM)(local))).float().reshape(5, 6, 16)
    assert proj.shape == (5, 6, 16)
    centers = proj[:2].mean(0)
    inv = ((proj - centers) ** 2).mean()
    sig = torch.stack([obj.sigreg(proj[v], 3) for v in range(5)]).mean()
    torch.testing.assert_close(terms["invariance"], inv.detach())
    torch.testing.assert_close(terms["sigreg"], sig.detach())
    torch.testing.assert_close(loss, 0.8 * inv + 0.2 * sig)
    loss.backward()  # one encoder and one projector get gradients; nothing else exists
    names = {n.split(".")[0] for n, p in obj.named_parameters() if p.grad is not None}
    assert names == {"student"} and all(p.grad is not None for p in obj.student.parameters() if p.requires_grad)
    assert obj.after_step(3, 10) == pytest.approx({"invariance": float(inv.detach()), "sigreg": float(sig.detach())})
    pooled = lejepa("lejepa.sigreg_weight=0.2", "lejepa.sigreg_views=all")
    _, t2 = pooled.loss(pooled.student, batch)
    torch.testing.assert_close(t2["sigreg"], pooled.sigreg(proj.reshape(1, 30, 16), 3).detach())


def test_identical_views_have_no_invariance_loss():
    obj = lejepa()
    image = torch.randn(4, 1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    _, terms = obj.loss(obj.student, {"images": image.expand(4, 3, 1, 32, 32), "step": 0})
    assert float(terms["invariance"]) < 1e-10
    _, terms = obj.loss(obj.student, {"images": torch.randn(4, 3, 1, 32, 32), "step": 0})
    assert float(terms["invariance"]) > 1e-3


def masked_batch(obj, b: int = 4, step: int = 2) -> dict:
    grid = obj.config.model.token_grid((32, 32))
    collate = Collator(obj.masks(grid), b, seed=0)
    items = [
        {
            "image": np.random.default_rng(i).integers(0, 255, (1, 32, 32), dtype=np.uint8),
            "index": i,
            "step": step,
            "pos": i,
        }
        for i in range(b)
    ]
    batch = collate(items)
    batch["images"] = Normalizer(NORM)(batch["images"])
    return batch


@pytest.mark.parametrize("target_grad", [False, True])
def test_jepa_sigreg_targets_carry_gradient_only_when_asked(target_grad):
    """The full-image tokens get gradient from SIGReg on their mean (the same for every token of an image)
    and, only with target_grad, from the prediction targets (different at target positions)."""
    torch.manual_seed(0)
    obj = build_objective(config("jepa-sigreg", f"jepa_sigreg.target_grad={str(target_grad).lower()}"))
    batch = masked_batch(obj)
    seen = {}

    def student(*args):
        pred, h = obj.student(*args)
        h.register_hook(lambda g: seen.setdefault("grad", g))
        return pred, h

    loss, terms = obj.loss(student, batch)
    loss.backward()
    g = seen["grad"]  # (B, L, D)
    spread = float((g - g.mean(dim=1, keepdim=True)).abs().max())
    assert (spread > 1e-6) == target_grad, spread
    torch.testing.assert_close(loss, 0.95 * terms["prediction"] + 0.05 * terms["sigreg"])
    # SIGReg is on the mean-pooled full-image tokens
    with torch.no_grad():
        h = obj.student.encoder.tokens(batch["images"])
    torch.testing.assert_close(terms["sigreg"], obj.sigreg(h.mean(1), 2))


def test_ijepa_sigreg_weight_adds_sigreg_of_the_pooled_context_tokens():
    torch.manual_seed(0)
    plain = build_objective(config("ijepa"))
    torch.manual_seed(0)
    extra = build_objective(config("ijepa", "sigreg.weight=0.3"))
    assert plain.sigreg is None and extra.sigreg is not None
    batch = masked_batch(plain)
    base, none = plain.loss(plain.student, batch)
    total, terms = extra.loss(extra.student, batch)
    assert none == {}
    with torch.no_grad():
        z = extra.student.encoder.tokens(batch["images"], batch["context"])
    torch.testing.assert_close(terms["sigreg"], extra.sigreg(z.mean(1), 2))
    torch.testing.assert_close(total, base + 0.3 * terms["sigreg"])


def test_config_sections_enter_the_fingerprint_only_where_they_play_a_part():
    keys = lambda *sets: set(config(*sets).science())  # noqa: E731
    assert {"lejepa", "jepa_sigreg", "sigreg"}.isdisjoint(keys("ijepa"))  # unchanged for existing runs
    assert {"lejepa", "jepa_sigreg", "sigreg"}.isdisjoint(keys("salt"))
    assert "sigreg" in keys("ijepa", "sigreg.weight=0.1")
    assert {"lejepa", "sigreg"} <= keys("lejepa") and {"ijepa", "jepa_sigreg"}.isdisjoint(keys("lejepa"))
    assert {"jepa_sigreg", "sigreg"} <= keys("jepa-sigreg") and "lejepa" not in keys("jepa-sigreg")
    assert config("lejepa").science() != config("lejepa", "sigreg.slices=32").science()
    assert config("ijepa").science() == config("ijepa", "lejepa.sigreg_weight=0.5").science()
    with pytest.raises(ConfigError, match="set lejepa.sigreg_weight instead"):
        config("lejepa", "sigreg.weight=0.1")
    with pytest.raises(ConfigError, match="extra term for ijepa and salt"):
        config("pixel", "sigreg.weight=0.1")


def test_exported_and_monitored_encoder_is_the_trained_one():
    obj = lejepa()
    assert obj.export_encoder() is obj.student.encoder
    assert set(obj.checkpoint_modules()) == {"encoder", "projector"}
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(obj.monitor_tokens(x), obj.student.encoder.tokens(x))
    assert F.mse_loss(obj.student.encoder(x), obj.student.encoder.tokens(x).mean(1)) == 0
