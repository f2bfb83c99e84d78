"""Embeddings: a table of what each embeddings artifact holds and a sampled 2-D map coloured by label, sex, age, site."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrjepa.core.phi import is_identifying
from cxrjepa.report import figures, readers
from cxrjepa.report.doc import Cell, Section, Table, human_int, num
from cxrjepa.report.lineage import Node, Variant
from cxrjepa.report.sections.base import Context, guarded

#: columns that say where an image came from, best first ("site" when the user's labels have it)
SITE_COLUMNS = ("site", "source_index", "manufacturer")
#: rows read at least for the feature statistics (effective rank, norms), even when the map shows fewer
STATS_ROWS = 500


@dataclass
class EmbeddingSet:
    """An embeddings artifact opened for sampling (the features stay on disk)."""

    variant: Variant
    node: Node
    features: object  # zarr array (N, D)
    arrays: list[str]
    label_column: str | None

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def index(self, columns: list[str], rows: np.ndarray | None = None):
        return readers.read_columns(self.node.path / self.node.as_embeddings.contents.index, columns, rows)


def label_column_for(v: Variant, emb: Node) -> str | None:
    """The label to colour and judge neighbours by: the dataset's first label column present in the index
    (never an identifying one)."""
    cands = list(emb.as_embeddings.label_columns)
    if v.dataset is not None:
        cands += v.dataset.as_dataset.label_columns
    for p in v.probes:
        cands += list(p.as_probe.metrics.tasks)
    present = set(readers.parquet_columns(emb.path / emb.as_embeddings.contents.index))
    return next((str(c) for c in cands if c in present and not is_identifying(c)), None)


def open_sets(ctx: Context, sec: Section) -> list[EmbeddingSet]:
    out = []
    for v in ctx.variants:
        for emb in v.embeddings:
            reader = emb.as_embeddings
            feats = readers.open_features(reader)
            if feats is None or len(getattr(feats, "shape", ())) != 2:
                sec.note(
                    f"The embeddings {emb.name} have no readable (N, D) 'features' array; they are left out.", "warn"
                )
                continue
            if not (emb.path / reader.contents.index).is_file():
                sec.note(f"The embeddings {emb.name} have no {reader.contents.index}; they are left out.", "warn")
                continue
            out.append(EmbeddingSet(v, emb, feats, reader.arrays, label_column_for(v, emb)))
    return out


def set_label(s: EmbeddingSet, sets: list[EmbeddingSet]) -> str:
    return s.variant.label if sum(t.variant is s.variant for t in sets) == 1 else f"{s.variant.label} · {s.node.name}"


def rankme(x: np.ndarray) -> float:
    """Effective rank (RankMe): exp of the entropy of the normalised singular values."""
    if len(x) < 2:
        return float("nan")
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    p = s / max(s.sum(), 1e-12) + 1e-12
    return float(np.exp(-(p * np.log(p)).sum()))


def build(ctx: Context) -> Section:
    sec = Section(
        "embeddings", "Embeddings", lead="What each encoder's features look like on a random sample of the data."
    )
    if not any(v.embeddings for v in ctx.variants):
        sec.note(
            "Left out: no embeddings artifact among the inputs or their lineage; give embeddings "
            "(cxrjepa embed) or the probes made from them to see feature maps."
        )
        return sec
    sets = open_sets(ctx, sec)
    if not sets:
        return sec
    samples = {}
    rows = []
    for s in sets:
        pick = readers.sample_rows(s.n, max(ctx.config.map_points, STATS_ROWS), ctx.config.seed)
        x = np.nan_to_num(readers.read_feature_rows(s.features, pick))
        sub = readers.sample_rows(
            len(pick), ctx.config.map_points, ctx.config.seed
        )  # the map's points, among those read
        samples[id(s)] = (pick[sub], x[sub])
        std = x.std(axis=0)
        rows.append(
            [
                Cell(set_label(s, sets), swatch=s.variant.color, title=str(s.node.path)),
                Cell(human_int(s.n), numeric=True),
                Cell(str(s.dim), numeric=True),
                Cell(str(s.features.dtype)),
                Cell(", ".join(s.arrays)),
                Cell(num(rankme(x), 1), numeric=True),
                Cell(num(float(np.linalg.norm(x, axis=1).mean()), 2), numeric=True),
                Cell(f"{float((std < 1e-6).mean()):.0%}", numeric=True),
            ]
        )
        dead = float((std < 1e-6).mean())
        if dead > 0.5:
            sec.note(
                f"Embeddings {set_label(s, sets)}: {dead:.0%} of feature dimensions are constant on the sample; "
                "the encoder may have collapsed.",
                "warn",
            )
    sec.add(
        Table(
            ["Embeddings", "Samples", "Dim", "dtype", "Arrays", "Effective rank", "Mean norm", "Constant dims"],
            rows,
            caption=f"Effective rank, norm and constant dimensions are measured on at most "
            f"{max(ctx.config.map_points, STATS_ROWS):,} rows drawn at random from each artifact.",
        )
    )
    if ctx.config.map_points:
        guarded(sec, "the embedding maps", lambda: _maps(ctx, sec, sets, samples))
    else:
        sec.note("Embedding maps are turned off (map_points = 0).")
    return sec


def colorings(s: EmbeddingSet, rows: np.ndarray) -> list[figures.Coloring]:
    cols = [c for c in [s.label_column, "sex", "age", *SITE_COLUMNS] if c]
    df = s.index(cols, rows)
    out = []
    if s.label_column and s.label_column in df:
        out.append(figures.Coloring(f"label: {s.label_column}", df[s.label_column].to_numpy(dtype=object)))
    if "sex" in df and df["sex"].astype(str).str.strip().replace("nan", "").ne("").any():
        out.append(figures.Coloring("sex", df["sex"].to_numpy(dtype=object)))
    if "age" in df:
        age = np.asarray(df["age"].astype(float))
        if np.isfinite(age).sum() >= 2:
            out.append(figures.Coloring("age (years)", age, numeric=True))
    for c in SITE_COLUMNS:
        if c in df and df[c].nunique(dropna=True) >= 2:
            out.append(
                figures.Coloring(
                    f"site ({c.replace('_', ' ')})" if c != "site" else "site", df[c].astype(str).to_numpy(dtype=object)
                )
            )
            break
    return out


def project(x: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates of the rows of ``x`` and a sentence saying how they were made."""
    from sklearn.decomposition import PCA

    x = x - x.mean(axis=0, keepdims=True)
    n, d = x.shape
    if n < 3 or d < 2:
        return np.zeros((n, 2)), "too few points to map"
    if method == "tsne" and n >= 10:
        from sklearn.manifold import TSNE

        k = min(50, d, n)
        pcs = PCA(n_components=k, random_state=seed).fit_transform(x)
        perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
        xy = TSNE(
            n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed
        ).fit_transform(pcs)
        return xy, f"t-SNE (perplexity {perplexity:.0f}) of the first {k} principal components"
    pca = PCA(n_components=2, random_state=seed)
    xy = pca.fit_transform(x)
    ev = pca.explained_variance_ratio_
    return xy, f"the first two principal components ({ev[0]:.0%} and {ev[1]:.0%} of the variance)"


def _maps(ctx: Context, sec: Section, sets: list[EmbeddingSet], samples: dict) -> None:
    rows, cols, hows = [], [], []
    for s in sets:
        pick, x = samples[id(s)]
        xy, how = project(x, ctx.config.map_method, ctx.config.seed)
        c = colorings(s, pick)
        if not c:
            c = [figures.Coloring("all samples", np.asarray(["sample"] * len(pick), dtype=object))]
        rows.append((set_label(s, sets), s.variant.color, xy))
        cols.append(c)
        hows.append(how)
    n_shown = max(len(samples[id(s)][0]) for s in sets)
    method = "t-SNE" if ctx.config.map_method == "tsne" else "PCA"
    titles = sorted({c.title for cs in cols for c in cs})
    sec.add(
        ctx.figure(
            "embeddings-map",
            figures.scatter_maps(rows, cols),
            alt=f"{method} maps of the embeddings of {', '.join(r[0] for r in rows)}, one row per run, "
            f"each point a sample, coloured by {', '.join(titles)}.",
            caption=f"Each row: {n_shown:,} samples drawn at random (seed {ctx.config.seed}) from one embeddings "
            f"artifact, placed by {hows[0]}. Same colours mean the same value; grey: unknown. "
            "Clusters by site or sex rather than label hint at shortcuts.",
        )
    )
