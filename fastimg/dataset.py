"""The main job: a labelled text corpus -> one zarr store of embeddings and DeepInsight images.

Stages (the unfinished store lives at ``OUT.partial`` until the last one ends):

1. corpus  -- :func:`fastimg.corpus.load_corpus`: ids, texts, labels, split
2. encode  -- :func:`fastimg.embed.encode_to_array` into ``embeddings`` (resumes by chunk)
3. layout  -- :class:`fastimg.layout.DeepInsightLayout` fitted on the training rows (or all rows,
   the author's variant); the fitted map is kept in the store's attrs
4. images  -- :func:`fastimg.raster.rasterize_to_array` into ``images`` (resumes by chunk)

Each stage has a key (:mod:`fastimg.store.keys`) naming exactly what its output depends on. A
build reuses every stage whose key matches, from its own unfinished build or from the complete
store it replaces, and recomputes the stages that differ: encoding runs once per texts and
encoder, however many labels, splits, layouts and image settings are tried on them. :func:`relayout`
makes a new store from another store's embeddings.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from fastimg import __version__, stages, store
from fastimg._provenance import installed_versions
from fastimg._validation import check_config
from fastimg.embed.texts import EmptyTextWarning
from fastimg.images import split_codes, training_rows
from fastimg.info import copied_from
from fastimg.raster import RASTER_BACKENDS, check_image_dtype
from fastimg.store import StoreError, StoreReader, StoreWriter
from fastimg.store.keys import StagePlan, digest

logger = logging.getLogger("fastimg.dataset")

FIT_ON = ("train", "all")
_PROVENANCE_PACKAGES = ("torch", "transformers", "tokenizers", "onnxruntime", "numpy", "numba",
                        "zarr", "openTSNE", "scikit-learn")


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
        check_image_dtype(self.image_dtype)
        if self.raster_backend != "auto":  # the name; whether it runs here, the build says
            RASTER_BACKENDS.resolve(self.raster_backend)  # an unknown one: ValueError


def _versions() -> dict:
    return {"fastimg": __version__, "python": platform.python_version(),
            **installed_versions(*_PROVENANCE_PACKAGES)}


def corpus_digest(corpus, codes: np.ndarray) -> str:
    """sha256 of everything a corpus stage writes: ids, texts, labels, split ``codes``, class
    names."""
    from fastimg.embed import texts_digest

    return digest(texts_digest(corpus.texts), "\0".join(map(str, corpus.ids)),
                   np.asarray(corpus.labels, dtype=np.int64), codes,
                   json.dumps(list(corpus.class_names)),
                   json.dumps(None if corpus.class_values is None else list(corpus.class_values)))


def _fit_rows(split_codes: np.ndarray, fit_on: str) -> np.ndarray:
    if fit_on == "all":
        return np.arange(split_codes.shape[0])
    return training_rows(split_codes, " (use a larger limit, or fit_on='all')")


def ordered_counts(counts: dict, class_names) -> dict:
    """``{split: {class: rows}}`` in split order (train, val, test) and class order: the
    store's attrs keep JSON keys sorted as text (class ``10`` before ``2``, test before
    train), and the counts are read in order without their names (``train 6/12/24``)."""
    return {split: {name: counts[split].get(name, 0) for name in class_names}
            for split in store.SPLIT_NAMES if split in counts}


def _finish(writer: StoreWriter, *, configs: dict, corpus_summary: dict, encode: dict, layout,
            config, timings: dict, reused: list) -> dict:
    """Write the final attrs of a dataset store and move it in place; returns the summary.

    The seeds are in ``configs`` (the corpus's sample and split, the layout's random state),
    not in the provenance: a relayout's store named its source's corpus seed there, not the
    one its layout used."""
    writer.check_arrays()
    embeddings = writer.group[store.EMBEDDINGS]
    sources = copied_from({stage: writer.stage(stage) or {} for stage in reused}, writer.path)
    summary = {
        "rows": int(embeddings.shape[0]), "classes": corpus_summary["n_classes"],
        "class_names": list(corpus_summary["class_names"]),
        "counts": ordered_counts(corpus_summary["counts"], corpus_summary["class_names"]),
        "features": int(embeddings.shape[1]), "image_shape": list(layout.config.grid),
        "image_dtype": config.image_dtype, "occupied_pixels": layout.n_occupied_pixels,
        "timings": timings, "reused": reused, "reused_from": sources, "resumed": writer.resumed,
    }
    provenance = {
        "model": configs["encoder"]["model"], "revision": configs["encoder"]["revision"],
        "model_fingerprint": encode.get("model_fingerprint"),
        **{k: encode.get(k) for k in store.ENCODE_RUN_STATS},
        "layout_backend": getattr(layout, "backend_", None),
        "versions": _versions(), "platform": platform.platform(),
    }
    writer.finish({"kind": "dataset", "config": configs, "layout": layout.to_dict(),
                   "corpus": corpus_summary, "provenance": provenance, "summary": summary})
    if reused:
        logger.info("reused stages: %s", ", ".join(reused))
    return summary


def _reuse_sources(reuse_from, out, storage_options) -> list[StoreReader]:
    """The complete stores ``reuse_from`` (a path alone is one store) that a build of ``out``
    takes matching stages from, each once and ``out`` left out (its stages are the build's
    own). A store made by ``fastimg images`` is refused: it has no embeddings of texts, so
    the build would encode them all again."""
    if isinstance(reuse_from, (str, os.PathLike, store.location.Location)):
        reuse_from = [reuse_from]  # one store, not its name's letters
    others = [StoreReader(other) for other in dict.fromkeys(
        store.location.resolve(path, storage_options) for path in reuse_from)
        if not store.location.same_store(other, out)]
    for other in others:
        if other.kind != "dataset":
            raise StoreError(f"reuse_from {other.path} is a store of images of a feature "
                             f"matrix (made by `fastimg images`), without embeddings of texts "
                             f"to reuse; give stores written by `fastimg build-dataset` or "
                             f"`fastimg relayout`")
    return others


def build_dataset(out, corpus_config, encoder_config=None, layout_config=None,
                  config: DatasetConfig | None = None, *, force: bool = False, reuse: bool = True,
                  progress: bool = True, on_stage=None, client=None, reuse_from=(),
                  storage_options: dict | None = None) -> dict:
    """Build (or resume building) the image dataset of a text corpus at ``out``.

    Parameters
    ----------
    out : str or path
        The zarr store to write: a local path (built at ``out + '.partial'`` and moved in place
        when complete) or an fsspec URL such as ``s3://bucket/imdb.zarr`` (built in place; the
        completion marker written last is the only sign of a complete store, and ``force``
        rebuilds an old store there in place, keeping its matching stages; it is unreadable
        until the build ends).
    corpus_config : fastimg.corpus.CorpusConfig
    encoder_config : fastimg.embed.EncoderConfig, optional
    layout_config : fastimg.layout.LayoutConfig, optional
    config : DatasetConfig, optional
    force : bool
        Replace a complete store at ``out`` (atomically: the old one stays until the new one
        is in place). Its stages whose keys match are reused. Without it, a store built with
        other settings is refused, and one built with these is returned as it is.
    reuse : bool
        Reuse matching stages of the unfinished build and of the store at ``out``; ``False``
        recomputes everything.
    reuse_from : sequence of str or path
        Complete stores to take matching stages from too, after ``out``'s: another store's
        embeddings of the same texts with the same encoder settings (whatever its labels,
        split or layout) are copied instead of encoding again.
    progress : bool
        Progress bars for the long stages.
    on_stage : callable, optional
        ``on_stage(name)`` when a stage starts (the CLI prints them; tests interrupt with it).
    client : distributed.Client, optional
        Encode and rasterise on this dask cluster, one task per zarr chunk (see
        :mod:`fastimg.cluster`); the layout is fitted here. The store must be reachable from
        every worker (object storage or a shared file system).
    storage_options : dict, optional
        fsspec options for a URL ``out``, ``reuse_from`` or corpus input (credentials,
        endpoint).

    Returns
    -------
    dict
        The summary stored in the store's attrs: rows, classes, counts, image shape, timings
        of this run, ``reused`` (stages taken from an earlier build), ``reused_from`` (the
        store each stage copied from another store came from) and ``resumed``. When ``out``
        is already built with these settings and ``force`` is false, nothing is computed: its
        stored summary, with ``up_to_date: True``.

    Raises
    ------
    TypeError
        A config that is not of its class (an ``EncoderConfig`` given as ``layout_config``, a
        dict), before any work.
    fastimg.corpus.CorpusError, ValueError, fastimg.store.StoreError
        For bad input or settings (a refusal names each setting that differs and its two
        values); nothing that looks complete is left behind.
    """
    from fastimg.corpus import CorpusConfig, load_corpus
    from fastimg.embed import EncoderConfig, run_settings
    from fastimg.embed.models import load_tokenizer
    from fastimg.layout import LayoutConfig

    check_config("corpus_config", corpus_config, CorpusConfig, required=True)
    encoder_config = check_config("encoder_config", encoder_config, EncoderConfig)
    layout_config = check_config("layout_config", layout_config, LayoutConfig)
    config = check_config("config", config, DatasetConfig)
    on_stage = on_stage or (lambda name: None)
    if client is not None and not callable(getattr(client, "submit", None)):
        raise TypeError(f"client must be a dask.distributed Client, got "
                        f"{type(client).__name__}")
    out = store.location.resolve(out, storage_options)
    if reuse_from and not reuse:
        raise ValueError("reuse_from takes stages from other stores: it needs reuse=True")
    others = _reuse_sources(reuse_from, out, storage_options)
    configs = {"corpus": corpus_config.to_dict(), "encoder": encoder_config.to_dict(),
               "layout": layout_config.to_dict(), "dataset": asdict(config)}

    timings = {}
    start = time.perf_counter()
    on_stage("corpus")
    corpus = load_corpus(corpus_config, storage_options)
    codes = split_codes(corpus.split, len(corpus), source="the corpus split")
    fit_rows = _fit_rows(codes, config.fit_on)
    # a model that cannot be found or pooled (run_settings), or whose tokenizer cannot serve
    # it, fails here, before anything is written
    plan = (StagePlan()
            .add("corpus", {**corpus_config.effective(corpus).to_dict(),
                            "digest": corpus_digest(corpus, codes)})
            .add("encode", run_settings(corpus.texts, encoder_config))
            .add("layout", stages.layout_settings(layout_config, config.fit_on, fit_rows))
            .add("images", stages.images_settings(config)))
    load_tokenizer(encoder_config.model, encoder_config.revision)
    stages.warn_unmatched(plan, others)
    timings["corpus_s"] = time.perf_counter() - start
    with store.build_lock(out):  # a second command building out is refused
        # reuse=False asks for everything computed again: never up to date
        current = stages.up_to_date(out, plan, force=force or not reuse)
        if current is not None:
            return current
        existing = stages.open_existing(out, plan, force=force, reuse=reuse)
        with StoreWriter.open(out, reuse=reuse) as writer:
            sources = ([existing] if reuse and existing else []) + others
            reused = stages.reconcile(writer, plan, sources, force=force)
            stages.check_sources(writer, others)  # read by path: not from two builds
            if writer.resumed:
                logger.info("resuming the unfinished build at %s", store.partial_path(out))
            if not (writer.stage("corpus") or {}).get("done"):
                writer.begin("corpus", plan.keys["corpus"], plan.settings["corpus"])
                writer.write_rows(store.IDS, np.asarray(corpus.ids, dtype=str))
                writer.write_rows(store.LABELS, np.asarray(corpus.labels, dtype=np.int64))
                writer.write_rows(store.SPLIT, codes)
                writer.complete_stage("corpus", summary=corpus.summary())
            on_stage("encode")
            with warnings.catch_warnings():  # the corpus has named its empty texts already
                warnings.simplefilter("ignore", EmptyTextWarning)
                encode = stages.run_encode(writer, plan, corpus.texts, encoder_config, progress,
                                           timings, client)
            embeddings = writer.group[store.EMBEDDINGS]
            on_stage("layout")
            layout = stages.run_layout(writer, plan, layout_config, fit_rows, embeddings,
                                       timings, config.raster_backend)
            on_stage("raster")
            stages.run_images(writer, plan, layout, embeddings, config, progress, timings,
                              client)
            return _finish(writer, configs=configs,
                           corpus_summary=writer.stage("corpus")["summary"], encode=encode,
                           layout=layout, config=config, timings=timings, reused=reused)


def relayout(src, dst, layout_config=None, config: DatasetConfig | None = None, *,
             force: bool = False, progress: bool = True, on_stage=None,
             storage_options: dict | None = None) -> dict:
    """A new store at ``dst`` from the embeddings and corpus arrays of the store ``src``, with
    a new layout and image settings.

    Its images equal, byte for byte, those of a fresh :func:`build_dataset` with the same
    corpus, encoder, layout and image settings. Nothing is encoded.

    Parameters
    ----------
    src : str or path
        A complete store written by ``build-dataset`` (or ``relayout``).
    dst : str or path
        The store to write (``--force`` semantics as :func:`build_dataset`; ``dst`` may be
        ``src`` itself with ``force``, but not on object storage, which has no atomic replace).
    layout_config : fastimg.layout.LayoutConfig, optional
    config : DatasetConfig, optional
    force : bool
        Replace an existing ``dst`` (as :func:`build_dataset`).
    progress : bool
        Show progress bars.
    on_stage : callable, optional
        ``on_stage(name)`` when a stage starts.
    storage_options : dict, optional
        fsspec options for URLs ``src`` and ``dst``.

    Returns
    -------
    dict
        The new store's summary (as :func:`build_dataset`, ``up_to_date`` included).

    Raises
    ------
    TypeError
        A config that is not of its class, before any work.
    fastimg.store.StoreError
        ``src`` is incomplete, of another format or has no embeddings; ``dst`` exists, built
        with other settings, and ``force`` is false; ``dst`` is ``src`` without ``force``, or on
        object storage. Nothing is written then.
    """
    from fastimg.layout import LayoutConfig

    layout_config = check_config("layout_config", layout_config, LayoutConfig)
    config = check_config("config", config, DatasetConfig)
    on_stage = on_stage or (lambda name: None)
    src = store.location.resolve(src, storage_options)
    dst = store.location.resolve(dst, storage_options)
    source = StoreReader(src)
    records = source.stages
    if source.kind != "dataset":
        raise StoreError(f"{src} has no embeddings to lay out again (made by `fastimg images`);"
                         f" relayout needs a store written by `fastimg build-dataset`")
    if (source.embeddings is None
            or not all((records.get(s) or {}).get("done") for s in ("corpus", "encode"))):
        raise StoreError(f"{src} has lost its embeddings (no array {store.EMBEDDINGS}, or no "
                         f"finished encode stage): build it again with `fastimg build-dataset`")
    fit_rows = _fit_rows(source.split_codes(), config.fit_on)
    # before the layout is fitted and an unfinished build is left behind
    stages.check_unscaled_uint8(source.embeddings, layout_config.scaling, config.image_dtype)
    plan = (StagePlan()
            .add("corpus", records["corpus"]["settings"], records["corpus"]["key"])
            .add("encode", records["encode"]["settings"], records["encode"]["key"])
            .add("layout", stages.layout_settings(layout_config, config.fit_on, fit_rows))
            .add("images", stages.images_settings(config)))
    onto_source = store.location.same_store(dst, src)
    if onto_source and not force:
        raise StoreError(f"{dst} is the source; pass force=True to replace it")
    if onto_source and not store.location.is_local(dst):
        # object stores are written in place: the source would stop being a complete store
        # (rebuilt in place) while it is read
        raise StoreError(f"{dst} is the source and object storage has no atomic replace; "
                         f"relayout into another URL")
    with store.build_lock(dst):  # a second command building dst is refused
        current = None if onto_source else stages.up_to_date(dst, plan, force=force)
        if current is not None:
            return current
        existing = None if onto_source else stages.open_existing(dst, plan, force=force)
        timings = {}
        with StoreWriter.open(dst) as writer:
            reused = stages.reconcile(writer, plan,
                                      [s for s in (existing, source) if s is not None],
                                      force=force)
            # the source's arrays are read by path: a rebuild of it during the copy would
            # give this store two builds' rows
            stages.check_sources(writer, [source])
            embeddings = writer.group[store.EMBEDDINGS]
            on_stage("layout")
            layout = stages.run_layout(writer, plan, layout_config, fit_rows, embeddings,
                                       timings, config.raster_backend)
            on_stage("raster")
            stages.run_images(writer, plan, layout, embeddings, config, progress, timings)
            configs = {**source.configs, "layout": layout_config.to_dict(),
                       "dataset": asdict(config)}
            return _finish(writer, configs=configs,
                           corpus_summary=records["corpus"]["summary"],
                           encode=records["encode"], layout=layout, config=config,
                           timings=timings, reused=reused)


def load_layout(path):
    """The fitted :class:`~fastimg.layout.DeepInsightLayout` stored in a finished store."""
    return store.StoreReader(path).layout()


def texts_to_images(path, texts, *, device: str = "auto", model=None, progress: bool = False,
                    storage_options: dict | None = None) -> np.ndarray:
    """Images of new ``texts`` made as the store at ``path`` made its own.

    Encodes with the store's encoder settings on ``device`` (``"auto"``: the GPU when torch
    sees one, else the CPU; ``"cpu"`` or ``"cuda"``; see
    :meth:`fastimg.embed.EncoderConfig.on_device`), rasterises with its fitted layout and
    converts to its image dtype; no texts give no images. They equal the stored images to
    float rounding (texts encoded in other batches round differently).

    Parameters
    ----------
    path : str or path
        A complete store.
    texts : sequence of str
    device : str
    model : fastimg.embed.LoadedModel, optional
        The store's model from :func:`fastimg.embed.load_model` (its ``encoder.model`` and
        ``revision``), loaded once for many calls; by default each call loads it.
    progress : bool
    storage_options : dict, optional
        fsspec options of a store URL (``{"endpoint_url": ...}``), as for
        :class:`~fastimg.store.StoreReader`.

    Returns
    -------
    ndarray, shape (len(texts), height, width), of the store's image dtype
        float16, float32, or uint8 (0..255, as stored).

    Raises
    ------
    TypeError
        When ``model`` is not a :class:`~fastimg.embed.LoadedModel` (a model name or folder:
        load it with :func:`fastimg.embed.load_model`), or ``texts`` is one str, a mapping, or
        holds an item that is no str.
    ValueError
        When ``model`` is not the store's model, or ``device`` is unknown or cannot run here.
    fastimg.store.StoreError
        (a ``ValueError``) When ``path`` holds no complete store, or one not built from texts.
    """
    from fastimg.embed import encode
    from fastimg.embed.plan import ENCODE_DEVICES
    from fastimg.embed.texts import check_texts
    from fastimg.raster import to_image_dtype

    texts = check_texts(texts)
    reader = store.StoreReader(path, storage_options)
    if not texts:
        return np.empty((0, *reader.images.shape[1:]), dtype=reader.images.dtype)
    config = reader.encoder_config().on_device(ENCODE_DEVICES.resolve(device))
    features = encode(texts, config, model=model, progress=progress)
    return to_image_dtype(reader.layout().transform(features), str(reader.images.dtype))
