"""Past one process: the same IMDB slice built in-process and on a dask ``LocalCluster``.

- in-process: :func:`fastimg.dataset.build_dataset` with torch on all of the machine's cores;
- cluster: the same call with ``client=`` a ``local:2`` cluster (two worker processes, one
  torch thread each), so both use the machine's 2 cores.

Both use the same chunking (``chunk_rows``), so the cluster runs one encode task per chunk.
The workers are warmed (model loaded, JIT compiled) by a small build first, and the cluster's
start-up is reported apart. Reported: both times, their ratio (in-process / cluster: >= 0.9
means the cluster costs at most ~10%), the encode time of each, the per-task overhead
(worker-seconds of the encode stage not spent inside tasks, per task) and the largest
difference between the two builds' embeddings and images (the worker's single-threaded torch
may round differently from the multi-threaded in-process run).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._harness import report, step
from benchmarks.encode import use_imdb

WORKERS = 2


def _build(out, corpus_config, encoder_config, client=None, method="tsne"):
    from fastimg.dataset import build_dataset
    from fastimg.layout import LayoutConfig

    start = time.perf_counter()
    summary = build_dataset(out, corpus_config, encoder_config,
                            LayoutConfig(method=method, random_state=0), progress=False,
                            client=client)
    return time.perf_counter() - start, summary


def run(quick: bool = False, json_path: str | None = None) -> dict:
    import torch

    from fastimg import store
    from fastimg.cluster import connect
    from fastimg.corpus import CorpusConfig
    from fastimg.embed import EncoderConfig

    n_rows, max_length, chunk_rows = (64, 32, 16) if quick else (2000, 128, 125)
    method = "pca" if quick else "tsne"  # the layout is the same code on both sides
    use_imdb()  # fastimg's loader reads the same file
    corpus_config = CorpusConfig(dataset="imdb", limit=n_rows, seed=0)
    encoder_config = EncoderConfig(max_length=max_length, chunk_rows=chunk_rows, device="cpu")
    warm_corpus = CorpusConfig(dataset="imdb", limit=40, seed=1)
    warm_encoder = EncoderConfig(max_length=32, chunk_rows=20, device="cpu")
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        step(f"in-process builds (warm-up, then {n_rows} reviews)")
        _build(folder / "warm.zarr", warm_corpus, warm_encoder, method="pca")
        local_s, local = _build(folder / "local.zarr", corpus_config, encoder_config,
                                method=method)
        step(f"a local:{WORKERS} cluster: warm-up, then {n_rows} reviews")
        start = time.perf_counter()
        with connect(f"local:{WORKERS}") as client:
            startup_s = time.perf_counter() - start
            _build(folder / "warm-cluster.zarr", warm_corpus, warm_encoder, client,
                   method="pca")
            cluster_s, clustered = _build(folder / "cluster.zarr", corpus_config,
                                          encoder_config, client, method=method)
        a, b = store.StoreReader(folder / "local.zarr"), store.StoreReader(folder / "cluster.zarr")
        diffs = {name: float(np.max(np.abs(a.group[name][:].astype(np.float32)
                                           - b.group[name][:].astype(np.float32))))
                 for name in (store.EMBEDDINGS, store.IMAGES)}
        equal = {name: a.group[name][:].tobytes() == b.group[name][:].tobytes()
                 for name in (store.EMBEDDINGS, store.IMAGES)}
        tasks = b.stages["encode"]["cluster"]
    encode_wall = clustered["timings"]["encode_s"]
    overhead = (encode_wall * WORKERS - tasks["task_seconds"]) / max(1, tasks["tasks"])
    return report({
        "suite": "scale", "baseline": f"in-process build_dataset ({threads} torch threads)",
        "rows": n_rows, "max_length": max_length, "chunk_rows": chunk_rows, "model": "minilm",
        "layout_method": method,
        "workers": WORKERS, "threads_per_worker": 1,
        "fastimg_s": cluster_s, "baseline_s": local_s,
        "cluster_startup_s": startup_s,
        "cluster_stages_s": clustered["timings"], "in_process_stages_s": local["timings"],
        "encode_tasks": tasks["tasks"], "task_seconds_sum": tasks["task_seconds"],
        "per_task_overhead_s": overhead,
        "max_abs_diff_embeddings": diffs[store.EMBEDDINGS],
        "max_abs_diff_images": diffs[store.IMAGES],
        "bytes_equal_embeddings": equal[store.EMBEDDINGS],
        "bytes_equal_images": equal[store.IMAGES],
    }, json_path)
