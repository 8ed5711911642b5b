"""One split of a dataset store as a torch ``Dataset``, for a training loop of your own.

>>> from fastimg.train import StoreDataset
>>> train = StoreDataset("imdb.zarr", "train", normalize="dataset")
>>> loader = torch.utils.data.DataLoader(train, batch_size=128, sampler=train.sampler(seed=0))
>>> for epoch in range(10):
...     loader.sampler.set_epoch(epoch)
...     for images, targets in loader:       # float32 [128, 1, 50, 50], int64 [128]
...         ...

The images are read through the trainer's chunk-caching reader, normalised as ``normalize``
says (``"dataset"`` is the trainer's default; ``"none"``, the stored values, this one's), and
:meth:`StoreDataset.sampler` shuffles in the trainer's order, which decodes each stored chunk
about once an epoch even when the split does not fit the cache.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from fastimg._validation import check_count, check_flag, check_seed
from fastimg.store import SPLIT_NAMES
from fastimg.train.config import NORMALISATIONS
from fastimg.train.data import ChunkedReader, Normaliser, StoreData, pixel_stats, shuffled_order


class StoreDataset(torch.utils.data.Dataset):
    """The images and class indices of one split of a store written by ``build-dataset``.

    Item ``i`` is ``(image, target)`` for the split's ``i``-th row (store rows ascending):
    ``image`` a float32 tensor ``[1, H, W]``, ``target`` the class index (0 .. K-1, into
    :attr:`class_names`); with ``embeddings=True`` it is ``(image, embedding, target)``, the
    embedding the row's stored float32 vector. A DataLoader reads a batch with one call
    (``__getitems__``).

    Parameters
    ----------
    path : str or path
        A labelled dataset store (``fastimg build-dataset``): a local path or an fsspec URL.
    split : {"train", "val", "test"}
    normalize : {"none", "image", "dataset"}
        ``"image"``: each image standardised on its own (the paper's); ``"dataset"``: each
        pixel standardised with the training split's mean and variance (the trainer's
        default; computed when the dataset is made, from the train split whatever ``split``
        is); ``"none"`` (the default): the stored values (``uint8`` images scaled to [0, 1]).
    embeddings : bool
        Also return each row's stored embedding.
    transform : callable, optional
        Applied to each image tensor after normalisation (a torchvision transform, say).
    cache_bytes : int, optional
        Decoded (float32) bytes of images kept per process, 4 GiB by default (about
        430,000 images of 50 x 50), and as many of embeddings with ``embeddings=True``; each
        DataLoader worker keeps its own.
    storage_options : dict, optional
        fsspec options for a store URL (``{"endpoint_url": ...}``).

    Attributes
    ----------
    rows : ndarray of int64
        The store row of each item.
    targets : ndarray of int64
        The class index of each item.
    class_names : list of str
    n_classes : int
    image_shape : tuple of int
        ``(H, W)`` of the stored images.
    pixel_mean, pixel_inv_std : ndarray of float32 or None
        The training split's per-pixel statistics (``normalize="dataset"`` only).
    """

    def __init__(self, path, split: str = "train", *, normalize: str = "none",
                 embeddings: bool = False, transform=None, cache_bytes: int | None = None,
                 storage_options: dict | None = None):
        if normalize not in NORMALISATIONS:
            raise ValueError(f"normalize must be one of {NORMALISATIONS}, got {normalize!r}")
        check_flag("embeddings", embeddings)  # "no" would turn them on
        if cache_bytes is not None and (isinstance(cache_bytes, bool) or not isinstance(
                cache_bytes, numbers.Real) or not cache_bytes >= 0):
            raise ValueError(f"cache_bytes must be a number of bytes, at least 0 (1 GiB: "
                             f"2**30), got {cache_bytes!r}")
        data = StoreData(path, storage_options)
        if embeddings and data.embeddings is None:
            raise ValueError(f"{path} stores no embeddings")
        self.path = path
        self.split = split
        self.rows = data.rows(split)
        if self.rows.size == 0:
            counts = ", ".join(f"{name} {data.rows(name).size}" for name in SPLIT_NAMES)
            raise ValueError(f"{path} has no {split} rows ({counts})")
        self._store = data.reader  # check_unchanged (this process's: not pickled)
        self.targets = data.targets[self.rows]
        self.class_names = data.class_names
        self.image_shape = data.image_shape
        self.transform = transform
        self._images = ChunkedReader(data.images, cache_bytes=cache_bytes)
        self._embeddings = (ChunkedReader(data.embeddings, cache_bytes=cache_bytes)
                            if embeddings else None)
        self.pixel_mean = self.pixel_inv_std = None
        if normalize == "dataset":
            train_rows = self.rows if split == "train" else data.rows("train")
            if train_rows.size == 0:
                raise ValueError(f"{path} has no train rows to take the pixel statistics of "
                                 f"(normalize='dataset'); pass normalize='image' or "
                                 f"normalize='none'")
            # the train split's own reader keeps what it decodes; another split's would hold
            # train chunks it never serves
            stats_reader = self._images if split == "train" else ChunkedReader(
                data.images, cache_bytes=0)
            self.pixel_mean, self.pixel_inv_std = pixel_stats(stats_reader, train_rows)
        self._normaliser = Normaliser(normalize, self.pixel_mean, self.pixel_inv_std)

    def __repr__(self) -> str:
        return (f"StoreDataset({str(self.path)!r}, {self.split!r}, "
                f"normalize={self._normaliser.mode!r}, rows={len(self)}, "
                f"classes={len(self.class_names)})")

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getstate__(self) -> dict:
        # a DataLoader worker started by spawn or forkserver gets the dataset pickled; it
        # needs no reader of the store's attributes (the sampler checks the store here)
        return {**self.__dict__, "_store": None}

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        """The items at ``indices`` (a list), read as one batch."""
        try:
            positions = np.asarray(indices)
        except ValueError:  # ragged, [0, [1, 2]]: an index that is a list, named below
            positions = None
        if positions is not None and positions.ndim == 0:
            raise TypeError(f"StoreDataset.__getitems__ takes a sequence of indices, got "
                            f"{type(indices).__name__} {indices!r}")
        nested = positions is None or positions.ndim > 1  # dataset[[1, 2]]
        if nested or positions.size and positions.dtype.kind not in "iu":  # int64 took 1.5
            bad = [i for i in (indices if nested else np.asarray(indices, dtype=object))
                   if not isinstance(i, (int, np.integer)) or isinstance(i, bool)]
            if not bad:  # integers numpy holds as objects: beyond int64
                raise IndexError(f"index out of range for {len(self)} rows")
            raise TypeError(f"StoreDataset indices must be integers, got "
                            f"{type(bad[0]).__name__} {bad[0]!r}")
        positions = positions.astype(np.int64, copy=False)
        if positions.size and (positions.min() < -len(self) or positions.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} rows")
        rows = self.rows[positions]
        images = torch.from_numpy(self._normaliser.numpy(self._images.read(rows))).unsqueeze(1)
        targets = self.targets[positions]
        columns = [images]
        if self._embeddings is not None:
            columns.append(torch.from_numpy(self._embeddings.read(rows)))
        items = []
        for position in range(positions.size):
            item = [column[position] for column in columns]
            if self.transform is not None:
                item[0] = self.transform(item[0])
            items.append((*item, int(targets[position])))
        return items

    def check_unchanged(self) -> None:
        """Raise :class:`fastimg.store.StoreError` when the store was replaced or deleted since
        this dataset was made (a ``build-dataset``, ``relayout`` or ``images --force`` onto it):
        its arrays are read by path, so the images read may mix two builds, whose layouts
        differ. :class:`StoreSampler` checks before each epoch; ``fit`` checks once more after
        its last one, before it writes the run. A worker process's copy checks nothing."""
        if self._store is not None:
            self._store.check_unchanged()

    def sampler(self, *, shuffle: bool = True, seed: int = 0, num_replicas: int = 1,
                rank: int = 0) -> "StoreSampler":
        """A sampler of this dataset's positions in the trainer's order (see
        :class:`StoreSampler`)."""
        return StoreSampler(self, shuffle=shuffle, seed=seed, num_replicas=num_replicas,
                            rank=rank)

    def chunkings(self) -> list:
        """``(chunk of each item, chunks kept)`` of each array an item reads."""
        readers = [self._images] + ([self._embeddings] if self._embeddings is not None else [])
        return [reader.chunking(self.rows) for reader in readers]


class StoreSampler(torch.utils.data.Sampler):
    """The positions of a :class:`StoreDataset` in the trainer's order.

    Shuffled, an epoch is a permutation of every position, drawn from ``[seed, epoch]``, the
    same order ``fastimg train`` reads the split in: a full permutation while the split's
    chunks fit the dataset's cache, else shuffled a window of chunks at a time so each chunk
    is decoded about once an epoch (a fully random order decodes a chunk for nearly every
    image). Call :meth:`set_epoch` before each epoch, as with torch's
    ``DistributedSampler``; the global torch random state is not used. Each epoch begins
    with :meth:`StoreDataset.check_unchanged`.

    Parameters
    ----------
    dataset : StoreDataset
    shuffle : bool
        False: the positions in order (store rows ascending).
    seed : int
        The same in every process of a distributed run.
    num_replicas, rank : int
        Processes that share each epoch (distributed data parallel: the world size) and this
        one's rank: it serves every ``num_replicas``-th position of the epoch's order from
        ``rank`` on, the order padded with its own first positions to a multiple of
        ``num_replicas`` so that every process serves as many, as torch's
        ``DistributedSampler`` does.
    """

    def __init__(self, dataset: StoreDataset, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        self.num_replicas = check_count("num_replicas", num_replicas)
        self.rank = check_count("rank", rank, minimum=0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank must be below num_replicas ({self.num_replicas}), "
                             f"got {rank}")
        self.shuffle = check_flag("shuffle", shuffle)  # "no" shuffled
        self.size = len(dataset)
        # as TrainConfig's seed: int() took 1.7 as 1, and numpy's refusal of -1 named no seed
        self.seed = check_seed("seed", seed)
        self.epoch = 0
        self._chunkings = dataset.chunkings() if self.shuffle else None
        self._check_unchanged = dataset.check_unchanged

    def set_epoch(self, epoch: int) -> None:
        """Serve the order of ``epoch`` from the next iteration on."""
        self.epoch = check_count("epoch", epoch, minimum=0)

    def order(self) -> np.ndarray:
        """The positions this process serves in the current epoch."""
        order = (shuffled_order(self.size, self.seed, self.epoch, self._chunkings)
                 if self.shuffle else np.arange(self.size))
        if self.num_replicas == 1:
            return order
        padded = np.resize(order, len(self) * self.num_replicas)  # repeats from the start
        return padded[self.rank::self.num_replicas]

    def __iter__(self):
        # an epoch over a store rebuilt since would read another layout's images, by path
        self._check_unchanged()
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return -(-self.size // self.num_replicas)
