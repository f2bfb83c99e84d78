"""The memory estimate (issue 16, item 12): it refuses what cannot fit, names a setting that fits, and never
refuses a shipped recipe on the machines it is sized for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cxrjepa.core.memory as memory
from cxrjepa.cli.app import app
from cxrjepa.core.config import load_config
from cxrjepa.core.errors import EXIT_USAGE
from cxrjepa.core.memory import MARGIN, MemoryCheckError, cgroup_available
from cxrjepa.pipeline.runner import resolve_stage
from cxrjepa.pipeline.spec import load_pipeline
from cxrjepa.pipeline.stages import STAGES
from cxrjepa.pretrain.config import PretrainConfig
from cxrjepa.pretrain.memory import check_pretrain_memory, encoder_params, estimate_pretrain

ROOT = Path(__file__).resolve().parents[2]
GB = 2**30
runner = CliRunner()


def test_parameter_counts_match_the_models():
    from cxrjepa.models.predictor import Predictor
    from cxrjepa.models.vit import EncoderConfig, create_vit

    for cfg in (
        EncoderConfig(size="tiny", patch_size=8, image_size=64, layers=4),
        EncoderConfig(size="base", patch_size=16, image_size=224),
        EncoderConfig(size="small", patch_size=16, image_size=224, frames=16, tubelet=2),
    ):
        real = sum(p.numel() for p in create_vit(cfg).parameters())
        assert abs(encoder_params(cfg) - real) / real < 0.01, (cfg, encoder_params(cfg), real)
    cfg = load_config(PretrainConfig)  # the I-JEPA predictor counted inside the trained parameters
    est = estimate_pretrain(cfg, device="cuda", world=1, procs_per_node=1, frames=100)
    pred = Predictor(cfg.ijepa.predictor, cfg.model.embed_dim)
    real = sum(p.numel() for p in pred.parameters()) + sum(p.numel() for p in create_vit(cfg.model).parameters())
    assert abs(est.parts["trained parameters"] / 16 - real) / real < 0.01


def _recipes():
    """(name, pretrain config, device, processes, teacher) of every recipe in recipes/ and every pretrain stage of
    the shipped pipelines."""
    out = []
    for name in sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml")):
        gpus = 0 if name.endswith("-cpu") else 8 if name.endswith("-vitl16") else 1
        out.append((name, load_config(PretrainConfig, files=[ROOT / "recipes" / f"{name}.yaml"]), gpus, None))
    for name in ("quickstart", "us-salt-cpu", "cxr-salt", "us-salt-vitb16", "us-video-ijepa"):
        pipe = load_pipeline(ROOT / "pipelines" / f"{name}.yaml", known_stages=list(STAGES))
        for spec in pipe.stages:
            if spec.stage == "pretrain":
                _, cfg, _, options = resolve_stage(pipe, spec, {})
                teacher = "random:tiny/8" if options.get("gpus") == 0 else "random:base"
                out.append((f"{name}/{spec.id}", cfg, 0 if options.get("gpus") == 0 else 1, teacher))
    return out


@pytest.mark.parametrize("name,cfg,gpus,teacher", _recipes(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_shipped_recipe_is_refused_where_it_is_meant_to_run(name, cfg, gpus, teacher):
    if gpus == 0:  # CPU recipes: a laptop or this 2-core, 24 GB machine
        est = check_pretrain_memory(
            cfg, device="cpu", world=1, procs_per_node=1, frames=5000, teacher=teacher, available=8 * GB
        )
        assert est.total < 4 * GB, est.as_dict()
    else:  # GPU recipes: one 80 GB H100 per process (79 GB free), at the GPU count the recipe names
        check_pretrain_memory(
            cfg, device="cuda", world=gpus, procs_per_node=gpus, frames=200_000, teacher=teacher, available=79 * GB
        )


def test_the_issues_call_is_refused_with_a_setting_that_fits():
    cfg = load_config(PretrainConfig, flags={"objective": "salt"})  # no config: ViT-B/16, 224 px, batch 256
    with pytest.raises(MemoryCheckError) as exc:
        check_pretrain_memory(
            cfg, device="cpu", world=1, procs_per_node=1, frames=5000, teacher="random:base", available=22 * GB
        )
    assert exc.value.exit_code == EXIT_USAGE
    msg = exc.value.message
    assert msg.startswith("Pretraining base ViT/16 at 224 px with 256 images per step on the CPU needs about")
    accum = int(msg.split("runtime.grad_accum=")[1].split()[0])
    fits = estimate_pretrain(
        cfg, device="cpu", world=1, procs_per_node=1, frames=5000, teacher="random:base", grad_accum=accum
    )
    assert fits.total <= MARGIN * 22 * GB
    half = estimate_pretrain(
        cfg, device="cpu", world=1, procs_per_node=1, frames=5000, teacher="random:base", grad_accum=accum // 2
    )
    assert half.total > MARGIN * 22 * GB  # the smallest accumulation that fits
    # on one 80 GB GPU in bf16 the same run fits
    check_pretrain_memory(
        cfg, device="cuda", world=1, procs_per_node=1, frames=5000, teacher="random:base", available=79 * GB
    )


def test_the_estimate_grows_with_batch_resolution_and_model_and_shrinks_with_processes():
    def total(**sets):
        cfg = load_config(PretrainConfig, overrides=[f"{k}={v}" for k, v in sets.items()])
        return estimate_pretrain(
            cfg, device="cpu", world=int(sets.get("world", 1)) if False else 1, procs_per_node=1, frames=1000
        ).total

    base = total()
    assert total(**{"train.batch_size": 512}) > 1.8 * base - GB
    assert total(**{"model.image_size": 320}) > 1.5 * base
    assert total(**{"model.size": "large"}) > 1.5 * base
    assert total(**{"runtime.activation_checkpointing": "true"}) < 0.5 * base
    cfg = load_config(PretrainConfig)
    one = estimate_pretrain(cfg, device="cuda", world=1, procs_per_node=1, frames=1000).total
    four = estimate_pretrain(cfg, device="cuda", world=4, procs_per_node=4, frames=1000).total
    assert four < 0.5 * one  # a quarter of the batch per GPU


def test_sigreg_objectives_count_their_encoder_passes_and_keep_nothing_frozen():
    """LeJEPA: the encoder on V global + W local views (defaults: 2 + 6 x 1/4 = 3.5 full-size passes per image)
    and a projector; JEPA-SIGReg: I-JEPA's student plus a trained full-image pass. Neither has an EMA copy."""
    from cxrjepa.pretrain.memory import FULL_PASS_BYTES, projector_params

    def est(*sets):
        cfg = load_config(PretrainConfig, overrides=["model.size=tiny", "train.batch_size=16", *sets])
        return estimate_pretrain(cfg, device="cpu", world=1, procs_per_node=1, frames=48), cfg

    full_pass = FULL_PASS_BYTES["cpu"] * 16 * 196 * 192 * 12  # micro-batch x tokens x width x blocks (ViT-T/16, 224 px)
    le, cfg = est("objective=lejepa")
    assert le.parts["full-image passes"] == pytest.approx(3.5 * full_pass, rel=1e-6) and le.parts["activations"] == 0
    assert le.parts["frozen parameters"] == le.parts["frozen forward"] == 0
    assert le.parts["trained parameters"] == 16 * (encoder_params(cfg.model) + projector_params(cfg))
    assert le.parts["projector and SIGReg"] > 0
    more, _ = est("objective=lejepa", "lejepa.views.local_views=10")
    assert more.parts["full-image passes"] == pytest.approx(4.5 * full_pass, rel=1e-6) and more.total > le.total
    from cxrjepa.models.projector import Projector

    real = sum(p.numel() for p in Projector(cfg.lejepa.projector, cfg.model.embed_dim).parameters())
    assert projector_params(cfg) == real
    js, _ = est("objective=jepa-sigreg")
    ij, _ = est("objective=ijepa")
    assert js.parts["full-image passes"] == pytest.approx(full_pass, rel=1e-6)
    assert js.parts["activations"] == ij.parts["activations"]  # the context encoder and predictor, as I-JEPA's
    assert js.parts["frozen parameters"] == js.parts["frozen forward"] == 0 < ij.parts["frozen parameters"]
    tokens, _ = est("objective=jepa-sigreg", "jepa_sigreg.sigreg_on=tokens")  # SIGReg over 196x more rows
    assert tokens.parts["projector and SIGReg"] == pytest.approx(196 * js.parts["projector and SIGReg"])


def test_cgroup_limits_lower_what_is_available(tmp_path):
    (tmp_path / "memory.max").write_text(f"{4 * GB}\n")
    (tmp_path / "memory.current").write_text(f"{3 * GB}\n")
    (tmp_path / "memory.stat").write_text(f"anon 100\ninactive_file {GB // 2}\n")
    assert cgroup_available(tmp_path) == GB + GB // 2
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_available(tmp_path) is None


@pytest.fixture
def dataset(tmp_path) -> Path:
    from cxrjepa.data.store import write_dataset

    path = tmp_path / "ds"
    # 1024 rows: units of 256 rows, so a forward pass can hold 256 images (it never crosses a unit)
    write_dataset(path, np.random.default_rng(0).integers(0, 255, (1024, 16, 16), dtype=np.uint8))
    return path


def test_embed_refuses_a_batch_that_cannot_fit_and_names_one_that_does(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu", index=0: 3 * GB)
    import cxrjepa.embed.api as embed_api

    monkeypatch.setattr(embed_api.store, "create_arrays", lambda *a, **k: pytest.fail("wrote arrays before the check"))
    res = runner.invoke(
        app,
        [
            "embed",
            "--encoder",
            "random:large",
            "--image-size",
            "224",
            "--data",
            str(dataset),
            "--out",
            str(tmp_path / "emb"),
            "--device",
            "cpu",
            "--batch-size",
            "256",
        ],
    )
    assert res.exit_code == EXIT_USAGE, res.stderr
    err = res.stderr.strip().splitlines()[-1]
    assert "Embedding 256 images of 224 px per forward pass needs about" in err and "--no-memory-check" in err
    size = int(err.split("--batch-size ")[1].split()[0])
    assert 1 <= size < 256
    from cxrjepa.core.memory import embed_estimate

    kw = {
        "device": "cpu",
        "image_size": 224,
        "tokens": 196,
        "width": 1024,
        "depth": 1,
        "params": 303_000_000,
        "out_values_per_sample": 1024,
        "unit_rows": 256,
    }
    assert embed_estimate(batch=size, **kw).total <= MARGIN * 3 * GB < embed_estimate(batch=2 * size, **kw).total


def test_probe_refuses_features_that_cannot_be_held(tmp_path, monkeypatch):
    from cxrjepa.core.memory import check_probe_memory

    with pytest.raises(MemoryCheckError, match="--features features or a machine with more memory"):
        check_probe_memory(
            rows=2_000_000,
            values_per_row=4 * 1024,
            patch_values_per_row=0,
            features="features_last4",
            available=16 * GB,
        )
    check_probe_memory(rows=200_000, values_per_row=768, patch_values_per_row=0, features="features", available=4 * GB)
    check_probe_memory(
        rows=2_000_000,
        values_per_row=4 * 1024,
        patch_values_per_row=0,
        features="features_last4",
        available=16 * GB,
        enabled=False,
    )
