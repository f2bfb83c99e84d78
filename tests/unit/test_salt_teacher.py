"""SALT's frozen teacher: every source gives the original module's features, on the student's token grid."""

from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

from cxrjepa.core.errors import ConfigError, UsageError
from cxrjepa.models.export import Normalization, export_encoder
from cxrjepa.models.vit import EncoderConfig, create_vit
from cxrjepa.pretrain.teacher import Teacher, TeacherConfig, resample_tokens


def _x(n=2, size=32, seed=0, frames=None):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1, size, size) if frames is None else (n, 1, frames, size, size)
    return torch.rand(shape, generator=g)


def _hf_vit(tmp_path, patch=8, image=32):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image,
        patch_size=patch,
    )
    model = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(
        f'{{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "crop_size": {{"height": {image}, "width": {image}}}}}'
    )
    return model


def _hf_reference(model, x01, size):
    x = (
        F.interpolate(x01, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if x01.shape[-1] != size
        else x01
    )
    with torch.no_grad():
        out = model(pixel_values=(x.expand(-1, 3, -1, -1) - 0.5) / 0.25, interpolate_pos_encoding=True)
    return out.last_hidden_state[:, 1:]


def test_hugging_face_folder_teacher_gives_the_modules_features(tmp_path):
    model = _hf_vit(tmp_path)
    student = EncoderConfig(size="tiny", patch_size=8, image_size=32)
    teacher = Teacher(tmp_path / "hf", student=student)
    x = _x()
    got = teacher(x, student.token_grid((32, 32)))
    assert teacher.source == "hf" and got.shape == (2, 16, 32)
    torch.testing.assert_close(got, _hf_reference(model, x, 32))
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not got.requires_grad


def test_timm_weights_file_teacher_gives_the_modules_features(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    student = EncoderConfig(size="tiny", patch_size=16, image_size=64)
    teacher = Teacher("timm:test_vit", weights=tmp_path / "w.safetensors", student=student)
    x = _x(size=64)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model.forward_features((x.expand(-1, 3, -1, -1) - mean) / std)[:, model.num_prefix_tokens :]
    got = teacher(x, student.token_grid((64, 64)))
    assert teacher.source == "timm" and teacher.input_size((4, 4)) == 64 and got.shape == (2, 16, model.embed_dim)
    torch.testing.assert_close(got, want)


def test_cxrjepa_export_teacher_uses_its_own_normalization(tmp_path):
    cfg = EncoderConfig(size="tiny", patch_size=8, image_size=32, layers=2)
    torch.manual_seed(3)
    vit = create_vit(cfg).eval()
    export_encoder(vit, cfg, tmp_path / "enc", Normalization(divide_by=255.0, mean=0.3, std=0.2))
    teacher = Teacher(tmp_path / "enc", student=cfg)
    x = _x()
    with torch.no_grad():
        want = vit.forward_features((x - 0.3) / 0.2)
    torch.testing.assert_close(teacher(x, (4, 4)), want)


def test_grid_mismatch_match_runs_the_teacher_at_the_students_grid(tmp_path):
    model = _hf_vit(tmp_path, patch=4, image=32)  # native grid 8 x 8
    student = EncoderConfig(size="tiny", patch_size=8, image_size=32)  # grid 4 x 4
    teacher = Teacher(tmp_path / "hf", student=student, config=TeacherConfig(grid="match"))
    x = _x()
    got = teacher(x, (4, 4))
    assert teacher.input_size((4, 4)) == 16 and got.shape == (2, 16, 32)
    torch.testing.assert_close(got, _hf_reference(model, x, 16))
    assert teacher.describe()["teacher_grid"] == [4, 4] and teacher.describe()["student_grid"] == [4, 4]


def test_grid_mismatch_resample_averages_the_finer_teacher_map(tmp_path):
    model = _hf_vit(tmp_path, patch=4, image=32)
    student = EncoderConfig(size="tiny", patch_size=8, image_size=32)
    teacher = Teacher(tmp_path / "hf", student=student, config=TeacherConfig(grid="resample"))
    x = _x()
    got = teacher(x, (4, 4))
    fine = _hf_reference(model, x, 32).transpose(1, 2).reshape(2, 32, 8, 8)
    want = F.avg_pool2d(fine, 2).flatten(2).transpose(1, 2)  # each student token = mean of 2 x 2 teacher tokens
    assert teacher.input_size((4, 4)) == 32 and teacher.describe()["teacher_grid"] == [8, 8]
    torch.testing.assert_close(got, want)
    # a coarser teacher map is upsampled bilinearly to the student's grid
    coarse = torch.randn(1, 4, 3)
    up = resample_tokens(coarse, (2, 2), (4, 4))
    assert up.shape == (1, 16, 3)
    torch.testing.assert_close(up.mean(1), coarse.mean(1), atol=1e-5, rtol=0)


def test_image_teacher_on_clips_averages_each_tubelets_frames(tmp_path):
    model = _hf_vit(tmp_path)
    student = EncoderConfig(size="tiny", patch_size=8, image_size=32, frames=4, tubelet=2)
    teacher = Teacher(tmp_path / "hf", student=student)
    clips = _x(n=2, frames=4)
    got = teacher(clips, student.token_grid((4, 32, 32)))
    per_frame = torch.stack([_hf_reference(model, clips[:, :, t], 32) for t in range(4)], dim=1)  # (B, T, L, D)
    want = per_frame.reshape(2, 2, 2, 16, 32).mean(2).reshape(2, 32, 32)
    assert got.shape == (2, 2 * 16, 32)
    torch.testing.assert_close(got, want)


def test_teacher_refusals(tmp_path):
    clip = EncoderConfig(size="tiny", patch_size=8, image_size=32, layers=1, frames=4, tubelet=2)
    export_encoder(create_vit(clip), clip, tmp_path / "clip", Normalization())
    with pytest.raises(UsageError, match="clip encoder but the student is an image encoder"):
        Teacher(tmp_path / "clip", student=EncoderConfig(size="tiny", patch_size=8, image_size=32))
    with pytest.raises(UsageError, match="tubelets of 2 frames and the student of 4"):
        Teacher(tmp_path / "clip", student=EncoderConfig(size="tiny", patch_size=8, image_size=32, frames=8, tubelet=4))
    with pytest.raises(ConfigError):
        TeacherConfig(size=2).validate()


@pytest.mark.gpu
def test_teacher_runs_in_bf16_on_cuda(tmp_path):
    _hf_vit(tmp_path)
    student = EncoderConfig(size="tiny", patch_size=8, image_size=32)
    teacher = Teacher(tmp_path / "hf", student=student).cuda().to_precision(torch.bfloat16)
    out = teacher(_x().cuda(), (4, 4))
    assert out.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in teacher.parameters())
