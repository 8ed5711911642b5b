"""fastimg's forward as an ONNX Runtime graph (``benchmarks.onnx_graph``, the encode suite's
``ort-graph int8`` column), on the tiny random BERT."""
import copy
import dataclasses

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from benchmarks import onnx_graph  # noqa: E402
from fastimg.embed import EncoderConfig, encode, load_model  # noqa: E402
from fastimg.embed.batching import pad_batch  # noqa: E402

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
    return session.run(None, {"input_ids": ids, "attention_mask": mask.astype(np.int64)})[0]


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
    # every layer before the last: QKV and the three sublayer projections on every row; the
    # last: keys and values (and, when the [CLS] row is not kept apart, its query and sublayers)
    last = max(layers)
    assert len(all_rows) == 4 * (last - 1) + (1 if exact_first_row else 5)


def test_int8_quantises_the_every_row_matmuls_only(tiny, tmp_path):
    layers = (1, 2, 3)
    graph, all_rows = onnx_graph.build(tiny.model, layers)
    onnx_graph.save_int8(tiny.model, layers, tmp_path / "int8.onnx")
    ops = [node.op_type for node in onnx.load(tmp_path / "int8.onnx").graph.node]
    fp32_matmuls = sum(node.op_type == "MatMul" for node in graph.graph.node)
    assert sum(op in INTEGER_MATMULS for op in ops) == len(all_rows) == 9
    # the [CLS] row's own projections stay fp32: 4 per layer before the last, 5 in the last
    assert ops.count("MatMul") == fp32_matmuls - len(all_rows) == 4 * 2 + 5


def test_the_int8_graph_is_as_close_to_fp32_as_fastimgs_int8(tiny, tiny_bert_dir, tmp_path):
    layers = (1, 2, 3, 4, 5, 6)
    onnx_graph.save_int8(tiny.model, layers, tmp_path / "int8.onnx")
    ids, mask = _padded(tiny, TEXTS)
    got = _run(_session(tmp_path / "int8.onnx"), ids, mask)
    config = EncoderConfig(model=str(tiny_bert_dir), device="cpu", layers=layers,
                           output_dtype="float32")
    fp32 = encode(TEXTS, config, model=tiny)
    torch_int8 = encode(TEXTS, dataclasses.replace(config, precision="int8"), model=tiny)
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
