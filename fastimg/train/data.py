"""Reading a dataset store for training: targets, splits, images, normalisation, loaders.

Two loaders stream the same batches: a torch DataLoader and an NVIDIA DALI pipeline
(``fn.external_source`` fed from the store, normalisation on the pipeline, on the GPU or as a
CPU pipeline). Both read the rows of :func:`epoch_order` in the same order, so for one seed
they give the same batches, and neither draws from the global torch RNG, so training with
either gives the same model.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import torch

from fastimg import store
from fastimg._registry import Registry, has_module, torch_cuda_available
from fastimg.raster import image_unit

logger = logging.getLogger("fastimg.train")

#: added to the variance before the square root, in both loaders (empty images stay finite)
EPS = 1e-5
#: decoded (float32) bytes a :class:`ChunkedReader` keeps by default: 4 GiB holds about
#: 430,000 images of 50 x 50; a larger split is read in a windowed order (:func:`shuffled_order`)
READER_CACHE_BYTES = 4 << 30


def epoch_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The order of one training epoch: ``np.random.default_rng([seed, epoch]).permutation``
    (``seed + epoch`` gave seed 1 the orders of seed 0 shifted by one epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n_rows)


def windowed_order(groups: np.ndarray, window: int, seed: int, epoch: int) -> np.ndarray:
    """Positions ``0 .. n-1`` of one shuffled epoch, a window of chunks at a time.

    ``groups`` holds the (non-decreasing) chunk of each position. The chunks are shuffled and
    taken ``window`` at a time, and the positions are shuffled within each window, so a
    reader that keeps ``2 * window`` decoded chunks decodes each chunk once per epoch (a
    batch may straddle two windows). The generator is ``np.random.default_rng([seed,
    epoch])``.
    """
    groups = np.asarray(groups)
    rng = np.random.default_rng([seed, epoch])
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]) if groups.size else \
        np.zeros(0, dtype=np.int64)
    stops = np.r_[starts[1:], groups.size]
    chunks = rng.permutation(starts.size)
    parts = [np.zeros(0, dtype=np.int64)]
    for first in range(0, chunks.size, max(1, window)):
        positions = np.concatenate([np.arange(starts[c], stops[c])
                                    for c in chunks[first:first + max(1, window)]])
        parts.append(rng.permutation(positions))
    return np.concatenate(parts)


def shuffled_order(n: int, seed: int, epoch: int, chunkings) -> np.ndarray:
    """Positions of one shuffled epoch over ``n`` rows read through chunk-caching readers.

    ``chunkings`` holds, for each reader the epoch reads through, ``(chunk of each position,
    chunks the reader keeps)``. When every reader keeps all the chunks of the ``n`` rows, the
    order is :func:`epoch_order` (a full permutation). Otherwise a fully random order would
    decode a chunk for nearly every row, so it is :func:`windowed_order` over the chunks of
    the coarsest reader that cannot keep them all (its chunks span the most positions), with
    a window that keeps every such reader within half its cache: each chunk of the coarsest
    reader is decoded once an epoch, and a chunk of another that straddles two of its chunks
    at most twice.
    """
    tight = [(np.asarray(ids), int(keeps)) for ids, keeps in chunkings
             if np.unique(ids).size > keeps]
    if not tight:
        return epoch_order(n, seed, epoch)
    groups = min(tight, key=lambda reader: np.unique(reader[0]).size)[0]
    _, group_index = np.unique(groups, return_inverse=True)
    same_group = group_index[1:] == group_index[:-1]
    window = None
    for ids, keeps in tight:
        # the most chunks of this reader that one group reaches
        starts = np.r_[True, ~same_group | (ids[1:] != ids[:-1])]
        most = int(np.bincount(group_index[starts]).max())
        fits = max(1, (keeps // 2) // most)
        window = fits if window is None else min(window, fits)
    return windowed_order(groups, window, seed, epoch)


class ChunkedReader:
    """Rows of a chunked array (zarr, or numpy) as float32, decoding each chunk once.

    Decoded chunks are kept as float32 (least recently used first out) up to
    ``cache_bytes``, so a store that fits is decoded once and later epochs gather from
    memory, and a larger one streams chunk by chunk (read it in an order of
    :func:`shuffled_order`, which decodes each chunk about once an epoch). ``uint8`` images are
    scaled back to [0, 1]. The float16 -> float32 conversion goes through torch (numpy's is
    ~20x slower); it runs once per decoded chunk, not per read (converting each read made a
    warm epoch of 60,000 float16 rows about 7 times slower).
    """

    def __init__(self, array, *, cache_bytes: int | None = None):
        cache_bytes = READER_CACHE_BYTES if cache_bytes is None else cache_bytes
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunk_rows = int(getattr(array, "chunks", (self.shape[0],))[0]) or 1
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * 4
        self.max_chunks = max(2, cache_bytes // max(1, row_bytes * self.chunk_rows))
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict:
        # a worker started by spawn or forkserver (macOS, Python 3.14's default on Linux)
        # decodes its own chunks: pickling the cache sent up to cache_bytes to each worker
        return {**self.__dict__, "_chunks": OrderedDict()}

    def chunking(self, rows: np.ndarray) -> tuple[np.ndarray, int]:
        """``(chunk of each row, chunks kept)``: this reader's entry for
        :func:`shuffled_order`."""
        return np.asarray(rows, dtype=np.int64) // self.chunk_rows, self.max_chunks

    def _chunk(self, index: int) -> np.ndarray:
        chunk = self._chunks.get(index)
        if chunk is None:
            start = index * self.chunk_rows
            chunk = as_loaded(np.asarray(self.array[start:start + self.chunk_rows]))
            self._chunks[index] = chunk
            while len(self._chunks) > self.max_chunks:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(index)
        return chunk

    def read(self, rows: np.ndarray) -> np.ndarray:
        """float32 rows ``rows`` (any order, repeats allowed), shape ``(len(rows), ...)``."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, *self.shape[1:]), dtype=np.float32)
        which = rows // self.chunk_rows
        for index in np.unique(which):
            mask = which == index
            out[mask] = self._chunk(int(index))[rows[mask] - index * self.chunk_rows]
        return out


def as_loaded(block: np.ndarray) -> np.ndarray:
    """Stored images as the trainer sees them: float32, ``uint8`` scaled back to [0, 1] (the
    inverse of :func:`fastimg.raster.to_image_dtype` up to its rounding). A float32 block is
    returned as it is."""
    if block.dtype == np.float32:
        return block
    out = np.empty(block.shape, dtype=np.float32)
    torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(block)))
    if block.dtype == np.uint8:
        out *= image_unit(block.dtype)
    return out


class StoreData:
    """The labelled arrays of a finished dataset store.

    Parameters
    ----------
    path : str or path
        A store written by ``fastimg build-dataset``.
    storage_options : dict, optional
        fsspec options for a store URL (``s3://...``).

    Attributes
    ----------
    targets : ndarray of int64
        Class indices 0..K-1 (the stored labels mapped through the corpus's class values).
    split : ndarray of int8
        Codes into :data:`fastimg.store.SPLIT_NAMES`.
    class_names : list of str
    reader : fastimg.store.StoreReader
    images : zarr.Array
    embeddings : zarr.Array or None
    """

    def __init__(self, path, storage_options: dict | None = None):
        reader = store.StoreReader(path, storage_options)
        if not reader.has_labels:
            raise ValueError(f"{path} has no labels (stores made by `fastimg images` have "
                             f"none); build a labelled one with `fastimg build-dataset`")
        self.path = path
        self.reader = reader
        self.images = reader.images
        self.embeddings = reader.embeddings
        self.class_names = reader.class_names
        self.targets = reader.targets()
        self.split = reader.split_codes()
        self.image_shape = tuple(self.images.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def rows(self, split: str) -> np.ndarray:
        """Row indices of ``split`` ("train", "val" or "test"), ascending."""
        return store.split_rows(self.split, split)


def pixel_stats(reader: ChunkedReader, rows: np.ndarray, *, block: int = 4096):
    """Per-pixel mean and ``1 / sqrt(var + EPS)`` over ``rows`` (float64 sums, float32 out)."""
    total = np.zeros(reader.shape[1:], dtype=np.float64)
    squares = np.zeros_like(total)
    for start in range(0, rows.size, block):
        x = reader.read(rows[start:start + block]).astype(np.float64)
        total += x.sum(0)
        squares += (x * x).sum(0)
    n = max(1, rows.size)
    mean = total / n
    var = np.maximum(squares / n - mean * mean, 0.0)
    return mean.astype(np.float32), (1.0 / np.sqrt(var + EPS)).astype(np.float32)


class Normaliser:
    """One normalisation mode and, for ``"dataset"``, the training split's pixel statistics.

    Parameters
    ----------
    mode : {"image", "dataset", "none"}
    mean, inv_std : ndarray, optional
        Per-pixel statistics (``"dataset"`` only), from :func:`pixel_stats`.
    """

    def __init__(self, mode: str, mean=None, inv_std=None):
        if mode == "dataset" and (mean is None or inv_std is None):
            raise ValueError("dataset normalisation needs the training split's pixel statistics")
        self.mode = mode
        self.mean = mean
        self.inv_std = inv_std
        self._torch = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a ``[B, H, W]`` float32 batch (the torch loader's path)."""
        if self.mode == "image":
            mean = x.mean(dim=(1, 2), keepdim=True)
            var = ((x - mean) ** 2).mean(dim=(1, 2), keepdim=True)
            return (x - mean) / torch.sqrt(var + EPS)
        if self.mode == "dataset":
            key = x.device
            if key not in self._torch:
                self._torch[key] = (torch.from_numpy(self.mean).to(x.device),
                                    torch.from_numpy(self.inv_std).to(x.device))
            mean, inv_std = self._torch[key]
            return (x - mean) * inv_std
        return x

    def numpy(self, x: np.ndarray) -> np.ndarray:
        """The same normalisation of a float32 numpy batch, in place where it can.

        The torch loader uses it for CPU training: it runs in the DataLoader's workers, and
        numpy's single-threaded reductions do not fight other processes for cores the way
        torch's intra-op threads do on a busy machine.
        """
        if self.mode == "image":
            mean = x.mean(axis=(1, 2), keepdims=True, dtype=np.float32)
            x -= mean
            var = np.mean(np.square(x), axis=(1, 2), keepdims=True, dtype=np.float32)
            x *= 1.0 / np.sqrt(var + np.float32(EPS))
            return x
        if self.mode == "dataset":
            x -= self.mean
            x *= self.inv_std
        return x


class BatchSource:
    """The batches of one split: rows in :func:`shuffled_order` (shuffled) or ascending.

    ``batch(epoch, i)`` returns raw float32 images ``[b, H, W]``, int64 targets and the store
    row of each sample; both loaders are thin wrappers over it. ``also_read`` names the other
    readers the caller reads each batch's rows through (the embeddings), so the shuffled
    order keeps their chunks in their caches too.
    """

    def __init__(self, reader: ChunkedReader, targets: np.ndarray, rows: np.ndarray,
                 batch_size: int, *, shuffle: bool, seed: int = 0, also_read=()):
        self.reader = reader
        self.targets = targets
        self.rows = np.asarray(rows, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.readers = (reader, *also_read)
        self._order_epoch, self._order = None, None

    def __len__(self) -> int:
        return -(-self.rows.size // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """Store rows of ``epoch`` in the order they are served."""
        if not self.shuffle:
            return self.rows
        if self._order_epoch != epoch:
            chunkings = [reader.chunking(self.rows) for reader in self.readers]
            self._order = self.rows[shuffled_order(self.rows.size, self.seed, epoch,
                                                   chunkings)]
            self._order_epoch = epoch
        return self._order

    def batch(self, epoch: int, index: int):
        rows = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        return self.reader.read(rows), self.targets[rows], rows


class TorchLoader:
    """A torch DataLoader over a :class:`BatchSource` (one dataset item = one batch)."""

    name = "torch"

    def __init__(self, source: BatchSource, normaliser: Normaliser, device, *,
                 num_workers: int = 0):
        self.source = source
        self.normaliser = normaliser
        self.device = torch.device(device)
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int):
        """Iterate the batches of ``epoch``: (images [B, H, W], targets [B], rows [B]).

        The global torch RNG is left alone: every DataLoader iterator draws a seed for its
        workers, from a generator of its own here (seeded with the source's seed and
        ``epoch``), so dropout and initialisation see the same random stream whichever loader
        serves the batches.
        """
        on_cpu = self.device.type == "cpu"
        dataset = _EpochBatches(self.source, epoch, self.normaliser.numpy if on_cpu else None)
        generator = torch.Generator().manual_seed(self.source.seed + epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=self.num_workers,
            pin_memory=not on_cpu, collate_fn=_to_tensors, generator=generator)
        for images, targets, rows in loader:
            if not on_cpu:  # normalise on the GPU
                images = self.normaliser(images.to(self.device, non_blocking=True))
            yield images, targets.to(self.device, non_blocking=True), rows


def _to_tensors(item):
    images, targets, rows = item
    return torch.from_numpy(images), torch.from_numpy(targets), torch.from_numpy(rows)


class _EpochBatches(torch.utils.data.Dataset):
    def __init__(self, source: BatchSource, epoch: int, normalise=None):
        self.source, self.epoch_index, self.normalise = source, epoch, normalise

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        images, targets, rows = self.source.batch(self.epoch_index, index)
        if self.normalise is not None:
            images = self.normalise(images)
        return images, targets, rows


class DaliLoader:
    """An NVIDIA DALI pipeline fed by ``fn.external_source`` from a :class:`BatchSource`.

    Normalisation runs on the pipeline (``fn.normalize`` per image, or the training split's
    pixel statistics as ``fn.constant`` tensors); with a CUDA ``device`` the batch moves to
    the GPU inside the pipeline, without one it runs as a CPU pipeline (``device_id=None``).
    Epochs must be iterated in order 0, 1, 2, ... (the pipeline prefetches the next batches).
    """

    name = "dali"

    def __init__(self, source: BatchSource, normaliser: Normaliser, device, *,
                 num_workers: int = 0):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self.source = source
        self.device = torch.device(device)
        gpu = self.device.type == "cuda"
        device_id = (self.device.index or 0) if gpu else None
        feed = _DaliFeed(source)
        height, width = source.reader.shape[1:]

        @pipeline_def(batch_size=source.batch_size, num_threads=max(1, num_workers or 2),
                      device_id=device_id, exec_dynamic=True, prefetch_queue_depth=2)
        def pipe():
            images, targets, rows = fn.external_source(
                source=feed, num_outputs=3, batch=True, dtype=[types.FLOAT, types.INT64,
                                                               types.INT64],
                ndim=[2, 0, 0], cycle="raise")
            if gpu:
                images, targets = images.gpu(), targets.gpu()
            if normaliser.mode == "image":
                images = fn.normalize(images, axes=[0, 1], epsilon=EPS)
            elif normaliser.mode == "dataset":
                mean = fn.constant(fdata=normaliser.mean.ravel().tolist(),
                                   shape=[height, width], dtype=types.FLOAT)
                inv_std = fn.constant(fdata=normaliser.inv_std.ravel().tolist(),
                                      shape=[height, width], dtype=types.FLOAT)
                if gpu:
                    mean, inv_std = mean.gpu(), inv_std.gpu()
                images = (images - mean) * inv_std
            return images, targets, rows

        self.pipeline = pipe()
        self.pipeline.build()
        self._iterator = DALIGenericIterator([self.pipeline], ["images", "targets", "rows"],
                                             size=-1, auto_reset=False)
        self._feed = feed
        self._next_epoch = 0

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int):
        """Iterate the batches of ``epoch`` (epochs must come in order)."""
        if epoch != self._next_epoch:
            raise ValueError(f"the DALI loader serves epochs in order: expected epoch "
                             f"{self._next_epoch}, got {epoch}")
        self._next_epoch += 1
        for out in self._iterator:
            batch = out[0]
            yield batch["images"], batch["targets"].to(self.device), batch["rows"]
        self._iterator.reset()


class _DaliFeed:
    """An iterable ``external_source``: each ``iter()`` starts the next epoch's order."""

    def __init__(self, source: BatchSource):
        self.source = source
        self.epoch = -1
        self.index = 0

    def __iter__(self):
        self.epoch += 1
        self.index = 0
        return self

    def __next__(self):
        if self.index >= len(self.source):
            raise StopIteration
        images, targets, rows = self.source.batch(self.epoch, self.index)
        self.index += 1
        return images, targets, rows


def _dali_on_gpu() -> bool:
    # "auto" takes DALI where it pays: with a GPU. On the 2-core CPU machine its CPU pipeline
    # read 26.5k images/s cold against 46k for the torch path (benchmarks/RESULTS.md, train);
    # loader="dali" still gives the CPU pipeline.
    return has_module("nvidia.dali") and torch_cuda_available()


LOADERS = Registry("loader", setting="loader")
LOADERS.add("dali", lambda: (__import__("nvidia.dali.plugin.pytorch"), DaliLoader)[1],
            available=_dali_on_gpu, priority=1, extra="dali")
LOADERS.add("torch", lambda: TorchLoader, priority=0)


def make_loader(kind: str, source: BatchSource, normaliser: Normaliser, device, *,
                num_workers: int = 0):
    """A loader of ``kind`` (``"auto" | "dali" | "torch"``) over ``source``.

    Raises
    ------
    ImportError
        ``kind="dali"`` without NVIDIA DALI; the message names ``pip install 'fastimg[dali]'``.
    """
    _, cls = LOADERS.get(kind)
    return cls(source, normaliser, device, num_workers=num_workers)
