"""The whole pipeline: `fastimg build-dataset` against the naive pipeline people write today.

Both turn the same IMDB reviews (the same seeded, stratified sample and split) into images:

- fastimg: :func:`fastimg.dataset.build_dataset` (sorted token-budget batches, layout fitted on
  the training rows with openTSNE, the Numba raster kernel, a float16 zarr store), encoding at
  ``--precision`` (default auto: fp32 on the CPU; ``int8`` times the CPU's faster option);
- naive: the author's loop (one review at a time, fp32, on the same device as fastimg's
  encoder: ``--device``, auto = CUDA when present), pyDeepInsight's default fit
  (``Norm2Scaler`` + ``ImageTransformer('tsne')``, sklearn t-SNE) on the same training rows, its
  ``transform`` to float64 RGB images, and ``numpy.save`` of the images and embeddings.

The corpus is loaded once, by fastimg's loader, and timed only for fastimg. Reported: each
stage's time for both, the totals and their ratio, and the share of fastimg's time that is not
encoding (issue 4's target: <= 5%). pyDeepInsight's cosine t-SNE fails (NaN) on features that
are constant over the training rows; the naive pipeline gets 1e-9 added to its scaled matrix so
that it runs at all.
"""
from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks._harness import report, step
from benchmarks.encode import author_loop, use_imdb


def _naive(corpus, max_length: int, folder: Path, device: str) -> dict:
    from pyDeepInsight import ImageTransformer
    from pyDeepInsight.utils import Norm2Scaler

    from fastimg.embed import load_model

    loaded = load_model("minilm")
    loaded.model.to(device)
    times = {}
    step(f"naive: the author's loop on {len(corpus.texts)} reviews")
    start = time.perf_counter()
    embeddings = author_loop(corpus.texts, loaded, device, max_length)
    times["encode_s"] = time.perf_counter() - start

    step("naive: pyDeepInsight's t-SNE fit")
    start = time.perf_counter()
    train = corpus.split == "train"
    scaler = Norm2Scaler().fit(embeddings[train])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        transformer = ImageTransformer(feature_extractor="tsne", pixels=50)
    transformer._fe.set_params(random_state=0)
    # features constant on the training rows scale to all-zero vectors, whose cosine distance
    # is NaN in sklearn's t-SNE (MiniLM has a few): shift them off zero so the baseline runs
    transformer.fit(scaler.transform(embeddings[train]) + 1e-9)
    times["layout_s"] = time.perf_counter() - start

    start = time.perf_counter()
    images = transformer.transform(scaler.transform(embeddings), img_format="rgb")
    times["raster_s"] = time.perf_counter() - start

    start = time.perf_counter()
    np.save(folder / "naive_images.npy", images)
    np.save(folder / "naive_embeddings.npy", embeddings)
    np.save(folder / "naive_labels.npy", corpus.labels)
    times["save_s"] = time.perf_counter() - start
    return times


def run(quick: bool = False, json_path: str | None = None, device: str = "auto",
        precision: str = "auto") -> dict:
    """Run the suite; ``precision`` is fastimg's encoder precision (``int8``: the CPU's faster
    one), the naive side encoding in fp32 as people do."""
    from fastimg import store
    from fastimg.corpus import CorpusConfig, load_corpus
    from fastimg.dataset import build_dataset
    from fastimg.embed import ENCODE_DEVICES, EncoderConfig
    from fastimg.layout import LayoutConfig

    # both sides encode on the same device (resolved once), or the ratio measures the device
    device = ENCODE_DEVICES.resolve(device)
    n_rows, max_length = (64, 64) if quick else (5000, 512)
    use_imdb()  # fastimg's loader reads the same file
    corpus_config = CorpusConfig(dataset="imdb", limit=n_rows, seed=0)
    corpus = load_corpus(corpus_config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        step("warm-up build (40 reviews)")
        # warm the JIT caches and the model files so neither side pays first-use costs
        build_dataset(folder / "warm.zarr", CorpusConfig(dataset="imdb", limit=40, seed=1),
                      EncoderConfig(max_length=32, device=device, precision=precision),
                      LayoutConfig(method="pca"), progress=False)
        step(f"fastimg: build_dataset on {n_rows} reviews")
        start = time.perf_counter()
        # assignment="bin": the images pyDeepInsight makes on the naive side (like for like)
        summary = build_dataset(folder / "fast.zarr", corpus_config,
                                EncoderConfig(max_length=max_length, device=device,
                                              precision=precision),
                                LayoutConfig(assignment="bin", random_state=0), progress=False)
        fast_s = time.perf_counter() - start
        fast = dict(summary["timings"])
        fast["store_and_other_s"] = fast_s - sum(fast.values())
        store_mib = store.size_bytes(folder / "fast.zarr") / 2**20
        # what ran ("auto" resolved: fp32 on the CPU, fp16 on CUDA), as the store records it
        ran = store.StoreReader(folder / "fast.zarr").stages["encode"]

        naive = _naive(corpus, max_length, folder, device)
        naive_mib = sum(f.stat().st_size for f in folder.glob("naive_*.npy")) / 2**20
    base_s = sum(naive.values())
    not_encoding = fast_s - fast["encode_s"]
    return report({
        "suite": "build", "baseline": "author's loop + pyDeepInsight tsne fit + rgb transform "
                                      "+ numpy.save",
        "rows": n_rows, "max_length": max_length, "model": "minilm", "device": device,
        "precision": ran["precision"], "precision_requested": precision,
        "int8_engine": ran.get("int8_engine"),
        "fastimg_s": fast_s, "baseline_s": base_s,
        "fastimg_stages_s": fast, "baseline_stages_s": naive,
        "ratio_without_encoding": (base_s - naive["encode_s"]) / not_encoding,
        "fastimg_share_not_encoding": not_encoding / fast_s,
        "fastimg_store_MiB": store_mib, "baseline_files_MiB": naive_mib,
    }, json_path)
