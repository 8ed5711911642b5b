"""The model forward: a BERT fast path and the generic transformers forward, then pooling.

The fast path runs the layers itself: one GEMM for query, key and value, SDPA attention, and it
stops after the last wanted layer; with [CLS] pooling the last layer computes queries, attention
and FFN for the first token only (keys and values still come from every token). The projections
are objects with ``qkv``/``q``/``kv`` methods so a precision backend can swap in quantised ones
(:mod:`fastimg.embed.precision`); every other submodule is called as the model holds it.
"""
from __future__ import annotations

FAST_PATH_TYPES = ("bert",)


def fast_path_ok(model) -> bool:
    """True for BERT encoders whose layers we can run ourselves (and stop early)."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in FAST_PATH_TYPES:
        return False
    if getattr(cfg, "is_decoder", False):
        return False
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
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


def bert_layer(layer, proj, h, attn_mask, query_first_only: bool):
    """One BERT layer (post-LN) with SDPA; with ``query_first_only`` only the first token's
    output is computed (all tokens still serve as keys and values)."""
    import torch.nn.functional as F

    sa = layer.attention.self
    batch, length, _ = h.shape
    nh, hd = sa.num_attention_heads, sa.attention_head_size
    width = nh * hd
    if query_first_only:
        hq = h[:, :1]
        q = proj.q(hq).view(batch, 1, nh, hd).transpose(1, 2)
        kv = proj.kv(h).view(batch, length, 2, nh, hd).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
    else:
        hq = h
        qkv_out = proj.qkv(h).view(batch, length, 3, nh, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv_out[0], qkv_out[1], qkv_out[2]
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=sa.scaling)
    a = a.transpose(1, 2).reshape(batch, hq.shape[1], width)
    a = layer.attention.output(a, hq)
    return layer.output(layer.intermediate(a), a)


def forward(model, ids, mask, layers, pooling, projections, padded: bool):
    """Pooled vectors of ``layers`` (indices into hidden_states), concatenated: [B, L*H].

    ``projections`` holds one QKV projection per layer (:class:`FusedQKV` or a precision
    backend's equivalent) for the fast path, or is None for the generic transformers forward
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
        h = bert_layer(model.encoder.layer[i - 1], projections[i - 1], h, attn_mask, first_only)
        if i in wanted:
            pooled[i] = pool(h, mask_f, pooling)
    return torch.cat([pooled[i] for i in layers], dim=1)
