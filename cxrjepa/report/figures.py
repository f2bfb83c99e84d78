"""Matplotlib (Agg) figures for the report, returned as PNG bytes.

Every function takes plain numbers and arrays (the sections read the artifacts), uses one consistent
style, and closes its figure. Colours for runs come from the caller so a run has the same colour in
every figure.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure as MplFigure  # noqa: E402

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e8eb",
    "grid.linewidth": 0.8,
    "axes.edgecolor": "#9aa5b1",
    "axes.axisbelow": True,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "figure.facecolor": "white",
}
CATEGORY_COLORS = (
    "#4c78a8",
    "#f58518",
    "#54a24b",
    "#e45756",
    "#72b7b2",
    "#b279a2",
    "#ff9da6",
    "#9d755d",
    "#bab0ac",
    "#eeca3b",
)
MISSING_COLOR = "#c8cdd2"
NEUTRAL = "#4c78a8"
LINESTYLES = ("-", "--", ":", "-.")
MAX_BARS = 15


def _new(nrows: int, ncols: int, w: float, h: float, **kw) -> tuple[MplFigure, np.ndarray]:
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(w, h), squeeze=False, **kw)
    return fig, axes


def to_png(fig: MplFigure) -> bytes:
    buf = io.BytesIO()
    with plt.rc_context(STYLE):
        fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.12)
    plt.close(fig)
    return buf.getvalue()


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return math.ceil(n / cols), cols


def smooth(y: np.ndarray, n: int) -> np.ndarray:
    """Exponential moving average, strength chosen from the number of points (TensorBoard style)."""
    if n < 40:
        return y
    alpha = min(0.3, 20.0 / n)
    out = np.empty_like(y, dtype=np.float64)
    acc = np.nan
    for i, v in enumerate(y):
        if np.isfinite(v):
            acc = v if not np.isfinite(acc) else (1 - alpha) * acc + alpha * v
        out[i] = acc
    return out


# ------------------------------------------------------------------ counts


def count_bars(panels: Sequence[tuple[str, Sequence[str], Sequence[float]]], max_cols: int = 3) -> bytes:
    """Horizontal bar charts, one per (title, labels, counts); long tails folded into 'other'."""
    rows, cols = _grid(len(panels), max_cols)
    heights = [min(len(p[1]), MAX_BARS + 1) for p in panels]
    fig, axes = _new(rows, cols, 3.6 * cols, max(1.6, 0.26 * max(heights) + 0.9) * rows)
    for ax, (title, labels, values) in zip(axes.flat, panels):
        labels, values = fold_tail(list(labels), list(values), MAX_BARS)
        y = np.arange(len(labels))[::-1]
        ax.barh(y, values, color=NEUTRAL, height=0.7)
        ax.set_yticks(y, [truncate(lab, 22) for lab in labels])
        ax.set_title(title, loc="left")
        ax.grid(axis="y", visible=False)
        vmax = max(values) if values else 1
        for yi, v in zip(y, values):
            ax.text(v + vmax * 0.01, yi, f"{int(v):,}", va="center", fontsize=7.5, color="#52606d")
        ax.set_xlim(0, vmax * 1.18 + 1e-9)
    _hide_unused(axes, len(panels))
    fig.tight_layout()
    return to_png(fig)


def fold_tail(labels: list[str], values: list[float], keep: int) -> tuple[list[str], list[float]]:
    if len(labels) <= keep + 1:
        return labels, values
    order = np.argsort(values)[::-1]
    head = [labels[i] for i in order[:keep]]
    vals = [values[i] for i in order[:keep]]
    return head + [f"other ({len(labels) - keep})"], vals + [float(sum(values[i] for i in order[keep:]))]


def truncate(text: str, n: int) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def histogram(title: str, bins: np.ndarray, counts: np.ndarray, xlabel: str) -> bytes:
    fig, axes = _new(1, 1, 4.2, 2.4)
    ax = axes[0, 0]
    ax.bar(bins[:-1], counts, width=np.diff(bins), align="edge", color=NEUTRAL, edgecolor="white", linewidth=0.6)
    ax.set_title(title, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    fig.tight_layout()
    return to_png(fig)


# ------------------------------------------------------------------ images


def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    ncols: int = 8,
    cell: float = 1.45,
    frame_colors: Sequence[str | None] | None = None,
    row_labels: Sequence[str] | None = None,
) -> bytes:
    """Grey images (values in [0, 1]) in a grid with small titles."""
    n = len(images)
    rows, cols = _grid(n, ncols)
    fig, axes = _new(rows, cols, cell * cols, (cell + 0.28) * rows)
    for i, (ax, img) in enumerate(zip(axes.flat, images)):
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="lanczos")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        color = frame_colors[i] if frame_colors else None
        for sp in ax.spines.values():
            sp.set_visible(color is not None)
            if color:
                sp.set_color(color)
                sp.set_linewidth(3)
        ax.set_title(truncate(titles[i], 24), fontsize=7.5, pad=3, fontweight="normal")
        if row_labels and i % cols == 0:
            ax.set_ylabel(truncate(row_labels[i // cols], 18), fontsize=8)
    _hide_unused(axes, n)
    fig.tight_layout(pad=0.4, w_pad=0.3, h_pad=0.5)
    return to_png(fig)


@dataclass
class Tile:
    image: np.ndarray | None  # values in [0, 1]; None leaves the cell empty
    title: str = ""
    frame: str | None = None


def tile_rows(rows: Sequence[tuple[str, str, Sequence[Tile]]], cell: float = 1.25, label_chars: int = 16) -> bytes:
    """Rows of image tiles with a coloured row label: (label, colour, tiles); a label may hold line breaks
    (each line is cut to ``label_chars``)."""
    ncols = max(len(t) for _, _, t in rows)
    fig, axes = _new(len(rows), ncols, cell * ncols + 0.5, (cell + 0.25) * len(rows))
    for r, (label, color, tiles) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            t = tiles[c] if c < len(tiles) else Tile(None)
            for sp in ax.spines.values():
                sp.set_visible(t.frame is not None)
                if t.frame:
                    sp.set_color(t.frame)
                    sp.set_linewidth(3)
            if t.image is None:
                ax.set_axis_off()
                continue
            ax.imshow(t.image, cmap="gray", vmin=0, vmax=1, interpolation="lanczos")
            ax.set_title(truncate(t.title, 22), fontsize=7.5, pad=3, fontweight="normal")
        axes[r, 0].set_ylabel(
            "\n".join(truncate(part, label_chars) for part in label.split("\n")),
            fontsize=8.5,
            color=color,
            fontweight="bold",
        )
        if tiles and tiles[0].image is None:
            axes[r, 0].set_axis_on()
            for sp in axes[r, 0].spines.values():
                sp.set_visible(False)
            axes[r, 0].set_facecolor("white")
    fig.tight_layout(pad=0.4, w_pad=0.3, h_pad=0.6)
    return to_png(fig)


def patch_maps(images: Sequence[np.ndarray], maps: dict[str, Sequence[np.ndarray]], colors: dict[str, str]) -> bytes:
    """Top row: the images; one row per run below: its patch-token PCA as RGB, blended over the image."""
    n = len(images)
    rows = 1 + len(maps)
    fig, axes = _new(rows, n, 1.75 * n + 0.6, 1.8 * rows)
    for j, img in enumerate(images):
        axes[0, j].imshow(img, cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_ylabel("image", fontsize=8.5)
    for r, (label, rgbs) in enumerate(maps.items(), start=1):
        for j, rgb in enumerate(rgbs):
            axes[r, j].imshow(rgb, interpolation="nearest")
        axes[r, 0].set_ylabel(truncate(label, 18), fontsize=8.5, color=colors.get(label, "black"))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for sp in ax.spines.values():
            sp.set_visible(False)
    fig.tight_layout(pad=0.4, w_pad=0.3, h_pad=0.3)
    return to_png(fig)


# ------------------------------------------------------------------ curves


@dataclass
class Series:
    label: str
    x: np.ndarray
    y: np.ndarray
    color: str
    linestyle: str = "-"
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    marker: str | None = None


@dataclass
class Panel:
    title: str
    series: list[Series] = field(default_factory=list)
    xlabel: str = ""
    ylabel: str = ""
    logy: bool = False
    logx: bool = False
    ylim: tuple[float, float] | None = None
    diagonal: bool = False
    smooth: bool = False


def line_panels(panels: Sequence[Panel], max_cols: int = 3, w: float = 3.6, h: float = 2.6) -> bytes:
    rows, cols = _grid(len(panels), max_cols)
    fig, axes = _new(rows, cols, w * cols, h * rows)
    for ax, p in zip(axes.flat, panels):
        for s in p.series:
            x = np.asarray(s.x, dtype=np.float64)
            y = np.asarray(s.y, dtype=np.float64)
            if p.smooth and len(y) >= 40:
                ax.plot(x, y, color=s.color, alpha=0.22, linewidth=0.8)
                ax.plot(x, smooth(y, len(y)), color=s.color, linestyle=s.linestyle, linewidth=1.6, label=s.label)
            else:
                ax.plot(
                    x,
                    y,
                    color=s.color,
                    linestyle=s.linestyle,
                    linewidth=1.6,
                    label=s.label,
                    marker=s.marker,
                    markersize=4,
                )
            if s.lower is not None and s.upper is not None:
                ax.fill_between(x, s.lower, s.upper, color=s.color, alpha=0.15, linewidth=0)
        if p.diagonal:
            ax.plot([0, 1], [0, 1], color="#9aa5b1", linewidth=0.8, linestyle=":")
        if p.logy and all(np.nanmin(np.asarray(s.y, float)) > 0 for s in p.series if len(s.y)):
            ax.set_yscale("log")
        if p.logx:
            ax.set_xscale("log")
            xs = sorted({float(v) for s_ in p.series for v in np.asarray(s_.x, float) if v > 0})
            if xs and len(xs) <= 12:
                ax.set_xticks(xs, [f"{v:.0%}" if v >= 0.01 else f"{v:.1%}" for v in xs])
                ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if p.ylim:
            ax.set_ylim(*p.ylim)
        ax.set_title(p.title, loc="left")
        ax.set_xlabel(p.xlabel)
        ax.set_ylabel(p.ylabel)
        if len(p.series) > 1 or (p.series and p.series[0].label):
            ax.legend(loc="best")
    _hide_unused(axes, len(panels))
    fig.tight_layout()
    return to_png(fig)


def confusion_matrices(mats: Sequence[tuple[str, list[str], np.ndarray, str]], max_cols: int = 3) -> bytes:
    """Row-normalised confusion matrices with counts, one per (title, labels, matrix, colour)."""
    rows, cols = _grid(len(mats), max_cols)
    k = max(len(m[1]) for m in mats)
    side = min(4.2, 1.6 + 0.45 * k)
    fig, axes = _new(rows, cols, side * cols, side * rows)
    for ax, (title, labels, mat, color) in zip(axes.flat, mats):
        mat = np.asarray(mat, dtype=np.float64)
        norm = mat / np.maximum(mat.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.grid(False)
        short = [truncate(lab, 12) for lab in labels]
        tilt = k > 2 or max(len(s_) for s_ in short) > 6
        ax.set_xticks(range(len(labels)), short, rotation=30 if tilt else 0, ha="right" if tilt else "center")
        ax.set_yticks(range(len(labels)), short)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, loc="left", color=color)
        if k <= 12:
            for i in range(mat.shape[0]):
                for j in range(mat.shape[1]):
                    ax.text(
                        j,
                        i,
                        f"{int(mat[i, j])}\n{norm[i, j]:.0%}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.55 else "#1f2933",
                    )
    _hide_unused(axes, len(mats))
    fig.tight_layout()
    return to_png(fig)


def grouped_bars(
    panels: Sequence[tuple[str, list[str], list[tuple[str, str, list[float], list[tuple[float, float] | None]]]]],
    ylabel: str,
    max_cols: int = 3,
) -> bytes:
    """Grouped bars with interval whiskers: per panel (title, groups, [(label, colour, values, cis)])."""
    rows, cols = _grid(len(panels), max_cols)
    fig, axes = _new(rows, cols, 3.8 * cols, 2.7 * rows)
    for ax, (title, groups, bars) in zip(axes.flat, panels):
        nb = max(1, len(bars))
        width = 0.8 / nb
        x = np.arange(len(groups))
        for b, (label, color, values, cis) in enumerate(bars):
            pos = x - 0.4 + width * (b + 0.5)
            vals = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
            ax.bar(pos, vals, width=width * 0.92, color=color, label=label)
            lo = [v - c[0] if c else 0 for v, c in zip(vals, cis)]
            hi = [c[1] - v if c else 0 for v, c in zip(vals, cis)]
            if any(c for c in cis):
                ax.errorbar(
                    pos,
                    vals,
                    yerr=[np.maximum(lo, 0), np.maximum(hi, 0)],
                    fmt="none",
                    ecolor="#323f4b",
                    elinewidth=0.9,
                    capsize=2,
                )
        ax.set_xticks(x, [truncate(g, 14) for g in groups])
        ax.set_title(title, loc="left")
        ax.set_ylabel(ylabel)
        ax.grid(axis="x", visible=False)
        if len(bars) > 1:
            ax.legend(loc="lower right")
    _hide_unused(axes, len(panels))
    fig.tight_layout()
    return to_png(fig)


# ------------------------------------------------------------------ embedding maps


@dataclass
class Coloring:
    title: str
    values: np.ndarray  # object/str (categorical) or float (numeric); None/NaN = missing
    numeric: bool = False


def scatter_maps(rows: Sequence[tuple[str, str, np.ndarray]], colorings: Sequence[Sequence[Coloring]]) -> bytes:
    """A grid of 2-D maps: one row per (label, colour, xy), one column per colouring of that row's points."""
    nrows = len(rows)
    ncols = max(len(c) for c in colorings)
    fig, axes = _new(nrows, ncols, 3.2 * ncols, 3.5 * nrows)
    for r, ((label, color, xy), cols) in enumerate(zip(rows, colorings)):
        size = float(np.clip(600.0 / math.sqrt(max(len(xy), 1)), 2.0, 18.0))
        for c, col in enumerate(cols):
            ax = axes[r, c]
            _scatter(ax, xy, col, size, legend=True)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            ax.set_title(f"{col.title}", loc="left", fontsize=9)
            if c == 0:
                ax.set_ylabel(truncate(label, 22), color=color, fontsize=9, fontweight="bold")
        for c in range(len(cols), ncols):
            axes[r, c].set_visible(False)
    fig.tight_layout()
    return to_png(fig)


def _scatter(ax, xy: np.ndarray, col: Coloring, size: float, legend: bool) -> None:
    vals = col.values
    if col.numeric:
        v = np.asarray(vals, dtype=np.float64)
        ok = np.isfinite(v)
        if (~ok).any():
            ax.scatter(xy[~ok, 0], xy[~ok, 1], s=size, c=MISSING_COLOR, linewidths=0)
        sc = ax.scatter(xy[ok, 0], xy[ok, 1], s=size, c=v[ok], cmap="viridis", linewidths=0)
        if ok.any():
            cb = ax.figure.colorbar(sc, ax=ax, orientation="horizontal", fraction=0.05, pad=0.03, aspect=30)
            cb.ax.tick_params(labelsize=7)
        return
    labels = np.asarray(
        [("" if (x is None or (isinstance(x, float) and math.isnan(x))) else str(x)) for x in vals], dtype=object
    )
    uniq, counts = np.unique(labels[labels != ""], return_counts=True)
    order = [u for _, u in sorted(zip(-counts, uniq))]
    shown = order[: len(CATEGORY_COLORS) - 1] if len(order) > len(CATEGORY_COLORS) else order
    missing = labels == ""
    other = ~missing & ~np.isin(labels, shown)
    if missing.any():
        ax.scatter(xy[missing, 0], xy[missing, 1], s=size, c=MISSING_COLOR, linewidths=0, label="unknown")
    if other.any():
        ax.scatter(xy[other, 0], xy[other, 1], s=size, c="#8f99a3", linewidths=0, label="other")
    for i, u in enumerate(shown):
        m = labels == u
        ax.scatter(
            xy[m, 0],
            xy[m, 1],
            s=size,
            c=CATEGORY_COLORS[i % len(CATEGORY_COLORS)],
            linewidths=0,
            label=truncate(u, 16),
            alpha=0.85,
        )
    if legend:
        n = len(shown) + int(missing.any()) + int(other.any())
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.02),
            ncol=min(3, max(n, 1)),
            markerscale=max(1.0, 12 / size),
            fontsize=7,
            handletextpad=0.2,
            columnspacing=0.8,
            borderaxespad=0.2,
        )
