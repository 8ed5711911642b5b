"""The store schema shared by every writer and reader: array names, dtypes, chunking, stages.

A store is one zarr v3 group. Its attribute ``fastimg`` holds everything about it as JSON
(configs, the fitted layout, provenance, per-stage keys, the summary) and, written last, the
completion marker ``complete``.
"""
from __future__ import annotations

import numpy as np

#: Bumped when the layout of arrays or attrs changes in a way older readers cannot follow.
#: 2: per-stage keys (``stages``) in the attrs, the unfinished build's state under ``BUILD_KEY``.
FORMAT_VERSION = 2

IMAGES = "images"
IDS = "ids"
LABELS = "labels"
SPLIT = "split"
EMBEDDINGS = "embeddings"
#: ``split`` holds int8 codes: indices into this tuple
SPLIT_NAMES = ("train", "val", "test")
#: the names a split column or split file may use (lower-cased) for each of :data:`SPLIT_NAMES`
SPLIT_ALIASES = {"train": "train", "test": "test", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val"}


def split_code(split: str) -> int:
    """The code of ``split`` in :data:`SPLIT_NAMES`; ValueError (one line) for another name."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
    return SPLIT_NAMES.index(split)


def split_rows(codes, split: str):
    """Row indices (ascending) whose ``split`` code is ``split``'s.

    Parameters
    ----------
    codes : array-like of int
        The split code of every row (indices into :data:`SPLIT_NAMES`, as the ``split``
        array holds them).
    split : {"train", "val", "test"}
        The split whose rows to find.

    Returns
    -------
    ndarray of intp, shape (n_rows_in_split,)

    Raises
    ------
    ValueError
        When ``split`` is no such name.
    """
    return np.flatnonzero(np.asarray(codes) == split_code(split))


ATTRS_KEY = "fastimg"
#: attrs of an unfinished build: its stage records so far
BUILD_KEY = "fastimg_build"
COMPLETE = "complete"
PARTIAL_SUFFIX = ".partial"
#: a complete store moved aside while ``--force`` puts its replacement in place
REPLACED_SUFFIX = ".replaced"
#: beside a local store while a command builds it: the lock that keeps a second one out
LOCK_SUFFIX = ".lock"
IMAGE_CHUNK_ROWS = 1024
ROW_CHUNK_ROWS = 65536

#: the encoder's resume record on ``embeddings`` (settings, config, ``rows_done``, ``complete``)
EMBED_ATTRS_KEY = "fastimg_embed"
#: per-chunk completion markers of a cluster build: ``DONE_PREFIX + array``, uint8, one
#: element per row chunk and chunked by one element, so concurrent tasks never share a file
DONE_PREFIX = "_done_"
#: dimension names of each array (zarr v3 metadata; xarray.open_zarr needs them)
DIMENSIONS = {IDS: ("row",), LABELS: ("row",), SPLIT: ("row",), EMBEDDINGS: ("row", "feature"),
              IMAGES: ("row", "y", "x")}

#: what an encoder run resolved (keys of its ``stats``), recorded with the store's encode stage
ENCODE_RUN_STATS = ("layers", "device", "precision", "int8_engine", "compute_dtype", "batching",
                    "attention")

#: The stages of a dataset build, in order; each one's output depends on the one before,
#: except those in :data:`OWN_INPUT_STAGES`.
STAGES = ("corpus", "encode", "layout", "images")
#: Stages whose settings name their whole input (the encode stage's ``n_texts`` and
#: ``texts_sha256``) instead of taking it from the stage before: the embeddings depend on the
#: texts alone, so other labels, ids or splits of the same texts keep them.
OWN_INPUT_STAGES = frozenset({"encode"})
#: The name a stage's settings go by in messages (``encoder.model: ... -> ...``).
STAGE_SETTINGS = {"encode": "encoder"}
#: Arrays each stage writes (the layout lives in the attrs).
STAGE_ARRAYS = {"corpus": (IDS, LABELS, SPLIT), "encode": (EMBEDDINGS, DONE_PREFIX + EMBEDDINGS),
                "layout": (), "images": (IMAGES, DONE_PREFIX + IMAGES)}


class StoreError(ValueError):
    """A store is missing, unfinished, of another format, or in the way."""
