"""A picture of a finished store that a person can look at: samples, class means, the layout."""
from __future__ import annotations

import logging

import numpy as np

from fastimg import store

logger = logging.getLogger("fastimg.show")


def _class_rows(labels: np.ndarray, n_per_class: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        out[int(value)] = np.sort(rng.choice(rows, size=min(n_per_class, rows.size),
                                             replace=False))
    return out


def _mean_images(images, labels: np.ndarray, block_rows: int = 8192) -> dict:
    """Mean image of each class, streamed block by block (the store may be large)."""
    sums, counts = {}, {}
    for start in range(0, labels.shape[0], block_rows):
        block = np.asarray(images[start:start + block_rows], dtype=np.float64)
        block_labels = labels[start:start + block_rows]
        for value in np.unique(block_labels):
            mask = block_labels == value
            sums[int(value)] = sums.get(int(value), 0.0) + block[mask].sum(axis=0)
            counts[int(value)] = counts.get(int(value), 0) + int(mask.sum())
    return {value: sums[value] / counts[value] for value in sorted(sums)}


def layout_map(pixel_index: np.ndarray, grid, group_size: int | None = None):
    """Features per pixel, and (when ``group_size`` is given, e.g. the hidden size of the
    encoder) the feature group (layer) most represented on each pixel (-1 where empty)."""
    height, width = grid
    counts = np.bincount(pixel_index, minlength=height * width).reshape(height, width)
    if not group_size:
        return counts, None
    groups = np.arange(pixel_index.size) // group_size
    n_groups = int(groups.max()) + 1
    tally = np.zeros((height * width, n_groups), dtype=np.int64)
    np.add.at(tally, (pixel_index, groups), 1)
    dominant = np.where(counts.ravel() > 0, tally.argmax(axis=1), -1).reshape(height, width)
    return counts, dominant


def show_store(path, out, *, n_per_class: int = 4, seed: int = 0) -> None:
    """Draw sample images per class, the mean image per class with their difference, and the
    feature layout on the grid, into a PNG at ``out``."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("fastimg show needs matplotlib (a dependency of fastimg): "
                          "pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reader = store.StoreReader(path)
    if not reader.has_labels:
        raise store.StoreError(f"{path} holds images without labels (made by `fastimg images`); "
                               f"show needs a dataset built by `fastimg build-dataset`")
    images, labels = reader.images, reader.labels()
    names = reader.class_names
    values = np.unique(labels)
    rows = _class_rows(labels, n_per_class, seed)
    means = _mean_images(images, labels)
    layout = reader.layout()
    grid = tuple(layout.config.grid)
    n_layers = len(reader.provenance.get("layers") or [])
    pixel_index = np.asarray(layout.pixel_index_, dtype=np.int64)
    group_size = pixel_index.size // n_layers if n_layers else None
    counts, dominant = layout_map(pixel_index, grid, group_size)

    n_cols = max(n_per_class, len(values) + 1, 3)
    fig, axes = plt.subplots(len(values) + 2, n_cols, figsize=(2.2 * n_cols,
                                                               2.3 * (len(values) + 2)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, value in enumerate(values):
        name = names[r] if r < len(names) else str(value)
        for c, row in enumerate(rows[int(value)]):
            ax = axes[r, c]
            ax.imshow(np.asarray(images[int(row)], dtype=np.float32), cmap="gray")
            ax.set_title(f"{name} #{int(row)}", fontsize=8)
    r = len(values)
    for c, value in enumerate(values):
        axes[r, c].imshow(means[int(value)], cmap="gray")
        axes[r, c].set_title(f"mean {names[c] if c < len(names) else value}", fontsize=8)
    if len(values) >= 2:
        diff = means[int(values[-1])] - means[int(values[0])]
        bound = float(np.abs(diff).max()) or 1.0
        ax = axes[r, len(values)]
        ax.imshow(diff, cmap="RdBu_r", vmin=-bound, vmax=bound)
        ax.set_title(f"{names[-1]} - {names[0]}", fontsize=8)
    r += 1
    ax = axes[r, 0]
    ax.imshow(counts, cmap="viridis")
    ax.set_title(f"features per pixel ({int((counts > 0).sum())} used)", fontsize=8)
    if dominant is not None:
        ax = axes[r, 1]
        masked = np.ma.masked_less(dominant, 0)
        ax.imshow(masked, cmap="tab10", vmin=0, vmax=9)
        ax.set_title("dominant layer per pixel", fontsize=8)
    fig.suptitle(f"{path}: {images.shape[0]} images {grid[0]} x {grid[1]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    logger.info("wrote %s", out)
