"""The pretrain config: defaults, recipes, layering, what is fingerprinted."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrjepa.core.config import load_config
from cxrjepa.core.errors import ConfigError
from cxrjepa.pretrain import PretrainConfig

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_ijepa_reference_recipe():
    cfg = PretrainConfig()
    assert (cfg.model.size, cfg.model.patch_size, cfg.model.image_size, cfg.model.pos_embed) == (
        "base",
        16,
        224,
        "sincos",
    )
    m = cfg.ijepa.masks
    assert (m.targets, m.target_scale, m.target_aspect, m.context_scale) == (4, (0.15, 0.2), (0.75, 1.5), (0.85, 1.0))
    assert cfg.ijepa.ema == (0.996, 1.0) and cfg.optim.weight_decay == (0.04, 0.4) and not cfg.augment.hflip


def test_a_partial_section_keeps_the_other_defaults():
    cfg = load_config(PretrainConfig, overrides=["model.image_size=256"])
    assert cfg.model.size == "base" and cfg.model.image_size == 256 and cfg.model.pos_embed == "sincos"
    cfg = load_config(PretrainConfig, overrides=["ijepa.masks.targets=2", "ijepa.ema=[0.99, 1.0]"])
    assert cfg.ijepa.masks.targets == 2 and cfg.ijepa.masks.min_context == 10 and cfg.ijepa.ema == (0.99, 1.0)


@pytest.mark.parametrize(
    ("name", "objective"),
    [
        ("cxr-small-cpu", "lejepa"),
        ("cxr-ijepa-vitb16", "ijepa"),
        ("cxr-ijepa-vitl16", "ijepa"),
        ("cxr-lejepa-vitb16", "lejepa"),
        ("cxr-jepa-sigreg-vitb16", "jepa-sigreg"),
    ],
)
def test_recipes_load(name, objective):
    cfg = load_config(PretrainConfig, files=[ROOT / "recipes" / f"{name}.yaml"])
    assert cfg.objective == objective and not cfg.augment.hflip
    assert cfg.model.image_size % cfg.model.patch_size == 0


def test_runtime_is_not_science():
    a = load_config(PretrainConfig, overrides=["runtime.compile=true", "runtime.workers=3"])
    b = PretrainConfig()
    assert a.science() == b.science() and "runtime" not in a.science()
    c = load_config(PretrainConfig, overrides=["optim.lr=1e-4"])
    assert c.science() != b.science()


def test_bad_settings_are_one_sentence():
    with pytest.raises(ConfigError, match="objective"):
        load_config(PretrainConfig, overrides=["objective=mae"])
    with pytest.raises(ConfigError, match="Did you mean 'batch_size'"):
        load_config(PretrainConfig, overrides=["train.batchsize=3"])
    with pytest.raises(ConfigError, match="crop_scale"):
        load_config(PretrainConfig, overrides=["augment.crop_scale=[0.5, 2]"])
    with pytest.raises(ConfigError, match="pos_embed"):
        load_config(PretrainConfig, overrides=["model.pos_embed=rope"])


def test_ultrasound_cpu_recipe_is_the_cxr_twin():
    """us-small-cpu.yaml = cxr-small-cpu.yaml (same encoder, views, optimiser, steps: same cost) + hflip and
    speckle noise on the views."""
    cxr = load_config(PretrainConfig, files=[ROOT / "recipes" / "cxr-small-cpu.yaml"]).science()
    us = load_config(PretrainConfig, files=[ROOT / "recipes" / "us-small-cpu.yaml"]).science()
    assert us["augment"].pop("hflip") is True and cxr["augment"].pop("hflip") is False
    us_noise = us["lejepa"]["views"]["intensity"].pop("noise")
    assert us_noise == "speckle" and cxr["lejepa"]["views"]["intensity"].pop("noise") == "gaussian"
    assert us == cxr
