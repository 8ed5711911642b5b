"""fastimg's BERT forward written as an ONNX graph, for ONNX Runtime's int8 kernels on the CPU.

The graph computes what :mod:`fastimg.embed.forward` computes: the layers up to the last wanted
one, the pooled rows of the wanted layers concatenated. With [CLS] pooling the last layer runs
for the [CLS] row only (its keys and values still come from every token); with mean pooling
every layer runs on every row and each wanted layer's rows are averaged over the text's tokens
(a MatMul of the mask with the rows, divided by the length). It uses ONNX Runtime's own
fused operators (``com.microsoft``: MultiHeadAttention, SkipLayerNormalization, BiasGelu), so
attention, GELU and LayerNorm run in ORT's kernels, not as chains of small ops. Query, key and
value are three MatMuls whose biases attention adds: a stacked QKV would cost a split and, for
the [CLS] row below, a slice and a concatenation, each a copy of the whole batch three hidden
sizes wide; writing the [CLS] row in (ScatterND) copies one hidden size per tensor.

With ``exact_first_row`` the graph is laid out for int8 as :mod:`fastimg.embed.int8` lays out
torch's: every Linear layer runs on every row (in the last layer, its key and value; its query
and sublayers run on the [CLS] row alone) and these MatMuls are the ones :func:`build` returns
for quantisation; the [CLS] row is computed again in fp32 (its query, key and value replace
the quantised ones before attention, its sublayers replace the quantised row after), so
quantisation never rounds the pooled row itself.

Run by :mod:`fastimg.embed.ort_int8` (``precision="int8"`` on ONNX Runtime); it imports onnx at
the top, so it is imported only then.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: ONNX Runtime's contrib operators
MS = "com.microsoft"
OPSETS = (("", 17), (MS, 1))
END = np.iinfo(np.int64).max


@dataclass
class _Graph:
    """Nodes and initialisers under construction, with unique names."""

    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    consts: dict = field(default_factory=dict)
    count: int = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def tensor(self, array, prefix: str = "w") -> str:
        if hasattr(array, "detach"):
            array = array.detach().cpu().numpy()
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, *values) -> str:
        if values not in self.consts:
            self.consts[values] = self.tensor(np.asarray(values, dtype=np.int64), "c")
        return self.consts[values]

    def op(self, op_type: str, inputs, n_out: int = 1, domain: str = "", **attrs):
        outputs = [self.name(op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs,
                                           name=self.name(f"{op_type}_node"), domain=domain,
                                           **attrs))
        return outputs if n_out > 1 else outputs[0]

    def scalar(self, value: int) -> str:
        return self.tensor(np.asarray(value, dtype=np.int64), "c")

    def rows(self, x, start: int, stop: int = END):
        """``x[:, start:stop]``"""
        return self.op("Slice", [x, self.ints(start), self.ints(stop), self.ints(1)])


class _Linears:
    """Adds ``x @ W.T`` for a layer's Linear modules, noting the MatMuls to quantise."""

    def __init__(self, graph: _Graph):
        self.graph = graph
        self.quantized: list[str] = []

    def matmul(self, x, weight, quantize: bool):
        g = self.graph
        # a weight of its own per MatMul: ORT's quantiser gives a weight shared with an fp32
        # MatMul (the [CLS] row's) a DequantizeLinear, which would round the [CLS] row too
        product = g.op("MatMul", [x, g.tensor(weight.detach().T.contiguous())])
        if quantize:
            self.quantized.append(g.nodes[-1].name)
        return product


def _first_rows(g: _Graph) -> str:
    """ScatterND's indices of each text's first row, ``(text, 0)``: int64 ``[batch, 1, 2]``."""
    batch = g.op("Squeeze", [g.op("Shape", ["input_ids"], start=0, end=1), g.ints(0)])
    texts = g.op("Unsqueeze", [g.op("Range", [g.scalar(0), batch, g.scalar(1)]), g.ints(1, 2)])
    return g.op("Concat", [texts, g.op("Mul", [texts, g.scalar(0)])], axis=2)


def _projection(g: _Graph, linear: _Linears, weight, x, first, firsts):
    """``x @ W.T``, its bias left to attention. Quantised on every row of ``x``; given
    ``firsts`` (:func:`_first_rows`), the [CLS] rows are computed again in fp32 and written over
    the quantised ones. When ``x`` is ``first`` itself (the last layer's query), the product is
    fp32 given ``firsts`` and quantised without."""
    if x is first:
        return linear.matmul(first, weight, quantize=firsts is None)
    product = linear.matmul(x, weight, quantize=True)
    if firsts is None:
        return product
    return g.op("ScatterND", [product, firsts, linear.matmul(first, weight, quantize=False)])


def _sublayers(g: _Graph, linear: _Linears, layer, attended, residual, eps, quantize: bool):
    """Output projection + skip LayerNorm, then the FFN with bias GELU (post-LN); the biases
    of the projections are added inside the fused ops."""
    out, inner, ffn = layer.attention.output, layer.intermediate, layer.output
    a = g.op("SkipLayerNormalization",
             [linear.matmul(attended, out.dense.weight, quantize), residual,
              g.tensor(out.LayerNorm.weight), g.tensor(out.LayerNorm.bias),
              g.tensor(out.dense.bias)], domain=MS, epsilon=eps)
    hidden = g.op("BiasGelu", [linear.matmul(a, inner.dense.weight, quantize),
                               g.tensor(inner.dense.bias)], domain=MS)
    return g.op("SkipLayerNormalization",
                [linear.matmul(hidden, ffn.dense.weight, quantize), a,
                 g.tensor(ffn.LayerNorm.weight), g.tensor(ffn.LayerNorm.bias),
                 g.tensor(ffn.dense.bias)], domain=MS, epsilon=eps)


def _pooling(g: _Graph, pooling: str):
    """``pool(h) -> [batch, 1, hidden]``: the [CLS] row, or the mean of the unpadded rows."""
    if pooling == "cls":
        return lambda h: g.rows(h, 0, 1)
    mask = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT), g.ints(1)])
    lengths = g.op("ReduceSum", [mask, g.ints(2)], keepdims=1)  # [batch, 1, 1]
    return lambda h: g.op("Div", [g.op("MatMul", [mask, h]), lengths])


def build(model, layers, exact_first_row: bool | None = None,
          pooling: str = "cls") -> tuple[onnx.ModelProto, list[str]]:
    """The graph of a BERT ``model`` (fp32 weights) pooling the rows of ``layers``.

    Inputs ``input_ids`` (int64 ``[batch, tokens]``) and ``attention_mask`` (bool, padding on
    the right, as :func:`fastimg.embed.batching.pad_batch` lays it out: attention is given each
    text's length), output ``pooled``
    (float32 ``[batch, len(layers) * hidden]``).

    Parameters
    ----------
    model : transformers BertModel
        A model :func:`fastimg.embed.forward.fast_path_ok` accepts, with erf GELU.
    layers : sequence of int
        Indices into ``hidden_states`` (0: the embeddings), as resolved by
        :func:`fastimg.embed.config.resolve_layers`.
    exact_first_row : bool, optional
        Compute the [CLS] row apart, with MatMuls of its own (left in fp32 by
        :func:`save_int8`). [CLS] pooling only; None: with [CLS] pooling.
    pooling : {"cls", "mean"}
        As in :class:`~fastimg.embed.EncoderConfig`.

    Returns
    -------
    graph : onnx.ModelProto
    all_rows : list of str
        Names of the MatMuls to quantise: those that run on every row, and with
        ``exact_first_row`` false the last layer's [CLS]-row ones too.

    Raises
    ------
    ValueError
        For a model the fast path does not cover, another activation than erf GELU, or
        ``exact_first_row`` with mean pooling.
    """
    from fastimg.embed.forward import fast_path_ok

    if not fast_path_ok(model):
        raise ValueError(f"{type(model).__name__} is not a BERT encoder the fast path covers")
    act = getattr(model.config, "hidden_act", None)
    if act != "gelu":
        raise ValueError(f"the ONNX graph has exact (erf) GELU only, not {act!r}")
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be 'cls' or 'mean', not {pooling!r}")
    if exact_first_row is None:
        exact_first_row = pooling == "cls"
    if exact_first_row and pooling != "cls":
        raise ValueError("exact_first_row computes the [CLS] row apart: [CLS] pooling only")
    cfg = model.config
    eps, width = float(cfg.layer_norm_eps), cfg.hidden_size
    g = _Graph()
    linear = _Linears(g)
    emb = model.embeddings
    tokens = g.op("Shape", ["input_ids"], start=1, end=2)
    h = g.op("Add", [g.op("Gather", [g.tensor(emb.word_embeddings.weight), "input_ids"]),
                     g.op("Slice", [g.tensor(emb.position_embeddings.weight), g.ints(0), tokens,
                                    g.ints(0)])])
    h = g.op("Add", [h, g.tensor(emb.token_type_embeddings.weight[0])])
    h = g.op("LayerNormalization", [h, g.tensor(emb.LayerNorm.weight),
                                    g.tensor(emb.LayerNorm.bias)], axis=-1, epsilon=eps)
    # each text's length (int32 [batch]): ORT's attention skips the padded keys
    key_padding = g.op("ReduceSum", [g.op("Cast", ["attention_mask"], to=TensorProto.INT32),
                                     g.ints(1)], keepdims=0)
    pool = _pooling(g, pooling)
    pooled = {0: pool(h)} if 0 in layers else {}
    firsts = _first_rows(g) if exact_first_row else None
    last = max(layers)
    for i in range(1, last + 1):
        layer = model.encoder.layer[i - 1]
        sa = layer.attention.self
        cls_only = pooling == "cls" and i == last
        first = g.rows(h, 0, 1) if cls_only or exact_first_row else None
        # query, key and value apart, their biases added inside attention: no stacked QKV to
        # split or copy. The [CLS] query alone in a [CLS]-pooled last layer; keys and values of
        # every token
        rows = {"query": first if cls_only else h, "key": h, "value": h}
        q, k, v = (_projection(g, linear, getattr(sa, name).weight, x, first, firsts)
                   for name, x in rows.items())
        bias = g.tensor(np.concatenate([getattr(sa, name).bias.detach().cpu().numpy()
                                        for name in rows]))
        attended = g.op("MultiHeadAttention", [q, k, v, bias, key_padding], domain=MS,
                        num_heads=sa.num_attention_heads, scale=float(sa.scaling))
        if cls_only:
            h = _sublayers(g, linear, layer, attended, first, eps, quantize=not exact_first_row)
        else:
            h = _sublayers(g, linear, layer, attended, h, eps, quantize=True)
            if exact_first_row:
                h = g.op("ScatterND", [h, firsts, _sublayers(g, linear, layer,
                                                             g.rows(attended, 0, 1), first,
                                                             eps, quantize=False)])
        if i in layers:
            pooled[i] = h if cls_only else pool(h)
    cat = g.op("Concat", [pooled[i] for i in layers], axis=-1)
    g.nodes.append(helper.make_node("Squeeze", [cat, g.ints(1)], ["pooled"], name="pooled"))
    ids_info = [helper.make_tensor_value_info(name, dtype, ["batch", "tokens"])
                for name, dtype in (("input_ids", TensorProto.INT64),
                                    ("attention_mask", TensorProto.BOOL))]
    out_info = helper.make_tensor_value_info("pooled", TensorProto.FLOAT,
                                             ["batch", len(layers) * width])
    graph = helper.make_graph(g.nodes, f"fastimg_bert_{pooling}", ids_info, [out_info],
                              g.initializers)
    return (helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSETS]),
            linear.quantized)


def save_int8(model, layers, path, exact_first_row: bool | None = None,
              pooling: str = "cls") -> None:
    """:func:`build`, its every-row MatMuls quantised by ONNX Runtime's dynamic quantisation,
    saved to ``path``.

    Weights int8 with one scale per output channel, 7-bit (as ORT asks on CPUs without VNNI);
    activations uint8 with one scale per call.

    Parameters
    ----------
    model, layers, exact_first_row, pooling
        As for :func:`build`; without ``exact_first_row`` every MatMul of the layers is
        quantised, the [CLS] row's too (the pooling MatMul of mean pooling stays fp32).
    path : str or Path
        The .onnx file to write, its weights in a file beside it (``<name>.data``): the graph
        holds the fp32 weights of the [CLS] row as well as the int8 ones, past protobuf's 2 GB
        for models of bert-large's size. Load it from where it was written.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph, all_rows = build(model, layers, exact_first_row, pooling)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        onnx.save(graph, fp32, save_as_external_data=True, location="fp32.onnx.data")
        # contrib ops are outside ONNX's shape inference: their outputs are float32; op types as
        # well as nodes, since an empty node list would mean every node
        quantize_dynamic(fp32, path, weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True, nodes_to_quantize=all_rows,
                         op_types_to_quantize=["MatMul"], use_external_data_format=True,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
