"""int8 on ONNX Runtime: fastimg's forward as an ORT graph (``fastimg.embed.onnx_graph``) and
the encoder running it (``fastimg.embed.ort_int8``), on the tiny random BERT."""
import copy
import dataclasses
import re
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fastimg.embed import (EncoderConfig, encode, encode_to_array, load_model, onnx_graph,
                           run_settings)
from fastimg.embed import precision as precision_mod
from fastimg.embed.batching import length_order, pad_batch

TEXTS = ["a quiet film", "the plot is thin but the cast is great and the ending works",
         "no", "bad bad bad", "a long and winding story about a fjord and a zebra"]
INTEGER_MATMULS = ("DynamicQuantizeMatMul", "MatMulInteger")


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return load_model(str(tiny_bert_dir))


def _session(graph_or_path):
    source = graph_or_path.SerializeToString() if hasattr(graph_or_path, "SerializeToString") \
        else str(graph_or_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run(session, ids, mask):
    return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def _padded(tiny, texts):
    seqs = tiny.tokenizer(texts, truncation=True, max_length=64)["input_ids"]
    return pad_batch(seqs, tiny.tokenizer.pad_token_id)


@pytest.mark.parametrize("layers", [(7, 8, 9, 10, 11, 12), (0, 3, 5)])
@pytest.mark.parametrize("exact_first_row", [True, False])
def test_the_fp32_graph_computes_fastimgs_forward(tiny, tiny_bert_dir, layers, exact_first_row):
    graph, all_rows = onnx_graph.build(tiny.model, layers, exact_first_row)
    ids, mask = _padded(tiny, TEXTS)  # one padded batch: the mask matters
    got = _run(_session(graph), ids, mask)
    want = encode(TEXTS, EncoderConfig(model=str(tiny_bert_dir), device="cpu", layers=layers,
                                       output_dtype="float32"), model=tiny)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    # every layer before the last: query, key, value and the three sublayer projections on
    # every row; the last: keys and values (and, when the [CLS] row is not kept apart, its
    # query and sublayers)
    last = max(layers)
    assert len(all_rows) == 6 * (last - 1) + (2 if exact_first_row else 6)


@pytest.mark.parametrize("layers", [(7, 8, 9, 10, 11, 12), (0, 3, 5)])
def test_the_fp32_mean_graph_computes_fastimgs_forward(tiny, tiny_bert_dir, layers):
    """Mean pooling averages each text's unpadded rows; every layer runs on every row."""
    graph, all_rows = onnx_graph.build(tiny.model, layers, pooling="mean")
    ids, mask = _padded(tiny, TEXTS)
    got = _run(_session(graph), ids, mask)
    want = encode(TEXTS, EncoderConfig(model=str(tiny_bert_dir), device="cpu", layers=layers,
                                       pooling="mean", output_dtype="float32"), model=tiny)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert len(all_rows) == 6 * max(layers)
    # not the [CLS] rows: a mean differs from them in every layer
    cls = _run(_session(onnx_graph.build(tiny.model, layers, exact_first_row=False)[0]), ids, mask)
    assert np.abs(cls - got).min(axis=0).max() > 1e-3


def test_mean_int8_quantises_every_layer_matmul_and_pools_in_fp32(tiny, tmp_path):
    layers = (1, 3)
    graph, all_rows = onnx_graph.build(tiny.model, layers, pooling="mean")
    onnx_graph.save_int8(tiny.model, layers, tmp_path / "int8.onnx", pooling="mean")
    ops = [node.op_type for node in onnx.load(tmp_path / "int8.onnx").graph.node]
    assert sum(op in INTEGER_MATMULS for op in ops) == len(all_rows) == 6 * 3
    assert ops.count("MatMul") == len(layers)  # one fp32 pooling MatMul per pooled layer


def test_the_graph_refuses_an_exact_cls_row_under_mean_pooling(tiny):
    with pytest.raises(ValueError, match="\\[CLS\\] pooling only"):
        onnx_graph.build(tiny.model, (1, 2), exact_first_row=True, pooling="mean")
    with pytest.raises(ValueError, match="'cls' or 'mean'"):
        onnx_graph.build(tiny.model, (1, 2), exact_first_row=False, pooling="max")


def test_a_batch_of_one_text(tiny, tiny_bert_dir, tmp_path):
    """The [CLS] rows are written in for a batch of any size; an encoder's last batch may hold
    a single text."""
    layers = (2, 3)
    ids, mask = _padded(tiny, TEXTS[1:2])
    got = _run(_session(onnx_graph.build(tiny.model, layers)[0]), ids, mask)
    want = encode(TEXTS[1:2], EncoderConfig(model=str(tiny_bert_dir), device="cpu", layers=layers,
                                            output_dtype="float32"), model=tiny)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    onnx_graph.save_int8(tiny.model, layers, tmp_path / "int8.onnx")
    int8 = _run(_session(tmp_path / "int8.onnx"), ids, mask)
    assert int8.shape == want.shape and np.isfinite(int8).all()


def test_int8_quantises_the_every_row_matmuls_only(tiny, tmp_path):
    layers = (1, 2, 3)
    graph, all_rows = onnx_graph.build(tiny.model, layers)
    onnx_graph.save_int8(tiny.model, layers, tmp_path / "int8.onnx")
    ops = [node.op_type for node in onnx.load(tmp_path / "int8.onnx").graph.node]
    fp32_matmuls = sum(node.op_type == "MatMul" for node in graph.graph.node)
    assert sum(op in INTEGER_MATMULS for op in ops) == len(all_rows) == 6 * 2 + 2
    assert "DequantizeLinear" not in ops  # the fp32 MatMuls keep weights of their own
    # the [CLS] row's own projections stay fp32: query, key, value and the three sublayer
    # projections in every layer
    assert ops.count("MatMul") == fp32_matmuls - len(all_rows) == 6 * 3


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_the_int8_graph_is_as_close_to_fp32_as_fastimgs_int8(tiny, tiny_bert_dir, tmp_path,
                                                             pooling):
    layers = (1, 2, 3, 4, 5, 6)
    onnx_graph.save_int8(tiny.model, layers, tmp_path / "int8.onnx", pooling=pooling)
    ids, mask = _padded(tiny, TEXTS)
    got = _run(_session(tmp_path / "int8.onnx"), ids, mask)
    config = EncoderConfig(model=str(tiny_bert_dir), device="cpu", layers=layers,
                           pooling=pooling, output_dtype="float32")
    fp32 = encode(TEXTS, config, model=tiny)
    torch_int8 = encode(TEXTS, dataclasses.replace(config, precision="int8", int8_engine="torch"),
                        model=tiny)
    error, torch_error = np.abs(got - fp32).mean(), np.abs(torch_int8 - fp32).mean()
    assert 0 < error <= 2 * torch_error


def test_the_cls_row_is_fp32_in_the_int8_graph(tiny, tmp_path):
    """A text of one token attends to itself only: with its row in fp32 nothing it sees is
    quantised, so the int8 graph gives the fp32 numbers; quantising that row too does not."""
    layers = (1, 2, 3, 4)
    ids = np.full((3, 1), tiny.tokenizer.cls_token_id, dtype=np.int64)
    mask = np.ones_like(ids, dtype=bool)
    want = _run(_session(onnx_graph.build(tiny.model, layers)[0]), ids, mask)
    onnx_graph.save_int8(tiny.model, layers, tmp_path / "exact.onnx")
    onnx_graph.save_int8(tiny.model, layers, tmp_path / "rounded.onnx", exact_first_row=False)
    exact = _run(_session(tmp_path / "exact.onnx"), ids, mask)
    rounded = _run(_session(tmp_path / "rounded.onnx"), ids, mask)
    np.testing.assert_allclose(exact, want, atol=1e-5)
    assert np.abs(rounded - want).max() > 1e-4  # 10x the bound the exact row keeps


def test_other_activations_are_refused(tiny):
    model = copy.deepcopy(tiny.model)
    model.config.hidden_act = "gelu_new"
    with pytest.raises(ValueError, match="erf"):
        onnx_graph.build(model, (1,))


# --- the encoder's int8 on ONNX Runtime ------------------------------------------------------


def _config(tiny_bert_dir, **kw):
    return EncoderConfig(**{"model": str(tiny_bert_dir), "device": "cpu", "precision": "int8",
                            "output_dtype": "float32", "max_length": 64, "token_budget": 400,
                            **kw})


@pytest.mark.parametrize("kw, engine", [
    ({}, "onnxruntime"),
    ({"int8_engine": "torch"}, "torch"),
    ({"pooling": "mean"}, "onnxruntime"),
    ({"batching": "packed"}, "torch"),  # the graph runs padded batches
])
def test_int8_runs_on_onnxruntime_where_its_graph_covers_the_run(tiny, tiny_bert_dir, kw,
                                                                   engine):
    stats = {}
    encode(TEXTS, _config(tiny_bert_dir, **kw), model=tiny, stats=stats)
    assert stats["precision"] == "int8" and stats["int8_engine"] == engine
    assert run_settings(TEXTS, _config(tiny_bert_dir, **kw), model=tiny)["int8"]["engine"] == engine


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_the_encoder_runs_the_int8_graph_on_its_batches(tiny, tiny_bert_dir, tmp_path, pooling):
    """One batch of the encoder (length-sorted, padded) through the saved int8 graph gives the
    encoder's numbers, put back in input order."""
    layers = (2, 4, 5)
    stats = {}
    got = encode(TEXTS, _config(tiny_bert_dir, layers=layers, pooling=pooling), model=tiny,
                 stats=stats)
    assert stats["batches"] == 1
    seqs = tiny.tokenizer(TEXTS, truncation=True, max_length=64)["input_ids"]
    order = length_order([len(s) for s in seqs])
    ids, mask = pad_batch([seqs[i] for i in order], tiny.tokenizer.pad_token_id)
    onnx_graph.save_int8(tiny.model, layers, tmp_path / "int8.onnx", pooling=pooling)
    want = np.empty_like(got)
    want[order] = _run(_session(tmp_path / "int8.onnx"), ids, mask)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    fp32 = encode(TEXTS, _config(tiny_bert_dir, layers=layers, pooling=pooling,
                                 precision="fp32"), model=tiny)
    assert 0 < np.abs(got - fp32).max() < 0.1 * np.abs(fp32).max()


def test_onnxruntime_int8_is_reproducible_and_streams_the_same_bytes(tiny, tiny_bert_dir,
                                                                      tmp_path):
    texts = TEXTS * 7
    config = _config(tiny_bert_dir, chunk_rows=8, token_budget=128, output_dtype="float16")
    first = encode(texts, config, model=tiny)
    assert first.tobytes() == encode(texts, config, model=tiny).tobytes()
    array = encode_to_array(texts, config, tmp_path / "e.zarr", model=tiny, progress=False)
    assert np.asarray(array[:]).tobytes() == first.tobytes()


def test_a_resume_never_mixes_int8_engines_or_schemes(tiny, tiny_bert_dir, tmp_path):
    import zarr

    texts = TEXTS * 4
    config = _config(tiny_bert_dir, chunk_rows=4, int8_engine="torch")

    class Interrupt(Exception):
        pass

    def stop(rows_done):
        raise Interrupt

    with pytest.raises(Interrupt):
        encode_to_array(texts, config, tmp_path / "e.zarr", model=tiny, progress=False,
                        on_chunk=stop)
    auto = dataclasses.replace(config, int8_engine="auto")
    with pytest.raises(ValueError, match=r'int8\.engine: "torch" -> "onnxruntime"'):
        encode_to_array(texts, auto, tmp_path / "e.zarr", model=tiny, progress=False)
    # a store of scheme 2 (torch's kernels, before engines were recorded) is refused too
    array = zarr.open_group(str(tmp_path / "e.zarr"), mode="a")["embeddings"]
    meta = dict(array.attrs["fastimg_embed"])
    old = {key: value for key, value in meta["settings"]["int8"].items() if key != "engine"}
    array.attrs["fastimg_embed"] = {**meta, "settings": {**meta["settings"],
                                                         "int8": {**old, "version": 2}}}
    with pytest.raises(ValueError, match=r"int8\.version: 2 -> 3"):
        encode_to_array(texts, config, tmp_path / "e.zarr", model=tiny, progress=False)


def test_onnxruntime_is_refused_where_its_graph_does_not_reach():
    bert = types.SimpleNamespace(model_type="bert", hidden_act="gelu")
    assert precision_mod.int8_engine("auto", "padded", bert) == "onnxruntime"
    assert precision_mod.int8_engine("torch", "padded", bert) == "torch"
    for model_config, batching, message in [
            (types.SimpleNamespace(model_type="roberta"), "padded",
             "a BERT encoder (this is 'roberta')"),
            (types.SimpleNamespace(model_type="bert", hidden_act="gelu_new"), "padded",
             "exact GELU (this model has 'gelu_new')"),
            (bert, "packed", "batching 'padded' (not 'packed')")]:
        assert precision_mod.int8_engine("auto", batching, model_config) == "torch"
        with pytest.raises(ValueError, match=re.escape(f"'onnxruntime' needs {message}")):
            precision_mod.int8_engine("onnxruntime", batching, model_config)
    with pytest.raises(ValueError, match="batching 'padded'"):  # known before any model
        EncoderConfig(precision="int8", int8_engine="onnxruntime", batching="packed")


def test_sessions_are_built_once_per_model_layers_pooling_and_threads(tiny, monkeypatch):
    from fastimg.embed import ort_int8

    built = []
    real = ort_int8._build
    monkeypatch.setattr(ort_int8, "_build", lambda *a: built.append(a[1:]) or real(*a))
    first = ort_int8.prepare(tiny.model, (1, 5))
    assert ort_int8.prepare(tiny.model, [1, 5], "cls") is first
    assert ort_int8.prepare(tiny.model, (1, 6)) is not first
    assert ort_int8.prepare(tiny.model, (1, 5), "mean") is not first
    threads = torch.get_num_threads()
    assert built == [((1, 5), "cls", threads), ((1, 6), "cls", threads),
                     ((1, 5), "mean", threads)]


def test_quantisation_leaves_the_root_logger_as_it_was(tiny, monkeypatch, caplog):
    """ONNX Runtime's quantiser logs through the root logger: its chatter is dropped while the
    graph is built, a root logger without handlers gets none, and fastimg's own lines pass."""
    import logging

    from fastimg.embed import ort_int8

    with caplog.at_level(logging.INFO):
        ort_int8._build(tiny.model, (2,), "cls", 1)
    assert any("built the int8 ONNX Runtime graph" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if "onnxruntime" in r.pathname]
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    ort_int8._build(tiny.model, (3,), "cls", 1)
    assert root.handlers == [] and not root.filters


def test_a_model_without_the_fast_path_modules_is_refused_clearly(tiny, tiny_bert_dir,
                                                                    monkeypatch):
    from fastimg.embed import forward as forward_mod

    monkeypatch.setattr(forward_mod, "fast_path_ok", lambda model: False)
    with pytest.raises(ValueError, match="needs the BERT modules of the fast path.*'torch'"):
        encode(TEXTS, _config(tiny_bert_dir), model=tiny)
    stats = {}
    encode(TEXTS, _config(tiny_bert_dir, int8_engine="torch"), model=tiny, stats=stats)
    assert stats["int8_engine"] == "torch"
