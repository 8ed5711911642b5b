"""The stages a store build runs, shared by ``build-dataset``, ``relayout`` and ``images``.

Each runner takes the :class:`~fastimg.store.StoreWriter` of the build and the build's
:class:`~fastimg.store.keys.StagePlan`, skips its stage when the build already has it (same
key, done) and records what it did, so that a rerun resumes and a changed setting recomputes
from the first stage it affects.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from fastimg import store
from fastimg.store import StoreError, StoreReader, StoreWriter
from fastimg.store.keys import StagePlan, differences, digest
from fastimg.store.schema import STAGE_SETTINGS
from fastimg.store.writer import lost_arrays

logger = logging.getLogger("fastimg.stages")


def layout_settings(layout_config, fit_on: str, fit_rows: np.ndarray) -> dict:
    """The layout stage's settings: the layout config and the rows it is fitted on. A t-SNE
    backend named explicitly that cannot run here is refused (before any work)."""
    from fastimg.layout.embedding import TSNE_BACKENDS

    if layout_config.method == "tsne":
        TSNE_BACKENDS.check(layout_config.backend)
    return {**layout_config.to_dict(), "fit_on": fit_on, "fit_rows": int(fit_rows.size),
            "fit_rows_sha256": digest(np.asarray(fit_rows, dtype=np.int64))}


def images_settings(config) -> dict:
    """The images stage's settings (the backend is informational: it does not change bytes).
    A raster backend named explicitly that cannot run here is refused (before any work)."""
    from fastimg.raster import RASTER_BACKENDS

    RASTER_BACKENDS.check(config.raster_backend)
    return {"dtype": config.image_dtype, "raster_backend": config.raster_backend}


def up_to_date(out, plan: StagePlan, *, force: bool) -> dict | None:
    """The summary of the complete store at ``out`` (with ``up_to_date: True``) when it holds
    every stage of ``plan``, finished, under the plan's key: a build with its settings again
    has nothing to compute, and returns instead of refusing (a rerun cell, a script run
    twice). None otherwise, and always with ``force`` (which builds it again)."""
    if force:
        return None
    store.location.recover(out)  # a replace cut short is finished or undone first
    if not store.is_complete(out):
        return None
    try:
        existing = StoreReader(out)
    except StoreError:  # another format: open_existing says so
        return None
    records = existing.stages
    if any((records.get(stage) or {}).get("key") != key or not records[stage].get("done")
           for stage, key in plan.keys.items()):
        return None
    if _lost(existing, plan):  # deleted arrays: open_existing refuses, naming them
        return None
    logger.info("%s is up to date: built with these settings, nothing to compute", out)
    return {**existing.summary, "up_to_date": True}


def _lost(existing: StoreReader, plan: StagePlan) -> str:
    """The arrays of ``plan``'s stages that the complete store ``existing`` no longer holds
    (``"images stage (images)"``), or ``""``."""
    lost = {stage: lost_arrays(existing.group, stage) for stage in plan.keys}
    return "; ".join(f"{stage} stage ({', '.join(arrays)})"
                     for stage, arrays in lost.items() if arrays)


#: what a store of each kind is, in a refusal
_KINDS = {"dataset": "a dataset store (made by `fastimg build-dataset`)",
          "images": "a store of images of a feature matrix (made by `fastimg images`)"}


def open_existing(out, plan: StagePlan, *, force: bool,
                  reuse: bool = True) -> StoreReader | None:
    """The complete store at ``out``, whose matching stages a forced build reuses, or None.

    Raises :class:`StoreError` naming what differs when it exists and ``force`` is false (its
    hint says the matching stages are reused only when ``reuse`` is: --no-reuse recomputes
    them).
    """
    store.check_writable(out, force=True)
    if not store.is_complete(out):
        if store.read_attrs(out) is not None and not force:
            raise StoreError(f"{out} already exists; pass force=True to replace it")
        return None
    try:
        existing = StoreReader(out)
    except StoreError as exc:  # another format: replaced as a whole
        if not force:
            raise
        logger.info("not reusing %s: %s", out, exc)
        return None
    local = store.location.is_local(out)
    kind = "dataset" if "corpus" in plan.keys else "images"
    if not force and existing.kind != kind:  # no setting differs: the store is another thing
        what = _KINDS.get(existing.kind, f"a store of kind {existing.kind!r}")
        raise StoreError(f"{out} already exists: {what}, not {_KINDS[kind].split(' (')[0]}; "
                         f"pass force=True to replace it")
    if not force:
        diffs = plan.differences(existing.stages)
        lost = "" if diffs else _lost(existing, plan)
        what = ("built with other settings (" + "; ".join(diffs[:4])
                + (" ..." if len(diffs) > 4 else "") + ")") if diffs else (
            f"with these settings, but it has lost the arrays of its {lost}" if lost
            else "with these settings")
        kept = ("the stages that match are reused" if reuse else
                "with reuse=False every stage is computed again")
        raise StoreError(f"{out} already exists, {what}; pass force=True to replace it ({kept}"
                         + (")" if local else "; on object storage it is rebuilt in place, "
                            "unreadable until the build ends)"))
    # no atomic replace on object storage: the store is rebuilt in place, its matching stages
    # kept by the writer itself (StoreWriter.open), nothing copied
    return existing if local else None


def reconcile(writer: StoreWriter, plan: StagePlan, sources, *, force: bool) -> list[str]:
    """Keep the unfinished build's stages whose keys match the plan, then take every further
    matching stage from ``sources`` (complete stores). Returns the stages reused.

    An unfinished build whose encoding would be thrown away is refused unless ``force``
    (encoding is the build); one whose corpus differs only in labels, ids or split keeps its
    encoding (its key names the texts, not the corpus stage).
    """
    foreign = [s for s in writer.stages if s not in plan.keys]
    if foreign:
        if writer.stage("encode") is not None and "encode" in foreign and not force:
            raise StoreError(f"an unfinished build of another kind (with embeddings) is at "
                             f"{store.partial_path(writer.path)}; finish it with the command "
                             f"that started it, or pass force=True to start over")
        for stage in foreign:
            writer.drop_from(stage)
    differ = [s for s in plan.keys
              if (writer.stage(s) or {}).get("key") not in (None, plan.keys[s])]
    if "encode" in differ and not force:
        diffs = plan.differences(writer.stages, first="encode")  # what refuses it, first
        raise StoreError(f"an unfinished build with other settings is at "
                         f"{store.partial_path(writer.path)} ({'; '.join(diffs[:4])}); rerun "
                         f"with its settings to resume it, or pass force=True to start over")
    for stage in differ:
        if writer.stage(stage) is not None:  # not dropped with a stage before it
            if writer.resumed:
                logger.warning("the unfinished build's %s stage had other settings; "
                               "recomputing it", stage)
            writer.drop_from(stage)
    reused = [s for s in plan.keys if (writer.stage(s) or {}).get("done")]
    for source in sources:
        for stage in plan.keys:
            record = source.stages.get(stage)
            if ((writer.stage(stage) or {}).get("done") or not record
                    or record["key"] != plan.keys[stage] or not record.get("done")):
                continue  # a key names all of a stage's input: any matching one can be taken
            lost = lost_arrays(source.group, stage)  # deleted, or a copy of the store cut short
            if lost:
                logger.warning("%s has lost the arrays of its %s stage (%s); computing it "
                               "instead of copying it", source.path, stage, ", ".join(lost))
                continue
            writer.drop_from(stage)  # a half-done stage gives way to a finished copy
            writer.adopt(source, [stage])
            reused.append(stage)
            logger.info("reusing stage %s from %s", stage, source.path)
    return reused


def _encoder_differences(plan: StagePlan, source) -> list[str]:
    """What keeps the embeddings of ``source`` out of the build ``plan``: other texts (said in
    words: their digests mean nothing to a reader) and each other encoder setting."""
    old = (source.stages.get("encode") or {}).get("settings")
    if old is None:
        return plan.differences(source.stages, first="encode")
    new = plan.settings["encode"]
    texts = ("texts_sha256", "n_texts")
    found = differences(STAGE_SETTINGS["encode"], {k: v for k, v in old.items() if k not in texts},
                        {k: v for k, v in new.items() if k not in texts})
    if old.get("texts_sha256") != new.get("texts_sha256"):
        counts = (f"{old.get('n_texts')} each" if old.get("n_texts") == new["n_texts"]
                  else f"{old.get('n_texts')} -> {new['n_texts']}")
        found.insert(0, f"other texts: {counts}")
    return found or plan.differences(source.stages, first="encode")


def warn_unmatched(plan: StagePlan, sources) -> None:
    """Warn about each of ``sources`` (complete stores a build was given to take stages from)
    that has no finished stage of the build's keys, naming what keeps its embeddings out (they
    are the work it would have saved)."""
    for source in sources:
        if any((source.stages.get(stage) or {}).get("key") == key
               and source.stages[stage].get("done") for stage, key in plan.keys.items()):
            continue
        diffs = _encoder_differences(plan, source)
        logger.warning("nothing is reused from reuse_from %s: none of its stages matches this "
                       "build (%s%s)", source.path, "; ".join(diffs[:4]),
                       " ..." if len(diffs) > 4 else "")


def check_sources(writer: StoreWriter, sources) -> None:
    """Raise :class:`StoreError` when one of ``sources`` (complete stores whose stages
    :func:`reconcile` copied, reading their arrays by path) was replaced or deleted since it
    was opened (:meth:`~fastimg.store.StoreReader.check_unchanged`), after dropping the stages
    copied from it: what was copied may mix two builds, and the rerun that the error asks for
    must not resume with it."""
    for source in sources:
        try:
            source.check_unchanged()
        except StoreError:
            for stage, record in writer.stages.items():
                if (record.get("reused_from") == store.location.recorded_name(source.path)
                        and writer.stage(stage) is not None):  # not dropped with another
                    writer.drop_from(stage)
            raise


def run_layout(writer: StoreWriter, plan: StagePlan, layout_config, fit_rows, matrix, timings,
               raster_backend: str | None = None):
    """The layout stage: fitted on ``matrix[fit_rows]`` unless the build has it already (the
    ``raster_backend``'s kernel is loaded meanwhile, see :func:`fastimg.raster.warm_up`)."""
    from fastimg.layout import DeepInsightLayout
    from fastimg.raster import warm_up

    record = writer.begin("layout", plan.keys["layout"], plan.settings["layout"])
    if record.get("done"):
        return DeepInsightLayout.from_dict(record["layout"])
    writer.check_arrays()  # the rows it is fitted on are still there
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


def check_unscaled_uint8(matrix, scaling: str, image_dtype: str,
                         block_rows: int = 8192) -> None:
    """Refuse uint8 images of unscaled features outside [0, 1].

    uint8 stores [0, 1] as 0..255 and clips the rest; ``norm2`` and ``minmax`` scale into
    that range, ``none`` leaves the features as they are (encoder embeddings: about -5..10),
    so that most pixels would be stored as 0 or 255, silently.

    Raises
    ------
    ValueError
        When ``image_dtype`` is uint8, ``scaling`` is none and a value of ``matrix`` lies
        outside [0, 1].
    """
    if image_dtype != "uint8" or scaling != "none":
        return
    low, high = np.inf, -np.inf
    for start in range(0, matrix.shape[0], block_rows):
        block = np.asarray(matrix[start:start + block_rows], dtype=np.float32)
        low, high = min(low, float(block.min())), max(high, float(block.max()))
    if low < 0.0 or high > 1.0:
        raise ValueError(f"image_dtype='uint8' stores values in [0, 1] as 0..255, but "
                         f"scaling='none' leaves the features as they are, here {low:.3g} to "
                         f"{high:.3g}: the images would be clipped; use scaling='norm2' or "
                         f"scaling='minmax', or image_dtype='float16'")


def run_images(writer: StoreWriter, plan: StagePlan, layout, matrix, config, progress,
               timings, client=None) -> None:
    """The images stage: ``matrix`` rasterised with ``layout``, resumed by row block (on a
    dask cluster when ``client`` is given: :func:`fastimg.cluster.raster_chunks`)."""
    from fastimg.raster import rasterize_to_array

    record = writer.begin("images", plan.keys["images"], plan.settings["images"])
    if record.get("done"):
        return
    check_unscaled_uint8(matrix, layout.scaler_.method, config.image_dtype)
    writer.check_arrays()  # the rows it rasterises are still there
    start = time.perf_counter()
    n_rows = matrix.shape[0]
    if store.IMAGES not in writer.group:
        writer.create_images(n_rows, layout.config.grid, config.image_dtype)

    def record_rows(stop):
        writer.update("images", rows_done=stop)

    if client is not None:
        from fastimg.cluster import raster_chunks

        raster_chunks(client, writer, layout, config, start_row=int(record.get("rows_done", 0)),
                      progress=progress)
    else:  # after the rows an earlier run finished, in process or (chunk marks) on a cluster
        start_row = writer.finished_rows(store.IMAGES, int(record.get("rows_done", 0)))
        rasterize_to_array(matrix, layout.raster_plan(), writer.group[store.IMAGES],
                           backend=config.raster_backend, start_row=start_row,
                           progress=progress, on_block=record_rows)
        writer.drop_done_markers(store.IMAGES)
    timings["raster_s"] = time.perf_counter() - start
    writer.complete_stage("images", seconds=timings["raster_s"])


def _create_embeddings(writer: StoreWriter, plan: StagePlan, encoder_config, n_rows: int):
    """The ``embeddings`` array of this build (made here, with dimension names, for both the
    in-process encoder, which resumes on it, and the cluster tasks)."""
    from fastimg.embed import resolve_model

    if store.EMBEDDINGS in writer.group:
        return writer.group[store.EMBEDDINGS]
    settings = plan.settings["encode"]
    source = resolve_model(encoder_config.model, encoder_config.revision)
    hidden = int(source.hf_config().hidden_size)
    return writer.create_embeddings(n_rows, len(settings["layers"]) * hidden,
                                    settings["output_dtype"], encoder_config.chunk_rows,
                                    {"settings": settings, "config": encoder_config.to_dict()})


def run_encode(writer: StoreWriter, plan: StagePlan, texts, encoder_config, progress,
               timings, client=None) -> dict:
    """The encode stage: ``embeddings`` written chunk by chunk, resumed after the last one
    (on a dask cluster when ``client`` is given: :func:`fastimg.cluster.encode_chunks`)."""
    from fastimg.embed import encode_to_array

    record = writer.begin("encode", plan.keys["encode"], plan.settings["encode"])
    if record.get("done"):
        return record
    start = time.perf_counter()
    stats = {}
    array = _create_embeddings(writer, plan, encoder_config, len(texts))
    if client is not None:
        from fastimg.cluster import encode_chunks

        stats = encode_chunks(client, writer, texts, encoder_config, progress=progress)
    else:
        from fastimg.embed.resume import record_rows_done, rows_done

        # the encoder resumes after its record's rows_done; chunks a cluster build marked
        # done in order after them count too
        finished = writer.finished_rows(store.EMBEDDINGS, rows_done(array))
        if finished > rows_done(array):
            record_rows_done(array, finished)
        encode_to_array(texts, encoder_config, writer.group, name=store.EMBEDDINGS,
                        progress=progress, stats=stats)
        writer.drop_done_markers(store.EMBEDDINGS)
    timings["encode_s"] = time.perf_counter() - start
    extra = {} if client is None else {"cluster": {k: stats[k] for k in (
        "chunks", "pending", "tasks", "skipped", "task_seconds")}}
    return writer.complete_stage(
        "encode", seconds=record.get("seconds", 0.0) + timings["encode_s"],
        model_fingerprint=plan.settings["encode"].get("model_fingerprint"),
        **{k: stats.get(k) for k in store.ENCODE_RUN_STATS},
        **extra)
