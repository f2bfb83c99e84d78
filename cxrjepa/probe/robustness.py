"""Robustness: corrupt the test images, re-embed them with the embeddings' own encoder and settings, and
score the probes trained on clean features (UltraBench / US-JEPA protocol)."""

from __future__ import annotations

import numpy as np

from cxrjepa.core import console
from cxrjepa.core.config import from_dict
from cxrjepa.core.errors import ArtifactError
from cxrjepa.data.store import DatasetArtifact
from cxrjepa.embed.api import load_encoder_for
from cxrjepa.embed.config import EmbedConfig
from cxrjepa.embed.extract import embed_rows
from cxrjepa.embed.store import Embeddings
from cxrjepa.encoders import recorded_spec, resolve_device
from cxrjepa.probe.corruptions import corruption


def source_of(emb: Embeddings, device: str = "auto", what: str = "robustness needs its images", encoder: bool = True):
    """The dataset and the encoder an embeddings artifact was made from, checked unchanged, and the
    embedding settings: ``(dataset, encoder, EmbedConfig without patch tokens, device)``; the encoder is
    ``None`` with ``encoder=False``.

    The encoder is the one the manifest records (:func:`cxrjepa.encoders.recorded_spec`), loaded as
    ``cxrjepa embed`` loads it (:func:`cxrjepa.embed.api.load_encoder_for`), so re-embedded features match."""
    ds_path = emb.dataset_path
    if ds_path is None or not ds_path.exists():
        raise ArtifactError(f"The dataset the embeddings were made from ('{ds_path}') is gone; {what}.")
    ds = DatasetArtifact.open(ds_path)
    want = (emb.artifact.contents.get("dataset") or {}).get("fingerprint")
    if want and ds.artifact.content_fingerprint != want:
        raise ArtifactError(f"The dataset '{ds_path}' changed since the embeddings were made; re-run 'cxrjepa embed'.")
    cfg = from_dict(EmbedConfig, {**emb.config, "patch_tokens": False})
    dev = resolve_device(device)
    if not encoder:
        return ds, None, cfg, dev
    enc = load_encoder_for(recorded_spec(emb.encoder), cfg, ds, dev)
    if enc.fingerprint != emb.encoder.get("fingerprint"):
        raise ArtifactError("The encoder the embeddings were made with has changed on disk; re-run 'cxrjepa embed'.")
    return ds, enc, cfg, dev


def corrupted_features(
    emb: Embeddings,
    rows: np.ndarray,
    names: list[str],
    severities: list[int],
    *,
    feature: str,
    device: str = "auto",
    batch_size: int = 64,
    seed: int = 0,
) -> dict[tuple[str, int], np.ndarray]:
    """``{(corruption, severity): features of dataset rows ``rows``}`` (rows = embeddings rows)."""
    ds, enc, cfg, dev = source_of(emb, device)
    out = {}
    for name in names:
        for sev in severities:
            console.info(f"Robustness: re-embedding {len(rows)} test samples with {name} (severity {sev}).")
            feats = embed_rows(
                enc, ds, rows, cfg, device=dev, batch_size=batch_size, transform=corruption(name, sev, seed)
            )
            out[(name, sev)] = feats[feature]
    return out
