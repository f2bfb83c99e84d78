"""Settings of ``cxrjepa report`` (they enter the report's fingerprint)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cxrjepa.core.errors import ConfigError


@dataclass
class ReportConfig:
    """What the report shows and how much it samples."""

    #: the page's title (its one h1)
    title: str = "cxrjepa report"
    #: stored images shown in the data section's grid
    sample_images: int = 16
    #: 2-D map of the embeddings: t-SNE (of the first 50 principal components) or plain PCA
    map_method: Literal["tsne", "pca"] = "tsne"
    #: samples drawn for each embedding map
    map_points: int = 2000
    #: images whose patch tokens are mapped to colours (PCA) for each run
    patch_images: int = 4
    #: query images for the nearest-neighbour examples
    retrieval_queries: int = 4
    #: neighbours shown per query
    retrieval_neighbours: int = 5
    #: at most this many embeddings are searched for neighbours (a random sample beyond it)
    retrieval_pool: int = 20000
    #: logged steps drawn per training curve (evenly thinned beyond it)
    metric_points: int = 2000
    #: seed of every random choice in the report (sampled images, map points, queries)
    seed: int = 0

    def validate(self) -> None:
        for name in (
            "sample_images",
            "map_points",
            "patch_images",
            "retrieval_queries",
            "retrieval_neighbours",
            "retrieval_pool",
            "metric_points",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"'{name}' must be zero or more, not {getattr(self, name)}.")
        if self.map_points and self.map_points < 10:
            raise ConfigError("'map_points' must be 0 (no map) or at least 10.")
        if self.metric_points and self.metric_points < 10:
            raise ConfigError("'metric_points' must be at least 10.")
