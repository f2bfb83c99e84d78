"""Patch-feature maps (PCA of each encoder's patch tokens over a few images) and nearest-neighbour retrieval."""

from __future__ import annotations

import numpy as np

from cxrjepa.core import console
from cxrjepa.report import figures, readers
from cxrjepa.report.doc import Heading, Section
from cxrjepa.report.lineage import Node, Variant
from cxrjepa.report.sections.base import Context, guarded
from cxrjepa.report.sections.embeddings import EmbeddingSet, open_sets, set_label
from cxrjepa.report.sections.images import burned_in, hidden_ids, sample_images

MATCH = "#2ca02c"
MISMATCH = "#d62728"


def build(ctx: Context) -> Section:
    sec = Section(
        "features",
        "Patch features and retrieval",
        lead="What the encoders attend to inside an image, and which images they consider alike.",
    )
    sec.add(Heading("Patch-feature maps"))
    guarded(sec, "the patch-feature maps", lambda: _patch_maps(ctx, sec))
    sec.add(Heading("Nearest neighbours"))
    guarded(sec, "the nearest-neighbour examples", lambda: _retrieval(ctx, sec))
    return sec


# ---------------------------------------------------------------- patch maps


def patch_pca(frames: list[np.ndarray], run: Node, device: str) -> list[np.ndarray] | str:
    """RGB maps (grid_h, grid_w, 3) of the first three principal components of the run's patch tokens.

    The encoder is loaded and its input prepared exactly as ``cxrjepa embed`` does (:mod:`cxrjepa.encoders`).
    The PCA is fitted on the tokens of all the images together, so a colour means the same feature
    direction in every image of the row. Returns a sentence instead when the encoder cannot be used.
    """
    import torch
    from sklearn.decomposition import PCA

    from cxrjepa.encoders import load_feature_encoder

    enc = load_feature_encoder(run.path, device=device)
    if enc.clip_frames > 1:
        return (
            f"the encoder of {run.name} is a clip encoder (tubelets of {enc.tubelet} frames); maps are drawn for "
            "image encoders only"
        )
    x = torch.stack([torch.from_numpy(readers.to_unit(f)) for f in frames])[:, None]
    with torch.inference_mode():
        tok = enc.tokens(enc.prepare(x.to(device))).float().cpu().numpy()
    b, n_tok, d = tok.shape
    gh, gw = enc.grid()
    if gh * gw != n_tok:
        return f"the encoder of {run.name} returned {n_tok} tokens for a {gh} × {gw} grid"
    flat = tok.reshape(b * n_tok, d)
    comps = PCA(n_components=3, random_state=0).fit_transform(flat - flat.mean(axis=0))
    lo, hi = np.percentile(comps, 1, axis=0), np.percentile(comps, 99, axis=0)
    rgb = np.clip((comps - lo) / np.maximum(hi - lo, 1e-8), 0, 1)
    return list(rgb.reshape(b, gh, gw, 3))


def _patch_maps(ctx: Context, sec: Section) -> None:
    runs = [v for v in ctx.variants if v.run is not None]
    if not runs:
        sec.note(
            "Left out: patch-feature maps need a run artifact with an exported encoder, and none is in the lineage."
        )
        return
    if ctx.config.patch_images <= 0:
        sec.note("Patch-feature maps are turned off (patch_images = 0).")
        return
    groups: dict[int, tuple[Node, list[Variant]]] = {}
    for v in runs:
        if v.dataset is None:
            sec.note(
                f"Patch-feature maps of {v.label} are left out: the dataset it was trained on is not in the lineage."
            )
            continue
        groups.setdefault(id(v.dataset), (v.dataset, []))[1].append(v)
    from cxrjepa.encoders import resolve_device  # torch: only when maps are drawn

    device = resolve_device(ctx.device)
    for ds, variants in groups.values():
        picked = sample_images(ds, ctx.config.patch_images, ctx.config.seed)
        if picked is None:
            sec.note(f"Patch-feature maps are left out: no image of {ds.name} can be read.")
            continue
        frames = picked.frames
        names = [lab or f"sample {int(r)}" for r, lab in zip(picked.rows, picked.labels)]
        maps: dict[str, list[np.ndarray]] = {}
        colors: dict[str, str] = {}
        for v in variants:
            try:
                res = patch_pca(frames, v.run, device)
            except Exception as exc:  # a missing or unreadable export: leave this run out, keep the others
                console.detail(f"patch maps of {v.label}: {type(exc).__name__}: {exc}")
                msg = getattr(exc, "message", None) or type(exc).__name__
                sec.note(f"Patch-feature maps of {v.label} are left out: {msg}")
                continue
            if isinstance(res, str):
                sec.note(f"Patch-feature maps of {v.label} are left out: {res}.")
                continue
            maps[v.label] = res
            colors[v.label] = v.color
        if not maps:
            continue
        units = [readers.to_unit(f) for f in frames]
        sec.add(
            ctx.figure(
                f"patch-maps-{ds.name}",
                figures.patch_maps(units, maps, colors),
                alt=f"{len(frames)} images from {ds.name} ({', '.join(names)}) in the top row and, below, for each of "
                f"{', '.join(maps)}, a colour map of its patch tokens where similar colours mark similar features.",
                caption="Top row: the images as stored. Below, one row per run: the first three principal components of "
                "its patch tokens (fitted over these images together) shown as red, green and blue, one square per "
                "patch. Good encoders give anatomy (lungs, heart, ribs, background) consistent colours across images.",
            )
        )


# ---------------------------------------------------------------- retrieval


def _retrieval(ctx: Context, sec: Section) -> None:
    if not any(v.embeddings for v in ctx.variants):
        sec.note("Left out: nearest-neighbour examples need an embeddings artifact, and none is in the lineage.")
        return
    cfg = ctx.config
    if cfg.retrieval_queries <= 0 or cfg.retrieval_neighbours <= 0:
        sec.note("Nearest-neighbour examples are turned off (retrieval_queries or retrieval_neighbours = 0).")
        return
    quiet = Section("_", "_")  # problems opening embeddings were already reported by the embeddings section
    sets = [s for s in open_sets(ctx, quiet) if s.variant.dataset is not None]
    if not sets:
        sec.note(
            "Left out: nearest-neighbour examples need the dataset behind the embeddings to show images, "
            "and it is not in the lineage."
        )
        return
    # the same query samples for every run (chosen from the first), so rows can be compared across runs
    first = sets[0]
    idx0 = first.index(["sample_id", "burned_in_annotation", *([first.label_column] if first.label_column else [])])
    hidden = hidden_ids(first.variant.dataset)
    shown = np.flatnonzero(~burned_in(idx0) & ~idx0["sample_id"].astype(str).isin(hidden).to_numpy())
    strata = idx0[first.label_column].astype(str).to_numpy()[shown] if first.label_column in idx0 else None
    qrows = shown[readers.sample_rows(len(shown), cfg.retrieval_queries, cfg.seed + 1, strata)]
    query_ids = idx0["sample_id"].astype(str).to_numpy()[qrows]
    found = []
    for s in sets:
        res = guarded(
            sec,
            f"the neighbours in {set_label(s, sets)}",
            lambda s=s: neighbours(s, query_ids, cfg.retrieval_neighbours, cfg.retrieval_pool, cfg.seed + 2),
        )
        if res is not None:
            found.append((s, res))
    if not found:
        sec.note("Nearest-neighbour examples are left out: the query samples are in none of the embeddings.")
        return
    fig = _retrieval_figure(ctx, found, query_ids, sets)
    if fig is not None:
        sec.add(fig)


class Neighbours:
    """For each query sample id: its label and the (sample id, label, cosine similarity) of its neighbours."""

    def __init__(self, searched: int, total: int, label_column: str | None):
        self.searched = searched
        self.total = total
        self.label_column = label_column
        self.queries: dict[str, tuple[str | None, list[tuple[str, str | None, float]]]] = {}


def neighbours(s: EmbeddingSet, query_ids: np.ndarray, k: int, pool_size: int, seed: int) -> Neighbours | None:
    """Cosine nearest neighbours of the queries among (a sample of) the embeddings, other patients only."""
    cols = ["sample_id", "patient_key", "burned_in_annotation", *([s.label_column] if s.label_column else [])]
    index = s.index(cols)
    hidden = burned_in(index) | index["sample_id"].astype(str).isin(hidden_ids(s.variant.dataset)).to_numpy()
    ids = index["sample_id"].astype(str).to_numpy()
    pos = {sid: i for i, sid in enumerate(ids)}
    qrows = np.asarray([pos[q] for q in query_ids if q in pos], np.int64)
    if len(qrows) == 0:
        return None
    pool = np.arange(s.n) if s.n <= pool_size else readers.sample_rows(s.n, pool_size, seed)
    pool = np.union1d(pool, qrows)
    feats = np.nan_to_num(readers.read_feature_rows(s.features, pool))
    feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    where = {int(r): i for i, r in enumerate(pool)}
    sims = feats[[where[int(r)] for r in qrows]] @ feats.T
    patients = index["patient_key"].astype(str).to_numpy() if "patient_key" in index else None
    labels = index[s.label_column].astype(str).to_numpy() if s.label_column in index else None
    out = Neighbours(len(pool), s.n, s.label_column if labels is not None else None)
    for qi, r in enumerate(qrows):
        sim = sims[qi].copy()
        sim[where[int(r)]] = -np.inf
        if patients is not None:
            sim[patients[pool] == patients[r]] = -np.inf  # another image of the same patient is no real find
        sim[hidden[pool]] = -np.inf  # never shown: images with burned-in annotation
        order = [j for j in np.argsort(-sim)[:k] if np.isfinite(sim[j])]
        out.queries[ids[r]] = (
            labels[r] if labels is not None else None,
            [(ids[pool[j]], labels[pool[j]] if labels is not None else None, float(sim[j])) for j in order],
        )
    return out


def _retrieval_figure(
    ctx: Context, found: list[tuple[EmbeddingSet, Neighbours]], query_ids: np.ndarray, sets: list[EmbeddingSet]
):
    k = ctx.config.retrieval_neighbours
    ds = found[0][0].variant.dataset
    loc = readers.frame_locator(ds.path)
    images = readers.open_images(ds.path)
    if loc is None or images is None:
        return None
    ds_pos = {sid: i for i, sid in enumerate(loc.sample_id)}
    cache: dict[str, np.ndarray | None] = {}

    def image(sid: str) -> np.ndarray | None:
        if sid not in cache:
            d = ds_pos.get(sid)
            cache[sid] = readers.to_unit(readers.read_frames(images, [loc.middle(d)])[0]) if d is not None else None
        return cache[sid]

    rows = []
    agree = {}
    for q in query_ids:
        for i, (s, nb) in enumerate(found):
            if q not in nb.queries:
                continue
            qlabel, neigh = nb.queries[q]
            first = i == 0 or all(q not in f[1].queries for f in found[:i])
            tiles = [
                figures.Tile(image(q), f"query · {qlabel}" if qlabel else "query", "#1f2933")
                if first
                else figures.Tile(None)
            ]
            hits = agree.setdefault(id(s), [0, 0])
            for sid, lab, sim in neigh:
                same = qlabel is not None and lab == qlabel
                hits[0] += int(same)
                hits[1] += 1
                tiles.append(
                    figures.Tile(
                        image(sid),
                        f"{lab} · {sim:.2f}" if lab is not None else f"{sim:.2f}",
                        (MATCH if same else MISMATCH) if qlabel is not None else None,
                    )
                )
            rows.append((set_label(s, sets), s.variant.color, tiles))
    if not rows:
        return None
    label_col = next((nb.label_column for _, nb in found if nb.label_column), None)
    summary = "; ".join(
        f"{set_label(s, sets)}: {agree[id(s)][0]}/{agree[id(s)][1]} neighbours share the query's {label_col}"
        for s, _ in found
        if label_col and agree.get(id(s), [0, 0])[1]
    )
    searched = "; ".join(
        f"{set_label(s, sets)} searched {'all ' + format(nb.total, ',') if nb.searched >= nb.total else format(nb.searched, ',') + ' of ' + format(nb.total, ',')} samples"
        for s, nb in found
    )
    return ctx.figure(
        "retrieval",
        figures.tile_rows(rows),
        alt=f"Nearest-neighbour examples: {len(query_ids)} query images, each followed by one row per run "
        f"({', '.join(set_label(s, sets) for s, _ in found)}) holding its {k} most similar images by cosine "
        f"similarity of the embeddings." + (f" {summary}." if summary else ""),
        caption=f"Each query (dark frame) is followed by one row per run with its {k} nearest neighbours by cosine "
        f"similarity (the number above each image), other patients only ({searched})."
        + (f" Green frame: same {label_col} as the query, red: different — {summary}." if summary else ""),
    )
