"""Interrupted and reused builds: what a rerun finds and makes of an unfinished store."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import tiny_reviews, write_csv
from fastimg import store
from fastimg.cli import main

#: run in a fresh interpreter, where nothing has loaded scikit-learn's libraries yet; prints
#: the thread count of every BLAS / OpenMP pool while the layout is being fitted
_THREADS_DURING_FIT = """
import json, sys
import numpy as np
from threadpoolctl import threadpool_info
from fastimg.layout import DeepInsightLayout, LayoutConfig

seen = []
real = DeepInsightLayout._fit

def spy(self, X):
    real(self, X)
    seen.extend((pool["internal_api"], pool["num_threads"]) for pool in threadpool_info())

DeepInsightLayout._fit = spy
config = LayoutConfig(grid=(8, 8), perplexity=5, pca_components=10)
matrix = np.random.default_rng(0).normal(size=(30, 40)).astype(np.float32)
DeepInsightLayout(config).fit(matrix)
print(json.dumps(seen))
"""


def test_the_layout_fit_limits_the_threads_of_the_libraries_it_loads_itself(tmp_path):
    """The layout fit's thread limit covers SciPy's OpenBLAS even when no earlier stage of the
    process loaded it: a resumed build or a relayout (no encoder in the process) gave another
    layout than an uninterrupted build."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "3", "OMP_NUM_THREADS": "3"}
    done = subprocess.run([sys.executable, "-c", _THREADS_DURING_FIT],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    pools = json.loads(done.stdout.strip().splitlines()[-1])
    assert any(api == "openblas" for api, _ in pools), pools
    assert all(threads == 1 for _, threads in pools), pools


def _write_reviews(path, n=60):
    rows = [(*row, "test" if i % 4 == 0 else "train") for i, row in enumerate(tiny_reviews(n))]
    return write_csv(path, rows, ("id", "text", "label", "split"))


def _build_args(csv_path, out, model, *extra):
    return ["build-dataset", "--input", str(csv_path), "--out", str(out), "--model", str(model),
            "--max-length", "24", "--chunk-rows", "16", "--method", "pca", "--pixels", "10",
            "--quiet", *extra]


def _arrays(path):
    reader = store.StoreReader(path)
    return {name: reader.group[name][:] for name in sorted(reader.group.array_keys())}


@pytest.fixture
def encode_calls(monkeypatch):
    """The encoder runs of the builds (``build_dataset`` looks the function up at call time)."""
    import fastimg.embed

    calls = []
    real = fastimg.embed.encode_to_array

    def spy(*args, **kwargs):
        calls.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(fastimg.embed, "encode_to_array", spy)
    return calls


def test_a_build_interrupted_before_its_move_in_place_is_moved_by_the_rerun(
        tmp_path, tiny_bert_dir, encode_calls, monkeypatch, capsys):
    """Stopped between the final attrs write and the move, the finished build was thrown
    away and encoded again by the rerun."""
    pytest.importorskip("transformers")
    from fastimg.store import location

    csv_path = _write_reviews(tmp_path / "reviews.csv")
    reference, out = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    assert main(_build_args(csv_path, reference, tiny_bert_dir)) == 0
    real = location.replace_with_partial

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(location, "replace_with_partial", interrupted)
    assert main(_build_args(csv_path, out, tiny_bert_dir)) == 130
    assert not out.exists() and store.partial_path(out).exists()
    monkeypatch.setattr(location, "replace_with_partial", real)
    capsys.readouterr()

    assert main(_build_args(csv_path, out, tiny_bert_dir)) == 0
    assert "reused corpus, encode, layout, images" in capsys.readouterr().out
    assert len(encode_calls) == 2, "the rerun encoded again"
    assert not store.partial_path(out).exists()
    expected, found = _arrays(reference), _arrays(out)
    assert sorted(found) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(found[name], values, err_msg=name)


def test_a_build_whose_folder_is_deleted_while_it_runs_is_never_finished(
        tmp_path, tiny_bert_dir, capsys):
    """The folder deleted during the layout: the build went on reading zero-filled embeddings
    (a "constant matrix" error, or images of zeros and an internal error at the end) and left
    records of stages done whose arrays were gone; now it stops in one line and the rerun
    computes what was lost again."""
    import shutil

    from fastimg.corpus import CorpusConfig
    from fastimg.dataset import build_dataset
    from fastimg.embed import EncoderConfig
    from fastimg.layout import LayoutConfig

    csv_path = _write_reviews(tmp_path / "reviews.csv")
    reference, out = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    assert main(_build_args(csv_path, reference, tiny_bert_dir)) == 0
    partial = store.partial_path(out)

    def delete_at_the_layout(name):
        if name == "layout":
            shutil.rmtree(partial)

    with pytest.raises(store.StoreError, match="lost arrays while it ran"):
        build_dataset(out, CorpusConfig(input=str(csv_path)),
                      EncoderConfig(model=str(tiny_bert_dir), max_length=24, chunk_rows=16),
                      LayoutConfig(method="pca", grid=(10, 10)), progress=False,
                      on_stage=delete_at_the_layout)
    assert not out.exists() and not store.is_complete(partial)

    capsys.readouterr()
    assert main(_build_args(csv_path, out, tiny_bert_dir)) == 0, capsys.readouterr().err
    expected, found = _arrays(reference), _arrays(out)
    assert sorted(found) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(found[name], values, err_msg=name)


def test_info_of_a_store_whose_replace_was_cut_off_gives_its_size(tmp_path, capsys):
    """Between the two moves of a ``--force`` replace the store is read from its aside copy;
    ``info`` said "0.0 MiB on disk" (it measured the empty final path)."""
    out = tmp_path / "s.zarr"
    images = np.random.default_rng(0).random((300, 40, 40)).astype(np.float32)
    store.write_store(out, {store.IMAGES: images}, {"kind": "images"})
    out.rename(store.replaced_path(out))
    reader = store.StoreReader(out)
    assert reader.size_bytes() > images.nbytes // 2
    assert main(["info", str(out)]) == 0
    assert " 0.0 MiB on disk" not in capsys.readouterr().out


def test_a_precision_change_is_named_in_the_refusal(tmp_path, tiny_bert_dir, capsys):
    """``--precision int8`` on an fp32 store: the one-line refusal listed four
    ``encoder.int8.*`` details and hid ``encoder.precision`` behind its "..."."""
    pytest.importorskip("transformers")
    csv_path = _write_reviews(tmp_path / "reviews.csv", n=24)
    out = tmp_path / "s.zarr"
    assert main(_build_args(csv_path, out, tiny_bert_dir, "--precision", "fp32")) == 0
    capsys.readouterr()
    assert main(_build_args(csv_path, out, tiny_bert_dir, "--precision", "int8")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and 'encoder.precision: "fp32" -> "int8"' in err, err
