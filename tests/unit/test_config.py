from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from cxrjepa.core.config import dump_yaml, load_config, overrides_to_dict, to_dict
from cxrjepa.core.errors import EXIT_USAGE, ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float | None = None


@dataclass
class Cfg:
    size: Literal["tiny", "small"] = "tiny"
    steps: int = 10
    flip: bool = False
    fractions: list[float] = field(default_factory=lambda: [0.1, 1.0])
    optim: Optim = field(default_factory=Optim)


def test_defaults():
    cfg = load_config(Cfg)
    assert cfg == Cfg()


def test_precedence_defaults_files_flags_sets(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("steps: 20\noptim: {lr: 0.01, clip: 1.0}\n")
    b.write_text("steps: 30\n")
    cfg = load_config(Cfg, files=[a, b])
    assert cfg.steps == 30  # later file wins
    assert cfg.optim.lr == 0.01 and cfg.optim.clip == 1.0  # nested merge keeps a's keys
    cfg = load_config(Cfg, files=[a, b], flags={"steps": 40, "flip": None})
    assert cfg.steps == 40 and cfg.flip is False  # flags over files; None flags ignored
    cfg = load_config(Cfg, files=[a, b], flags={"steps": 40}, overrides=["steps=50", "optim.lr=3e-4"])
    assert cfg.steps == 50 and cfg.optim.lr == pytest.approx(3e-4)  # --set wins over everything
    cfg = load_config(Cfg, layers=[{"steps": 5}], files=[b])
    assert cfg.steps == 30  # code layers (pipeline params) sit below files


def test_types_are_checked_and_converted():
    cfg = load_config(Cfg, overrides=["fractions=0.01,0.5", "flip=yes", "optim.betas=[0.8, 0.9]", "optim.clip=null"])
    assert cfg.fractions == [0.01, 0.5]
    assert cfg.flip is True
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.optim.clip is None
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(Cfg, overrides=["steps=ten"])
    with pytest.raises(ConfigError, match="must be one of tiny, small"):
        load_config(Cfg, overrides=["size=huge"])


def test_unknown_keys_suggest(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(Cfg, overrides=["optim.lrr=1"])
    assert "Unknown setting 'optim.lrr'" in str(exc.value) and "Did you mean 'lr'" in str(exc.value)
    assert exc.value.exit_code == EXIT_USAGE
    f = tmp_path / "c.yaml"
    f.write_text("step: 3\n")
    with pytest.raises(ConfigError, match="Did you mean 'steps'"):
        load_config(Cfg, files=[f])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, files=[tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Cfg, files=[bad])
    with pytest.raises(ConfigError, match="key=value"):
        overrides_to_dict(["steps"])


def test_round_trip_yaml(tmp_path):
    cfg = load_config(Cfg, overrides=["steps=7", "optim.clip=2"])
    f = tmp_path / "resolved.yaml"
    f.write_text(dump_yaml(cfg))
    again = load_config(Cfg, files=[f])
    assert again == cfg
    assert to_dict(again)["optim"]["betas"] == [0.9, 0.95]
