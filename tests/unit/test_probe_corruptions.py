"""Corruptions grow with severity, stay in [0, 1] and are repeatable."""

from __future__ import annotations

import pytest
import torch

from cxrjepa.core.errors import UsageError
from cxrjepa.probe.corruptions import CORRUPTIONS, corruption


def _img():
    g = torch.Generator().manual_seed(0)
    return torch.rand((2, 1, 64, 64), generator=g) * 0.6 + 0.2


def _hf_energy(x):
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean().item()


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_grows_with_severity_and_stays_in_range(name):
    x = _img()
    outs = [corruption(name, s, seed=0)(x.clone()) for s in (1, 2, 3)]
    for o in outs:
        assert o.shape == x.shape and o.min() >= 0 and o.max() <= 1
    if name == "blur":
        e = [_hf_energy(o) for o in outs]
        assert _hf_energy(x) > e[0] > e[1] > e[2]
    elif name == "contrast":
        s = [o.std().item() for o in outs]
        assert x.std().item() > s[0] > s[1] > s[2]
        assert outs[0].std().item() == pytest.approx(0.4 * x.std().item(), rel=0.05)
    else:
        d = [(o - x).abs().mean().item() for o in outs]
        assert 0 < d[0] < d[1] < d[2]


def test_noise_is_seeded():
    x = _img()
    a = corruption("speckle", 2, seed=3)(x.clone())
    b = corruption("speckle", 2, seed=3)(x.clone())
    c = corruption("speckle", 2, seed=4)(x.clone())
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_corruption_or_severity():
    with pytest.raises(UsageError, match="Unknown corruption"):
        corruption("fog", 1)
    with pytest.raises(UsageError, match="severity"):
        corruption("blur", 4)
