"""The encoder's zarr resume protocol: texts -> a zarr array, chunk by chunk, resumed after
the last finished chunk.

The array's attribute ``fastimg_embed`` (:data:`ATTRS_KEY`) holds the run's settings
(:func:`run_settings`: what must match for a resume), its config, ``rows_done`` (written after
each chunk) and ``complete``. The encoder (:func:`fastimg.embed.encoder.iter_chunks`) yields the
chunks; a thread (:mod:`~fastimg.embed.commit`) writes them in order while the model runs on.
Because a chunk's batches depend only on that chunk, an interrupted and resumed run writes the
bytes of an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging

from fastimg._validation import check_config
from fastimg.embed import precision as precision_mod
from fastimg.embed.commit import Committer
from fastimg.embed.config import EncoderConfig
from fastimg.embed.encoder import check_inputs, init_stats, iter_chunks
from fastimg.embed.models import LoadedModel, load_model
from fastimg.embed.plan import Plan, make_plan
from fastimg.embed.texts import texts_digest, warn_empty
from fastimg.store.keys import differences
from fastimg.store.schema import EMBED_ATTRS_KEY as ATTRS_KEY
from fastimg.store.schema import EMBEDDINGS as DEFAULT_ARRAY

logger = logging.getLogger("fastimg.embed")

__all__ = ["ATTRS_KEY", "DEFAULT_ARRAY", "encode_to_array", "record_rows_done", "rows_done",
           "run_settings"]


def rows_done(array) -> int:
    """Rows of an encoder array finished in order from the first (its record's
    ``rows_done``)."""
    return int((array.attrs.get(ATTRS_KEY) or {}).get("rows_done", 0))


def record_rows_done(array, rows: int) -> None:
    """Record rows ``..rows`` of an encoder array as finished by another writer (a cluster
    build's tasks), ``complete`` once they are all of them: :func:`encode_to_array` resumes
    after them."""
    meta = dict(array.attrs.get(ATTRS_KEY) or {})
    complete = {"complete": True} if rows >= array.shape[0] else {}
    array.attrs[ATTRS_KEY] = {**meta, "rows_done": int(rows), **complete}


def run_settings(texts, config: EncoderConfig, model: LoadedModel | None = None) -> dict:
    """The settings that must match for a resume: model identity, layers, pooling, lengths,
    device kind, precision, output dtype, batching (when packed), for int8 its engine and what
    cuts the batches, and the input itself.

    Parameters
    ----------
    texts : sequence of str
    config : EncoderConfig
    model : LoadedModel, optional
        Saves reading the model's config from disk.

    Returns
    -------
    dict
        JSON-ready; ``device`` is the resolved kind (``"cpu"`` / ``"cuda"``) and ``precision``
        the resolved precision (``"fp32"``, ``"int8"``, ``"fp16"`` or ``"bf16"``).

    Raises
    ------
    TypeError
        ``config`` is not an :class:`EncoderConfig`; ``texts`` as :func:`texts_digest`.
    """
    config = check_config("config", config, EncoderConfig, required=True)
    return _settings(texts, config, *make_plan(config, model))


def _settings(texts, config: EncoderConfig, plan: Plan, src) -> dict:
    """:func:`run_settings` for a resolved plan and model source."""
    settings = {
        "model": config.model,
        "model_fingerprint": src.fingerprint(),
        "revision": config.revision,
        "layers": list(plan.layers),
        "pooling": config.pooling,
        "max_length": config.max_length,
        "truncation": config.truncation,
        "head_tokens": config.effective_head_tokens if config.truncation == "head+tail" else None,
        "device": plan.device,
        "precision": plan.precision.name,
        "output_dtype": config.output_dtype,
        "n_texts": len(texts),
        "texts_sha256": texts_digest(texts),
    }
    if plan.precision.quantize:
        # a Linear's int8 activations share one scale per batch, so a text's int8 numbers depend
        # on its batch mates: another token budget moved them as far as int8 moves them from
        # fp32 (benchmarks/RESULTS.md). What cuts the batches is part of what must match
        # (chunk boundaries need no entry: a resume keeps the stored array's chunk size)
        settings["int8"] = {**precision_mod.INT8_SCHEME, "engine": plan.int8_engine, "batches": {
            "token_budget": plan.token_budget, "max_batch_size": config.max_batch_size,
            "sort_by_length": config.sort_by_length}}
    if config.batching != "padded":
        # packed batches round differently (on a GPU, by up to ~1e-2 in fp16): a resume must not
        # mix them with padded ones. Absent when padded, so stores written before keep their key
        settings["batching"] = config.batching
    return settings


# settings whose change alone does not change what is computed
_INFORMATIONAL = ("model",)


def _differences(old: dict, new: dict) -> list[str]:
    """``'setting: stored -> now'`` per differing setting, nested ones by their dotted path."""

    def kept(settings):
        return {k: v for k, v in settings.items() if k not in _INFORMATIONAL}

    return differences("", kept(old), kept(new))


def encode_to_array(texts, config: EncoderConfig | None, target, *, name: str = DEFAULT_ARRAY,
                    model: LoadedModel | None = None, progress: bool = True,
                    on_chunk=None, stats: dict | None = None):
    """Encode ``texts`` into a zarr array, chunk by chunk, resuming an interrupted run.

    The array ``name`` in group ``target`` has shape ``[N, len(layers) * hidden]`` and row chunks
    of ``config.chunk_rows``. Its attribute ``fastimg_embed`` holds the run settings, the config,
    ``rows_done`` (written after each chunk) and ``complete``. Rerunning on an unfinished array
    with the same settings skips the finished chunks; different settings are refused.

    Parameters
    ----------
    texts : sequence of str
    config : EncoderConfig or None
    target : zarr.Group, str or path
        A group, or the path of one (created when missing, zarr v3).
    name : str
        Array name inside the group.
    model : LoadedModel, optional
        Preloaded model for ``config.model``.
    progress : bool
        Show a tqdm bar.
    on_chunk : callable, optional
        ``on_chunk(rows_done)`` after each chunk is committed, on the thread that writes the
        chunks (:mod:`fastimg.embed.commit`); an exception it raises stops the run (tests use it
        to interrupt one).
    stats : dict, optional
        Filled as in :func:`~fastimg.embed.encoder.encode`.

    Returns
    -------
    zarr.Array
        The finished array.

    Raises
    ------
    TypeError
        A ``target`` that is no group or path, or a ``name`` that is no str.
    ValueError
        When the array exists with other settings (the message lists every difference) or was
        not written by this function; an empty ``name``.
    NotADirectoryError
        A ``target`` path that is a file.
    """
    import os

    import zarr

    if not isinstance(name, str):
        raise TypeError(f"name must be the array's name in the group, got {name!r}")
    if not name.strip("/"):  # the group itself: "array '' exists ... not written by fastimg"
        raise ValueError(f"name must be the array's name in the group, got {name!r}")
    if not isinstance(target, (zarr.Group, str, os.PathLike)):  # 5 made a folder named 5
        raise TypeError(f"target must be a zarr.Group or a path, got {type(target).__name__}")
    if not isinstance(target, zarr.Group) and os.path.isfile(target):
        raise NotADirectoryError(f"target {target} is a file, not a zarr group")
    texts, config, model = check_inputs(texts, config, model)
    group = target if isinstance(target, zarr.Group) else zarr.open_group(
        str(target), mode="a", zarr_format=3)
    plan, src = make_plan(config, model)
    settings = _settings(texts, config, plan, src)
    stats = init_stats(stats, plan)
    shape = (len(texts), plan.n_features)
    if name in group:
        array = group[name]
        meta = dict(array.attrs.get(ATTRS_KEY) or {})
        if "settings" not in meta:
            raise ValueError(f"array {name!r} exists in {group.store} but was not written by "
                             f"fastimg.embed; choose another name or remove it")
        diffs = _differences(meta["settings"], settings)
        if diffs:
            raise ValueError(f"cannot resume {name!r}: it was encoded with other settings ("
                             + "; ".join(diffs)
                             + "). Use another target or delete it to start over")
        if tuple(array.shape) != shape:
            raise ValueError(f"cannot resume {name!r}: shape {tuple(array.shape)}, "
                             f"expected {shape}")
        rows_done = int(meta.get("rows_done", 0))
        chunk_rows = int(array.chunks[0])
        if chunk_rows != config.chunk_rows:
            if rows_done and chunk_rows != min(config.chunk_rows, len(texts)):
                logger.info("resuming with the stored chunk size %d (config says %d)",
                            chunk_rows, config.chunk_rows)
            config = dataclasses.replace(config, chunk_rows=chunk_rows)
        if meta.get("complete"):
            logger.info("%s is complete (%d rows); nothing to do", name, rows_done)
            return array
        if rows_done:
            logger.info("resuming %s after %d of %d rows", name, rows_done, len(texts))
    else:
        array = group.create_array(name, shape=shape, dtype=config.output_dtype,
                                   chunks=(min(config.chunk_rows, max(1, len(texts))),
                                           plan.n_features), fill_value=0)
        meta = {"settings": settings, "config": config.to_dict(), "rows_done": 0,
                "complete": False}
        array.attrs[ATTRS_KEY] = meta
        rows_done = 0
    if rows_done < len(texts):
        if rows_done == 0:
            warn_empty(texts)
        if model is None:
            model = load_model(config.model, config.revision)

        def commit(start, stop, block):
            array[start:stop] = block
            array.attrs[ATTRS_KEY] = {**meta, "rows_done": stop}
            if on_chunk is not None:
                on_chunk(stop)

        # closing(): an exception here stops the tokeniser thread at once; the committer writes
        # chunk after chunk in order while the model runs on the next one
        with contextlib.closing(iter_chunks(texts, config, model, plan, rows_done, progress,
                                            stats)) as chunks, Committer(commit) as committer:
            for start, stop, block in chunks:
                committer.submit(start, stop, block)
    array.attrs[ATTRS_KEY] = {**meta, "rows_done": len(texts), "complete": True}
    return array
