"""Encode once, build many: stage keys, reuse of finished stages, relayout, atomic replace."""
from __future__ import annotations

import contextlib
import json
import logging

import numpy as np
import pytest

from conftest import one_line, tiny_reviews, write_csv
from fastimg import store
from fastimg.cli import main

pytest.importorskip("transformers")


def _write_csv(path, n=80, *, flip_labels=False, seed=0):
    labels = ("neg", "pos") if flip_labels else ("pos", "neg")
    rows = [(*row, "test" if i % 4 == 0 else "train")
            for i, row in enumerate(tiny_reviews(n, seed=seed, labels=labels))]
    return write_csv(path, rows, ("id", "text", "label", "split"))


@pytest.fixture
def corpus_csv(tmp_path):
    return _write_csv(tmp_path / "reviews.csv")


@pytest.fixture
def encode_calls(monkeypatch):
    """Counts the encoder runs of build_dataset (it looks the function up at call time)."""
    import fastimg.embed

    calls = []
    real = fastimg.embed.encode_to_array

    def spy(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(fastimg.embed, "encode_to_array", spy)
    return calls


@contextlib.contextmanager
def interrupted_after_first_chunk(monkeypatch):
    """Builds inside stop with a KeyboardInterrupt once their first encoded chunk is stored."""
    import fastimg.embed

    real = fastimg.embed.encode_to_array

    def interrupted(*args, **kwargs):
        def stop(rows_done):
            raise KeyboardInterrupt
        return real(*args, **kwargs, on_chunk=stop)

    monkeypatch.setattr(fastimg.embed, "encode_to_array", interrupted)
    try:
        yield
    finally:
        monkeypatch.setattr(fastimg.embed, "encode_to_array", real)


def _build_args(csv_path, out, model, *extra):
    return ["build-dataset", "--input", str(csv_path), "--id-column", "id", "--split-column",
            "split", "--out", str(out), "--model", str(model), "--max-length", "24",
            "--chunk-rows", "32", "--method", "pca", "--pixels", "12", "--quiet", *extra]


def _images_command(rng, folder, out, shape, pixels) -> int:
    """``fastimg images`` of a random ``shape`` matrix saved in ``folder`` into ``out``: its
    exit code."""
    np.save(folder / "x.npy", rng.random(shape).astype(np.float32))
    return main(["images", "--input", str(folder / "x.npy"), "--out", str(out),
                 "--pixels", str(pixels), "--method", "pca", "--quiet"])


def _arrays(path):
    reader = store.StoreReader(path)
    return {name: reader.group[name][:] for name in (store.IDS, store.LABELS, store.SPLIT,
                                                     store.EMBEDDINGS, store.IMAGES)}



def test_digests_tell_apart_texts_split_at_another_place():
    """The encode stage's key names its texts by their digest: without each text's length in
    it, ["ab", "c"] and ["a", "bc"] would share their embeddings."""
    from fastimg.embed import texts_digest
    from fastimg.store.keys import digest

    assert texts_digest(["ab", "c"]) != texts_digest(["a", "bc"])
    # one str was hashed as its characters, the digest of ["a", "b"]
    with pytest.raises(TypeError, match="not a single str; wrap it in a list"):
        texts_digest("ab")
    with pytest.raises(TypeError, match=r"^texts\[1\] is int \(3\), expected str$"):
        texts_digest(["a", 3])
    with pytest.raises(TypeError, match="^texts must be a sequence of str, got int$"):
        texts_digest(3)  # was "'int' object is not iterable"
    assert digest("ab", "c") != digest("a", "bc")
    assert digest(np.arange(3), np.arange(1)) != digest(np.arange(2), np.arange(2))


def test_differences_list_top_level_settings_before_nested_ones():
    """A refusal shows the first few: ``encoder.precision`` must come before the
    ``encoder.int8.*`` details it brings, though it sorts after them alphabetically."""
    from fastimg.store.keys import differences

    old = {"precision": "fp32", "model": "m"}
    new = {"precision": "int8", "model": "m", "int8": {"engine": "onnxruntime", "version": 3}}
    assert differences("encoder", old, new) == [
        'encoder.precision: "fp32" -> "int8"', 'encoder.int8.engine: null -> "onnxruntime"',
        "encoder.int8.version: null -> 3"]


def test_a_layout_change_reuses_the_embeddings_and_never_encodes(
        corpus_csv, tmp_path, tiny_bert_dir, encode_calls, capsys):
    out = tmp_path / "s.zarr"
    assert main(_build_args(corpus_csv, out, tiny_bert_dir)) == 0
    assert len(encode_calls) == 1
    before = _arrays(out)
    layout_before = store.StoreReader(out).attrs["layout"]
    capsys.readouterr()

    # refused without --force, naming each setting that differs with its two values
    changed = _build_args(corpus_csv, out, tiny_bert_dir, "--pixels", "16", "--scaling",
                          "minmax")
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "layout.grid: [12, 12] -> [16, 16]" in err
    assert 'layout.scaling: "norm2" -> "minmax"' in err
    assert len(err.strip().splitlines()) == 1

    assert main([*changed, "--force"]) == 0
    assert "reused corpus, encode" in capsys.readouterr().out
    assert len(encode_calls) == 1, "the encoder ran again"
    after = _arrays(out)
    for name in (store.IDS, store.LABELS, store.SPLIT, store.EMBEDDINGS):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert after[store.IMAGES].shape == (80, 16, 16)
    reader = store.StoreReader(out)
    assert reader.attrs["layout"] != layout_before
    # the images are the new layout's (minmax scaling) of the reused embeddings
    from fastimg.dataset import load_layout

    layout = load_layout(out)
    assert layout.config.scaling == "minmax" and layout.config.grid == (16, 16)
    np.testing.assert_allclose(after[store.IMAGES].astype(np.float32),
                               layout.transform(after[store.EMBEDDINGS]), atol=1e-3)
    assert reader.summary["reused"] == ["corpus", "encode"]
    assert reader.stages["encode"]["reused_from"] == str(out)
    assert not store.replaced_path(out).exists() and not store.partial_path(out).exists()


def test_an_image_dtype_change_reuses_the_layout(corpus_csv, tmp_path, tiny_bert_dir,
                                                 encode_calls):
    out = tmp_path / "s.zarr"
    assert main(_build_args(corpus_csv, out, tiny_bert_dir)) == 0
    layout = store.StoreReader(out).attrs["layout"]
    assert main(_build_args(corpus_csv, out, tiny_bert_dir, "--dtype", "float32",
                            "--force")) == 0
    reader = store.StoreReader(out)
    assert reader.summary["reused"] == ["corpus", "encode", "layout"]
    assert reader.attrs["layout"] == layout and reader.images.dtype == np.float32
    assert len(encode_calls) == 1


def test_an_images_store_forced_to_another_dtype_reuses_its_layout(rng, tmp_path,
                                                                   monkeypatch, capsys):
    """`fastimg images --force` fitted the layout again (t-SNE: minutes on a large matrix),
    although its refusal without --force said "the stages that match are reused"."""
    from fastimg.layout import DeepInsightLayout

    out = tmp_path / "images.zarr"
    assert _images_command(rng, tmp_path, out, (60, 120), 12) == 0
    layout = store.StoreReader(out).attrs["layout"]

    def no_fit(self, x):
        raise AssertionError("the layout was fitted again")

    monkeypatch.setattr(DeepInsightLayout, "fit", no_fit)
    args = ["images", "--input", str(tmp_path / "x.npy"), "--out", str(out), "--pixels", "12",
            "--method", "pca", "--quiet", "--dtype", "float32"]
    assert main(args) == 2
    assert "the stages that match are reused" in one_line(capsys.readouterr().err)
    assert main([*args, "--force"]) == 0
    assert "layout reused" in capsys.readouterr().out
    reader = store.StoreReader(out)
    assert reader.attrs["layout"] == layout and reader.images.dtype == np.float32
    assert reader.summary["reused"] == ["input", "layout"]
    np.testing.assert_array_equal(reader.images[:], DeepInsightLayout.from_dict(layout)
                                  .transform(np.load(tmp_path / "x.npy")))


def test_a_forced_build_with_the_same_settings_reuses_every_stage(corpus_csv, tmp_path,
                                                                  tiny_bert_dir, encode_calls,
                                                                  capsys):
    out, again = tmp_path / "s.zarr", tmp_path / "again.zarr"
    assert main(_build_args(corpus_csv, out, tiny_bert_dir)) == 0
    capsys.readouterr()
    assert main(_build_args(corpus_csv, out, tiny_bert_dir, "--force")) == 0
    line = capsys.readouterr().out.strip()
    assert "pixels; reused corpus, encode, layout, images; corpus " in line, line
    assert main(["relayout", str(out), "--out", str(again), "--method", "pca", "--pixels", "12",
                 "--quiet"]) == 0
    line = capsys.readouterr().out.strip()  # nothing timed: no empty part
    assert f"pixels; reused corpus, encode, layout, images (all from {out}); total " in line, line
    assert len(encode_calls) == 1


def test_relayout_onto_its_source_is_known_however_it_is_spelled(corpus_csv, tmp_path,
                                                                 tiny_bert_dir, capsys):
    """The source was recognised by its spelling alone: through a link or another spelling
    of its path, relayout onto it went down the path of another store."""
    src = tmp_path / "s.zarr"
    assert main(_build_args(corpus_csv, src, tiny_bert_dir)) == 0
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.zarr").symlink_to(src)
    for spelling in (tmp_path / "sub" / ".." / "s.zarr", tmp_path / "link.zarr"):
        capsys.readouterr()
        assert main(["relayout", str(spelling), "--out", str(src), "--method", "pca",
                     "--pixels", "10", "--quiet"]) == 2
        assert one_line(capsys.readouterr().err).endswith(
            f"{src} is the source; pass --force to replace it")
    assert main(["relayout", str(tmp_path / "link.zarr"), "--out", str(src), "--method", "pca",
                 "--pixels", "10", "--quiet", "--force"]) == 0
    assert store.StoreReader(src).images.shape[1:] == (10, 10)


def test_a_forced_build_through_a_link_replaces_the_store_it_names(corpus_csv, tmp_path,
                                                                   tiny_bert_dir):
    """--force onto a symlink to a store (on a larger disk) made the link a folder of its
    own, left the store it named with the old build, and left the link aside as
    OUT.replaced for good."""
    target = tmp_path / "bigdisk" / "store.zarr"
    target.parent.mkdir()
    assert main(_build_args(corpus_csv, target, tiny_bert_dir)) == 0
    link = tmp_path / "link.zarr"
    link.symlink_to(target)
    assert main([*_build_args(corpus_csv, link, tiny_bert_dir), "--pixels", "10",
                 "--force"]) == 0
    assert link.is_symlink() and store.StoreReader(target).images.shape[1:] == (10, 10)
    assert not list(tmp_path.glob("link.zarr.*"))  # no .replaced, no .partial beside it
    assert sorted(p.name for p in target.parent.iterdir()) == ["store.zarr"]


def test_a_build_with_the_settings_of_its_store_is_up_to_date(corpus_csv, tmp_path,
                                                             library_build, encode_calls):
    """Without --force the same build again was refused ("already exists, with these
    settings"); a notebook cell or a script run twice failed. It returns the store's summary
    and computes nothing; other settings are still refused."""
    from fastimg.dataset import relayout
    from fastimg.layout import LayoutConfig

    out, relaid = tmp_path / "s.zarr", tmp_path / "r.zarr"
    first = library_build(out, corpus_csv)
    before = _arrays(out)
    again = library_build(out, corpus_csv)
    assert again == {**first, "up_to_date": True} and len(encode_calls) == 1
    for name, values in _arrays(out).items():
        np.testing.assert_array_equal(values, before[name], err_msg=name)
    layout = LayoutConfig(grid=(10, 10), method="pca")
    assert "up_to_date" not in relayout(out, relaid, layout, progress=False)
    assert relayout(out, relaid, layout, progress=False)["up_to_date"]
    with pytest.raises(store.StoreError, match="other settings .layout.grid"):
        relayout(out, relaid, LayoutConfig(grid=(12, 12), method="pca"), progress=False)
    assert "up_to_date" not in library_build(out, corpus_csv, force=True)
    # the library's refusal names its own arguments (the command line's: --force, --no-reuse)
    with pytest.raises(store.StoreError, match=r"already exists, with these settings; pass "
                       r"force=True to replace it \(with reuse=False every stage is computed"):
        library_build(out, corpus_csv, reuse=False)  # everything again: needs force


def test_no_reuse_recomputes_everything(corpus_csv, tmp_path, tiny_bert_dir, encode_calls,
                                       capsys):
    out = tmp_path / "s.zarr"
    assert main(_build_args(corpus_csv, out, tiny_bert_dir)) == 0
    before = _arrays(out)
    # the refusal said "the stages that match are reused", which --no-reuse forbids
    assert main(_build_args(corpus_csv, out, tiny_bert_dir, "--no-reuse")) == 2
    err = capsys.readouterr().err
    assert "with --no-reuse every stage is computed again" in err and "reused" not in err
    assert main(_build_args(corpus_csv, out, tiny_bert_dir, "--force", "--no-reuse")) == 0
    assert len(encode_calls) == 2
    assert store.StoreReader(out).summary["reused"] == []
    for name, data in _arrays(out).items():  # deterministic: the same bytes again
        np.testing.assert_array_equal(data, before[name], err_msg=name)


@pytest.fixture(scope="module")
def other_tiny_bert_dir(tiny_bert_dir, tmp_path_factory):
    """The tiny BERT's architecture and tokenizer with other random weights."""
    import shutil

    import torch
    from transformers import BertModel

    path = tmp_path_factory.mktemp("other") / "bert"
    shutil.copytree(tiny_bert_dir, path)
    model = BertModel.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01)
    model.save_pretrained(path)
    return path


def test_a_model_change_is_refused_naming_the_model(corpus_csv, tmp_path, tiny_bert_dir,
                                                    other_tiny_bert_dir, encode_calls, capsys):
    out = tmp_path / "s.zarr"
    assert main(_build_args(corpus_csv, out, tiny_bert_dir)) == 0
    capsys.readouterr()
    assert main(_build_args(corpus_csv, out, other_tiny_bert_dir)) == 2
    err = capsys.readouterr().err
    assert "encoder.model:" in err and "encoder.model_fingerprint:" in err and "--force" in err
    assert main(_build_args(corpus_csv, out, other_tiny_bert_dir, "--force")) == 0
    assert len(encode_calls) == 2
    assert store.StoreReader(out).summary["reused"] == ["corpus"]


def test_relayout_equals_a_fresh_build_byte_for_byte(corpus_csv, tmp_path, tiny_bert_dir,
                                                      encode_calls, capsys):
    src, fresh, again = tmp_path / "src.zarr", tmp_path / "fresh.zarr", tmp_path / "again.zarr"
    new = ["--pixels", "10x14", "--scaling", "minmax", "--assignment", "assignment",
           "--dtype", "uint8"]
    assert main(_build_args(corpus_csv, src, tiny_bert_dir)) == 0
    assert main(_build_args(corpus_csv, fresh, tiny_bert_dir, *new)) == 0
    assert len(encode_calls) == 2
    capsys.readouterr()
    assert main(["relayout", str(src), "--out", str(again), "--method", "pca", *new]) == 0
    said = capsys.readouterr()
    assert "reused corpus, encode" in said.out
    # each stage named as it starts, as build-dataset does
    assert [line.split("] ")[1] for line in said.err.splitlines() if "] " in line] == \
        ["layout", "raster"], said.err
    assert len(encode_calls) == 2, "relayout encoded"
    a, b = _arrays(fresh), _arrays(again)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    fresh_attrs, again_attrs = store.StoreReader(fresh).attrs, store.StoreReader(again).attrs
    assert again_attrs["layout"] == fresh_attrs["layout"]
    assert again_attrs["config"] == fresh_attrs["config"]
    assert {s: r["key"] for s, r in again_attrs["stages"].items()} == \
        {s: r["key"] for s, r in fresh_attrs["stages"].items()}


def test_an_interrupted_relayout_is_kept_and_resumed(corpus_csv, tmp_path, tiny_bert_dir,
                                                     encode_calls, monkeypatch, capsys):
    from fastimg.layout import DeepInsightLayout

    src, out = tmp_path / "src.zarr", tmp_path / "out.zarr"
    assert main(_build_args(corpus_csv, src, tiny_bert_dir)) == 0
    real_fit = DeepInsightLayout.fit

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DeepInsightLayout, "fit", stop)
    relayout = ["relayout", str(src), "--out", str(out), "--method", "pca", "--pixels", "10",
                "--quiet"]
    assert main(relayout) == 130
    err = capsys.readouterr().err
    # the stages it keeps: the source's corpus and encoding, copied before the layout
    assert one_line(err) == ("fastimg relayout: interrupted (the unfinished build is kept, "
                             "corpus and encode done: rerun to resume)")
    assert not out.exists() and store.partial_path(out).exists()
    monkeypatch.setattr(DeepInsightLayout, "fit", real_fit)
    assert main(relayout) == 0
    assert "reused corpus, encode" in capsys.readouterr().out
    assert len(encode_calls) == 1 and store.StoreReader(out).images.shape[1:] == (10, 10)


def test_relayout_refuses_unscaled_uint8_before_its_layout(corpus_csv, tmp_path, tiny_bert_dir,
                                                           capsys):
    """relayout --scaling none --dtype uint8 fitted the layout, then refused the embeddings
    outside [0, 1] and left an unfinished build whose rerun refused again."""
    src, out = tmp_path / "src.zarr", tmp_path / "out.zarr"
    assert main(_build_args(corpus_csv, src, tiny_bert_dir)) == 0
    capsys.readouterr()
    assert main(["relayout", str(src), "--out", str(out), "--method", "pca", "--quiet",
                 "--scaling", "none", "--dtype", "uint8"]) == 2
    assert "--scaling none leaves the features" in one_line(capsys.readouterr().err)
    assert not out.exists() and not store.partial_path(out).exists()


def test_relayout_refuses_a_source_without_embeddings(rng, tmp_path, capsys):
    images = tmp_path / "images.zarr"
    assert _images_command(rng, tmp_path, images, (60, 120), 8) == 0
    capsys.readouterr()
    # a store of build-dataset whose embeddings were deleted was "made by `fastimg images`?"
    lost = tmp_path / "lost.zarr"
    store.write_store(lost, {store.IMAGES: np.zeros((4, 3, 3), np.float16)}, {"kind": "dataset"})
    for src, needle in ((images, "no embeddings to lay out again (made by `fastimg images`)"),
                        (lost, "lost.zarr has lost its embeddings (no array embeddings"),
                        (tmp_path / "missing.zarr", "missing.zarr does not exist")):
        out = tmp_path / "out.zarr"
        assert main(["relayout", str(src), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1
        assert not out.exists() and not store.partial_path(out).exists()


def _library_build(out, path, **kwargs):
    from fastimg.corpus import CorpusConfig
    from fastimg.dataset import build_dataset
    from fastimg.embed import EncoderConfig
    from fastimg.layout import LayoutConfig

    return build_dataset(out, CorpusConfig(input=str(path), id_column="id", split_column="split"),
                         EncoderConfig(model=str(_library_build.model), max_length=24,
                                       chunk_rows=32),
                         LayoutConfig(grid=(12, 12), method="pca"), progress=False, **kwargs)


@pytest.fixture
def library_build(tiny_bert_dir):
    _library_build.model = tiny_bert_dir
    return _library_build


def _resumed_after(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "resuming embeddings after" in
            r.getMessage()]


def test_new_labels_of_the_same_texts_keep_the_encoding(tmp_path, library_build, monkeypatch,
                                                         caplog):
    same_texts = _write_csv(tmp_path / "a.csv")
    flipped = _write_csv(tmp_path / "b.csv", flip_labels=True)
    out, fresh = tmp_path / "s.zarr", tmp_path / "fresh.zarr"
    caplog.set_level(logging.INFO, logger="fastimg")

    with interrupted_after_first_chunk(monkeypatch), pytest.raises(KeyboardInterrupt):
        library_build(out, same_texts)
    # the unfinished build resumes its encoding under the new labels (the corpus is rewritten)
    summary = library_build(out, flipped)
    assert _resumed_after(caplog) == ["resuming embeddings after 32 of 80 rows"]
    assert summary["reused"] == [] and summary["resumed"]  # reused counts finished stages
    library_build(fresh, flipped)
    assert store.StoreReader(out).labels().tolist() == [i % 2 for i in range(80)]  # neg=0
    for name, values in _arrays(fresh).items():
        np.testing.assert_array_equal(_arrays(out)[name], values, err_msg=name)

    # a complete store is refused without --force, naming the corpus; with it, the encoding
    # is kept (the labels pick the validation rows, so the layout is fitted again)
    with pytest.raises(store.StoreError, match="already exists.*corpus.digest"):
        library_build(out, same_texts)
    summary = library_build(out, same_texts, force=True)
    assert summary["reused"][0] == "encode" and "corpus" not in summary["reused"]
    library_build(fresh, same_texts, force=True)
    for name, values in _arrays(fresh).items():
        np.testing.assert_array_equal(_arrays(out)[name], values, err_msg=name)


def test_another_validation_split_keeps_the_encoding(corpus_csv, tmp_path, tiny_bert_dir,
                                                     encode_calls, capsys):
    out = tmp_path / "s.zarr"
    assert main(_build_args(corpus_csv, out, tiny_bert_dir)) == 0
    before = _arrays(out)
    capsys.readouterr()
    assert main(_build_args(corpus_csv, out, tiny_bert_dir, "--val-fraction", "0.4",
                            "--force")) == 0
    assert "reused encode;" in capsys.readouterr().out
    reader = store.StoreReader(out)
    assert reader.summary["reused"] == ["encode"]  # the layout is fitted on other train rows
    assert len(encode_calls) == 1, "the same texts were encoded again"
    np.testing.assert_array_equal(reader.embeddings[:], before[store.EMBEDDINGS])
    assert (reader.split_codes() != before[store.SPLIT]).any()


def test_other_texts_do_not_resume_an_unfinished_encoding(tmp_path, library_build, monkeypatch):
    first = _write_csv(tmp_path / "a.csv")
    other = _write_csv(tmp_path / "b.csv", seed=1)
    out = tmp_path / "s.zarr"
    with interrupted_after_first_chunk(monkeypatch), pytest.raises(KeyboardInterrupt):
        library_build(out, first)
    # what refuses it (the encoding) is named first
    with pytest.raises(store.StoreError, match=r"unfinished build.* \(encoder.texts_sha256: .*"
                                               "corpus.digest"):
        library_build(out, other)
    assert library_build(out, first)["reused"] == ["corpus"]  # still resumes its own
    summary = library_build(out, other, force=True)
    assert summary["reused"] == []


def _keyed_on_the_corpus(stages: dict) -> dict:
    """``stages`` keyed as fastimg keyed them before the encode stage named its texts: the
    encode key chained to the corpus key."""
    parent = stages["corpus"]["key"]
    for stage in ("encode", "layout", "images"):
        if stage in stages:
            parent = stages[stage]["key"] = store.stage_key(parent, stages[stage]["settings"])
    return stages


def test_stores_and_unfinished_builds_keyed_on_the_corpus_keep_their_encoding(
        tmp_path, library_build, monkeypatch, caplog):
    same_texts = _write_csv(tmp_path / "a.csv")
    flipped = _write_csv(tmp_path / "b.csv", flip_labels=True)
    out, old = tmp_path / "s.zarr", tmp_path / "old.zarr"
    caplog.set_level(logging.INFO, logger="fastimg")
    from fastimg.dataset import DatasetConfig

    every_row = DatasetConfig(fit_on="all")  # the layout's rows do not follow the labels
    library_build(out, same_texts, config=every_row)
    new_keys = {s: r["key"] for s, r in store.StoreReader(out).stages.items()}

    # a complete store
    meta = out / "zarr.json"
    doc = json.loads(meta.read_text())
    old_keys = {s: r["key"] for s, r in
                _keyed_on_the_corpus(doc["attributes"][store.ATTRS_KEY]["stages"]).items()}
    assert old_keys["corpus"] == new_keys["corpus"] and old_keys["encode"] != new_keys["encode"]
    meta.write_text(json.dumps(doc))
    assert {s: r["key"] for s, r in store.StoreReader(out).stages.items()} == new_keys
    assert library_build(out, flipped, config=every_row, force=True)["reused"] == [
        "encode", "layout", "images"]

    # an unfinished build
    with interrupted_after_first_chunk(monkeypatch), pytest.raises(KeyboardInterrupt):
        library_build(old, same_texts)
    meta = store.partial_path(old) / "zarr.json"
    doc = json.loads(meta.read_text())
    build = doc["attributes"][store.BUILD_KEY]
    assert set(build["stages"]) == {"corpus", "encode"}
    _keyed_on_the_corpus(build["stages"])
    meta.write_text(json.dumps(doc))
    assert library_build(old, flipped)["resumed"]
    assert _resumed_after(caplog) == ["resuming embeddings after 32 of 80 rows"]
    assert store.StoreReader(old).stages["encode"]["key"] == new_keys["encode"]


def test_an_unfinished_encoding_is_not_thrown_away_by_another_command(
        corpus_csv, tmp_path, tiny_bert_dir, monkeypatch, rng, capsys):

    src, out = tmp_path / "src.zarr", tmp_path / "out.zarr"
    assert main(_build_args(corpus_csv, src, tiny_bert_dir)) == 0
    with interrupted_after_first_chunk(monkeypatch):
        assert main(_build_args(corpus_csv, out, tiny_bert_dir, "--max-length", "20")) == 130
    capsys.readouterr()
    partial = store.partial_path(out)
    assert (partial / store.EMBEDDINGS).exists()
    assert main(["relayout", str(src), "--out", str(out), "--method", "pca", "--quiet"]) == 2
    assert "unfinished build with other settings" in capsys.readouterr().err
    assert _images_command(rng, tmp_path, out, (40, 120), 8) == 2
    assert "unfinished build of another kind" in capsys.readouterr().err
    assert (partial / store.EMBEDDINGS).exists()  # kept for its own command to resume
    assert main(["relayout", str(src), "--out", str(out), "--method", "pca", "--quiet",
                 "--force"]) == 0


def test_a_crash_during_a_forced_replace_leaves_a_complete_store(
        corpus_csv, tmp_path, tiny_bert_dir, monkeypatch, capsys):
    from fastimg.store import location

    out = tmp_path / "s.zarr"
    assert main(_build_args(corpus_csv, out, tiny_bert_dir)) == 0
    old = _arrays(out)
    real_move, moves = location._move, []

    def crash_on(n):
        def move(src, dst):
            moves.append((src, dst))
            if len(moves) == n:
                raise RuntimeError("injected crash")
            real_move(src, dst)
        return move

    # crash after the old store was moved aside, before the new one is moved in
    monkeypatch.setattr(location, "_move", crash_on(2))
    assert main(_build_args(corpus_csv, out, tiny_bert_dir, "--pixels", "16", "--force")) == 1
    assert "injected crash" in capsys.readouterr().err
    assert not out.exists() and store.replaced_path(out).exists()
    assert store.is_complete(out)  # readers read the old store where it waits, moving nothing
    for name, data in _arrays(out).items():
        np.testing.assert_array_equal(data, old[name], err_msg=name)
    assert not out.exists()
    store.check_writable(out, force=True)  # the next writer puts it back
    assert out.exists() and not store.replaced_path(out).exists()

    # crash after the new store is in place, before the old one is deleted
    monkeypatch.setattr(location, "_move", real_move)
    real_rmtree = location.shutil.rmtree

    def fail_rmtree(path, *args, **kwargs):
        if str(path).endswith(store.REPLACED_SUFFIX):
            raise RuntimeError("injected crash")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(location.shutil, "rmtree", fail_rmtree)
    assert main(_build_args(corpus_csv, out, tiny_bert_dir, "--pixels", "16", "--force")) == 1
    assert "injected crash" in capsys.readouterr().err
    monkeypatch.setattr(location.shutil, "rmtree", real_rmtree)
    assert store.StoreReader(out).images.shape == (80, 16, 16)  # the new one, complete
    store.check_writable(out, force=True)  # the next writer deletes the leftover
    assert not store.replaced_path(out).exists()


def test_a_store_of_an_older_format_is_refused_with_what_to_do(tmp_path, capsys):
    out = tmp_path / "old.zarr"
    store.write_store(out, {store.IMAGES: np.zeros((4, 3, 3), np.float16)}, {"kind": "images"})
    meta = out / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"][store.ATTRS_KEY]["format_version"] = 1
    meta.write_text(json.dumps(doc))
    with pytest.raises(store.StoreError, match=r"older fastimg \(store format 1; this one "
                       r"reads format \d+\): rebuild it as it was made, with force=True$"):
        store.StoreReader(out)
    assert main(["info", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("rebuild it as it was made, with --force"), err
    assert "format 1" in err and len(err.strip().splitlines()) == 1


def _as_written_before_precision(path):
    """Rewrite a store's attrs as fastimg wrote them before ``precision`` replaced the encoder's
    ``dtype``: ``dtype`` in the config, ``compute_dtype`` in the encode stage's settings, and
    the keys from ``encode`` on that those settings gave."""
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    attrs = doc["attributes"][store.ATTRS_KEY]
    encoder = attrs["config"]["encoder"]
    encoder["dtype"] = encoder.pop("precision")
    stages = attrs["stages"]
    settings = stages["encode"]["settings"]
    assert settings.pop("device") == "cpu" and settings.pop("precision") == "fp32"
    settings["compute_dtype"] = "float32"
    parent = stages["corpus"]["key"]
    for stage in ("encode", "layout", "images"):
        parent = stages[stage]["key"] = store.stage_key(parent, stages[stage]["settings"])
    meta.write_text(json.dumps(doc))
    return stages


def test_a_store_from_before_precision_is_trained_on_and_its_encoding_reused(
        corpus_csv, tmp_path, tiny_bert_dir, encode_calls, capsys):
    out = tmp_path / "s.zarr"
    assert main(_build_args(corpus_csv, out, tiny_bert_dir)) == 0
    new_keys = {s: r["key"] for s, r in store.StoreReader(out).stages.items()}
    old_keys = {s: r["key"] for s, r in _as_written_before_precision(out).items()}
    assert old_keys["encode"] != new_keys["encode"]
    reader = store.StoreReader(out)
    # train's run bundle records the encoder: the old dtype reads as the precision it ran
    assert reader.encoder_config().precision == "fp32"
    assert {s: r["key"] for s, r in reader.stages.items()} == new_keys
    capsys.readouterr()
    assert main(_build_args(corpus_csv, out, tiny_bert_dir)) == 0
    assert "is up to date" in capsys.readouterr().out
    assert main(_build_args(corpus_csv, out, tiny_bert_dir, "--force")) == 0
    assert "reused corpus, encode, layout, images" in capsys.readouterr().out
    assert len(encode_calls) == 1, "the same embeddings were encoded again"


def test_a_new_store_takes_the_embeddings_of_the_same_texts_from_another(
        tmp_path, tiny_bert_dir, library_build, encode_calls, capsys):
    first, relabelled = _write_csv(tmp_path / "a.csv"), _write_csv(tmp_path / "b.csv",
                                                                    flip_labels=True)
    a, b, fresh = tmp_path / "a.zarr", tmp_path / "b.zarr", tmp_path / "fresh.zarr"
    assert main(_build_args(first, a, tiny_bert_dir)) == 0
    capsys.readouterr()
    assert main(_build_args(relabelled, b, tiny_bert_dir, "--reuse-from", str(a))) == 0
    # the summary and info name the store each stage was taken from (both said
    # "reused encode" alone: which store gave it was in the JSON attributes only)
    assert f"reused encode (from {a});" in capsys.readouterr().out
    assert main(["info", str(b)]) == 0
    assert f"; reused: encode (from {a})" in capsys.readouterr().out
    assert len(encode_calls) == 1, "the same texts were encoded again"
    assert store.StoreReader(b).stages["encode"]["reused_from"] == str(a)
    assert main(_build_args(relabelled, fresh, tiny_bert_dir)) == 0  # encodes
    for name, values in _arrays(fresh).items():
        np.testing.assert_array_equal(_arrays(b)[name], values, err_msg=name)
    # in Python, one store may be given as its path alone
    assert library_build(tmp_path / "lib.zarr", relabelled,
                         reuse_from=str(a))["reused"] == ["encode"]
    assert len(encode_calls) == 2

    capsys.readouterr()
    assert main(["relayout", str(b), "--out", str(tmp_path / "c.zarr"), "--pixels", "10",
                 "--method", "pca", "--quiet"]) == 0
    assert f"reused corpus, encode (all from {b});" in capsys.readouterr().out
    # a --force rebuild takes its stages from the store it replaces: no store to name
    assert main(_build_args(relabelled, b, tiny_bert_dir, "--force")) == 0
    assert "reused corpus, encode, layout, images;" in capsys.readouterr().out
    assert main(["info", str(b)]) == 0
    assert "; reused: corpus, encode, layout, images\n" in capsys.readouterr().out

    # other texts take nothing from it
    other = _write_csv(tmp_path / "c.csv", seed=1)
    assert main(_build_args(other, tmp_path / "other.zarr", tiny_bert_dir, "--reuse-from",
                            str(a))) == 0
    assert len(encode_calls) == 3 and "reused" not in capsys.readouterr().out


def test_a_reuse_from_store_that_gives_nothing_is_said(tmp_path, tiny_bert_dir, rng, capsys,
                                                        caplog, encode_calls):
    """A store of other texts or encoder settings was passed over in silence, and one made by
    `fastimg images` (no embeddings of texts, so nothing of it can ever match) too: the user
    who asked for the encoding to be reused learnt that it was not from the encode time."""
    def warned():
        # the layout's own note (a layout fitted on this few rows) is not the reuse's
        found = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                 and r.name != "fastimg.layout"]
        caplog.clear()
        return found

    first, other = _write_csv(tmp_path / "a.csv"), _write_csv(tmp_path / "c.csv", seed=1)
    a = tmp_path / "a.zarr"
    assert main(_build_args(first, a, tiny_bert_dir)) == 0
    caplog.clear()
    assert main(_build_args(other, tmp_path / "c.zarr", tiny_bert_dir, "--reuse-from",
                            str(a))) == 0
    assert warned() == [f"nothing is reused from reuse_from {a}: none of its stages matches "
                        f"this build (other texts: 80 each)"]
    relabelled = _write_csv(tmp_path / "b.csv", flip_labels=True)
    assert main(_build_args(relabelled, tmp_path / "d.zarr", tiny_bert_dir, "--reuse-from",
                            str(a), "--max-length", "16")) == 0
    assert [w.split("(")[-1] for w in warned()] == ["encoder.max_length: 24 -> 16)"]
    assert len(encode_calls) == 3
    # a store that matches some stage is not named
    assert main(_build_args(first, tmp_path / "e.zarr", tiny_bert_dir, "--reuse-from", str(a),
                            "--pixels", "10")) == 0
    assert warned() == [] and len(encode_calls) == 3

    images = tmp_path / "images.zarr"
    assert _images_command(rng, tmp_path, images, (80, 192), 12) == 0
    capsys.readouterr()
    out = tmp_path / "f.zarr"
    assert main(_build_args(first, out, tiny_bert_dir, "--reuse-from", str(images))) == 2
    err = one_line(capsys.readouterr().err)
    assert f"--reuse-from {images} is a store of images" in err and "fastimg images" in err
    assert not out.exists() and not store.partial_path(out).exists()
    assert len(encode_calls) == 3


@pytest.mark.parametrize("rerun", [(), ("--force",), ("--reuse-from", "a.zarr")])
def test_a_build_stopped_while_copying_a_stage_is_rerun_with_other_options(
        tmp_path, tiny_bert_dir, monkeypatch, capsys, rerun):
    """Stopped while --reuse-from copied the embeddings, the unfinished build kept the half
    copy without a record of it: a rerun without --reuse-from (or with --force) took it for
    its own encoding and failed with "array 'embeddings' exists ... but was not written by
    fastimg.embed; choose another name or remove it", which no option could get past."""
    from fastimg.store import writer as writer_module

    monkeypatch.chdir(tmp_path)
    first, relabelled = _write_csv(tmp_path / "a.csv"), _write_csv(tmp_path / "b.csv",
                                                                    flip_labels=True)
    assert main(_build_args(first, "a.zarr", tiny_bert_dir)) == 0
    real = writer_module.copy_array

    def stopped(source, group, name, **kwargs):
        if name == store.EMBEDDINGS:  # the first rows copied, then Ctrl-C
            target = group.create_array(name, shape=source.shape, dtype=source.dtype,
                                        chunks=source.chunks, fill_value=source.fill_value)
            target[:1] = source[:1]
            raise KeyboardInterrupt
        return real(source, group, name, **kwargs)

    monkeypatch.setattr(writer_module, "copy_array", stopped)
    assert main(_build_args(relabelled, "b.zarr", tiny_bert_dir, "--reuse-from",
                            "a.zarr")) == 130
    monkeypatch.setattr(writer_module, "copy_array", real)
    capsys.readouterr()
    assert main(_build_args(relabelled, "b.zarr", tiny_bert_dir, *rerun)) == 0, \
        capsys.readouterr().err
    assert main(_build_args(relabelled, "fresh.zarr", tiny_bert_dir)) == 0
    for name, values in _arrays("fresh.zarr").items():
        np.testing.assert_array_equal(_arrays("b.zarr")[name], values, err_msg=name)


def test_a_stage_whose_arrays_a_store_lost_is_not_copied(tmp_path, tiny_bert_dir, capsys,
                                                         caplog, encode_calls):
    """A complete store missing its embeddings (deleted, or a copy of it cut short) gave its
    encode stage to --reuse-from and --force with nothing to copy: 'internal error (a bug,
    please report it): KeyError: embeddings', exit 1, and every rerun the same."""
    import shutil

    first, relabelled = _write_csv(tmp_path / "a.csv"), _write_csv(tmp_path / "b.csv",
                                                                    flip_labels=True)
    a, b, fresh = tmp_path / "a.zarr", tmp_path / "b.zarr", tmp_path / "fresh.zarr"
    assert main(_build_args(first, a, tiny_bert_dir)) == 0
    shutil.rmtree(a / store.EMBEDDINGS)
    caplog.clear()
    assert main(_build_args(relabelled, b, tiny_bert_dir, "--reuse-from", str(a))) == 0, \
        capsys.readouterr().err
    assert any(f"{a} has lost the arrays of its encode stage (embeddings)" in r.getMessage()
               for r in caplog.records)
    assert len(encode_calls) == 2
    assert main(_build_args(relabelled, fresh, tiny_bert_dir)) == 0
    for name, values in _arrays(fresh).items():
        np.testing.assert_array_equal(_arrays(b)[name], values, err_msg=name)
    assert main(_build_args(first, a, tiny_bert_dir, "--force")) == 0, capsys.readouterr().err
    assert store.StoreReader(a).embeddings is not None and len(encode_calls) == 4


@pytest.mark.parametrize("extra, needle", [
    (["--reuse-from", "missing.zarr"], "missing.zarr does not exist"),
    (["--reuse-from", "a.zarr", "--no-reuse"], "--reuse-from takes stages from other stores"),
])
def test_reuse_from_refusals_are_one_line(tmp_path, tiny_bert_dir, capsys, monkeypatch,
                                          extra, needle):
    monkeypatch.chdir(tmp_path)
    csv = _write_csv(tmp_path / "a.csv")
    if "a.zarr" in extra:
        assert main(_build_args(csv, "a.zarr", tiny_bert_dir)) == 0
        capsys.readouterr()
    assert main(_build_args(csv, tmp_path / "b.zarr", tiny_bert_dir, *extra)) == 2
    err = one_line(capsys.readouterr().err)
    assert needle in err
    out = tmp_path / "b.zarr"
    assert not out.exists() and not store.partial_path(out).exists()


def test_stages_copied_from_a_store_replaced_meanwhile_are_not_kept(
        tmp_path, tiny_bert_dir, monkeypatch, capsys):
    """The refusal left the copied stages done in the unfinished build: the rerun it asks for
    resumed with them, and the store held the embeddings of the other build's texts."""
    import shutil

    from fastimg.store.writer import StoreWriter

    first, relabelled = _write_csv(tmp_path / "a.csv"), _write_csv(tmp_path / "b.csv",
                                                                    flip_labels=True)
    a, rebuilt, b = tmp_path / "a.zarr", tmp_path / "rebuilt.zarr", tmp_path / "b.zarr"
    assert main(_build_args(first, a, tiny_bert_dir)) == 0
    assert main(_build_args(_write_csv(tmp_path / "c.csv", seed=1), rebuilt,
                            tiny_bert_dir)) == 0  # a --force rebuild of a with other texts
    real = StoreWriter.adopt

    def rebuilt_while_copied(self, reader, names):
        if names == ["encode"] and rebuilt.exists():  # the rebuild moves its folder in
            shutil.rmtree(a)
            rebuilt.rename(a)
        return real(self, reader, names)

    monkeypatch.setattr(StoreWriter, "adopt", rebuilt_while_copied)
    capsys.readouterr()
    assert main(_build_args(relabelled, b, tiny_bert_dir, "--reuse-from", str(a))) == 2
    assert f"{a} was replaced or deleted while this command read it" in one_line(
        capsys.readouterr().err)
    monkeypatch.setattr(StoreWriter, "adopt", real)
    assert not (store.partial_path(b).exists() and "encode" in store.location.open_group(
        store.partial_path(b), "r").attrs[store.BUILD_KEY]["stages"])

    assert main(_build_args(relabelled, b, tiny_bert_dir)) == 0  # the rerun it asks for
    fresh = tmp_path / "fresh.zarr"
    assert main(_build_args(relabelled, fresh, tiny_bert_dir)) == 0
    for name, values in _arrays(fresh).items():
        np.testing.assert_array_equal(_arrays(b)[name], values, err_msg=name)


def test_a_store_that_lost_arrays_is_not_up_to_date(tmp_path, tiny_bert_dir, capsys,
                                                    encode_calls):
    """A complete store whose images were deleted was said to be up to date (exit 0) by the
    same build again: the up-to-date check read the stage records only. It is refused, naming
    what it lost, and --force computes it again."""
    import shutil

    csv, out = _write_csv(tmp_path / "a.csv"), tmp_path / "a.zarr"
    assert main(_build_args(csv, out, tiny_bert_dir)) == 0
    shutil.rmtree(out / store.IMAGES)
    capsys.readouterr()
    assert main(_build_args(csv, out, tiny_bert_dir)) == 2
    captured = capsys.readouterr()
    assert "is up to date" not in captured.out
    assert "has lost the arrays of its images stage (images)" in one_line(captured.err)
    assert main(_build_args(csv, out, tiny_bert_dir, "--force")) == 0
    assert store.StoreReader(out).images is not None and len(encode_calls) == 1


def test_an_out_that_is_another_kind_of_store_is_named_as_such(corpus_csv, rng, tmp_path,
                                                                 tiny_bert_dir, capsys):
    """build-dataset onto a store of `fastimg images` (and images onto a dataset store) was
    refused as "built with other settings (corpus: not in the store)", as if a setting
    differed: the refusal says what the store is."""
    images, dataset = tmp_path / "images.zarr", tmp_path / "dataset.zarr"
    assert _images_command(rng, tmp_path, images, (60, 120), 8) == 0
    assert main(_build_args(corpus_csv, dataset, tiny_bert_dir)) == 0
    capsys.readouterr()
    assert main(_build_args(corpus_csv, images, tiny_bert_dir)) == 2
    err = one_line(capsys.readouterr().err)
    assert "not in the store" not in err
    assert (f"{images} already exists: a store of images of a feature matrix (made by "
            f"`fastimg images`), not a dataset store; pass --force to replace it") in err
    assert _images_command(rng, tmp_path, dataset, (60, 120), 8) == 2
    err = one_line(capsys.readouterr().err)
    assert (f"{dataset} already exists: a dataset store (made by `fastimg build-dataset`), "
            f"not a store of images of a feature matrix; pass --force to replace it") in err
    assert main(_build_args(corpus_csv, images, tiny_bert_dir, "--force")) == 0
