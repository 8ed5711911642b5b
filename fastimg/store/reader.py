"""The one reader of finished stores: arrays and parsed attributes, schema in one place."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from fastimg.store import location
from fastimg.store.keys import upgraded
from fastimg.store.locks import lock_holder
from fastimg.store.schema import (ATTRS_KEY, BUILD_KEY, COMPLETE, EMBEDDINGS, FORMAT_VERSION,
                                  IDS, IMAGES, LABELS, SPLIT, StoreError, split_rows)

logger = logging.getLogger("fastimg.store")


def check_version(path, attrs: dict) -> None:
    """Raise :class:`StoreError` unless ``attrs`` were written in this fastimg's format.

    Parameters
    ----------
    path : str, path or fastimg.store.location.Location
        The store, named in the message.
    attrs : dict
        Its ``fastimg`` attributes; their ``format_version`` is compared with
        :data:`~fastimg.store.schema.FORMAT_VERSION`.

    Raises
    ------
    StoreError
        When the format differs or is missing: the message says to rebuild the store, or (for
        a format that is not an older one) to upgrade fastimg.
    """
    version = attrs.get("format_version")
    if version != FORMAT_VERSION:
        older = isinstance(version, int) and version < FORMAT_VERSION
        what = "an older" if older else "another"
        raise StoreError(f"{path} was written by {what} fastimg (store format {version}; this "
                         f"one reads format {FORMAT_VERSION}): rebuild it as it was made, with "
                         f"force=True" + ("" if older else ", or upgrade fastimg"))


def why_not_a_store(path) -> str:
    """Why ``path`` is not a complete store, in one line: missing, unfinished, a training run
    folder, or something else."""
    where = location.readable(path)
    holder = lock_holder(path)
    if holder is not None:
        return (f"{path} is being built now by another fastimg command ({holder}): wait for "
                f"it to end")
    if not location.exists(where):
        partial = location.partial_path(path)
        if partial != path and location.exists(partial):
            return (f"{path} is not finished: its build stopped before the end ({partial} holds "
                    f"it); rerun the command that builds it")
        bucket = location.missing_bucket(path)
        return f"{path} does not exist" + (f" (nor can its bucket {bucket} be seen: check the "
                                           f"URL and the credentials)" if bucket else "")
    if any(location.read_attrs(where, key) is not None for key in (ATTRS_KEY, BUILD_KEY)):
        return (f"{path} is an unfinished fastimg store (its build did not finish: rerun the "
                f"command that builds it)")
    from fastimg.run_folder import BUNDLE_FILE, is_run_folder, listed_runs, model_type, runs_inside

    if location.is_local(where) and is_run_folder(where):
        store = _run_store(where / BUNDLE_FILE)
        return (f"{path} is a training run folder, not a store"
                + (f" (its store: {store})" if store else ""))
    kind = model_type(where) if location.is_local(where) else None
    if kind is not None:
        return f"{path} is a model folder (a {kind!r} model), not a store"
    if location.is_local(where):  # a file or an array of a store or run (imdb.zarr/images)
        store = location.store_around(where)
        run = next((folder for folder in Path(os.path.abspath(where)).parents
                    if is_run_folder(folder)), None)
        if store is not None or run is not None:
            return (f"{path} lies inside the " + (f"fastimg store {store}" if store is not None
                                                  else f"training run folder {run}")
                    + ": give that instead")
        runs = runs_inside(where)
        if runs:
            return (f"{path} is not a fastimg store: it holds training run folders "
                    f"({listed_runs(runs)}); `fastimg info {path}/*` shows them side by side")
    return f"{path} is not a fastimg store"


def _run_store(bundle) -> str | None:
    """The store a training run was trained on, from its ``bundle`` file, or None."""
    import json

    try:
        return json.loads(bundle.read_text(encoding="utf-8")).get("store")
    except (OSError, ValueError, AttributeError):
        return None


class StoreReader:
    """A finished store, read-only.

    Parameters
    ----------
    path : str, path or fastimg.store.location.Location
        A store written by ``fastimg build-dataset``, ``relayout`` or ``images``: a local path
        or an fsspec URL (``s3://bucket/imdb.zarr``).
    storage_options : dict, optional
        fsspec options for a URL (credentials, ``client_kwargs={"endpoint_url": ...}``).

    Raises
    ------
    StoreError
        When ``path`` is missing, unfinished, or of another store format.

    Attributes
    ----------
    path : str or path
    group : zarr.Group
    attrs : dict
        The store's ``fastimg`` attributes (configs, layout, provenance, summary, stages).
    """

    def __init__(self, path, storage_options: dict | None = None):
        path = location.resolve(path, storage_options)
        self.path = path
        if not location.is_complete(path):
            raise StoreError(why_not_a_store(path))
        where = location.readable(path)
        self._identity = location.identity(where)
        self.group = location.open_group(where, "r")
        self.attrs = dict(self.group.attrs[ATTRS_KEY])
        check_version(path, self.attrs)

    def __repr__(self) -> str:
        summary = self.summary
        shape = self.images.shape if IMAGES in self.group else ()
        parts = [f"{str(self.path)!r}", f"kind={self.kind!r}",
                 f"rows={shape[0] if shape else summary.get('rows')}",
                 f"image_shape={tuple(shape[1:])}"]
        if self.class_names:
            parts.append(f"classes={self.class_names}")
        return f"StoreReader({', '.join(parts)})"

    def check_unchanged(self) -> None:
        """Raise :class:`StoreError` when the store was replaced or deleted since it was opened
        (a ``--force`` rebuild or a ``relayout`` of it ran meanwhile): the arrays are read by
        path, so what was read may mix two builds, or hold zeros where files had gone."""
        where = location.readable(self.path)
        if (location.identity(where) != self._identity
                or location.read_attrs(where) != self.attrs):
            raise StoreError(f"{self.path} was replaced or deleted while this command read it "
                             f"(by a build-dataset, relayout or images --force?): what was read "
                             f"may mix two builds; run the command again")

    # -- attributes -----------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"dataset"`` (a labelled corpus) or ``"images"`` (a feature matrix's images)."""
        return self.attrs.get("kind", "images")

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get(COMPLETE))

    @property
    def summary(self) -> dict:
        return self.attrs.get("summary") or {}

    @property
    def configs(self) -> dict:
        """Each stage's config as saved (``corpus``, ``encoder``, ``layout``, ``dataset``...)."""
        return self.attrs.get("config") or {}

    @property
    def provenance(self) -> dict:
        return self.attrs.get("provenance") or {}

    @property
    def corpus(self) -> dict:
        """The corpus summary (class names and values, counts), empty for image stores."""
        return self.attrs.get("corpus") or {}

    @property
    def stages(self) -> dict:
        """Per stage: its key, the settings it was computed with and its bookkeeping (a store
        written before the encoder's ``precision`` in today's terms: :func:`keys.upgraded`)."""
        return upgraded(self.attrs.get("stages") or {})

    @property
    def class_names(self) -> list[str]:
        names = self.summary.get("class_names")
        if names:
            return [str(n) for n in names]
        if self.has_labels:  # the labels are the class indices then
            return [str(i) for i in range(int(self.labels().max(initial=-1)) + 1)]
        return []

    @property
    def class_values(self) -> list | None:
        """Stored label value of each class (None: the labels are the class indices)."""
        return self.corpus.get("class_values")

    def layout(self):
        """The fitted :class:`~fastimg.layout.DeepInsightLayout`.

        Raises
        ------
        StoreError
            For a store written without one (:func:`~fastimg.store.write_store`).
        """
        from fastimg.layout import DeepInsightLayout

        if "layout" not in self.attrs:
            raise StoreError(f"{self.path} holds no layout (written by write_store without "
                             f"one)")
        return DeepInsightLayout.from_dict(self.attrs["layout"])

    def encoder_config(self):
        """The :class:`~fastimg.embed.EncoderConfig` the embeddings were made with, its
        precision as the build resolved it (``"auto"`` became fp16 on a GPU, fp32 on the
        CPU): new texts are then encoded in the store's precision, not the new machine's
        ``auto``."""
        from dataclasses import replace

        from fastimg.embed import EncoderConfig
        from fastimg.embed.precision import PRECISIONS

        if "encoder" not in self.configs:
            raise StoreError(f"{self.path} was not built from texts (no encoder settings)")
        config = EncoderConfig.from_dict(self.configs["encoder"])
        resolved = ((self.stages.get("encode") or {}).get("settings") or {}).get("precision")
        if config.precision == "auto" and resolved in PRECISIONS and resolved != "auto":
            config = replace(config, precision=resolved)
        return config

    # -- arrays ---------------------------------------------------------------------------
    @property
    def images(self):
        """The ``images`` array; :class:`StoreError` when a damaged store has lost it."""
        if IMAGES not in self.group:  # was zarr's bare KeyError: 'images', an internal error
            raise StoreError(f"{self.path} has lost its {IMAGES} array (a folder deleted, or a "
                             f"copy cut short): the store is damaged; build it again")
        return self.group[IMAGES]

    @property
    def embeddings(self):
        """The ``embeddings`` array, or None when the store has none."""
        return self.group[EMBEDDINGS] if EMBEDDINGS in self.group else None

    @property
    def has_labels(self) -> bool:
        return LABELS in self.group and SPLIT in self.group

    def _corpus_array(self, name: str):
        """The array ``name``; :class:`StoreError` naming the store when it has none (a store
        of a feature matrix's images has no ids or labels, and a split only when it was
        given one), not zarr's bare ``KeyError: 'labels'``."""
        if name not in self.group:
            given = " (build_image_store(..., split=...))" if name == SPLIT else ""
            raise StoreError(f"{self.path} has no {name}: it holds the images of a feature "
                             f"matrix (made by `fastimg images`){given}, not a labelled corpus "
                             f"(`fastimg build-dataset`)")
        return self.group[name]

    def labels(self) -> np.ndarray:
        """The stored label of every row (see :meth:`targets` for class indices).

        Raises
        ------
        StoreError
            When the store has no labels (one made by ``fastimg images``).
        """
        return np.asarray(self._corpus_array(LABELS)[:], dtype=np.int64)

    def split_codes(self) -> np.ndarray:
        """int8 codes into :data:`SPLIT_NAMES`.

        Raises
        ------
        StoreError
            When the store has no split (one made by ``fastimg images`` without a split).
        """
        return np.asarray(self._corpus_array(SPLIT)[:], dtype=np.int8)

    def ids(self) -> np.ndarray:
        """The id of every row, as a numpy str array (fixed width, as :attr:`Corpus.ids
        <fastimg.corpus.Corpus>`).

        Raises
        ------
        StoreError
            When the store has no ids (one made by ``fastimg images``).
        """
        ids = np.asarray(self._corpus_array(IDS)[:])
        if ids.dtype.kind == "T":
            # zarr reads numpy's variable-width StringDType, which astype(str) refuses and
            # np.save pickles
            ids = np.array(ids.tolist(), dtype=str)
        return ids

    def targets(self) -> np.ndarray:
        """Class indices 0..K-1: the stored labels mapped through the class values."""
        labels = self.labels()
        values = self.class_values
        if values is None:
            targets = labels
        else:
            values = np.asarray(values, dtype=np.int64)
            targets = np.searchsorted(values, labels)
            if np.any(targets >= values.size) or np.any(
                    values[np.minimum(targets, values.size - 1)] != labels):
                raise StoreError(f"{self.path}: labels outside the corpus's class values "
                                 f"{list(values)}")
        n_classes = len(self.class_names)
        if targets.size and (targets.min() < 0 or targets.max() >= n_classes):
            raise StoreError(f"{self.path}: labels do not index its {n_classes} classes")
        return targets.astype(np.int64)

    def rows(self, split: str) -> np.ndarray:
        """Row indices of ``split`` ("train", "val" or "test"), ascending.

        Raises
        ------
        ValueError
            When ``split`` is no such name.
        StoreError
            When the store has no split (as :meth:`split_codes`).
        """
        return split_rows(self.split_codes(), split)

    def array_info(self) -> dict:
        """Shape and dtype of every array."""
        return {name: {"shape": list(self.group[name].shape), "dtype": str(self.group[name].dtype)}
                for name in sorted(self.group.array_keys())}

    def size_bytes(self) -> int:
        """Bytes the store takes on disk (where it is read: see
        :func:`~fastimg.store.location.readable`)."""
        return location.size_bytes(location.readable(self.path))


def open_store(path, storage_options: dict | None = None) -> StoreReader:
    """Open a finished store read-only (see :class:`StoreReader`).

    Parameters
    ----------
    path : str, path or fastimg.store.location.Location
        A complete store: a local path or an fsspec URL (``s3://bucket/imdb.zarr``).
    storage_options : dict, optional
        fsspec options for a URL (credentials, ``client_kwargs={"endpoint_url": ...}``),
        merged over those of a ``Location``; ignored for a local path.

    Returns
    -------
    StoreReader

    Raises
    ------
    StoreError
        (a ``ValueError``) When ``path`` is missing, unfinished (or being built), not a store,
        or of another store format; the message says which.
    TypeError
        When ``path`` is no str, path or ``Location``, or ``storage_options`` no dict.
    ValueError
        When ``path`` is an object-store URL that names no folder inside a bucket, or a URL
        with a slash missing (as :func:`~fastimg.store.location.resolve`); on object storage
        also an unknown protocol or storage option.
    ImportError
        When the fsspec backend of the URL's protocol is not installed.
    PermissionError
        When access to the store is denied.
    """
    return StoreReader(path, storage_options)
