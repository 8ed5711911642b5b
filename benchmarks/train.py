"""Training data path: (1) loader throughput from a store, (2) the frozen-feature cache, (3) a
split larger than the reader's cache.

(1) One shuffled epoch of a synthetic 50,000 x 50 x 50 float16 store (sparse like real
DeepInsight images: 35% of the pixels occupied), per-image normalisation, batch 512, read
from a freshly opened store: the cold epoch counts opening the store, building the loader
(e.g. the DALI pipeline, also reported apart as ``*_loader_build_s``) and the zarr decode;
the warm one is the second epoch, through
fastimg's DALI CPU pipeline and its torch DataLoader, against the naive way TINTOlib-style
tools do it: one 8-bit PNG per image, each read with PIL and converted with numpy. The PNGs
are written first (untimed, the same images); the naive read is timed on all of them.
``fastimg_s`` is the cold epoch of the loader ``loader="auto"`` picks here (DALI with a GPU,
else torch),
``baseline_s`` the PNG epoch, both for the same number of images; warm epochs (the store
already decoded in memory, as in every epoch after the first) are reported beside them.

(2) Epoch time of ``fit`` with ``wide_resnet50_2`` (random init: the same arithmetic as the
ImageNet weights) when its outputs are cached (the default) against recomputing the extractor
every epoch, as the paper did; an epoch is a training pass plus the validation pass. Reported:
both epoch times, their ratio, and the one-off cost of building the cache.

(3) A training split larger than the reader's cache of decoded chunks (a store of over
~430,000 images of 50 x 50 with the default 4 GiB; here the same 50,000-row store with a cache
of half its decoded size): one shuffled epoch in fastimg's order (chunks shuffled and read a
window at a time, :func:`fastimg.train.data.shuffled_order`) against a fully random order
through the same reader, which decodes a chunk for nearly every row; the random order is timed
on its first ``larger_random_rows`` rows (every batch of it costs the same) and compared by
rate.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._harness import left_out, report
from fastimg import store


def write_store(path, n_rows: int, *, grid=(50, 50), seed: int = 0, val_fraction=0.0,
                test_fraction=0.0, chunk_rows: int | None = None):
    """A finished labelled store of sparse random images (fast: numpy + the store helpers)."""
    rng = np.random.default_rng(seed)
    occupied = rng.random(grid) < 0.35
    chunk = chunk_rows or store.IMAGE_CHUNK_ROWS
    images = np.empty((n_rows, *grid), dtype=np.float16)
    labels = rng.integers(0, 2, n_rows)
    for start in range(0, n_rows, chunk):
        stop = min(n_rows, start + chunk)
        block = rng.random((stop - start, *grid), dtype=np.float32) * occupied
        block[labels[start:stop] == 1, :10, :10] += 0.5
        images[start:stop] = block.astype(np.float16)
    split = np.zeros(n_rows, np.int8)
    draw = rng.random(n_rows)
    split[draw < val_fraction] = 1
    split[(draw >= val_fraction) & (draw < val_fraction + test_fraction)] = 2
    store.write_store(path, {store.IMAGES: images, store.LABELS: labels.astype(np.int64),
                             store.SPLIT: split,
                             store.EMBEDDINGS: rng.standard_normal((n_rows, 8)).astype(np.float16)},
                      {"kind": "dataset", "corpus": {"class_values": None},
                       "summary": {"class_names": ["a", "b"]}}, force=True,
                      chunk_rows=chunk_rows)


def _loader_epochs(path, kind: str, batch_size: int) -> tuple[float, float, float, int]:
    """Seconds to build the loader, then of a first (cold: the store is opened and decoded
    inside it) and a second (warm) epoch, and the number of batches of an epoch."""
    from fastimg.train.data import (BatchSource, ChunkedReader, Normaliser, StoreData,
                                    make_loader)

    start = time.perf_counter()
    data = StoreData(path)
    rows = data.rows("train")
    source = BatchSource(ChunkedReader(data.images), data.targets, rows, batch_size,
                         shuffle=True, seed=0)
    open_s = time.perf_counter() - start
    start = time.perf_counter()
    loader = make_loader(kind, source, Normaliser("image"), "cpu")
    build_s = time.perf_counter() - start
    times = []
    for epoch in (0, 1):
        start = time.perf_counter()
        seen = n_batches = 0
        for images, _, _ in loader.epoch(epoch):
            seen += images.shape[0]
            n_batches += 1
        if seen != rows.size or n_batches != len(source):
            raise RuntimeError(f"{kind} loader served {seen} of {rows.size} images in "
                               f"{n_batches} of {len(source)} batches")
        times.append(time.perf_counter() - start)
    # the DALI iterator runs its first batches while it is built (prepare_first_batch), so
    # the decode can happen inside the build: a cold epoch counts open + build + epoch
    return build_s, open_s + build_s + times[0], times[1], n_batches


def _write_pngs(path, folder: Path, n_rows: int) -> list:
    from PIL import Image

    images = store.StoreReader(path).group[store.IMAGES]
    files = []
    for start in range(0, n_rows, 4096):
        block = np.asarray(images[start:start + 4096], dtype=np.float32)
        for i, image in enumerate(block):
            file = folder / f"{start + i:06d}.png"
            Image.fromarray(np.clip(image * 255.0, 0, 255).astype(np.uint8)).save(file)
            files.append(file)
    return files


def _png_epoch(files: list, batch_size: int) -> float:
    from PIL import Image

    start = time.perf_counter()
    order = np.random.default_rng(0).permutation(len(files))
    for b in range(0, len(files), batch_size):
        batch = np.stack([np.asarray(Image.open(files[i]), dtype=np.float32) / 255.0
                          for i in order[b:b + batch_size]])
        mean = batch.mean(axis=(1, 2), keepdims=True)
        batch = (batch - mean) / np.sqrt(batch.var(axis=(1, 2), keepdims=True) + 1e-5)
    return time.perf_counter() - start


def _larger_than_cache(path, batch_size: int, random_rows: int) -> dict:
    """Images/s of one shuffled epoch through a reader that keeps half the split's chunks:
    fastimg's windowed order, and a fully random order (on its first ``random_rows``)."""
    from fastimg.train.data import BatchSource, ChunkedReader, StoreData, epoch_order

    data = StoreData(path)
    rows = data.rows("train")
    half = rows.size * int(np.prod(data.image_shape)) * 4 // 2
    reader = ChunkedReader(data.images, cache_bytes=half)
    source = BatchSource(reader, data.targets, rows, batch_size, shuffle=True, seed=0)
    start = time.perf_counter()
    served = sum(source.batch(0, i)[0].shape[0] for i in range(len(source)))
    windowed_s = time.perf_counter() - start
    if served != rows.size:
        raise RuntimeError(f"the windowed epoch served {served} of {rows.size} images")
    reader = ChunkedReader(data.images, cache_bytes=half)
    order = rows[epoch_order(rows.size, 0, 0)][:random_rows]
    start = time.perf_counter()
    for first in range(0, order.size, batch_size):
        reader.read(order[first:first + batch_size])
    random_s = time.perf_counter() - start
    windowed, random = rows.size / windowed_s, order.size / random_s
    return {"larger_rows": int(rows.size), "larger_chunks_kept": int(reader.max_chunks),
            "larger_chunks": int(-(-rows.size // reader.chunk_rows)),
            "larger_windowed_images_per_s": windowed, "larger_random_rows": int(order.size),
            "larger_random_images_per_s": random, "larger_ratio": windowed / random}


def _cache_vs_recompute(folder: Path, n_rows: int, epochs: int) -> dict:
    from fastimg.train import TrainConfig, fit

    path = folder / "fit.zarr"
    # a test split, as a user's store has (without one each fit warns that its figure is val's)
    write_store(path, n_rows, val_fraction=0.1, test_fraction=0.1, seed=1)
    # the paper's cut and every epoch: comparable figures
    base = dict(extractor="wide_resnet50_2", weights=None, epochs=epochs, batch_size=128,
                loader="torch", probe=False, progress=False, normalize="image",
                cut="paper", patience=0, unfreeze_fraction=0.0)
    cached = fit(path, TrainConfig(cache="memory", **base))
    fresh = fit(path, TrainConfig(cache="none", **base))
    cached_epoch = statistics.median(e["seconds"] for e in cached.history)
    fresh_epoch = statistics.median(e["seconds"] for e in fresh.history)
    return {"fit_rows": n_rows, "fit_epochs": epochs,
            "epoch_cached_s": cached_epoch, "epoch_recomputed_s": fresh_epoch,
            "epoch_ratio": fresh_epoch / cached_epoch,
            "cache_build_s": cached.metrics["timings"]["cache_s"]}


def run(quick: bool = False, json_path: str | None = None) -> dict:
    from fastimg._registry import has_module

    n_rows = 1_000 if quick else 50_000
    batch_size = 512
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="fastimg-bench-train-") as tmp:
        folder = Path(tmp)
        path = folder / "loader.zarr"
        write_store(path, n_rows)
        kinds = ["torch"] + (["dali"] if has_module("nvidia.dali") else [])
        omitted = ([] if "dali" in kinds else
                   [left_out("the dali columns", "nvidia-dali is not installed here (the gpu "
                                                 "extra)")])
        cold, warm, build, batches = {}, {}, {}, {}
        for kind in kinds:
            _loader_epochs(path, kind, batch_size)  # warm-up: imports, first pipeline
            runs = [_loader_epochs(path, kind, batch_size) for _ in range(repeats)]
            build[kind] = statistics.median(r[0] for r in runs)
            cold[kind] = statistics.median(r[1] for r in runs)
            warm[kind] = statistics.median(r[2] for r in runs)
            batches[kind] = runs[0][3]
        if len(set(batches.values())) > 1:
            raise RuntimeError(f"the loaders served different numbers of batches: {batches}")
        pngs = folder / "png"
        pngs.mkdir()
        start = time.perf_counter()
        files = _write_pngs(path, pngs, n_rows)
        png_write_s = time.perf_counter() - start
        png_s = statistics.median(_png_epoch(files, batch_size) for _ in range(repeats))
        larger = path
        if quick:  # 1,000 rows are one chunk of the default size: chunks of 64 rows
            larger = folder / "larger.zarr"
            write_store(larger, n_rows, chunk_rows=64)
        larger_result = _larger_than_cache(larger, batch_size, 1_024 if quick else 4_096)
        fit_result = _cache_vs_recompute(folder, 128 if quick else 2_000, 2)
    from fastimg.train.data import LOADERS

    ours = LOADERS.resolve("auto")  # what fit(loader="auto") uses on this machine
    rate = {f"{kind}_{when}_images_per_s": n_rows / table[kind]
            for kind in ("dali", "torch") for when, table in (("cold", cold), ("warm", warm))
            if kind in table}
    return report({
        "suite": "train", "baseline": "one PNG per image, read with PIL + numpy (TINTOlib-style)",
        "images": n_rows, "image_shape": [50, 50], "batch_size": batch_size,
        "fastimg_loader": ours, "fastimg_s": cold[ours], "baseline_s": png_s, **rate,
        "batches_per_epoch": batches,
        **{f"{kind}_loader_build_s": value for kind, value in build.items()},
        "png_pil_images_per_s": n_rows / png_s, "png_write_s": png_write_s,
        **larger_result, **fit_result, **({"left_out": omitted} if omitted else {}),
    }, json_path)
