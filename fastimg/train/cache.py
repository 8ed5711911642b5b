"""The frozen-feature cache: a frozen extractor's outputs, computed once per split.

DeepInsight images are never augmented (the feature-to-pixel map is the meaning) and the
extractor is frozen, so its output for a row is the same every epoch; computing it once and
training the head on a float32 cache gives the same model as recomputing it (the paper's way),
in a fraction of the time. The default float16 cache rounds the features, and training turns
that into another model; the on-disk cache's epoch order
(:meth:`FeatureCache.order`) differs from the in-memory one once a split passes its window.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fastimg.train.data import ChunkedReader, shuffled_order

logger = logging.getLogger("fastimg.train")


#: decoded (float32) size of one chunk of an on-disk feature cache
CHUNK_BYTES = 16 << 20
#: decoded bytes the on-disk cache keeps in memory (the shuffle window is half of it)
DISK_WINDOW_BYTES = 512 << 20
#: the attribute of a finished on-disk cache: the key it was built under and its rows
FINISHED_KEY = "fastimg_feature_cache"


def feature_cache_bytes(n_rows: int, shape, dtype: str = "float16") -> int:
    """Bytes an in-memory cache of ``n_rows`` features of ``shape`` takes."""
    return int(n_rows) * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


class FeatureCache:
    """Extractor outputs of one split, in the split's ascending row order.

    ``get(positions)`` returns float32 features ``[len(positions), C, h, w]`` of the rows at
    those positions. The values are kept as float16 (in memory, or in a zarr array).
    """

    def __init__(self, data, rows: np.ndarray):
        self._data = data
        self.rows = rows

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def on_disk(self) -> bool:
        return not isinstance(self._data, torch.Tensor)

    def get(self, positions) -> torch.Tensor:
        positions = np.asarray(positions, dtype=np.int64)
        if not self.on_disk:
            return self._data[torch.from_numpy(positions)].float()
        return torch.from_numpy(self._data.read(positions))

    def order(self, seed: int, epoch: int, also_read=()) -> np.ndarray:
        """The positions of one shuffled training epoch (:func:`shuffled_order`).

        In memory, a full permutation unless a reader in ``also_read`` (the store's images
        or embeddings, read by store row for the same batches) cannot keep the split's
        chunks. On disk, a fully random order would decode every chunk for every batch, so
        the chunks are shuffled, taken a window at a time (as many random chunks as fit half
        of ``DISK_WINDOW_BYTES``) and the rows shuffled within each window: every epoch
        decodes each chunk once.
        """
        chunkings = [reader.chunking(self.rows) for reader in also_read]
        if self.on_disk:
            chunkings.insert(0, self._data.chunking(np.arange(len(self))))
        return shuffled_order(len(self), seed, epoch, chunkings)


def open_cache(path, rows: np.ndarray, key: str) -> FeatureCache | None:
    """The finished on-disk cache at ``path`` built under ``key`` for ``rows``, or None (no
    array there, an unfinished one, or one of another key or other rows)."""
    import zarr

    try:
        array = zarr.open_array(os.fspath(path), mode="r")
    except (FileNotFoundError, ValueError, TypeError, KeyError):  # nothing, or no array there
        return None
    if array.attrs.get(FINISHED_KEY) != {"key": key, "rows": int(rows.size)}:
        return None
    logger.info("feature cache of %d rows reused from %s", rows.size, path)
    return FeatureCache(ChunkedReader(array, cache_bytes=DISK_WINDOW_BYTES), rows)


@torch.no_grad()
def build_cache(model, loader, rows: np.ndarray, *, where: str = "memory", path=None,
                autocast=contextlib.nullcontext, progress: bool = False, desc: str = "cache",
                dtype: str = "float16", key: str | None = None):
    """Run the frozen extractor of ``model`` over one pass of ``loader`` (unshuffled).

    Parameters
    ----------
    model : fastimg.train.head.ImageClassifier
    loader : TorchLoader or DaliLoader
        Serves the rows ``rows`` in ascending order.
    where : {"memory", "zarr"}
    path : path, optional
        Folder of the zarr array (``where="zarr"``).
    autocast : context manager factory
        Mixed precision for the extractor on CUDA (none by default).
    dtype : {"float16", "float32"}
        dtype of the kept features.
    key : str, optional
        Recorded in a finished on-disk cache (:func:`open_cache` reopens it under that key).

    Returns
    -------
    FeatureCache
    """
    model.eval()
    out, array, done = None, None, 0
    bar = tqdm(total=len(rows), desc=desc, unit="img", disable=not progress, leave=False)
    for images, _, batch_rows in loader.epoch(0):
        with autocast():
            feats = model.extract(images)
        feats = feats.to("cpu", getattr(torch, dtype)).contiguous()
        if np.any(batch_rows.cpu().numpy() != rows[done:done + feats.shape[0]]):
            raise RuntimeError("the loader did not serve the split's rows in order")
        if out is None and array is None:
            shape = (len(rows), *feats.shape[1:])
            if where == "zarr":
                import zarr

                Path(path).parent.mkdir(parents=True, exist_ok=True)
                row_bytes = 4 * int(np.prod(shape[1:], dtype=np.int64))
                chunk_rows = max(1, min(len(rows), CHUNK_BYTES // row_bytes))
                # uncompressed: features are dense and every epoch reads them all
                array = zarr.create_array(os.fspath(path), shape=shape, dtype=dtype,
                                          chunks=(chunk_rows, *shape[1:]), compressors=None,
                                          overwrite=True)
            else:
                out = torch.empty(shape, dtype=getattr(torch, dtype))
        if array is not None:
            array[done:done + feats.shape[0]] = feats.numpy()
        else:
            out[done:done + feats.shape[0]] = feats
        done += feats.shape[0]
        bar.update(feats.shape[0])
    bar.close()
    if done != len(rows):
        raise RuntimeError(f"the loader served {done} of {len(rows)} rows")
    if array is not None:
        array.attrs[FINISHED_KEY] = {"key": key, "rows": done}
        logger.info("feature cache of %d rows in %s", done, path)
        return FeatureCache(ChunkedReader(array, cache_bytes=DISK_WINDOW_BYTES), rows)
    return FeatureCache(out, rows)
