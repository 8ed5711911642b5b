"""The one writer of stores: start or resume an unfinished build, record stages, finish.

A build lives at ``OUT.partial`` until it is finished. Each stage of it is recorded in the
group's attrs with its key (:mod:`fastimg.store.keys`), the settings the key was made from,
whether the stage is done and its own bookkeeping (rows done, timings, the fitted layout).
Finishing writes the final attrs with the completion marker last, then moves the store in
place (:func:`fastimg.store.location.replace_with_partial`).
"""
from __future__ import annotations

import logging

import numpy as np

from fastimg._validation import check_count
from fastimg.store import location
from fastimg.store.locks import build_lock
from fastimg.store.keys import canonical, upgraded
from fastimg.store.schema import (ATTRS_KEY, BUILD_KEY, COMPLETE, DIMENSIONS, DONE_PREFIX,
                                  EMBED_ATTRS_KEY, EMBEDDINGS, FORMAT_VERSION, IMAGE_CHUNK_ROWS,
                                  IMAGES, OWN_INPUT_STAGES, ROW_CHUNK_ROWS, STAGE_ARRAYS, STAGES,
                                  StoreError)

logger = logging.getLogger("fastimg.store")


class StoreWriter:
    """An unfinished store at ``partial_path(path)``.

    Use :meth:`open` to start one (or pick up the unfinished build left by an interrupted
    run), record each stage with :meth:`begin` / :meth:`update` / :meth:`complete_stage`, and
    :meth:`finish` to move it in place.

    Attributes
    ----------
    path : pathlib.Path
        Where the store goes when finished.
    group : zarr.Group
        The unfinished store.
    resumed : bool
        Whether an unfinished build was picked up.
    """

    def __init__(self, path, group, resumed: bool):
        self.path, self.group, self.resumed = location.resolve(path), group, resumed

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        # A failure before any stage finished leaves nothing behind; after one, the
        # unfinished build is kept so that the next run resumes (an interruption always is).
        if (exc is not None and isinstance(exc, Exception) and not self.resumed
                and not any(r.get("done") for r in self.stages.values())):
            self.discard()
        return False

    @classmethod
    def open(cls, path, *, reuse: bool = True) -> "StoreWriter":
        """The unfinished build of ``path`` when ``reuse`` and it is readable, else a new one.

        ``path`` is a local path or a :class:`~fastimg.store.location.Location` (an object
        store, built in place: starting afresh there deletes what is at ``path``). Whether an
        existing complete store at ``path`` may be replaced is the caller's decision (it may
        reuse stages from it); a local one is not touched here. On object storage, where the
        build is the store, a complete store is rebuilt in place when ``reuse``: it becomes a
        build with every stage done, whose matching stages the caller keeps
        (:func:`fastimg.stages.reconcile`), unreadable until it is complete again.

        Parameters
        ----------
        path : str, path or fastimg.store.location.Location
            Where the store goes when finished (its build is at ``partial_path(path)``).
        reuse : bool
            Pick up the unfinished build at ``partial_path(path)``; its records are brought to
            today's keys (:func:`~fastimg.store.keys.upgraded`), and finished stages whose
            arrays are gone and half-done copies (:meth:`adopt`) are dropped. A leftover that
            is no build of this fastimg (bad JSON, not zarr, another schema), or any leftover
            when false, is deleted and a new build started.

        Returns
        -------
        StoreWriter
            ``resumed`` is true when an unfinished build was picked up (false for a new build
            and for a complete store rebuilt in place).

        Raises
        ------
        TypeError, ValueError
            When ``path`` is no store location (as :func:`~fastimg.store.location.resolve`).
        StoreError
            When ``path`` is the root folder.
        PermissionError
            When access to the build is denied (it is not started afresh then: on object
            storage that would delete the store).
        """
        location.recover(path)
        tmp = location.partial_path(path)
        if reuse and location.exists(tmp):
            try:
                group = location.open_group(tmp, "r+")
                in_place = _reopen_finished(group, tmp) and not location.is_local(path)
                if isinstance(group.attrs.get(BUILD_KEY, {}).get("stages"), dict):
                    if in_place:
                        logger.info("rebuilding %s in place, keeping its matching stages", tmp)
                    else:
                        logger.info("picking up the unfinished build at %s", tmp)
                    writer = cls(path, group, not in_place)
                    # an unfinished build of an older fastimg resumes under today's keys
                    records = writer.stages
                    today = upgraded(records)
                    if today is not records:
                        writer._write(today)
                    writer.drop_lost_stages()
                    writer.drop_unfinished_copies()
                    return writer
            # an unreadable leftover (bad JSON, not zarr, another schema) is started afresh;
            # an error reaching it (permissions, the network) is not: on object storage the
            # build is the store, which starting afresh deletes
            except (ValueError, KeyError, TypeError, AttributeError, IndexError,
                    FileNotFoundError):
                pass
            logger.info("%s is not an unfinished build of this fastimg; starting afresh", tmp)
        location.remove(tmp)
        group = location.open_group(tmp, "w")
        group.attrs[BUILD_KEY] = {"stages": {}}
        return cls(path, group, False)

    # -- stage records --------------------------------------------------------------------
    @property
    def stages(self) -> dict:
        return dict(self.group.attrs.get(BUILD_KEY, {}).get("stages", {}))

    def stage(self, name: str) -> dict | None:
        """The record of stage ``name`` ({key, settings, done, ...}), or None."""
        return self.stages.get(name)

    def _write(self, stages: dict) -> None:
        self.group.attrs[BUILD_KEY] = {"stages": canonical(stages)}

    def begin(self, name: str, key: str, settings: dict, **extra) -> dict:
        """Record stage ``name`` as started with ``key``; a record with another key is
        dropped first, with the stages computed from it.

        Parameters
        ----------
        name : str
            The stage (one of :data:`~fastimg.store.schema.STAGES`, or a build's own stage
            such as ``"input"``).
        key : str
            The stage's key (:func:`~fastimg.store.keys.stage_key`).
        settings : dict
            The settings ``key`` was made from, recorded beside it.
        **extra
            More fields of a new record (its bookkeeping).

        Returns
        -------
        dict
            The stage's record: the existing one as it is (``settings`` and ``extra`` not
            applied) when it has ``key``, else the new one, not done.
        """
        old = self.stage(name)
        if old is not None and old["key"] == key:
            return old
        if old is not None:
            self.drop_from(name)
        stages = self.stages
        stages[name] = {"key": key, "settings": settings, "done": False, **extra}
        self._write(stages)
        return stages[name]

    def update(self, name: str, **values) -> dict:
        """Merge ``values`` into the record of stage ``name`` (written at once)."""
        stages = self.stages
        stages[name] = {**stages[name], **values}
        self._write(stages)
        return stages[name]

    def complete_stage(self, name: str, **values) -> dict:
        return self.update(name, done=True, **values)

    def drop_from(self, name: str) -> None:
        """Forget stage ``name`` and the stages computed from it (the later ones up to one that
        names its own input), deleting the arrays they wrote."""
        order = STAGES if name in STAGES else (name,)
        later = order[order.index(name):]
        own_input = [i for i, stage in enumerate(later) if i and stage in OWN_INPUT_STAGES]
        stages = self.stages
        for stage in later[:own_input[0]] if own_input else later:
            if stages.pop(stage, None) is not None:
                logger.info("dropping stage %s of the unfinished build", stage)
            for array in STAGE_ARRAYS.get(stage, ()):
                if array in self.group:
                    del self.group[array]
        self._write(stages)

    def lost_arrays(self, name: str) -> list[str]:
        """The arrays stage ``name`` wrote that are no longer in the build (deleted while it
        ran?)."""
        return lost_arrays(self.group, name)

    def drop_lost_stages(self) -> None:
        """Forget each finished stage whose arrays are gone, with the stages computed from it,
        so that they are computed again (an unfinished stage makes its arrays when it
        resumes)."""
        for name in STAGES:
            if (self.stage(name) or {}).get("done") and self.lost_arrays(name):
                logger.warning("the unfinished build at %s has lost the arrays of its %s stage "
                               "(%s); computing them again", location.partial_path(self.path),
                               name, ", ".join(self.lost_arrays(name)))
                self.drop_from(name)

    def check_arrays(self) -> None:
        """Raise :class:`StoreError` when a finished stage's arrays are gone (the build's
        folder was deleted or emptied while it ran): such a build is never made complete."""
        lost = {name: self.lost_arrays(name) for name, record in self.stages.items()
                if record.get("done")}
        lost = {name: arrays for name, arrays in lost.items() if arrays}
        if lost:
            what = "; ".join(f"{name}: {', '.join(arrays)}" for name, arrays in lost.items())
            raise StoreError(f"the unfinished build at {location.partial_path(self.path)} lost "
                             f"arrays while it ran ({what}; was it deleted?): rerun the command "
                             f"to compute them again")

    def adopt(self, reader, names) -> None:
        """Copy stages ``names`` of a finished store (records and arrays) into this build.

        Each stage is recorded as an unfinished copy before its arrays are written, and done
        after: a copy that stops half-way is dropped by the next :meth:`open`
        (:meth:`drop_unfinished_copies`) instead of being taken for this build's own work.

        Parameters
        ----------
        reader : StoreReader
            The finished store; each record keeps its fields, with ``reused_from`` naming
            ``reader.path`` (:func:`~fastimg.store.location.recorded_name`).
        names : iterable of str
            Stages recorded in ``reader.stages``. Their arrays that ``reader`` holds are copied
            (:func:`copy_array`), replacing this build's; records of these stages already here,
            and the stages computed from them, are not dropped first (the caller does:
            :meth:`drop_from`).
        """
        for name in names:
            record = {**reader.stages[name],
                      "reused_from": location.recorded_name(reader.path)}
            stages = self.stages
            stages[name] = {**record, "done": False}
            self._write(stages)
            for array in STAGE_ARRAYS.get(name, ()):
                if array in reader.group:
                    copy_array(reader.group[array], self.group, array)
            self.update(name, **record)

    def drop_unfinished_copies(self) -> None:
        """Forget each stage whose copy from another store (:meth:`adopt`) stopped half-way,
        deleting what of it was written: the arrays are not this build's, so nothing resumes
        on them."""
        for name, record in self.stages.items():
            if (record.get("reused_from") and not record.get("done")
                    and self.stage(name) is not None):  # not dropped with another
                logger.info("dropping the unfinished copy of stage %s from %s", name,
                            record["reused_from"])
                self.drop_from(name)

    # -- arrays ---------------------------------------------------------------------------
    def create_images(self, n_rows: int, grid, dtype: str, *,
                      chunk_rows: int = IMAGE_CHUNK_ROWS):
        """The ``images`` array [N, H, W], chunked by ``chunk_rows`` rows.

        Parameters
        ----------
        n_rows : int
            Rows (images) N.
        grid : (int, int)
            ``(H, W)`` of each image.
        dtype : str
            The images' dtype (``"uint8"``, ``"float16"``, ``"float32"``).
        chunk_rows : int
            Rows per chunk (by default a build's), capped at ``n_rows`` and at least 1.

        Returns
        -------
        zarr.Array
            The new array, filled with 0 (one already in the build is replaced), with
            dimension names.
        """
        height, width = grid
        return self.group.create_array(IMAGES, shape=(n_rows, height, width), dtype=dtype,
                                       chunks=(max(1, min(chunk_rows, n_rows)), height, width),
                                       fill_value=0, overwrite=True,
                                       dimension_names=DIMENSIONS[IMAGES])

    def write_rows(self, name: str, data, *, chunk_rows: int = ROW_CHUNK_ROWS) -> None:
        """An array of per-row values (ids, labels, split codes) in one go.

        Parameters
        ----------
        name : str
            The array's name (``ids``, ``labels``, ``split``: those get their dimension names;
            an array of that name already in the build is replaced).
        data : array-like
            One element (or row) per sample along the first axis; a numpy str array is stored
            as zarr strings.
        chunk_rows : int
            Rows per chunk (by default a build's), capped at the number of rows and at least 1.
        """
        data = np.asarray(data)
        dtype = str if data.dtype.kind == "U" else data.dtype
        array = self.group.create_array(name, shape=data.shape, dtype=dtype,
                                        chunks=(max(1, min(data.shape[0], chunk_rows)),
                                                *data.shape[1:]), overwrite=True,
                                        dimension_names=DIMENSIONS.get(name))
        array[:] = data

    def create_embeddings(self, n_rows: int, n_features: int, dtype: str, chunk_rows: int,
                          record: dict):
        """The ``embeddings`` array [N, F] with the encoder's resume ``record`` (settings,
        config) and ``rows_done`` 0, as :func:`fastimg.embed.encode_to_array` makes it (it
        resumes on it), with dimension names.

        Parameters
        ----------
        n_rows : int
            Rows (texts) N.
        n_features : int
            Features F per row (layers times the hidden size).
        dtype : str
            The embeddings' dtype (the encoder's ``output_dtype``).
        chunk_rows : int
            Rows per chunk, capped at ``n_rows``; not checked (give at least 1).
        record : dict
            The encoder's resume record, stored under
            :data:`~fastimg.store.schema.EMBED_ATTRS_KEY` as JSON with ``rows_done`` 0 and
            ``complete`` false (over any values of its own).

        Returns
        -------
        zarr.Array
            The new array, filled with 0 (one already in the build is replaced).
        """
        array = self.group.create_array(EMBEDDINGS, shape=(n_rows, n_features), dtype=dtype,
                                        chunks=(min(chunk_rows, max(1, n_rows)), n_features),
                                        fill_value=0, overwrite=True,
                                        dimension_names=DIMENSIONS[EMBEDDINGS])
        array.attrs[EMBED_ATTRS_KEY] = canonical({**record, "rows_done": 0, "complete": False})
        return array

    def done_markers(self, name: str, *, create: bool = True):
        """The completion markers of the row chunks of array ``name`` (uint8, one element per
        chunk, each in its own chunk: concurrent tasks never write one file), or None.

        Parameters
        ----------
        name : str
            The array whose chunks are marked (``images`` or ``embeddings``); it must be in the
            build for the markers to be made.
        create : bool
            Make the markers (all 0, one per row chunk of ``name``, at least one) when there
            are none; else return None then.

        Returns
        -------
        zarr.Array or None
            The markers (existing ones as they are), or None when there are none and
            ``create`` is false.
        """
        marker = DONE_PREFIX + name
        if marker in self.group:
            return self.group[marker]
        if not create:
            return None
        array = self.group[name]
        n_chunks = -(-int(array.shape[0]) // int(array.chunks[0]))
        return self.group.create_array(marker, shape=(max(1, n_chunks),), dtype="uint8",
                                       chunks=(1,), fill_value=0, dimension_names=("chunk",))

    def finished_rows(self, name: str, rows_done: int) -> int:
        """Rows of array ``name`` finished in order from the first: ``rows_done`` (an
        in-process run's), or more where a cluster build marked the chunks after them done, up
        to the first unmarked one. An in-process run resumes there.

        Parameters
        ----------
        name : str
            The array (``images`` or ``embeddings``), in the build when it has markers.
        rows_done : int
            Rows an in-process run finished in order (its record's ``rows_done``).

        Returns
        -------
        int
            ``rows_done`` when there are no markers (:meth:`done_markers`), else the larger of
            it and the first row of the first unfinished chunk (all rows when none is).
        """
        markers = self.done_markers(name, create=False)
        if markers is None:
            return rows_done
        array = self.group[name]
        starts, stops, finished = finished_chunks(markers[:], int(array.shape[0]),
                                                  int(array.chunks[0]), rows_done)
        unfinished = np.flatnonzero(~finished)
        prefix = int(array.shape[0]) if unfinished.size == 0 else int(starts[unfinished[0]])
        return max(rows_done, prefix)

    def drop_done_markers(self, name: str) -> None:
        """Delete the completion markers of array ``name`` (once every row is written)."""
        marker = DONE_PREFIX + name
        if marker in self.group:
            del self.group[marker]

    # -- the end --------------------------------------------------------------------------
    def finish(self, attrs: dict) -> None:
        """Write the final attrs, the stage records and the completion marker (last), then
        move the store in place (an existing one is replaced atomically)."""
        self.check_arrays()
        stages = self.stages
        others = {k: v for k, v in self.group.attrs.asdict().items()
                  if k not in (BUILD_KEY, ATTRS_KEY)}
        # every array is written by now; the attrs with the marker are one write (on object
        # storage, where nothing is renamed, that write is what makes the store complete)
        self.group.attrs.put({**others, ATTRS_KEY: canonical({
            **attrs, "stages": stages, "format_version": FORMAT_VERSION, COMPLETE: True})})
        location.replace_with_partial(self.path)

    def discard(self) -> None:
        """Delete the unfinished build."""
        location.remove(location.partial_path(self.path))


def lost_arrays(group, stage: str) -> list[str]:
    """The arrays that ``stage`` writes (its done markers aside) that the store ``group`` does
    not hold."""
    return [array for array in STAGE_ARRAYS.get(stage, ())
            if not array.startswith(DONE_PREFIX) and array not in group]


def _reopen_finished(group, where) -> bool:
    """Turn a finished build back into an unfinished one with every stage done; whether it
    did.

    Locally, a finished build that was not moved in place (interrupted between its last attrs
    write and the move), so that the rerun moves it in place instead of starting afresh. On
    object storage, the complete store a forced rebuild writes over in place."""
    attrs = group.attrs.get(ATTRS_KEY) or {}
    if (BUILD_KEY in group.attrs or not attrs.get(COMPLETE)
            or attrs.get("format_version") != FORMAT_VERSION
            or not isinstance(attrs.get("stages"), dict)):
        return False
    logger.info("%s is a finished build; opening it as an unfinished one", where)
    others = {k: v for k, v in group.attrs.asdict().items() if k != ATTRS_KEY}
    group.attrs.put({**others, BUILD_KEY: {"stages": canonical(attrs["stages"])}})
    return True


def finished_chunks(done, n_rows: int, chunk_rows: int, rows_done: int):
    """``(starts, stops, finished)`` of the row chunks of an array of ``n_rows`` rows: a chunk
    is finished when its marker in ``done`` (:meth:`StoreWriter.done_markers`) is set or it
    lies below ``rows_done`` (the rows an in-process run finished in order)."""
    starts = np.arange(0, n_rows, chunk_rows)
    stops = np.minimum(starts + chunk_rows, n_rows)
    finished = (np.asarray(done[:starts.size]) > 0) | (stops <= rows_done)
    return starts, stops, finished


def copy_array(source, group, name: str, *, block_rows: int | None = None):
    """Copy a zarr array into ``group`` under ``name``, chunks and attrs kept, row block by
    row block (never the whole array in memory).

    Parameters
    ----------
    source : zarr.Array
        The array to copy; its shape, dtype, chunks, fill value, dimension names and attrs are
        kept.
    group : zarr.Group
        Where the copy goes (an array ``name`` there is replaced).
    name : str
        The copy's name in ``group``.
    block_rows : int, optional
        Rows read and written at a time, at least 1; by default as many whole row chunks
        of ``source`` as fit in 8,192 rows, at least one.

    Returns
    -------
    zarr.Array
        The copy.
    """
    if block_rows is not None:  # -1 copied no row, 0 fell back to the default
        check_count("block_rows", block_rows, 1, "or None")
    target = group.create_array(name, shape=source.shape, dtype=source.dtype,
                                chunks=source.chunks, fill_value=source.fill_value,
                                overwrite=True, dimension_names=getattr(
                                    source.metadata, "dimension_names", None))
    step = block_rows or max(1, int(source.chunks[0]) * max(1, 8192 // int(source.chunks[0])))
    for start in range(0, source.shape[0], step):
        target[start:start + step] = source[start:start + step]
    target.attrs.update(dict(source.attrs))
    return target


def check_writable(path, *, force: bool) -> None:
    """Refuse when something that is not a store is at ``path`` (never deleted, even with
    ``force``), or a store is and ``force`` is false.

    An interrupted replace at ``path`` is finished or undone first
    (:func:`~fastimg.store.location.recover`). Nothing at ``path``, and an unfinished build in
    place there (as object storage builds), pass.

    Parameters
    ----------
    path : str, path or fastimg.store.location.Location
        Where the store is to be written.
    force : bool
        Let a fastimg store at ``path`` (of any store format) be replaced.

    Raises
    ------
    StoreError
        When something that is not a fastimg store is at ``path``, a store is and ``force``
        is false, or ``path`` is the root folder.
    TypeError, ValueError
        When ``path`` is no store location (as :func:`~fastimg.store.location.resolve`).
    PermissionError
        When access to ``path`` is denied.
    """
    location.recover(path)
    path = location.resolve(path)
    if not location.exists(path):
        return
    if location.read_attrs(path) is None:
        if location.read_attrs(path, BUILD_KEY) is not None:
            return  # an object store's unfinished build is in place: resumed, not refused
        raise StoreError(f"{path} exists and is not a fastimg store; choose another output path")
    if not force:
        raise StoreError(f"{path} already exists; pass force=True to replace it")


def write_store(path, arrays: dict, attrs: dict, *, force: bool = False,
                chunk_rows: int | None = None) -> None:
    """Write a whole store from in-memory arrays (synthetic stores in tests and benchmarks).

    Parameters
    ----------
    path : str or path
        The store to write (a local path or an fsspec URL).
    arrays : dict
        Schema names (``images``, ``embeddings``, ``labels``, ``split``, ...) to arrays of one
        row per sample; ``images`` is ``[n, H, W]``.
    attrs : dict
        The store's attributes (:data:`~fastimg.store.ATTRS_KEY`'s content).
    force : bool
        Replace a complete store at ``path``.
    chunk_rows : int, optional
        Rows per chunk; by default those of a build.

    Raises
    ------
    TypeError
        ``arrays`` or ``attrs`` is no dict.
    ValueError
        ``chunk_rows`` below 1, or ``images`` that are not ``[n, H, W]`` (before anything is
        written).
    """
    if not isinstance(arrays, dict) or not isinstance(attrs, dict):
        raise TypeError(f"arrays and attrs must be dicts, got {type(arrays).__name__} and "
                        f"{type(attrs).__name__}")
    if chunk_rows is not None:
        chunk_rows = check_count("chunk_rows", chunk_rows)
    if IMAGES in arrays and np.ndim(arrays[IMAGES]) != 3:
        raise ValueError(f"images must be [n, H, W], got shape {np.shape(arrays[IMAGES])}")
    with build_lock(path):
        check_writable(path, force=force)
        writer = StoreWriter.open(path, reuse=False)
        for name, data in arrays.items():
            data = np.asarray(data)
            if name == IMAGES:
                array = writer.create_images(data.shape[0], data.shape[1:], str(data.dtype),
                                             chunk_rows=chunk_rows or IMAGE_CHUNK_ROWS)
                array[:] = data
            else:
                writer.write_rows(name, data, chunk_rows=chunk_rows or ROW_CHUNK_ROWS)
        writer.finish(attrs)
