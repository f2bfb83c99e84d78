"""End to end: pixel teacher -> SALT student (frozen teacher, model selection, cache), clips, pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml

from cxrjepa import runtime
from cxrjepa.core.artifact import open_artifact, plan_artifact, read_manifest
from cxrjepa.core.config import load_config
from cxrjepa.core.errors import ConfigError, UsageError
from cxrjepa.data.store import DatasetArtifact, default_meta, write_dataset
from cxrjepa.models.export import load_encoder
from cxrjepa.pipeline.runner import run_pipeline
from cxrjepa.pipeline.stages import STAGES
from cxrjepa.pretrain import PretrainConfig, PretrainOptions, run_pretrain
from cxrjepa.pretrain.objectives.base import ObjectiveInputs
from cxrjepa.pretrain.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "model": {"size": "tiny", "patch_size": 8, "image_size": 32, "layers": 2},
    "pixel": {"decoder": {"depth": 1, "width": 32, "heads": 2}, "masks": {"min_context": 4}},
    "salt": {
        "predictor": {"depth": 1, "width": 32, "heads": 2},
        "masks": {"min_context": 4},
        "select_every": 2,
        "holdout": 0.1,
    },
    "ijepa": {"predictor": {"depth": 1, "width": 32, "heads": 2}, "masks": {"min_context": 4}},
    "train": {"batch_size": 8, "steps": 6},
    "runtime": {
        "workers": 0,
        "log_every": 2,
        "monitor_every": 3,
        "checkpoint_every": 2,
        "keep_last": 2,
        "monitor_batch": 16,
    },
}
CLIP = {"model": {"frames": 4, "tubelet": 2}, "clips": {"stride": 2}, "train": {"batch_size": 4, "steps": 4}}
WHOLE = ["augment.crop_scale=[1,1]", "augment.crop_ratio=[1,1]"]


def config(*sets: str, clip: bool = False) -> PretrainConfig:
    return load_config(PretrainConfig, layers=[TINY] + ([CLIP] if clip else []), overrides=list(sets))


def blobs(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        im = 0.2 + 0.1 * rng.random()
        for _ in range(3):
            cx, cy, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.05, 0.2)]
            im = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < r * r, rng.uniform(0.5, 1.0), im)
        out[i] = np.clip((im + rng.normal(0, 0.03, (size, size))) * 255, 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    """A dataset of 20 patients x 2 images and a briefly trained pixel teacher."""
    root = tmp_path_factory.mktemp("salt")
    meta = default_meta(40)
    meta["patient_key"] = [f"p{i // 2:02d}" for i in range(40)]
    write_dataset(root / "data", blobs(40, 40), meta)
    teacher = run_pretrain(
        root / "teacher",
        config("objective=pixel", "train.steps=4"),
        data=root / "data",
        options=PretrainOptions(gpus=0),
    )
    return {"root": root, "data": root / "data", "teacher": teacher.path}


def test_pixel_teacher_run_exports_an_encoder(chain):
    art = open_artifact(chain["teacher"], "run")
    assert art.contents["objective"] == "pixel" and art.counts["steps"] == 4
    assert sorted(p.name for p in (chain["teacher"] / "checkpoints" / "step-000004").glob("*.safetensors")) == [
        "decoder.safetensors",
        "encoder.safetensors",
    ]
    rows = [json.loads(line) for line in (chain["teacher"] / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert "salt" not in art.params and "ijepa" not in art.params  # only its own section is fingerprinted
    assert load_encoder(chain["teacher"]).config.patch_size == 8


def test_teacher_is_frozen_in_the_training_loop(chain, tmp_path):
    """The real loop (AdamW with weight decay, schedules): the teacher's weights never move and never get a
    gradient, while the student's do."""
    from cxrjepa.core.artifact import begin

    cfg = config("objective=salt", "runtime.keep_last=10")
    info = runtime.init_worker(False)
    try:
        begin(tmp_path / "run", "run", cfg.science())
        trainer = Trainer(
            tmp_path / "run",
            cfg,
            DatasetArtifact.open(chain["data"]),
            info,
            inputs=ObjectiveInputs(teacher=str(chain["teacher"])),
        )
        outcome = trainer.fit()
    finally:
        runtime.shutdown(info)
    obj = trainer.objective
    original = load_encoder(chain["teacher"]).model.state_dict()
    after = obj.teacher.vit.state_dict()
    assert outcome.steps == 6 and original.keys() == after.keys()
    for k in original:
        torch.testing.assert_close(after[k], original[k], rtol=0, atol=0)
    assert all(p.grad is None and not p.requires_grad for p in obj.teacher.parameters())
    assert not obj.teacher.training
    first = safetensors.torch.load_file(str(tmp_path / "run" / "checkpoints" / "step-000002" / "encoder.safetensors"))
    moved = {k: float((v - first[k]).abs().max()) for k, v in obj.student.encoder.state_dict().items() if k in first}
    assert max(moved.values()) > 0  # the student trained
    assert not any(
        id(p) in {id(q) for g in trainer.optimizer.param_groups for q in g["params"]} for p in obj.teacher.parameters()
    )


def test_salt_student_selects_by_holdout_loss_and_records_the_teacher(chain, tmp_path):
    run = run_pretrain(
        tmp_path / "student",
        config("objective=salt"),
        data=chain["data"],
        teacher=chain["teacher"],
        options=PretrainOptions(gpus=0),
    )
    m = run.manifest
    teacher_ref = [i for i in m["inputs"] if i["name"] == "teacher"][0]
    assert teacher_ref["fingerprint"] == open_artifact(chain["teacher"], "run").content_fingerprint
    assert m["contents"]["teacher"]["source"] == "cxrjepa" and m["contents"]["teacher"]["grid_mode"] == "match"
    sel = m["contents"]["selection"]
    losses = dict((s, v) for s, v in sel["evaluations"])
    assert sorted(losses) == [2, 4, 6]
    assert sel["best_step"] == min(losses, key=losses.get) and sel["best_loss"] == pytest.approx(min(losses.values()))
    assert sel["holdout_patients"] >= 2 and sel["holdout_items"] == 2 * sel["holdout_patients"]
    assert sel["exported"] == "best" and run.counts["frames"] == 40 - sel["holdout_items"]
    best = safetensors.torch.load_file(str(tmp_path / "student" / "checkpoints" / "best" / "encoder.safetensors"))
    exported = safetensors.torch.load_file(str(tmp_path / "student" / "encoder" / "encoder.safetensors"))
    for k, v in exported.items():
        torch.testing.assert_close(v, best[f"vit.{k}"])
    assert json.loads((tmp_path / "student" / "encoder" / "config.json").read_text())["step"] == sel["best_step"]
    rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "holdout_loss" in r] == [2, 4, 6]
    # the same teacher and settings: up to date; another teacher: stale
    again = run_pretrain(
        tmp_path / "student",
        config("objective=salt"),
        data=chain["data"],
        teacher=chain["teacher"],
        options=PretrainOptions(gpus=0),
    )
    assert again.manifest["finished"] == m["finished"]
    refs = STAGES["pretrain"].input_refs({"data": chain["data"], "teacher": "random:tiny/8"})
    assert plan_artifact(tmp_path / "student", "run", config("objective=salt").science(), refs).action == "overwrite"


def test_interrupted_salt_run_resumes_to_the_same_student_and_selection(chain, tmp_path):
    cfg = config("objective=salt")
    full = run_pretrain(
        tmp_path / "full", cfg, data=chain["data"], teacher=chain["teacher"], options=PretrainOptions(gpus=0)
    )
    run_pretrain(
        tmp_path / "cut",
        cfg,
        data=chain["data"],
        teacher=chain["teacher"],
        options=PretrainOptions(gpus=0, max_steps=3),
    )
    cut = run_pretrain(
        tmp_path / "cut", cfg, data=chain["data"], teacher=chain["teacher"], options=PretrainOptions(gpus=0)
    )
    assert cut.counts["steps"] == 6
    a = safetensors.torch.load_file(str(tmp_path / "full" / "encoder" / "encoder.safetensors"))
    b = safetensors.torch.load_file(str(tmp_path / "cut" / "encoder" / "encoder.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    sa, sb = full.contents["selection"], cut.contents["selection"]
    assert sa["best_step"] == sb["best_step"]
    np.testing.assert_allclose([v for _, v in sa["evaluations"]], [v for _, v in sb["evaluations"]], rtol=1e-5)


def test_cached_targets_match_the_live_teacher_and_are_reused(chain, tmp_path):
    cache = tmp_path / "cache"
    live = run_pretrain(
        tmp_path / "live",
        config("objective=salt", *WHOLE),
        data=chain["data"],
        teacher=chain["teacher"],
        options=PretrainOptions(gpus=0),
    )
    cached = run_pretrain(
        tmp_path / "cached",
        config("objective=salt", *WHOLE, f"runtime.teacher_cache={cache}"),
        data=chain["data"],
        teacher=chain["teacher"],
        options=PretrainOptions(gpus=0),
    )
    folders = [p for p in cache.iterdir() if p.is_dir()]
    assert len(folders) == 1
    cm = read_manifest(folders[0])
    assert cm["kind"] == "targets" and cm["status"] == "complete" and cm["contents"]["array"]["dtype"] == "float16"
    assert cm["contents"]["array"]["shape"] == [40, 16, 192]
    assert {i["name"] for i in cm["inputs"]} == {"data", "teacher"}
    assert cached.contents["teacher"]["cached"] is True
    assert live.fingerprint == cached.fingerprint  # the cache is operational, not science
    l_live = [v for _, v in live.contents["selection"]["evaluations"]]
    l_cached = [v for _, v in cached.contents["selection"]["evaluations"]]
    np.testing.assert_allclose(l_cached, l_live, rtol=2e-3)  # fp16 targets
    # a second student (other settings) reads the same cache instead of recomputing it
    run_pretrain(
        tmp_path / "second",
        config("objective=salt", *WHOLE, f"runtime.teacher_cache={cache}", "salt.loss=smooth_l1"),
        data=chain["data"],
        teacher=chain["teacher"],
        options=PretrainOptions(gpus=0),
    )
    assert read_manifest(folders[0])["finished"] == cm["finished"]
    with pytest.raises(ConfigError, match="whole-frame crops"):
        run_pretrain(
            tmp_path / "bad",
            config("objective=salt", f"runtime.teacher_cache={cache}"),
            data=chain["data"],
            teacher=chain["teacher"],
            options=PretrainOptions(gpus=0),
        )


def test_teacher_option_errors(chain, tmp_path):
    with pytest.raises(UsageError, match="needs a frozen teacher"):
        run_pretrain(tmp_path / "a", config("objective=salt"), data=chain["data"], options=PretrainOptions(gpus=0))
    with pytest.raises(UsageError, match="goes with --objective salt"):
        run_pretrain(
            tmp_path / "b", config(), data=chain["data"], teacher=chain["teacher"], options=PretrainOptions(gpus=0)
        )


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Moving blobs: 6 clips of 5-12 frames and 2 stills."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(1)
    counts = [5, 8, 12, 1, 6, 9, 1, 7]
    frames = []
    for c in counts:
        base = blobs(1, 40, seed=int(rng.integers(1000)))[0]
        frames += [np.roll(base, 2 * t, axis=1) for t in range(c)]
    meta = default_meta(len(counts), counts)
    write_dataset(root / "data", np.stack(frames), meta)
    return root / "data"


def test_clip_dataset_trains_with_ijepa_and_salt_and_embeds(clips, chain, tmp_path):
    from cxrjepa.embed.api import EmbedConfig, run_embed
    from cxrjepa.embed.store import Embeddings

    ij = run_pretrain(tmp_path / "ijepa", config(clip=True), data=clips, options=PretrainOptions(gpus=0))
    assert ij.counts["frames"] == 8 and ij.contents["clips"] == {"frames": 4, "tubelet": 2, "stride": 2}
    enc = load_encoder(tmp_path / "ijepa")
    assert enc.config.is_clip and enc.meta["clip_stride"] == 2 and enc.meta["timm_loadable"] is False
    st = run_pretrain(
        tmp_path / "salt",
        config("objective=salt", "salt.holdout=0.25", *WHOLE, clip=True),
        data=clips,
        teacher=chain["teacher"],
        init=chain["teacher"],
        options=PretrainOptions(gpus=0),
    )
    assert st.contents["init"]["inflated"] is True and st.contents["teacher"]["clip"] is False
    assert all(np.isfinite(v) for _, v in st.contents["selection"]["evaluations"])
    emb = run_embed(tmp_path / "emb", EmbedConfig(patch_tokens=True), encoder=tmp_path / "ijepa", data=clips)
    arrays = emb.contents["arrays"]
    assert arrays["features"]["shape"] == [8, 192] and arrays["patch_tokens"]["grid"] == [2, 4, 4]
    assert emb.contents["encoder"]["clip_frames"] == 4
    feats = Embeddings.open(emb.path).array()
    assert np.isfinite(feats).all() and feats.std(axis=0).mean() > 0
    # windows of 4 frames every 2nd span 7 frames: shorter samples (and stills) get one window, longer ones up
    # to clip_frames // 4 = 4 evenly spread windows
    import pandas as pd

    index = pd.read_parquet(emb.path / "index.parquet")
    assert index["frames_embedded"].tolist() == [4, 8, 16, 4, 4, 12, 4, 4]


def test_pipeline_runner_predicts_the_salt_fingerprint(chain, tmp_path):
    spec = {
        "name": "salt-test",
        "out": str(tmp_path / "runs"),
        "stages": {
            "teacher": {
                "stage": "pretrain",
                "inputs": {"data": str(chain["data"])},
                "params": {**TINY, "objective": "pixel", "train": {"batch_size": 8, "steps": 2}},
                "options": {"gpus": 0},
            },
            "student": {
                "stage": "pretrain",
                "inputs": {"data": str(chain["data"]), "teacher": "@teacher"},
                "params": {**TINY, "objective": "salt", "train": {"batch_size": 8, "steps": 2}},
                "options": {"gpus": 0},
            },
        },
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    first = run_pipeline(path)
    assert [s.action for s in first.steps] == ["run", "run"] and first.exit_code == 0
    plan = run_pipeline(path, dry_run=True)
    assert [s.action for s in plan.steps] == ["would skip", "would skip"]
    again = run_pipeline(path)
    assert [s.action for s in again.steps] == ["skip", "skip"]
    student = read_manifest(tmp_path / "runs" / "student")
    assert [i["name"] for i in student["inputs"]] == ["data", "teacher"]


@pytest.mark.parametrize(
    "name, want",
    [
        ("quickstart", [("run", "ijepa", "tiny", 8, 64, 1)]),  # its recipe file: recipes/cxr-small-cpu.yaml
        (
            "us-salt-cpu",
            [
                ("teacher", "pixel", "tiny", 8, 64, 1),
                ("student", "salt", "tiny", 8, 64, 1),
                ("ijepa", "ijepa", "tiny", 8, 64, 1),
            ],
        ),
        ("us-salt-vitb16", [("teacher", "pixel", "small", 16, 224, 1), ("student", "salt", "base", 16, 224, 1)]),
        ("us-video-ijepa", [("run", "ijepa", "base", 16, 224, 16)]),
        ("cxr-salt", [("student", "salt", "base", 16, 224, 1)]),
    ],
)
def test_pipelines_parse_and_plan(name, want):
    """Each shipped pipeline resolves its pretrain stages to the science its header promises; SALT students
    read a teacher."""
    from cxrjepa.pipeline.runner import resolve_stage
    from cxrjepa.pipeline.spec import load_pipeline

    pipe = load_pipeline(ROOT / "pipelines" / f"{name}.yaml", known_stages=list(STAGES))
    got = []
    for spec in pipe.stages:
        _, cfg, inputs, _ = resolve_stage(pipe, spec, {})
        if spec.stage == "pretrain":
            m = cfg.model
            got.append((spec.id, cfg.objective, m.size, m.patch_size, m.image_size, m.frames))
            assert ("teacher" in inputs) == (cfg.objective == "salt"), spec.id
    assert got == want


@pytest.mark.gpu
def test_salt_on_cuda_runs_the_teacher_in_bf16(chain, tmp_path):
    run = run_pretrain(
        tmp_path / "gpu",
        config("objective=salt"),
        data=chain["data"],
        teacher=chain["teacher"],
        options=PretrainOptions(gpus=1),
    )
    assert run.contents["teacher"]["dtype"] == "bfloat16"
    assert all(np.isfinite(v) for _, v in run.contents["selection"]["evaluations"])
