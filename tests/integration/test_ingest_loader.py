"""A multi-worker DataLoader over an ingested store works under fork and spawn and returns the stored
pixels with their sample ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cxrjepa.data.loader import FrameDataset, worker_init
from cxrjepa.data.store import DatasetArtifact
from cxrjepa.ingest.api import run_ingest
from cxrjepa.ingest.config import IngestConfig, IngestOptions
from tests.dicom_files import make_dataset, phantom, write_dicom


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for i in range(9):
        write_dicom(make_dataset(phantom(40, 36 + i, seed=i), bits_stored=12), src / f"x{i}.dcm")
    cine = make_dataset(phantom(30, 40, bits=8, frames=5, seed=20).astype(np.uint8), modality="US", frame_time_ms=100)
    write_dicom(cine, src / "cine.dcm")
    salt = src.parent / "salt"
    salt.write_text("loader-test-salt-123")
    art = run_ingest(
        tmp_path_factory.mktemp("o") / "ds",
        IngestConfig(size=24),
        sources=[src],
        options=IngestOptions(workers=1, salt_file=salt),
    )
    return DatasetArtifact(art)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_multiworker_loader(dataset, context):
    ds = FrameDataset(dataset.path)
    assert len(ds) == 14  # 9 stills + a 5-frame clip
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=context, worker_init_fn=worker_init)
    seen = {}
    for batch in loader:
        assert batch["image"].shape[1:] == (1, 24, 24) and batch["image"].dtype == torch.float32
        for img, idx, sample, sid in zip(batch["image"], batch["index"], batch["sample"], batch["sample_id"]):
            seen[int(idx)] = (img, int(sample), sid)
    assert sorted(seen) == list(range(14))
    images = np.asarray(dataset.images[:])
    meta = dataset.meta
    for idx, (img, sample, sid) in seen.items():
        assert np.allclose(img[0].numpy(), images[idx] / 255.0)
        start, count = int(meta.frame_start[sample]), int(meta.frame_count[sample])
        assert start <= idx < start + count and sid == meta.sample_id[sample]


def test_per_sample_items(dataset):
    ds = FrameDataset(dataset, per_sample=True)
    assert len(ds) == 10
    item = ds[int(np.flatnonzero(dataset.meta.frame_count.to_numpy() == 5)[0])]
    assert item["sample_id"] in set(dataset.meta.sample_id)
