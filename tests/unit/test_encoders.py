"""Encoders from every source give patch tokens on a grid and pooled features that match the library's own;
new kinds plug into the registry."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import timm
import torch

from cxrjepa.core.errors import UsageError
from cxrjepa.encoders import load_feature_encoder, parse_encoder_spec
from cxrjepa.models.export import Normalization, export_encoder, load_encoder
from cxrjepa.models.vit import EncoderConfig, create_vit


def _x(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, size, size), generator=g)


def test_cxrjepa_export_matches_vit_encoder(tmp_path):
    cfg = EncoderConfig(size="tiny", image_size=32, patch_size=16)
    export_encoder(create_vit(cfg), cfg, tmp_path / "enc", Normalization(mean=0.4, std=0.2))
    enc = load_feature_encoder(tmp_path / "enc")
    ref = load_encoder(tmp_path / "enc")
    x = _x()
    with torch.no_grad():
        want = ref.model(ref.normalization.apply(x * 255.0))
        prepared = enc.prepare(x)
        out = enc.run(prepared, n_layers=4)
    assert enc.source == "cxrjepa" and enc.grid() == (2, 2) and not enc.has_cls
    assert out.tokens.shape == (2, 4, 192) and len(out.layers) == 4 and out.prefix is None
    torch.testing.assert_close(out.tokens.mean(1), want)
    torch.testing.assert_close(enc(prepared), want)
    assert enc.fingerprint == ref.fingerprint


def test_prepare_resizes_repeats_channels_and_normalizes(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    enc = load_feature_encoder("timm:vit_tiny_patch16_224", weights=tmp_path / "w.safetensors")
    assert enc.preprocess.in_chans == 3 and enc.image_size == 224
    x = torch.full((1, 1, 64, 64), 0.75)
    p = enc.prepare(x)
    assert p.shape == (1, 3, 224, 224)
    torch.testing.assert_close(
        p[0, :, 0, 0], (torch.tensor([0.75] * 3) - torch.tensor(enc.preprocess.mean)) / torch.tensor(enc.preprocess.std)
    )


def test_timm_model_with_local_weights(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    enc = load_feature_encoder("timm:vit_tiny_patch16_224", weights=tmp_path / "w.pth")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model.forward_features(x)
        out = enc.run(x, n_layers=2)
    assert enc.source == "timm" and enc.has_cls and out.prefix.shape == (2, 1, 192)
    torch.testing.assert_close(out.tokens, want[:, 1:])
    torch.testing.assert_close(out.prefix, want[:, :1])
    assert len(out.layers) == 2
    with pytest.raises(UsageError, match="weights"):
        load_feature_encoder("timm:vit_tiny_patch16_224")
    with pytest.raises(UsageError, match="not a timm model"):
        load_feature_encoder("timm:no_such_model", weights=tmp_path / "w.pth")


def test_timm_cnn_gives_tokens_on_its_feature_grid(tmp_path):
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    safetensors.torch.save_file(model.state_dict(), str(tmp_path / "r.safetensors"))
    enc = load_feature_encoder("timm:resnet18", weights=tmp_path / "r.safetensors")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tokens = enc.tokens(x)
    assert tokens.shape == (1, 4, 512) and enc.patch_size == 32


@pytest.mark.parametrize("kind", ["vit", "dinov2-registers"])
def test_hugging_face_folder(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    if kind == "vit":
        cfg = transformers.ViTConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
        model = transformers.ViTModel(cfg, add_pooling_layer=False)
        n_prefix = 1
    else:
        cfg = transformers.Dinov2WithRegistersConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            mlp_ratio=2,
            image_size=32,
            patch_size=8,
            num_register_tokens=4,
        )
        model = transformers.Dinov2WithRegistersModel(cfg)
        n_prefix = 5
    model.eval().save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(
        '{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "crop_size": {"height": 32, "width": 32}}'
    )
    assert parse_encoder_spec(tmp_path / "hf").source == "hf"
    enc = load_feature_encoder(tmp_path / "hf")
    assert enc.source == "hf" and enc.num_prefix_tokens == n_prefix and enc.image_size == 32 and enc.grid() == (4, 4)
    x = _x(2, 48)
    with torch.no_grad():
        prepared = enc.prepare(x)
        ref = model(pixel_values=prepared, output_hidden_states=True)
        out = enc.run(prepared, n_layers=2)
    assert prepared.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out.tokens, ref.last_hidden_state[:, n_prefix:])
    torch.testing.assert_close(out.prefix, ref.last_hidden_state[:, :n_prefix])
    torch.testing.assert_close(out.layers[0], model.layernorm(ref.hidden_states[-2])[:, n_prefix:])


def test_hf_folder_embeds_end_to_end(tmp_path):
    transformers = pytest.importorskip("transformers")
    from cxrjepa.data.store import write_dataset
    from cxrjepa.embed.api import EmbedConfig, run_embed
    from cxrjepa.embed.store import Embeddings

    cfg = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    transformers.ViTModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path / "hf")
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32), dtype=np.uint8)
    write_dataset(tmp_path / "ds", images)
    art = run_embed(tmp_path / "emb", EmbedConfig(pooling="cls"), encoder=f"hf:{tmp_path / 'hf'}", data=tmp_path / "ds")
    feats = Embeddings.open(art.path).array()
    assert feats.shape == (6, 32) and np.isfinite(feats).all()
    assert art.manifest["contents"]["encoder"]["hf_class"] == "ViTModel"


def test_unknown_specs_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="random:SIZE"):
        load_feature_encoder("random:gigantic")
    with pytest.raises(UsageError, match="--weights goes with"):
        parse_encoder_spec(tmp_path, weights=tmp_path / "w.pth")
    enc = load_feature_encoder("random:small/8", image_size=32)
    assert enc.patch_size == 8 and enc.embed_dim == 384 and enc.grid() == (4, 4)


def test_partial_run_is_refused(tmp_path):
    from cxrjepa.core.artifact import begin
    from cxrjepa.core.errors import ArtifactError

    cfg = EncoderConfig(size="tiny", image_size=32, patch_size=16)
    begin(tmp_path / "run", "run", {"x": 1})  # a pretraining run still in progress
    export_encoder(create_vit(cfg), cfg, tmp_path / "run" / "encoder", Normalization())
    with pytest.raises(ArtifactError, match="incomplete"):
        load_feature_encoder(tmp_path / "run")


def test_random_twin_of_a_run_is_not_recorded_as_that_run(tmp_path):
    """random:RUN borrows the run's architecture only: its input must not claim to be the run (the report and
    lineage readers would otherwise follow it and call the run 'changed')."""
    from cxrjepa.core.artifact import begin
    from cxrjepa.data.store import write_dataset
    from cxrjepa.embed.api import embed_input_refs

    run = tmp_path / "run"
    b = begin(run, "run", {"objective": "ijepa"})
    cfg = EncoderConfig(size="tiny", image_size=32, patch_size=8)
    export_encoder(create_vit(cfg), cfg, run / "encoder", Normalization())
    b.finish()
    write_dataset(tmp_path / "ds", np.zeros((2, 32, 32), np.uint8))
    own = {r["name"]: r for r in embed_input_refs(run, tmp_path / "ds")}
    twin = {r["name"]: r for r in embed_input_refs(f"random:{run}", tmp_path / "ds")}
    assert own["encoder"]["kind"] == "run"
    assert twin["encoder"]["kind"] == "random-encoder"
    assert twin["encoder"]["fingerprint"] != own["encoder"]["fingerprint"]


def test_pixel_encoder_gives_the_normalised_downsampled_image(tmp_path):
    from cxrjepa.data.store import write_dataset
    from cxrjepa.embed.api import EmbedConfig, run_embed
    from cxrjepa.embed.store import Embeddings

    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32), dtype=np.uint8)
    write_dataset(tmp_path / "ds", images)
    art = run_embed(
        tmp_path / "emb", EmbedConfig(last4=True, patch_tokens=True), encoder="pixels:8", data=tmp_path / "ds"
    )
    emb = Embeddings.open(art.path)
    norm = art.manifest["contents"]["encoder"]
    small = images.reshape(5, 8, 4, 8, 4).mean(axis=(2, 4)) / 255.0  # area downsampling by 4
    want = ((small - norm["mean"][0]) / norm["std"][0]).reshape(5, 64)
    np.testing.assert_allclose(emb.array(), want, atol=1e-4)
    assert emb.array("features_last4").shape == (5, 256)
    assert emb.array("patch_tokens").shape == (5, 1, 64)
    with pytest.raises(UsageError, match="pixels:SIZE"):
        load_feature_encoder("pixels:big")


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as shipped, restored after the test (kinds registered in a test do not leak)."""
    from cxrjepa.encoders import registry

    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    return registry


def test_a_registered_kind_is_parsed_loaded_and_recorded_by_its_prefix(scratch_registry, tmp_path):
    from cxrjepa.encoders import FeatureEncoder, Preprocess, encoder_input_ref, register_encoder
    from cxrjepa.encoders.pixels import PixelTokens

    seen = {}

    @register_encoder("const", prefix="const:", usage="const:VALUE")
    def load_const(spec, options):
        seen.update(target=spec.target, seed=options.seed, norm=options.normalization)
        return FeatureEncoder(
            PixelTokens(),
            source="const",
            spec=spec.text,
            preprocess=Preprocess(4, 1, (0.0,), (1.0,)),
            embed_dim=16,
            patch_size=4,
            num_prefix_tokens=0,
            fingerprint="f" * 64,
        )

    sp = parse_encoder_spec("const:7", weights=None)
    assert (sp.source, sp.target, sp.path, sp.absolute()) == ("const", "7", None, "const:7")
    enc = load_feature_encoder("const:7", seed=3, normalization={"mean": 0.1})
    assert seen == {"target": "7", "seed": 3, "norm": {"mean": 0.1}}
    assert enc.source == "const" and enc(torch.ones(2, 1, 4, 4)).shape == (2, 16)
    ref = encoder_input_ref("encoder", "const:7")
    assert ref["kind"] == "spec" and ref["path"] == "const:7"
    # the shipped kinds are untouched, and a prefix cannot be taken twice
    assert parse_encoder_spec("pixels:8").source == "pixels"
    with pytest.raises(ValueError, match="already taken"):
        register_encoder("other", prefix="const:")(load_const)


def test_a_detected_folder_kind_and_a_weights_kind(scratch_registry, tmp_path):
    from cxrjepa.encoders import register_encoder

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "MODEL.txt").write_text("x")
    register_encoder("txt", detect=lambda p: (p / "MODEL.txt").is_file(), target="path")(lambda spec, options: None)
    register_encoder("onnxw", prefix="onnxw:", weights=True, usage="onnxw:NAME")(lambda spec, options: None)
    sp = parse_encoder_spec(folder)
    assert sp.source == "txt" and sp.path == folder and sp.absolute() == str(folder.resolve())
    assert parse_encoder_spec(tmp_path).source == "cxrjepa"  # anything else is a run or export folder
    w = parse_encoder_spec("onnxw:net", weights=tmp_path / "w.bin")
    assert w.weights == tmp_path / "w.bin" and w.path == tmp_path / "w.bin"
    with pytest.raises(UsageError, match=r"--weights goes with --encoder timm:NAME or --encoder onnxw:NAME\."):
        parse_encoder_spec(folder, weights=tmp_path / "w.bin")


def test_recorded_spec_reloads_the_encoder_an_embeddings_artifact_was_made_with(tmp_path):
    from cxrjepa.data.store import DatasetArtifact, write_dataset
    from cxrjepa.embed.api import EmbedConfig, load_encoder_for, run_embed
    from cxrjepa.embed.store import Embeddings
    from cxrjepa.encoders import recorded_spec

    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    write_dataset(tmp_path / "ds", images)
    art = run_embed(tmp_path / "emb", EmbedConfig(seed=5), encoder="random:tiny/8", data=tmp_path / "ds")
    emb = Embeddings.open(art.path)
    spec = recorded_spec(emb.encoder)
    assert spec.text == "random:tiny/8" and spec.source == "random"
    ds = DatasetArtifact.open(tmp_path / "ds")
    enc = load_encoder_for(spec, EmbedConfig(seed=5), ds)
    assert enc.fingerprint == emb.encoder["fingerprint"]
    with torch.no_grad():
        feats = enc(enc.prepare(torch.from_numpy(images).float().unsqueeze(1) / 255.0)).numpy()
    np.testing.assert_allclose(feats, emb.array(), atol=1e-5)
