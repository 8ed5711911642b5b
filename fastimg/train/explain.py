"""Which embedding features a trained run uses: attribution maps, mapped back to features.

For every image of a split, an attribution map of its true class is computed with captum
(``pip install 'fastimg[explain]'``); the maps are averaged per class, and every feature takes
the importance of the pixel the run's layout put it on. Outputs: ``features.csv`` (ranked) and
``importance.png`` (per-class heat maps over the grid, per-layer totals).

Which method, and why
---------------------
The features live on single pixels, so the map must be at input resolution. A class
activation map is only as sharp as the layer it is taken at, and the paper's extractor cuts
shrink the image at once (alexnet's first conv is 11 x 11 with stride 4: a 24 x 24 image is
5 x 5 after it), so Grad-CAM on any conv layer, upsampled back, smears each hot spot over a
dozen pixels. Gradient methods give one value per pixel. Of those, integrated gradients
(Sundararajan et al., 2017; ``captum.attr.IntegratedGradients``) from a zero baseline is the
default: with the default ``dataset`` normalisation zero *is* the training split's mean image,
so a pixel's attribution is what its deviation from the mean adds to the class's logit (taken
relative to the mean of the logits, the part softmax sees), and the attributions of one image
sum to that logit minus the mean image's. The maps are averaged
*signed*: a pixel that carries no signal averages to zero, whereas methods that clip each map
at zero (pytorch-grad-cam's CAMs, HiResCAM = ReLU(gradient x input) at an input layer) give
every noisy pixel a positive bias proportional to its gradient.

Measured on the synthetic check of ``tests/test_explain.py`` (600 features, 24 of which carry
the label, 24 x 24 PCA layout, alexnet with random weights, 30 epochs, seeds 0-2): precision
of the top 24 at recovering the 24 -- see :data:`METHODS`.

Features that share a pixel share its importance (the image cannot tell them apart); the
``pixel_features`` column says how many share it, and per-layer totals split a pixel's
importance equally among its features.
"""
from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fastimg._figures import save_figure
from fastimg._files import replace_file
from fastimg._validation import (check_can_write, check_count, check_seed,
                                 file_in_the_way, is_whole)
from fastimg.train.bundle import RunBundleError

logger = logging.getLogger("fastimg.train")

#: Attribution methods (captum). Precision of the top 24 features at recovering the 24
#: label-carrying ones on the synthetic check (400 rows, 120 of them val, signal 0.8 sd per
#: feature, 30 epochs; seeds 0, 1, 2). With the default preset and layout (frozen cut + pixel
#: branch, weight decay 0.1, one pixel per feature; centred logits):
#: ``integrated_gradients`` (default) 1.0 / 1.0 / 1.0; ``input_x_gradient`` 1.0 / 1.0 / 1.0;
#: ``gradcam`` 0.0 / 0.0 / 0.0 (a CAM sees the conv route only, and the pixel branch carries
#: the signal; 0.12 / 0.0 / 0.25 with the binned layout). With the previous default (the
#: nopool cut, trained, no pixel branch), when written: integrated gradients 0.92 / 0.92 /
#: 0.96; ``input_x_gradient`` (gradient x input, one pass) 0.83 / 0.92 / 0.88; ``gradcam``
#: (captum's LayerGradCam on the extractor's first conv block, upsampled to the grid: the
#: classic CAM, blurry here) 0.83 / 0.83 / 0.54.
#: pytorch-grad-cam's HiResCAM at an input identity layer (clipped at zero per image) measured
#: 0.75 / 0.92 / 0.71 on those runs, its Grad-CAM on the first block 0.79 / 0.88 / 0.50.
METHODS = ("integrated_gradients", "input_x_gradient", "gradcam")
FEATURES_FILE = "features.csv"
IMAGE_FILE = "importance.png"


def _import_captum():
    try:
        import captum.attr
    except ImportError as exc:
        raise ImportError(f"fastimg explain needs captum ({exc}); install it with "
                          f"pip install 'fastimg[explain]'") from None
    return captum.attr


class _AttributionModel(nn.Module):
    """The run's classifier on normalised ``[B, H, W]`` images, with fixed embeddings for runs
    that fuse them (captum attributes the first argument only), returning centred logits.

    Softmax depends only on differences of logits, so a component shared by every class's
    logit is arbitrary (weight decay decides it): attributed alone, a class's raw logit could
    credit a feature with the opposite sign of the evidence it gives. Each logit minus the
    mean of the logits is the class's evidence against the others, invariant to that shift."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.embeddings = None

    def forward(self, x):
        logits = self.model(x, self.embeddings)
        return logits - logits.mean(dim=1, keepdim=True)


def _attributor(method: str, wrapped, extractor, image_shape):
    attr = _import_captum()
    if method == "integrated_gradients":
        ig = attr.IntegratedGradients(wrapped)
        return lambda x, t: ig.attribute(x, target=t, n_steps=32, internal_batch_size=len(x))
    if method == "input_x_gradient":
        ixg = attr.InputXGradient(wrapped)
        # captum warns when it has to switch requires_grad on itself
        return lambda x, t: ixg.attribute(x.requires_grad_(True), target=t)
    layer = attr.LayerGradCam(wrapped, _first_conv_block(extractor))

    def gradcam(x, t):
        cam = layer.attribute(x, target=t, relu_attributions=True)
        return attr.LayerAttribution.interpolate(cam, image_shape, "bilinear")[:, 0]
    return gradcam


def mean_attribution_maps(run, images, targets, embeddings=None, *,
                          method: str = "integrated_gradients", batch_size: int = 64,
                          progress: bool = False) -> np.ndarray:
    """Mean attribution map per class: ``[n_classes, H, W]``.

    Parameters
    ----------
    run : fastimg.train.Run
    images : ndarray, shape (n, H, W)
        Raw images as stored (``uint8`` ones read in [0, 1], as the trainer read them;
        normalised here with the run's normaliser).
    targets : ndarray of int, shape (n,)
        True class of each image; each image is attributed to its true class.
    embeddings : ndarray, optional
        For runs that fuse the embedding.
    method : {"integrated_gradients", "input_x_gradient", "gradcam"}
    batch_size : int
    progress : bool
        A tqdm bar over the images.
    """
    from tqdm.auto import tqdm

    from fastimg.train.data import as_loaded

    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    check_count("batch_size", batch_size)
    wrapped = _AttributionModel(run.model).to(run.device).eval()
    attribute = _attributor(method, wrapped, run.model.extractor, tuple(images.shape[1:]))
    n_classes = len(run.class_names)
    sums = np.zeros((n_classes, *images.shape[1:]), dtype=np.float64)
    counts = np.zeros(n_classes, dtype=np.int64)
    bar = tqdm(total=images.shape[0], unit="image", desc=method, disable=not progress)
    for start in range(0, images.shape[0], batch_size):
        # as the trainer read them: a uint8 store's images in [0, 1], not 0..255
        batch = torch.from_numpy(np.ascontiguousarray(as_loaded(np.asarray(
            images[start:start + batch_size])))).to(run.device)
        x = run.normaliser(batch)
        if embeddings is not None and run.config.fuse_embedding:
            wrapped.embeddings = torch.from_numpy(np.asarray(
                embeddings[start:start + batch_size], dtype=np.float32)).to(run.device)
        y = np.asarray(targets[start:start + batch_size], dtype=np.int64)
        maps = attribute(x, torch.from_numpy(y).to(run.device)).detach().cpu().numpy()
        np.add.at(sums, y, maps.astype(np.float64))
        counts += np.bincount(y, minlength=n_classes)
        bar.update(len(y))
    bar.close()
    missing = [run.class_names[c] for c in np.flatnonzero(counts == 0)]
    if missing:
        logger.warning("no images of class(es) %s in the split: their importance is 0", missing)
    return (sums / np.maximum(counts, 1)[:, None, None]).astype(np.float32)


@dataclass
class Explanation:
    """What :func:`explain` returns.

    Attributes
    ----------
    pixel_importance : ndarray, shape (n_classes, H, W)
        Mean signed attribution of each class over the split's images of that class.
    feature_importance : ndarray, shape (n_features, n_classes)
        Each feature's pixel's importance.
    importance : ndarray, shape (n_features,)
        Mean over the classes (each class weighs the same).
    ranking : ndarray of int64
        Feature indices, most important first.
    layer_totals : ndarray, shape (n_layers,)
        Sum of ``importance`` over each layer's features, each pixel's importance split
        equally among the features on it.
    class_names, layers : list
        ``layers``: the ``hidden_states`` index of each concatenated layer, when known.
    hidden_size, rows : int
    method, split : str
    pixel_index : ndarray of int64, shape (n_features,)
        The flat pixel (``row * W + col``) of each feature.
    pixel_features : ndarray of int64, shape (n_features,)
        How many features share each feature's pixel.
    grid : tuple
        ``(H, W)``.
    files : dict
        Paths written (``features``, ``image``), when ``out_dir`` was given.
    """

    # the per-feature and per-pixel arrays are out of the repr, which a notebook shows
    pixel_importance: np.ndarray = field(repr=False)
    feature_importance: np.ndarray = field(repr=False)
    importance: np.ndarray = field(repr=False)
    ranking: np.ndarray = field(repr=False)
    layer_totals: np.ndarray
    class_names: list
    layers: list
    hidden_size: int
    rows: int
    method: str
    split: str
    pixel_index: np.ndarray = field(default=None, repr=False)
    pixel_features: np.ndarray = field(default=None, repr=False)
    grid: tuple = ()
    files: dict = field(default_factory=dict)

    def top(self, k: int) -> np.ndarray:
        """The ``k`` most important feature indices (all of them when ``k`` is larger).

        Raises
        ------
        ValueError
            When ``k`` is not a whole number >= 0 (``top(-1)`` gave every feature but the
            least important one).
        """
        return self.ranking[:check_count("k", k, 0)]

    def feature_origin(self, feature: int) -> tuple:
        """``(layer, encoder_layer, dimension)`` of ``feature``: its layer's position in the
        concatenation, that layer's ``hidden_states`` index (None when unknown) and its
        dimension in the layer.

        Raises
        ------
        ValueError
            When ``feature`` is not a feature index (0 to ``n_features - 1``).
        """
        n_features = len(self.importance)
        if not is_whole(feature) or not 0 <= feature < n_features:
            raise ValueError(f"feature must be a feature index from 0 to {n_features - 1}, "
                             f"got {feature!r}")
        layer, dim = divmod(int(feature), self.hidden_size)
        return layer, self.layers[layer] if layer < len(self.layers) else None, dim


def _first_conv_block(extractor):
    """The extractor's first block with a conv (the highest-resolution conv output)."""
    for block in extractor:
        if any(isinstance(m, nn.Conv2d) for m in block.modules()):
            return block
    raise ValueError("the extractor has no conv layer")


def explain(run_dir, *, split: str = "val", out_dir=None, method: str = "integrated_gradients",
            max_rows: int | None = None, batch_size: int = 64, device: str = "cpu",
            seed: int = 0, progress: bool = False, store=None,
            storage_options: dict | None = None) -> Explanation:
    """Rank the embedding features a trained run relies on.

    Parameters
    ----------
    run_dir : str or path
        A run folder written by :func:`fastimg.train.fit` (a loaded
        :class:`~fastimg.train.Run` is refused: pass its ``run_dir``); its training store must exist
        (the split's images are read from it).
    split : {"val", "train", "test"}
    out_dir : str or path, optional
        Writes ``features.csv`` and ``importance.png`` there.
    method : {"integrated_gradients", "input_x_gradient", "gradcam"}
        See :data:`METHODS` and the module docstring.
    max_rows : int, optional
        A seeded random sample of at most this many rows of the split.
    batch_size : int
        Images per attribution batch.
    device : str
        Torch device of the classifier: ``"cpu"`` (the default; ``fastimg explain --device``
        defaults to ``"auto"``), ``"cuda[:N]"`` or ``"auto"``.
    seed : int
        Seeds the ``max_rows`` sample.
    progress : bool
        A tqdm bar over the images (attributions take tens of milliseconds per image on a CPU).
    store : str or path, optional
        The store to read the split from, when the run's training store (the default, as
        recorded in the run) has moved; it must have the run's layout (checked).
    storage_options : dict, optional
        fsspec options (an endpoint, credentials) for the store when it is a URL.

    Returns
    -------
    Explanation

    Raises
    ------
    RunBundleError
        When the run's store is gone (explain reads the split from it), was rebuilt with
        another layout or other classes, or has no such rows.
    NotADirectoryError
        When ``out_dir`` is a file (before any work).
    fastimg.store.StoreError
        When ``out_dir`` is a store or lies inside one (before any work).
    ImportError
        Without captum (``pip install 'fastimg[explain]'``).
    """
    from fastimg.store import StoreReader
    from fastimg.store.location import (check_outside_stores, exists, is_complete, is_local,
                                        partial_path, resolve)
    from fastimg.store.reader import why_not_a_store
    from fastimg.train.data import ChunkedReader
    from fastimg.train.predict import check_run_dir, load_run

    check_run_dir(run_dir)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    if max_rows is not None:
        check_count("max_rows", max_rows)
    check_count("batch_size", batch_size)
    check_seed("seed", seed)
    if out_dir is not None:
        out_dir = Path(out_dir)
        blocker = file_in_the_way(out_dir)  # refused before the attributions
        if blocker is not None:
            raise NotADirectoryError(f"{blocker} is a file, not a folder (to write "
                                     f"{FEATURES_FILE} and {IMAGE_FILE} into {out_dir})")
        check_outside_stores(out_dir, deleted=f"{FEATURES_FILE} and {IMAGE_FILE}",
                             instead="an output path outside it")
        check_can_write(out_dir, f"{FEATURES_FILE} and {IMAGE_FILE} into {out_dir}")
    run = load_run(run_dir, device=device)
    store_path = run.store_path if store is None else store
    if store_path:
        store_path = resolve(store_path, storage_options)
        if storage_options and is_local(store_path):  # the run's own store, perhaps
            logger.warning("storage_options (for store URLs such as s3://...) ignored for the "
                           "local store %s", store_path)
    if not store_path or not is_complete(store_path):
        if store_path and (store is not None or exists(store_path)
                           or exists(partial_path(store_path))):  # unfinished, or no store
            raise RunBundleError(why_not_a_store(store_path))
        raise RunBundleError(
            f"the training store of {run_dir} ({store_path}) is gone: explain reads the "
            f"{split} images from it (moved? give its new path: --store, store=)")
    if run.layout is None:
        raise RunBundleError(f"{run_dir} has no layout to map pixels back to features")
    reader = StoreReader(store_path)
    if not reader.has_labels:
        raise RunBundleError(f"{store_path} holds images without labels (made by `fastimg "
                             f"images`): explain reads a split's labelled images")
    if not np.array_equal(reader.layout().pixel_index_, run.layout.pixel_index_):
        raise RunBundleError(f"{store_path} does not have the layout {run_dir} was trained on "
                             f"(rebuilt with another layout since, or another store): its "
                             f"images do not fit the run")
    if reader.class_names != run.class_names:  # its labels would index other classes
        raise RunBundleError(f"{store_path} has the classes {reader.class_names}, not the "
                             f"classes {run.class_names} {run_dir} was trained on (labelled "
                             f"from another column?): its labels do not fit the run")
    rows = reader.rows(split)
    if rows.size == 0:
        raise RunBundleError(f"{store_path} has no {split} rows")
    if max_rows is not None and rows.size > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
    images = ChunkedReader(reader.images).read(rows)
    targets = reader.targets()[rows]
    embeddings = None
    if run.config.fuse_embedding:
        embeddings = ChunkedReader(reader.embeddings).read(rows)
    logger.info("explain %s: %s attributions of %d %s images", run_dir, method, rows.size, split)
    pixel_importance = mean_attribution_maps(run, images, targets, embeddings, method=method,
                                             batch_size=batch_size, progress=progress)
    result = _to_features(run, pixel_importance, method=method, split=split, rows=rows.size)
    if out_dir is not None:
        result.files.update(_write_files(result, out_dir))
    return result


def _write_files(result: Explanation, out_dir: Path) -> dict:
    """``features.csv`` and ``importance.png`` into ``out_dir``, both or neither: written
    into a temporary folder there, then moved in one after the other, so that an explain
    stopped while writing (Ctrl-C) leaves the earlier pair, or none, never a new ranking
    beside an old figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".explain-", dir=out_dir))
    files = {"features": out_dir / FEATURES_FILE, "image": out_dir / IMAGE_FILE}
    try:
        write_features_csv(result, staging / FEATURES_FILE)
        plot_importance(result, staging / IMAGE_FILE)
        for path in files.values():
            if path.is_symlink():  # a user's link to a file elsewhere: written through
                shutil.copyfile(staging / path.name, path)
            else:
                os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files


def _to_features(run, pixel_importance, *, method, split, rows) -> Explanation:
    pix = np.asarray(run.layout.pixel_index_, dtype=np.int64)
    n_features = pix.size
    n_classes = pixel_importance.shape[0]
    flat = pixel_importance.reshape(n_classes, -1)
    per_class = flat[:, pix].T.astype(np.float64)            # [F, K]
    overall = per_class.mean(axis=1)
    # most important first; ties (features on one pixel) by feature index
    ranking = np.lexsort((np.arange(n_features), -overall))
    hidden = int(run.bundle.get("hidden_size") or n_features)
    layers = run.bundle.get("layers") or list(range(-(-n_features // hidden)))
    share = run.layout.feature_density().ravel()[pix]  # the features on each one's pixel
    layer_of = np.arange(n_features) // hidden
    totals = np.bincount(layer_of, weights=overall / share, minlength=len(layers))
    return Explanation(
        pixel_importance=pixel_importance, feature_importance=per_class, importance=overall,
        ranking=ranking, layer_totals=totals, class_names=list(run.class_names),
        layers=list(layers), hidden_size=hidden, rows=int(rows), method=method, split=split,
        pixel_index=pix, pixel_features=share, grid=tuple(pixel_importance.shape[1:]))


def write_features_csv(result: Explanation, path) -> Path:
    """``features.csv``: one row per feature, most important first.

    Columns: ``rank, feature, layer`` (``feature // hidden_size``, the position in the
    concatenation), ``encoder_layer`` (the ``hidden_states`` index it came from, when known),
    ``dimension`` (``feature % hidden_size``), ``row, col`` (its pixel), ``pixel_features``
    (features sharing that pixel), ``importance`` (mean over classes) and
    ``importance_<class>``. Written beside ``path`` and moved onto it, as the figure is.
    """
    path = Path(path)
    width = result.grid[1]

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["rank", "feature", "layer", "encoder_layer", "dimension", "row",
                             "col", "pixel_features", "importance",
                             *(f"importance_{c}" for c in result.class_names)])
            for rank, f in enumerate(result.ranking.tolist(), start=1):
                layer, encoder_layer, dim = result.feature_origin(f)
                row, col = divmod(int(result.pixel_index[f]), width)
                writer.writerow([rank, f, layer, "" if encoder_layer is None else encoder_layer,
                                 dim, row, col, int(result.pixel_features[f]),
                                 f"{result.importance[f]:.6g}",
                                 *(f"{v:.6g}" for v in result.feature_importance[f])])

    # beside it, then moved onto it: a write cut short leaves the earlier file whole, not the
    # first rows of a ranking under its name
    replace_file(path, write)
    return path


def plot_importance(result: Explanation, path) -> Path:
    """``importance.png``: the mean attribution of each class and overall over the grid
    (red: towards the class, blue: against it), and a bar chart of the per-layer totals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f"class {name}", result.pixel_importance[k])
              for k, name in enumerate(result.class_names)]
    panels.append(("overall (mean of classes)", result.pixel_importance.mean(0)))
    n = len(panels) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4))
    for ax, (title, image) in zip(axes, panels):
        # signed attributions: a diverging map centred on zero
        limit = float(np.abs(image).max()) or 1.0
        shown = ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ax = axes[-1]
    # positions and tick labels, not string categories (matplotlib logs "Using categorical
    # units" for those, twice, in a notebook that shows INFO)
    positions = np.arange(len(result.layers))
    ax.bar(positions, result.layer_totals, color="tab:blue")
    ax.set_xticks(positions, [str(layer) for layer in result.layers])
    ax.set_title("importance per encoder layer", fontsize=9)
    ax.set_xlabel("hidden_states index")
    fig.suptitle(f"{result.method} over {result.rows} {result.split} images", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)
