"""The model forward: a BERT fast path and the generic transformers forward, then pooling.

The fast path runs the layers itself: one GEMM for query, key and value, SDPA attention, and it
stops after the last wanted layer; with [CLS] pooling the last layer computes queries, attention
and FFN for the first token only (keys and values still come from every token). The projections
are objects with ``qkv``/``q``/``kv`` methods so a precision backend can swap in quantised ones
(:mod:`fastimg.embed.precision`); every other submodule is called as the model holds it.
"""
from __future__ import annotations

from dataclasses import dataclass

FAST_PATH_TYPES = ("bert",)


def fast_path_config_ok(cfg) -> bool:
    """True for a model config (transformers ``PretrainedConfig``) of a BERT encoder the fast
    path covers: known before the weights are loaded."""
    return (getattr(cfg, "model_type", None) in FAST_PATH_TYPES
            and not getattr(cfg, "is_decoder", False)
            and getattr(cfg, "position_embedding_type", "absolute") == "absolute")


def fast_path_ok(model) -> bool:
    """True for BERT encoders whose layers we can run ourselves (and stop early)."""
    if not fast_path_config_ok(model.config):
        return False
    try:
        layer = model.encoder.layer[0]
        _ = (model.embeddings, layer.attention.self.query, layer.attention.self.key,
             layer.attention.self.value, layer.attention.output, layer.intermediate, layer.output)
    except (AttributeError, IndexError, TypeError):
        return False
    return True


def pool(h, mask_f, pooling):
    """[CLS] vector or masked mean of ``h`` [B, T, H] (``mask_f`` None: no padding)."""
    if pooling == "cls":
        return h[:, 0]
    if mask_f is None:
        return h.mean(dim=1)
    return (h * mask_f).sum(dim=1) / mask_f.sum(dim=1).clamp_min(1.0)


class FusedQKV:
    """Query, key and value projections of one layer stacked into one ``[3H, H]`` weight.

    ``qkv`` is one GEMM instead of three; ``q`` and ``kv`` use row slices of the same weight (the
    [CLS]-only last layer)."""

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias
        self.width = weight.shape[0] // 3

    def qkv(self, h):
        import torch.nn.functional as F

        return F.linear(h, self.weight, self.bias)

    def q(self, h):
        import torch.nn.functional as F

        return F.linear(h, self.weight[:self.width], self.bias[:self.width])

    def kv(self, h):
        import torch.nn.functional as F

        return F.linear(h, self.weight[self.width:], self.bias[self.width:])


@dataclass(frozen=True)
class ExactFirstRow:
    """A layer's fp32 modules, kept beside its quantised ones to compute the pooled [CLS] row.

    With [CLS] pooling the pooled vectors are one row per text, and across texts they vary by
    far less than int8 rounding moves them (MiniLM's early layers: 0.001-0.02 against values up
    to 10); computing that row in fp32, over the keys and values of the quantised pass, costs
    one row in a text's hundreds and keeps the vectors' meaning (``benchmarks/RESULTS.md``).

    Attributes
    ----------
    layer : transformers BertLayer
        The fp32 layer (its attention output, intermediate and output modules are used).
    proj : FusedQKV
        Its fp32 query, key and value projections.
    """

    layer: object
    proj: "FusedQKV"


def exact_first_row(proj, pooling: str) -> ExactFirstRow | None:
    """The fp32 twin a quantised layer keeps for the [CLS] row, when [CLS] is what is pooled
    (mean pooling averages the rounding of every token instead)."""
    return getattr(proj, "exact", None) if pooling == "cls" else None


def qkv_weights(layer):
    """The stacked ``([3H, H] weight, [3H] bias)`` of a layer's fp32 query, key and value."""
    import torch

    sa = layer.attention.self
    with torch.no_grad():
        weight = torch.cat([sa.query.weight, sa.key.weight, sa.value.weight]).contiguous()
        bias = torch.cat([sa.query.bias, sa.key.bias, sa.value.bias]).contiguous()
    return weight, bias


def fused_qkv(model) -> list[FusedQKV]:
    """:class:`FusedQKV` of every layer of a BERT model."""
    return [FusedQKV(*qkv_weights(layer)) for layer in model.encoder.layer]


def sublayers(layer, a, hq):
    """A BERT layer after attention: output projection + LayerNorm, then the FFN (post-LN)."""
    a = layer.attention.output(a, hq)
    return layer.output(layer.intermediate(a), a)


def bert_layer(layer, proj, h, attn_mask, query_first_only: bool,
               exact: "ExactFirstRow | None" = None):
    """One BERT layer (post-LN) with SDPA; with ``query_first_only`` only the first token's
    output is computed (all tokens still serve as keys and values).

    With ``exact`` (int8 with [CLS] pooling), the first token's row is computed in fp32: its
    query, key and value go into the quantised pass's (so one attention serves both), and its
    sublayers are run again in fp32 and replace the quantised row."""
    import torch.nn.functional as F

    sa = layer.attention.self
    batch, length, _ = h.shape
    nh, hd = sa.num_attention_heads, sa.attention_head_size

    def split(x, n):  # [B, T, n * width] -> [B, T, n, heads, d]
        return x.view(batch, -1, n, nh, hd)

    def heads(x):  # [B, T, n, heads, d] -> n x [B, heads, T, d]
        return x.permute(2, 0, 3, 1, 4).unbind(0)

    def attend(q, k, v):
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=sa.scaling)
        return a.transpose(1, 2).reshape(batch, q.shape[2], nh * hd)

    first = h[:, :1]
    # the first row's query, key and value in fp32 are written into the int8 ones (the base
    # tensor, before it is split into heads)
    if query_first_only:
        kv = split(proj.kv(h), 2)
        if exact is not None:
            kv[:, :1] = split(exact.proj.kv(first), 2)
        k, v = heads(kv)
    else:
        qkv = split(proj.qkv(h), 3)
        if exact is not None:
            qkv[:, :1] = split(exact.proj.qkv(first), 3)
        q, k, v = heads(qkv)
    first_layer, first_proj = (layer, proj) if exact is None else (exact.layer, exact.proj)
    if query_first_only:
        return sublayers(first_layer, attend(heads(split(first_proj.q(first), 1))[0], k, v),
                         first)
    a = attend(q, k, v)
    out = sublayers(layer, a, h)
    if exact is not None:
        out[:, :1] = sublayers(exact.layer, a[:, :1], first)
    return out


def forward(model, ids, mask, layers, pooling, projections, padded: bool):
    """Pooled vectors of ``layers`` (indices into hidden_states), concatenated: [B, L*H].

    ``projections`` holds one QKV projection per layer (:class:`FusedQKV` or a precision
    backend's equivalent, whose ``exact`` attribute, when set, is that layer's
    :class:`ExactFirstRow`) for the fast path, or is None for the generic transformers forward
    with ``output_hidden_states``."""
    import torch

    mask_f = mask.unsqueeze(-1).to(torch.float32) if (pooling == "mean" and padded) else None
    if projections is None:
        out = model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        return torch.cat([pool(out.hidden_states[i], mask_f, pooling) for i in layers], dim=1)
    wanted = set(layers)
    last = max(layers)
    attn_mask = mask[:, None, None, :] if padded else None
    h = model.embeddings(input_ids=ids)
    pooled = {0: pool(h, mask_f, pooling)} if 0 in wanted else {}
    for i in range(1, last + 1):
        first_only = pooling == "cls" and i == last
        proj = projections[i - 1]
        h = bert_layer(model.encoder.layer[i - 1], proj, h, attn_mask, first_only,
                       exact_first_row(proj, pooling))
        if i in wanted:
            pooled[i] = pool(h, mask_f, pooling)
    return torch.cat([pooled[i] for i in layers], dim=1)
