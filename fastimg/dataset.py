"""The main job: a labelled text corpus -> one zarr store of embeddings and DeepInsight images.

Stages (the unfinished store lives at ``OUT.partial`` until the last one ends):

1. corpus  -- :func:`fastimg.corpus.load_corpus`: ids, texts, labels, split
2. encode  -- :func:`fastimg.embed.encode_to_array` into ``embeddings`` (resumes by chunk)
3. layout  -- :class:`fastimg.layout.DeepInsightLayout` fitted on the training rows (or all rows,
   the author's variant); the fitted map is kept in the store's attrs
4. images  -- :func:`fastimg.raster.rasterize_to_array` into ``images`` (resumes by chunk)

Each stage has a key (:mod:`fastimg.store.keys`) naming exactly what its output depends on. A
build reuses every stage whose key matches, from its own unfinished build or from the complete
store it replaces, and recomputes from the first stage that differs: encoding runs once per
corpus and encoder, however many layouts and image settings are tried on it. :func:`relayout`
makes a new store from another store's embeddings.
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from fastimg import __version__, store
from fastimg.raster import IMAGE_DTYPES
from fastimg.store import STAGES, StoreError, StoreReader, StoreWriter

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


def _digest(*parts) -> str:
    """sha256 over arrays and strings, each length-prefixed."""
    digest = hashlib.sha256()
    for part in parts:
        data = (part.encode("utf-8", "surrogatepass") if isinstance(part, str)
                else np.ascontiguousarray(part).tobytes())
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def corpus_digest(corpus) -> str:
    """sha256 of everything a corpus stage writes: ids, texts, labels, split, class names."""
    from fastimg.embed import texts_digest

    return _digest(texts_digest(corpus.texts), "\0".join(map(str, corpus.ids)),
                   np.asarray(corpus.labels, dtype=np.int64), _split_codes(corpus.split),
                   json.dumps(list(corpus.class_names)),
                   json.dumps(None if corpus.class_values is None else list(corpus.class_values)))


def _split_codes(split) -> np.ndarray:
    return np.array([store.SPLIT_NAMES.index(s) for s in split], dtype=np.int8)


def _fit_rows(split_codes: np.ndarray, fit_on: str) -> np.ndarray:
    if fit_on == "all":
        return np.arange(split_codes.shape[0])
    rows = np.flatnonzero(split_codes == store.SPLIT_NAMES.index("train"))
    if rows.size < 2:
        raise ValueError(f"the training split has {rows.size} rows; the layout needs at least 2 "
                         f"(use a larger --limit, or --fit-on all)")
    return rows


class StagePlan:
    """The key and settings of each stage of one build, chained: each key hashes the one
    before it with the stage's own settings."""

    def __init__(self):
        self.settings, self.keys = {}, {}

    def add(self, stage: str, settings: dict, key: str | None = None) -> "StagePlan":
        parent = self.keys[list(self.keys)[-1]] if self.keys else None
        settings = store.keys.canonical(settings)
        self.settings[stage] = settings
        self.keys[stage] = key or store.stage_key(parent, settings)
        return self

    def differences(self, stages: dict) -> list[str]:
        """What differs from the stage records ``stages``, from the first stage that does."""
        for stage in self.keys:
            old = stages.get(stage)
            if old is None:
                return [f"{stage}: not in the store"]
            if old["key"] != self.keys[stage]:
                diffs = store.differences(stage, old.get("settings", {}), self.settings[stage])
                return diffs or [f"{stage}: computed from different input"]
        return []


def layout_settings(layout_config, fit_on: str, fit_rows: np.ndarray) -> dict:
    """The layout stage's settings: the layout config and the rows it is fitted on."""
    return {**layout_config.to_dict(), "fit_on": fit_on, "fit_rows": int(fit_rows.size),
            "fit_rows_sha256": _digest(np.asarray(fit_rows, dtype=np.int64))}


def images_settings(config) -> dict:
    """The images stage's settings (the backend is informational: it does not change bytes)."""
    return {"dtype": config.image_dtype, "raster_backend": config.raster_backend}


def _open_existing(out, plan: StagePlan, *, force: bool) -> StoreReader | None:
    """The complete store at ``out``, whose matching stages a forced build reuses, or None.

    Raises :class:`StoreError` naming what differs when it exists and ``force`` is false.
    """
    store.check_writable(out, force=True)
    if not store.is_complete(out):
        if out is not None and store.read_attrs(out) is not None and not force:
            raise StoreError(f"{out} already exists; pass --force to replace it")
        return None
    try:
        existing = StoreReader(out)
    except StoreError as exc:  # another format: replaced as a whole
        if not force:
            raise
        logger.info("not reusing %s: %s", out, exc)
        return None
    if not force:
        diffs = plan.differences(existing.stages)
        what = ("built with other settings (" + "; ".join(diffs[:4])
                + (" ..." if len(diffs) > 4 else "") + ")") if diffs else "with these settings"
        raise StoreError(f"{out} already exists, {what}; pass --force to replace it (the "
                         f"stages that match are reused)")
    return existing


#: stages whose unfinished work is only thrown away with ``force`` (encoding is the build)
_COSTLY = ("corpus", "encode")


def _reconcile(writer: StoreWriter, plan: StagePlan, sources, *, force: bool) -> list[str]:
    """Keep the unfinished build's stages while their keys match the plan, then take every
    further matching stage from ``sources`` (complete stores). Returns the stages reused.

    An unfinished build whose encoding would be thrown away is refused unless ``force``.
    """
    for stage in plan.keys:
        record = writer.stage(stage)
        if record is None or record["key"] != plan.keys[stage]:
            encoded = writer.stage("encode")
            if (record is not None and stage in _COSTLY and encoded is not None
                    and not force):
                diffs = plan.differences(writer.stages)
                raise StoreError(
                    f"an unfinished build with other settings is at "
                    f"{store.partial_path(writer.path)} (" + "; ".join(diffs[:4]) + "); rerun "
                    f"with its settings to resume it, or pass --force to start over")
            if record is not None:
                logger.warning("the unfinished build's %s stage had other settings; "
                               "recomputing from it", stage)
            writer.drop_from(stage)
            break
    reused = [s for s in plan.keys if (writer.stage(s) or {}).get("done")]
    for source in sources:
        for stage in plan.keys:
            if (writer.stage(stage) or {}).get("done"):
                continue
            record = source.stages.get(stage)
            if not record or record["key"] != plan.keys[stage] or not record.get("done"):
                break
            writer.drop_from(stage)  # a half-done stage gives way to a finished copy
            writer.adopt(source, [stage])
            reused.append(stage)
            logger.info("reusing stage %s from %s", stage, source.path)
    return reused


def _run_layout(writer: StoreWriter, plan: StagePlan, layout_config, fit_rows, matrix, timings,
                raster_backend: str | None = None):
    """The layout stage: fitted on ``matrix[fit_rows]`` unless the build has it already (the
    ``raster_backend``'s kernel is loaded meanwhile, see :func:`fastimg.raster.warm_up`)."""
    from fastimg.layout import DeepInsightLayout
    from fastimg.raster import warm_up

    record = writer.begin("layout", plan.keys["layout"], plan.settings["layout"])
    if record.get("done"):
        return DeepInsightLayout.from_dict(record["layout"])
    if raster_backend is not None:
        warm_up(raster_backend)
    start = time.perf_counter()
    logger.info("fitting the layout on %d rows", fit_rows.size)
    if isinstance(matrix, np.ndarray) and fit_rows.size == matrix.shape[0]:
        train = matrix
    elif hasattr(matrix, "get_orthogonal_selection"):
        train = matrix.get_orthogonal_selection((fit_rows, slice(None)))
    else:
        train = np.asarray(matrix[fit_rows.min():fit_rows.max() + 1])[fit_rows - fit_rows.min()]
    layout = DeepInsightLayout(layout_config).fit(train)
    timings["layout_s"] = time.perf_counter() - start
    writer.complete_stage("layout", layout=layout.to_dict(), seconds=timings["layout_s"])
    return layout


def _run_images(writer: StoreWriter, plan: StagePlan, layout, matrix, config, progress,
                timings) -> None:
    """The images stage: ``matrix`` rasterised with ``layout``, resumed by row block."""
    from fastimg.raster import rasterize_to_array

    record = writer.begin("images", plan.keys["images"], plan.settings["images"])
    if record.get("done"):
        return
    start = time.perf_counter()
    n_rows = matrix.shape[0]
    if store.IMAGES not in writer.group:
        writer.create_images(n_rows, layout.config.grid, config.image_dtype)

    def record_rows(stop):
        writer.update("images", rows_done=stop)

    rasterize_to_array(matrix, layout.raster_plan(), writer.group[store.IMAGES],
                       backend=config.raster_backend, start_row=int(record.get("rows_done", 0)),
                       progress=progress, on_block=record_rows)
    timings["raster_s"] = time.perf_counter() - start
    writer.complete_stage("images", seconds=timings["raster_s"])


def _finish(writer: StoreWriter, *, configs: dict, corpus_summary: dict, encode: dict, layout,
            config, timings: dict, reused: list, seed) -> dict:
    """Write the final attrs of a dataset store and move it in place; returns the summary."""
    embeddings = writer.group[store.EMBEDDINGS]
    summary = {
        "rows": int(embeddings.shape[0]), "classes": corpus_summary["n_classes"],
        "class_names": list(corpus_summary["class_names"]), "counts": corpus_summary["counts"],
        "features": int(embeddings.shape[1]), "image_shape": list(layout.config.grid),
        "image_dtype": config.image_dtype, "occupied_pixels": layout.n_occupied_pixels,
        "timings": timings, "reused": reused, "resumed": writer.resumed,
    }
    provenance = {
        "model": configs["encoder"]["model"], "revision": configs["encoder"]["revision"],
        "model_fingerprint": encode.get("model_fingerprint"), "layers": encode.get("layers"),
        "device": encode.get("device"), "compute_dtype": encode.get("compute_dtype"),
        "layout_backend": getattr(layout, "backend_", None), "seed": seed,
        "versions": _versions(), "platform": platform.platform(),
    }
    writer.finish({"kind": "dataset", "config": configs, "layout": layout.to_dict(),
                   "corpus": corpus_summary, "provenance": provenance, "summary": summary})
    if reused:
        logger.info("reused stages: %s", ", ".join(reused))
    return summary


def build_dataset(out, corpus_config, encoder_config=None, layout_config=None,
                  config: DatasetConfig | None = None, *, force: bool = False, reuse: bool = True,
                  progress: bool = True, on_stage=None) -> dict:
    """Build (or resume building) the image dataset of a text corpus at ``out``.

    Parameters
    ----------
    out : str or path
        The zarr store to write; it is built at ``out + '.partial'`` and moved in place when
        complete.
    corpus_config : fastimg.corpus.CorpusConfig
    encoder_config : fastimg.embed.EncoderConfig, optional
    layout_config : fastimg.layout.LayoutConfig, optional
    config : DatasetConfig, optional
    force : bool
        Replace a complete store at ``out`` (atomically: the old one stays until the new one
        is in place). Its stages whose keys match are reused.
    reuse : bool
        Reuse matching stages of the unfinished build and of the store at ``out``; ``False``
        recomputes everything.
    progress : bool
        Progress bars for the long stages.
    on_stage : callable, optional
        ``on_stage(name)`` when a stage starts (the CLI prints them; tests interrupt with it).

    Returns
    -------
    dict
        The summary stored in the store's attrs: rows, classes, counts, image shape, timings
        of this run, ``reused`` (stages taken from an earlier build) and ``resumed``.

    Raises
    ------
    fastimg.corpus.CorpusError, ValueError, fastimg.store.StoreError
        For bad input or settings (a refusal names each setting that differs and its two
        values); nothing that looks complete is left behind.
    """
    from fastimg.corpus import load_corpus
    from fastimg.embed import EncoderConfig, resolve_model, run_settings
    from fastimg.layout import LayoutConfig

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
    codes = _split_codes(corpus.split)
    fit_rows = _fit_rows(codes, config.fit_on)
    # a model that cannot be found fails here, before anything is written
    resolve_model(encoder_config.model, encoder_config.revision)
    plan = (StagePlan()
            .add("corpus", {**corpus_config.to_dict(), "digest": corpus_digest(corpus)})
            .add("encode", run_settings(corpus.texts, encoder_config))
            .add("layout", layout_settings(layout_config, config.fit_on, fit_rows))
            .add("images", images_settings(config)))
    timings["corpus_s"] = time.perf_counter() - start
    existing = _open_existing(out, plan, force=force)
    with StoreWriter.open(out, reuse=reuse) as writer:
        reused = _reconcile(writer, plan, [existing] if reuse and existing else [], force=force)
        if writer.resumed:
            logger.info("resuming the unfinished build at %s", store.partial_path(out))
        if not (writer.stage("corpus") or {}).get("done"):
            writer.begin("corpus", plan.keys["corpus"], plan.settings["corpus"])
            writer.write_rows(store.IDS, np.asarray(corpus.ids, dtype=str))
            writer.write_rows(store.LABELS, np.asarray(corpus.labels, dtype=np.int64))
            writer.write_rows(store.SPLIT, codes)
            writer.complete_stage("corpus", summary=corpus.summary())
        on_stage("encode")
        encode = _run_encode(writer, plan, corpus.texts, encoder_config, progress, timings)
        embeddings = writer.group[store.EMBEDDINGS]
        on_stage("layout")
        layout = _run_layout(writer, plan, layout_config, fit_rows, embeddings, timings,
                             config.raster_backend)
        on_stage("raster")
        _run_images(writer, plan, layout, embeddings, config, progress, timings)
        return _finish(writer, configs=configs, corpus_summary=writer.stage("corpus")["summary"],
                       encode=encode, layout=layout, config=config, timings=timings,
                       reused=reused, seed=corpus_config.seed)


def _run_encode(writer: StoreWriter, plan: StagePlan, texts, encoder_config, progress,
                timings) -> dict:
    """The encode stage: ``embeddings`` written chunk by chunk, resumed after the last one."""
    from fastimg.embed import encode_to_array

    record = writer.begin("encode", plan.keys["encode"], plan.settings["encode"])
    if record.get("done"):
        return record
    start = time.perf_counter()
    stats = {}
    encode_to_array(texts, encoder_config, writer.group, name=store.EMBEDDINGS,
                    progress=progress, stats=stats)
    timings["encode_s"] = time.perf_counter() - start
    return writer.complete_stage(
        "encode", seconds=record.get("seconds", 0.0) + timings["encode_s"],
        model_fingerprint=plan.settings["encode"].get("model_fingerprint"),
        **{k: stats.get(k) for k in ("layers", "device", "compute_dtype")})


def relayout(src, dst, layout_config=None, config: DatasetConfig | None = None, *,
             force: bool = False, progress: bool = True, on_stage=None) -> dict:
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
        ``src`` itself with ``force``).
    layout_config : fastimg.layout.LayoutConfig, optional
    config : DatasetConfig, optional

    Returns
    -------
    dict
        The new store's summary (as :func:`build_dataset`).

    Raises
    ------
    fastimg.store.StoreError
        ``src`` is incomplete, of another format or has no embeddings; ``dst`` exists and
        ``force`` is false. Nothing is written then.
    """
    from fastimg.layout import LayoutConfig

    layout_config = layout_config or LayoutConfig()
    config = config or DatasetConfig()
    on_stage = on_stage or (lambda name: None)
    source = StoreReader(src)
    stages = source.stages
    if (source.kind != "dataset" or source.embeddings is None
            or not all((stages.get(s) or {}).get("done") for s in ("corpus", "encode"))):
        raise StoreError(f"{src} has no embeddings to lay out again (made by `fastimg images`?);"
                         f" relayout needs a store written by `fastimg build-dataset`")
    fit_rows = _fit_rows(source.split_codes(), config.fit_on)
    plan = (StagePlan()
            .add("corpus", stages["corpus"]["settings"], stages["corpus"]["key"])
            .add("encode", stages["encode"]["settings"], stages["encode"]["key"])
            .add("layout", layout_settings(layout_config, config.fit_on, fit_rows))
            .add("images", images_settings(config)))
    if str(dst) == str(src) and not force:
        raise StoreError(f"{dst} is the source; pass --force to replace it")
    existing = None if str(dst) == str(src) else _open_existing(dst, plan, force=force)
    timings = {}
    with StoreWriter.open(dst) as writer:
        reused = _reconcile(writer, plan, [s for s in (existing, source) if s is not None],
                            force=True)
        embeddings = writer.group[store.EMBEDDINGS]
        on_stage("layout")
        layout = _run_layout(writer, plan, layout_config, fit_rows, embeddings, timings,
                             config.raster_backend)
        on_stage("raster")
        _run_images(writer, plan, layout, embeddings, config, progress, timings)
        configs = {**source.configs, "layout": layout_config.to_dict(), "dataset": asdict(config)}
        return _finish(writer, configs=configs, corpus_summary=stages["corpus"]["summary"],
                       encode=stages["encode"], layout=layout, config=config, timings=timings,
                       reused=reused, seed=source.provenance.get("seed"))


def load_layout(path):
    """The fitted :class:`~fastimg.layout.DeepInsightLayout` stored in a finished store."""
    return store.StoreReader(path).layout()


def texts_to_images(path, texts, *, progress: bool = False) -> np.ndarray:
    """Images of new ``texts`` made exactly as the store at ``path`` made its own.

    Encodes with the store's encoder settings and rasterises with its fitted layout.

    Returns
    -------
    ndarray of float32, shape (len(texts), height, width)
    """
    from fastimg.embed import encode

    reader = store.StoreReader(path)
    features = encode(texts, reader.encoder_config(), progress=progress)
    return reader.layout().transform(features)
