"""Choosing and reading the few dataset images the report shows (data grid, patch maps, retrieval).

One rule everywhere: an image flagged with burned-in annotation (text that may identify the patient) is
never shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrjepa.core.phi import is_identifying
from cxrjepa.data import layout
from cxrjepa.report import readers
from cxrjepa.report.lineage import Node


def label_columns(ds: Node) -> list[str]:
    """The dataset's label columns, without any identifying one (core.phi; a dataset made before that rule
    may hold one)."""
    return [str(c) for c in ds.as_dataset.label_columns if not is_identifying(c)]


def burned_in(table) -> np.ndarray:
    """Rows of a metadata/index table flagged with burned-in annotation."""
    if "burned_in_annotation" not in table:
        return np.zeros(len(table), bool)
    return table["burned_in_annotation"].fillna(False).astype(bool).to_numpy()


@dataclass
class Sampled:
    rows: np.ndarray  # dataset rows, sorted
    frames: list[np.ndarray]  # the stored (middle) frame of each
    labels: list[str]  # value of the first label column ("" without one)
    views: list[str]
    label_column: str | None
    total: int  # samples in the dataset


def sample_images(ds: Node, k: int, seed: int) -> Sampled | None:
    """``k`` samples spread over the first label's values (at random without labels), never burned-in ones."""
    images = readers.open_images(ds.path)
    loc = readers.frame_locator(ds.path)
    if images is None or loc is None or k <= 0:
        return None
    labels = label_columns(ds)
    extra = readers.read_columns(ds.path / layout.METADATA, [*labels[:1], "view", "burned_in_annotation"])
    eligible = np.flatnonzero(~burned_in(extra)) if len(extra) else np.arange(len(loc.start))
    label = labels[0] if labels and labels[0] in extra else None
    strata = extra[label].astype(str).to_numpy()[eligible] if label else None
    rows = eligible[readers.sample_rows(len(eligible), k, seed, strata)]
    if len(rows) == 0:
        return None
    frames = readers.read_frames(images, [loc.middle(int(r)) for r in rows])

    def text(col: str, r: int) -> str:
        if col not in extra:
            return ""
        v = extra[col].iloc[int(r)]
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)

    return Sampled(
        rows,
        frames,
        [text(label, r) if label else "" for r in rows],
        [text("view", r) for r in rows],
        label,
        len(loc.start),
    )


def hidden_ids(ds: Node) -> set[str]:
    """Sample ids of the dataset that must never be shown."""
    df = readers.read_columns(ds.path / layout.METADATA, ["sample_id", "burned_in_annotation"])
    if "sample_id" not in df:
        return set()
    return set(df["sample_id"].astype(str).to_numpy()[burned_in(df)])
