"""A picture of a finished store that a person can look at: samples, class means, the layout."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fastimg import store
from fastimg._figures import save_figure
from fastimg._validation import (check_can_write, check_count, check_seed,
                                 file_in_the_way)
from fastimg.raster import image_unit

logger = logging.getLogger("fastimg.show")

#: most sample images drawn per class: each is two panels with colour bars, so that a figure of
#: 60 per class (a 120-row store) was still drawing after 120 s, and past this it is unreadable
MAX_PER_CLASS = 16


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


def layout_map(layout, group_size: int | None = None):
    """Features per pixel of the fitted ``layout`` (:meth:`DeepInsightLayout.feature_density
    <fastimg.layout.DeepInsightLayout.feature_density>`), and (when ``group_size`` is given,
    e.g. the hidden size of the encoder) the feature group (layer) most represented on each
    pixel (-1 where empty)."""
    counts = layout.feature_density()
    if not group_size:
        return counts, None
    height, width = counts.shape
    pixel_index = np.asarray(layout.pixel_index_, dtype=np.int64)
    groups = np.arange(pixel_index.size) // group_size
    n_groups = int(groups.max()) + 1
    tally = np.zeros((height * width, n_groups), dtype=np.int64)
    np.add.at(tally, (pixel_index, groups), 1)
    dominant = np.where(counts.ravel() > 0, tally.argmax(axis=1), -1).reshape(height, width)
    return counts, dominant


def pixel_stats(images, rows: np.ndarray, block_rows: int = 8192, min_std: float = 1e-6):
    """Per-pixel mean and standard deviation of ``images[rows]``, streamed block by block.

    Pixels whose deviation is below ``min_std`` (empty or constant pixels) get a deviation of
    1, so that standardising leaves them at 0 instead of amplifying rounding noise.
    """
    rows = np.asarray(rows, dtype=np.int64)
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, rows.size, block_rows):
        chunk = rows[start:start + block_rows]
        block = np.asarray(images[int(chunk.min()):int(chunk.max()) + 1],
                           dtype=np.float64)[chunk - chunk.min()]
        total = total + block.sum(axis=0)
        total_sq = total_sq + np.square(block).sum(axis=0)
        count += chunk.size
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return mean, np.where(std < min_std, 1.0, std)


def standardise(image, mean, std) -> np.ndarray:
    """``(image - mean) / std`` per pixel: how a sample differs from the typical one."""
    return (np.asarray(image, dtype=np.float64) - mean) / std


def _class_contrast(means: dict, values, names) -> tuple:
    """Where the classes differ, as one image: ``mean B - mean A`` for two classes (signed),
    the spread (standard deviation) of the class means for more, whose every class counts (a
    difference of two would hide the others); ``(None, "")`` for one class."""
    if len(values) < 2:
        return None, ""
    if len(values) == 2:
        return (means[int(values[1])] - means[int(values[0])],
                f"mean {names[values[1]]} - mean {names[values[0]]}")
    stacked = np.stack([means[int(v)] for v in values])
    return stacked.std(axis=0), f"spread of the {len(values)} class means (std)"


def _contrast_image(ax, fig, data, title, signed: bool):
    """A contrast of :func:`_class_contrast`: a signed one on a diverging map centred on 0,
    a spread on a sequential one."""
    if signed:
        bound = float(np.abs(data).max()) or 1.0
        _image(ax, fig, data, title, cmap="RdBu_r", vmin=-bound, vmax=bound)
    else:
        _image(ax, fig, data, title, cmap="magma")


def _image(ax, fig, data, title, **kwargs):
    """One image with a colour bar of its values."""
    shown = ax.imshow(data, **kwargs)
    ax.set_title(title, fontsize=7)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)


def _layer_legend(ax, dominant, layer_names) -> None:
    """The dominant layer per pixel, one colour per layer, with a legend naming them."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colours = plt.get_cmap("tab10" if len(layer_names) <= 10 else "tab20").colors
    colours = [colours[i % len(colours)] for i in range(len(layer_names))]
    ax.imshow(np.ma.masked_less(dominant, 0), cmap=ListedColormap(colours), vmin=-0.5,
              vmax=len(layer_names) - 0.5, interpolation="nearest")
    ax.set_title("dominant layer per pixel (white: empty)", fontsize=7)
    handles = [Patch(color=colours[i], label=name) for i, name in enumerate(layer_names)
               if np.any(dominant == i)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=6,
              frameon=False, title="hidden state", title_fontsize=6)


def _output_format(out) -> str:
    """The image format ``out`` is written in: its suffix's (``.png``, ``.pdf``, ``.svg``,
    ...), PNG without one, so that the file written is ``out`` itself (matplotlib would add
    ``.png`` to a name without a suffix).

    Raises
    ------
    IsADirectoryError
        When ``out`` is a folder.
    NotADirectoryError
        When a file stands where its folder would be.
    ValueError
        When matplotlib cannot write its suffix's format.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder; give the path of the PNG file to write")
    blocker = file_in_the_way(out.parent)  # a missing folder is made, as other outputs' are
    if blocker is not None:
        raise NotADirectoryError(f"{blocker} is a file, not a folder (to write {out} into)")
    check_can_write(out, out)
    suffix = out.suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    supported = FigureCanvasBase.get_supported_filetypes()
    if suffix not in supported:
        raise ValueError(f"cannot write {out}: unknown image format {out.suffix!r} (give a "
                         f".png path, or one of {', '.join(sorted(supported))})")
    return suffix


def _standardising_rows(reader, n_rows: int) -> tuple[np.ndarray, str]:
    """The rows whose per-pixel mean and deviation standardise the samples, and what they
    are: the training rows (of a dataset, or of an images store given a split), else those
    an images store's layout was fitted on; every row when fewer than 2."""
    summary = reader.summary
    if store.SPLIT in reader.group:
        rows, name = reader.rows("train"), "training images"
    else:  # an images store without a split
        fitted = summary.get("fit_rows") if summary.get("fit_on") == "first_rows" else n_rows
        rows, name = np.arange(fitted), "images the layout was fitted on"
    if rows.size < 2:
        return np.arange(n_rows), "images"
    return rows, name


def show_store(path, out, *, n_per_class: int = 4, seed: int = 0) -> None:
    """Draw a store into a PNG at ``out``: per class, sample images (raw, and standardised per
    pixel with the training rows' statistics, so that what differs between samples and
    classes shows), the class means and where they differ (two: their difference; more: their
    spread), and the feature layout (features per pixel, and the encoder layer that dominates
    each pixel, with a legend), each with a colour bar. The rows of a store made by
    ``fastimg images`` (no labels) are one group.

    ``out`` is written as its suffix says (``.png``; ``.pdf``, ``.svg`` and matplotlib's other
    formats too), as PNG without one, its missing folders made; a folder, a file where a
    folder would be, or an unknown suffix is refused before any work (``IsADirectoryError``,
    ``NotADirectoryError``, ``ValueError``)."""
    check_count("n_per_class", n_per_class)
    if n_per_class > MAX_PER_CLASS:
        raise ValueError(f"n_per_class must be at most {MAX_PER_CLASS} (two panels each per "
                         f"class: more is unreadable, and slow to draw), got {n_per_class}")
    check_seed("seed", seed)
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("fastimg show needs matplotlib (a dependency of fastimg): "
                          "pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image_format = _output_format(out)
    store.location.check_outside_stores(out, deleted="the drawing", instead="a file outside it")

    reader = store.StoreReader(path)
    images = reader.images
    if reader.has_labels:
        # class indices, not the stored values: a class with no rows here (one --limit
        # sampled none of) must not shift the names of the classes after it
        labels, names = reader.targets(), reader.class_names
    else:  # made by `fastimg images`: its rows are drawn as one group
        labels, names = np.zeros(images.shape[0], dtype=np.int64), ["image"]
    values = np.unique(labels)
    rows = _class_rows(labels, n_per_class, seed)
    # a uint8 store's codes drawn in [0, 1], as the trainer reads them and float stores hold
    unit = image_unit(images.dtype)
    means = {value: mean * unit for value, mean in _mean_images(images, labels).items()}
    fit_rows, fit_rows_name = _standardising_rows(reader, labels.size)
    pixel_mean, pixel_std = (stat * unit for stat in pixel_stats(images, fit_rows))
    layout = reader.layout()
    grid = tuple(layout.config.grid)
    layers = list(reader.provenance.get("layers") or [])
    group_size = layout.n_features // len(layers) if layers else None
    counts, dominant = layout_map(layout, group_size)

    # the class means and their contrast wrap over rows of the samples' width (one row of
    # 21 columns for 20 classes drew 882 axes, most of them empty); the samples are those the
    # classes have (a class of 3 rows drew 3 columns, not n_per_class)
    n_cols = max(max(len(drawn) for drawn in rows.values()), 3)
    mean_rows = -(-(len(values) + 1) // n_cols)
    n_rows = 2 * len(values) + mean_rows + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.3 * n_rows),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    raw_range = {"vmin": float(min(m.min() for m in means.values())),
                 "vmax": float(max(m.max() for m in means.values()))}
    for r, value in enumerate(values):
        name = names[value] if value < len(names) else str(value)
        for c, row in enumerate(rows[int(value)]):
            raw = np.asarray(images[int(row)], dtype=np.float32) * unit
            _image(axes[2 * r, c], fig, raw, f"{name} #{int(row)} raw", cmap="gray")
            z = standardise(raw, pixel_mean, pixel_std)
            _image(axes[2 * r + 1, c], fig, z, f"{name} #{int(row)} per-pixel z",
                   cmap="RdBu_r", vmin=-3, vmax=3)
    r = 2 * len(values)
    for c, value in enumerate(values):
        _image(axes[r + c // n_cols, c % n_cols], fig, means[int(value)],
               f"mean {names[value] if value < len(names) else value}", cmap="gray",
               **raw_range)
    contrast, contrast_title = _class_contrast(means, values, names)
    signed = len(values) == 2
    if contrast is not None:
        c = len(values)
        _contrast_image(axes[r + c // n_cols, c % n_cols], fig, contrast, contrast_title,
                        signed)
    r += mean_rows
    _image(axes[r, 0], fig, counts, f"features per pixel ({int((counts > 0).sum())} used)",
           cmap="viridis")
    if dominant is not None:
        _layer_legend(axes[r, 1], dominant, [f"layer {layer}" for layer in layers])
    if contrast is not None:
        _contrast_image(axes[r, 2], fig, contrast / pixel_std,
                        f"({contrast_title}) / pixel std" if signed else
                        f"{contrast_title} / pixel std", signed)
    fig.suptitle(f"{path}: {images.shape[0]} images {grid[0]} x {grid[1]}; per-pixel z uses "
                 f"the mean and deviation of {fit_rows.size} {fit_rows_name}", fontsize=9)
    # room for the title above the first row, whatever the figure's height
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, image_format=image_format)
    plt.close(fig)
    logger.info("wrote %s", out)
