"""The main job: a labelled text corpus -> one zarr store of embeddings and DeepInsight images.

Stages (each resumable; the unfinished store lives at ``OUT.partial`` until the last one ends):

1. corpus  -- :func:`fastimg.corpus.load_corpus`: ids, texts, labels, split
2. encode  -- :func:`fastimg.embed.encode_to_array` into ``embeddings`` (resumes by chunk)
3. layout  -- :class:`fastimg.layout.DeepInsightLayout` fitted on the training rows (or all rows,
   the author's variant); the fitted map is kept in the store's attrs
4. raster  -- :func:`fastimg.raster.rasterize_to_array` into ``images`` (resumes by chunk)

A rerun with the same settings continues where the last one stopped and ends with the same
bytes; other settings are refused unless ``force``. The completion marker is written last.
"""
from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from fastimg import __version__, store
from fastimg.raster import IMAGE_DTYPES

logger = logging.getLogger("fastimg.dataset")

FIT_ON = ("train", "all")
_PROVENANCE_PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "numba", "zarr",
                        "openTSNE", "scikit-learn")


@dataclass(frozen=True)
class DatasetConfig:
    """Settings of the build beyond each stage's own config.

    Parameters
    ----------
    fit_on : {"train", "all"}
        Rows the layout is fitted on. ``"train"`` (default) keeps validation and test rows out
        of the layout; ``"all"`` reproduces the author's code, which fits t-SNE on every review
        before splitting (the layout then sees the evaluation data).
    image_dtype : {"float16", "float32", "uint8"}
        dtype of the stored images (``uint8`` maps [0, 1] to 0..255).
    raster_backend : {"auto", "cpu", "cuda", "numpy"}
        Rasterisation kernel.
    """

    fit_on: str = "train"
    image_dtype: str = "float16"
    raster_backend: str = "auto"

    def __post_init__(self):
        if self.fit_on not in FIT_ON:
            raise ValueError(f"fit_on must be one of {FIT_ON}, got {self.fit_on!r}")
        if self.image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"image dtype must be one of {IMAGE_DTYPES}, got {self.image_dtype!r}")


def _versions() -> dict:
    out = {"fastimg": __version__, "python": platform.python_version()}
    for package in _PROVENANCE_PACKAGES:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def _write_corpus_arrays(group, corpus) -> None:
    n_rows = len(corpus)
    codes = np.array([store.SPLIT_NAMES.index(s) for s in corpus.split], dtype=np.int8)
    chunks = (max(1, min(n_rows, 65536)),)
    for name, data in ((store.IDS, np.asarray(corpus.ids, dtype=str)),
                       (store.LABELS, np.asarray(corpus.labels, dtype=np.int64)),
                       (store.SPLIT, codes)):
        array = group.create_array(name, shape=(n_rows,), dtype=str if data.dtype.kind == "U"
                                   else data.dtype, chunks=chunks, overwrite=True)
        array[:] = data


def _fit_rows(split_codes: np.ndarray, fit_on: str) -> np.ndarray:
    if fit_on == "all":
        return np.arange(split_codes.shape[0])
    rows = np.flatnonzero(split_codes == store.SPLIT_NAMES.index("train"))
    if rows.size < 2:
        raise ValueError(f"the training split has {rows.size} rows; the layout needs at least 2 "
                         f"(use a larger --limit, or --fit-on all)")
    return rows


def _fit_layout(group, layout_config, fit_on):
    from fastimg.layout import DeepInsightLayout

    rows = _fit_rows(group[store.SPLIT][:], fit_on)
    train = group[store.EMBEDDINGS].get_orthogonal_selection((rows, slice(None)))
    logger.info("fitting the layout on %d rows (%s)", rows.size, fit_on)
    return DeepInsightLayout(layout_config).fit(train)


def _rasterise(group, layout, config, rows_done, progress) -> None:
    from fastimg.raster import rasterize_to_array

    embeddings = group[store.EMBEDDINGS]
    n_rows = embeddings.shape[0]
    if store.IMAGES not in group:
        store.create_images(group, n_rows, layout.config.grid, config.image_dtype)

    def record(stop):
        store.update_build_state(group, raster_rows_done=stop)

    rasterize_to_array(embeddings, layout.raster_plan(), group[store.IMAGES],
                       backend=config.raster_backend, start_row=rows_done, progress=progress,
                       on_block=record)


def build_dataset(out, corpus_config, encoder_config=None, layout_config=None,
                  config: DatasetConfig | None = None, *, force: bool = False,
                  progress: bool = True, on_stage=None) -> dict:
    """Build (or resume building) the image dataset of a text corpus at ``out``.

    Parameters
    ----------
    out : str or path
        The zarr store to write; it is built at ``out + '.partial'`` and renamed when complete.
    corpus_config : fastimg.corpus.CorpusConfig
    encoder_config : fastimg.embed.EncoderConfig, optional
    layout_config : fastimg.layout.LayoutConfig, optional
    config : DatasetConfig, optional
    force : bool
        Overwrite an existing store, or an unfinished build with other settings.
    progress : bool
        Progress bars for the long stages.
    on_stage : callable, optional
        ``on_stage(name)`` when a stage starts (the CLI prints them; tests interrupt with it).

    Returns
    -------
    dict
        The summary stored in the store's attrs: rows, classes, counts, image shape, timings.

    Raises
    ------
    fastimg.corpus.CorpusError, ValueError, fastimg.store.StoreError
        For bad input or settings; nothing that looks complete is left behind.
    """
    from fastimg.corpus import load_corpus
    from fastimg.embed import EncoderConfig, encode_to_array, resolve_model
    from fastimg.layout import DeepInsightLayout, LayoutConfig

    encoder_config = encoder_config or EncoderConfig()
    layout_config = layout_config or LayoutConfig()
    config = config or DatasetConfig()
    on_stage = on_stage or (lambda name: None)
    configs = {"corpus": corpus_config.to_dict(), "encoder": encoder_config.to_dict(),
               "layout": layout_config.to_dict(), "dataset": asdict(config)}

    timings = {}
    start = time.perf_counter()
    on_stage("corpus")
    corpus = load_corpus(corpus_config)
    timings["corpus_s"] = time.perf_counter() - start
    # a model that cannot be found fails here, before anything is written
    resolve_model(encoder_config.model, encoder_config.revision)

    group, resumed = store.resume_or_create_partial(out, {"configs": configs}, force=force)
    state = dict(group.attrs.get(store.BUILD_KEY, {}))
    if resumed:
        logger.info("resuming the unfinished build at %s", store.partial_path(out))
    timings = {**state.get("timings", {}), **timings}
    if not state.get("corpus_done"):
        _write_corpus_arrays(group, corpus)
        state = store.update_build_state(group, corpus_done=True, corpus=corpus.summary())

    on_stage("encode")
    start = time.perf_counter()
    encode_stats = {}
    embeddings = encode_to_array(corpus.texts, encoder_config, group, name=store.EMBEDDINGS,
                                 progress=progress, stats=encode_stats)
    timings["encode_s"] = timings.get("encode_s", 0.0) + time.perf_counter() - start
    state = store.update_build_state(group, timings=timings)

    on_stage("layout")
    if "layout" in state:
        layout = DeepInsightLayout.from_dict(state["layout"])
    else:
        start = time.perf_counter()
        layout = _fit_layout(group, layout_config, config.fit_on)
        timings["layout_s"] = time.perf_counter() - start
        state = store.update_build_state(group, layout=layout.to_dict(), timings=timings)

    on_stage("raster")
    start = time.perf_counter()
    _rasterise(group, layout, config, int(state.get("raster_rows_done", 0)), progress)
    timings["raster_s"] = timings.get("raster_s", 0.0) + time.perf_counter() - start

    embed_meta = dict(embeddings.attrs.get("fastimg_embed", {}))
    summary = {
        "rows": len(corpus), "classes": len(corpus.class_names),
        "class_names": list(corpus.class_names), "counts": corpus.counts(),
        "features": int(embeddings.shape[1]), "image_shape": list(layout.config.grid),
        "image_dtype": config.image_dtype, "occupied_pixels": layout.n_occupied_pixels,
        "timings": timings, "resumed": resumed,
    }
    provenance = {
        "model": encoder_config.model, "revision": encoder_config.revision,
        "model_fingerprint": embed_meta.get("settings", {}).get("model_fingerprint"),
        "layers": encode_stats.get("layers"), "device": encode_stats.get("device"),
        "compute_dtype": encode_stats.get("compute_dtype"),
        "layout_backend": getattr(layout, "backend_", None), "seed": corpus_config.seed,
        "versions": _versions(), "platform": platform.platform(),
    }
    store.finish(group, out, {"kind": "dataset", "config": configs, "layout": layout.to_dict(),
                              "corpus": corpus.summary(), "provenance": provenance,
                              "summary": summary})
    return summary


def load_layout(path):
    """The fitted :class:`~fastimg.layout.DeepInsightLayout` stored in a finished store."""
    from fastimg.layout import DeepInsightLayout

    attrs = store.open_store(path).attrs[store.ATTRS_KEY]
    return DeepInsightLayout.from_dict(attrs["layout"])


def texts_to_images(path, texts, *, progress: bool = False) -> np.ndarray:
    """Images of new ``texts`` made exactly as the store at ``path`` made its own.

    Encodes with the store's encoder settings and rasterises with its fitted layout.

    Returns
    -------
    ndarray of float32, shape (len(texts), height, width)
    """
    from fastimg.embed import EncoderConfig, encode
    from fastimg.layout import DeepInsightLayout

    attrs = store.open_store(path).attrs[store.ATTRS_KEY]
    encoder_config = EncoderConfig.from_dict(attrs["config"]["encoder"])
    features = encode(texts, encoder_config, progress=progress)
    return DeepInsightLayout.from_dict(attrs["layout"]).transform(features)
