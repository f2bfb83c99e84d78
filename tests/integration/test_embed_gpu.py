"""On CUDA, embed runs under bf16 autocast and agrees with the float32 CPU features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrjepa.data.store import write_dataset
from cxrjepa.embed.api import EmbedConfig, EmbedOptions, run_embed
from cxrjepa.embed.store import Embeddings


@pytest.mark.gpu
def test_cuda_bf16_embed_matches_cpu(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (48, 64, 64), dtype=np.uint8)
    write_dataset(tmp_path / "ds", images)
    cfg = EmbedConfig(last4=True)
    cpu = run_embed(
        tmp_path / "cpu", cfg, encoder="random:small", data=tmp_path / "ds", options=EmbedOptions(device="cpu")
    )
    gpu = run_embed(
        tmp_path / "gpu",
        cfg,
        encoder="random:small",
        data=tmp_path / "ds",
        options=EmbedOptions(device="cuda", batch_size=16),
    )
    a, b = Embeddings.open(cpu.path).array(), Embeddings.open(gpu.path).array()
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.99
    assert gpu.manifest["options"]["device"] == "cuda" and torch.cuda.is_available()
