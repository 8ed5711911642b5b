"""Encode once, build many: a new layout, and a new split, on an existing build, against
building it afresh.

Before stage keys, any change of a layout or image setting meant ``--force``, which deleted the
finished embeddings and encoded the corpus again: the baseline is that full build. fastimg
rebuilds the same store with ``--pixels 64 --perplexity 50 --force`` (the encode stage is
reused), and :func:`fastimg.dataset.relayout` writes the new layout into another store. Both
are checked to hold the embeddings unchanged and the same images as each other. Then the store
is rebuilt with another ``--val-fraction`` (which re-encoded the same texts while the encode
stage's key followed the corpus's): the embeddings are checked unchanged and the split changed.
Last, a new store with a third split (``--val-fraction 0.25``) takes the embeddings from the
first with ``--reuse-from``.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._harness import report, step
from benchmarks.encode import use_imdb


def run(quick: bool = False, json_path: str | None = None) -> dict:
    from fastimg import store
    from fastimg.corpus import CorpusConfig
    from fastimg.dataset import build_dataset, relayout
    from fastimg.embed import EncoderConfig
    from fastimg.layout import LayoutConfig

    n_rows, max_length = (64, 64) if quick else (5000, 512)
    use_imdb()  # fastimg's loader reads the same file
    corpus = CorpusConfig(dataset="imdb", limit=n_rows, seed=0)
    encoder = EncoderConfig(max_length=max_length)
    first_layout = LayoutConfig(random_state=0)
    new_layout = LayoutConfig(grid=(64, 64), perplexity=50.0 if not quick else 20.0,
                              random_state=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        step("warm-up build (40 reviews)")
        # warm the JIT caches and the model files so no timing pays first-use costs
        build_dataset(folder / "warm.zarr", CorpusConfig(dataset="imdb", limit=40, seed=1),
                      EncoderConfig(max_length=32), LayoutConfig(method="pca"), progress=False)
        out = folder / "imdb.zarr"
        step(f"the full build on {n_rows} reviews")
        start = time.perf_counter()
        first = build_dataset(out, corpus, encoder, first_layout, progress=False)
        first_s = time.perf_counter() - start
        embeddings = store.StoreReader(out).embeddings[:]

        step("relayout, rebuild, new split, --reuse-from")
        start = time.perf_counter()
        relayout(out, folder / "relayout.zarr", new_layout, progress=False)
        relayout_s = time.perf_counter() - start

        start = time.perf_counter()
        second = build_dataset(out, corpus, encoder, new_layout, force=True, progress=False)
        rebuild_s = time.perf_counter() - start
        rebuilt = store.StoreReader(out)
        assert second["reused"] == ["corpus", "encode"], second["reused"]
        assert np.array_equal(rebuilt.embeddings[:], embeddings)
        same_images = np.array_equal(store.StoreReader(folder / "relayout.zarr").images[:],
                                     rebuilt.images[:])
        split_before = rebuilt.split_codes()

        start = time.perf_counter()
        third = build_dataset(out, CorpusConfig(dataset="imdb", limit=n_rows, seed=0,
                                                val_fraction=0.3),
                              encoder, new_layout, force=True, progress=False)
        resplit_s = time.perf_counter() - start
        resplit = store.StoreReader(out)
        assert third["reused"] == ["encode"], third["reused"]
        assert np.array_equal(resplit.embeddings[:], embeddings)
        assert (resplit.split_codes() != split_before).any()

        start = time.perf_counter()
        fourth = build_dataset(folder / "v25.zarr", CorpusConfig(
            dataset="imdb", limit=n_rows, seed=0, val_fraction=0.25), encoder, new_layout,
            reuse_from=[out], progress=False)
        reuse_from_s = time.perf_counter() - start
        assert fourth["reused"] == ["encode"], fourth["reused"]
        assert np.array_equal(store.StoreReader(folder / "v25.zarr").embeddings[:], embeddings)
    return report({
        "suite": "reuse", "baseline": "a full build (what --force did before stage keys)",
        "rows": n_rows, "max_length": max_length, "model": "minilm",
        "fastimg_s": rebuild_s, "baseline_s": first_s, "relayout_s": relayout_s,
        "rebuild_share_of_full_build": rebuild_s / first_s,
        "new_val_fraction_s": resplit_s, "new_val_fraction_speedup": first_s / resplit_s,
        "first_build_stages_s": first["timings"], "rebuild_stages_s": second["timings"],
        "new_val_fraction_stages_s": third["timings"],
        "reuse_from_new_store_s": reuse_from_s, "reuse_from_stages_s": fourth["timings"],
        "relayout_images_equal_rebuild": same_images,
    }, json_path)
