"""The packed forward: a batch's texts laid end to end, with no padding anywhere.

A padded batch is a ``[B, T]`` rectangle: every text is padded to the longest one, and every
Linear layer computes the padding too. A packed batch is one ``[total_tokens, H]`` matrix; the
Linear layers, GELU and LayerNorm see real tokens only, and attention is told where each text
starts (``cu_seqlens``, as FlashAttention's variable-length kernels take it). Two attention
implementations:

=============  ==================================================================================
``varlen``     ``torch.nn.attention.varlen.varlen_attn``: FlashAttention (or cuDNN) on the packed
               tokens; CUDA sm80+ (Ampere, Hopper, ...) with fp16 / bf16 only
``padded``     pads queries, keys and values back to ``[B, heads, T, d]`` for
               ``scaled_dot_product_attention`` with a key mask, then packs the result again;
               everywhere (the CPU, fp32 on CUDA)
=============  ==================================================================================

Only the attention scores of ``padded`` still see padding. The [CLS]-only last layer works as
in :mod:`fastimg.embed.forward`: its queries are the first token of each text (one query per
"sequence"), its keys and values every token.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from fastimg.embed.forward import exact_first_row, sublayers

logger = logging.getLogger("fastimg.embed")


@dataclass(frozen=True)
class Segments:
    """Where the texts of a packed batch lie.

    Attributes
    ----------
    cu_seqlens : torch.Tensor
        int32 ``[B + 1]``: the first row of each text, then the number of rows.
    max_len : int
        The longest text's length (a host int: the kernels take it as an argument).
    texts, positions : torch.Tensor
        int64 ``[rows]``: each row's text and its position inside that text.
    slots : torch.Tensor
        int64 ``[rows]``: each row's place in the padded ``[B * max_len]`` layout.
    padded : bool
        Whether that layout has padding (texts of unequal lengths).
    """

    cu_seqlens: object
    max_len: int
    texts: object
    positions: object
    slots: object
    padded: bool

    @property
    def n_texts(self) -> int:
        return int(self.cu_seqlens.shape[0]) - 1

    @property
    def starts(self):
        """Row of each text's first token, int64 ``[B]``."""
        return self.cu_seqlens[:-1].long()

    @classmethod
    def of(cls, positions, texts, cu_seqlens, max_len: int) -> "Segments":
        """The segments of a packed batch from :func:`~fastimg.embed.batching.pack_batch`'s
        arrays (as tensors on the model's device)."""
        n_texts = int(cu_seqlens.shape[0]) - 1
        padded = int(positions.shape[0]) != n_texts * max_len
        return cls(cu_seqlens, max_len, texts, positions, texts * max_len + positions, padded)

    @classmethod
    def first_tokens(cls, n_texts: int, device) -> "Segments":
        """One row per text: the [CLS] queries of the last layer."""
        import torch

        texts = torch.arange(n_texts, device=device)
        return cls(torch.arange(n_texts + 1, dtype=torch.int32, device=device), 1, texts,
                   torch.zeros_like(texts), texts, False)


def varlen_attention(q, k, v, queries: Segments, keys: Segments, scale: float):
    """FlashAttention over packed ``[rows, heads, d]`` queries, keys and values."""
    from torch.nn.attention.varlen import varlen_attn

    # q, k and v are strided views of the fused QKV output: contiguous copies (a few percent of
    # a layer's time), because on sm90 varlen_attn may hand them to cuDNN, whose per-text
    # offsets older torches compute as if each tensor were contiguous (cumulative length x
    # heads x head size), and strided views have never been run on a GPU here
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return varlen_attn(q, k, v, queries.cu_seqlens, keys.cu_seqlens, queries.max_len,
                       keys.max_len, scale=scale)


def padded_attention(q, k, v, queries: Segments, keys: Segments, scale: float):
    """The same result through ``scaled_dot_product_attention`` on a padded layout."""
    import torch
    import torch.nn.functional as F

    n_texts, head_shape = keys.n_texts, q.shape[1:]
    mask = None
    if keys.padded:
        lengths = keys.cu_seqlens[1:] - keys.cu_seqlens[:-1]
        mask = (torch.arange(keys.max_len, device=k.device) < lengths[:, None])[:, None, None]
    # packed [rows, heads, d] -> padded [B, heads, max_len, d]
    q, k, v = (_pad_rows(x, s).transpose(1, 2) for x, s in ((q, queries), (k, keys), (v, keys)))
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    a = a.transpose(1, 2).reshape(n_texts * queries.max_len, *head_shape)
    return a.index_select(0, queries.slots) if queries.padded else a


def _pad_rows(x, segments: Segments):
    """Packed ``[rows, ...]`` -> padded ``[B, max_len, ...]`` (zeros in the padding)."""
    if segments.padded:
        x = x.new_zeros((segments.n_texts * segments.max_len, *x.shape[1:])).index_copy_(
            0, segments.slots, x)
    return x.view(segments.n_texts, segments.max_len, *x.shape[1:])


#: FlashAttention's kernels (and cuDNN's fused attention) need Ampere (sm80) or newer
VARLEN_MIN_CAPABILITY = (8, 0)


def choose_attention(device_type: str, compute_dtype: str,
                     capability: tuple[int, int] | None = None) -> str:
    """``"varlen"`` where FlashAttention's variable-length kernel runs (CUDA sm80 or newer,
    fp16 / bf16, a torch that has it), else ``"padded"``.

    ``capability`` is the GPU's compute capability; None asks torch for the current device's.
    """
    if device_type != "cuda" or compute_dtype not in ("float16", "bfloat16"):
        return "padded"
    if capability is None:
        import torch

        capability = torch.cuda.get_device_capability()
    if tuple(capability) < VARLEN_MIN_CAPABILITY:
        logger.info("GPU compute capability %d.%d: FlashAttention needs %d.%d, packed attention "
                    "pads", *capability, *VARLEN_MIN_CAPABILITY)
        return "padded"
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        logger.info("this torch has no torch.nn.attention.varlen; packed attention pads")
        return "padded"
    if not _takes_scale(varlen_attn):
        # varlen_attn's first form (torch 2.9, documented as (..., max_k, is_causal=False,
        # return_aux=None)) has no scale: every packed batch would raise TypeError
        logger.info("this torch's varlen_attn takes no scale; packed attention pads")
        return "padded"
    return "varlen"


def _takes_scale(function) -> bool:
    """Whether ``function`` (torch's ``varlen_attn``) accepts ``scale=``."""
    import inspect

    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the call decide
        return True
    return any(p.name == "scale" or p.kind is p.VAR_KEYWORD for p in parameters)


_ATTEND = {"varlen": varlen_attention, "padded": padded_attention}


def pool(h, tokens: Segments, pooling: str):
    """[CLS] rows or per-text means of packed ``h`` [rows, H] -> ``[B, H]``."""
    if pooling == "cls":
        return h[tokens.starts]
    # summed in the padded layout (zeros in the padding), not by index_add_ into [B, H]: a
    # scatter-add's order of addition, and so its result, varies from run to run on CUDA. The
    # padded copy costs one [B, max_len, H] buffer per pooled layer
    sums = _pad_rows(h, tokens).sum(dim=1)
    lengths = (tokens.cu_seqlens[1:] - tokens.cu_seqlens[:-1]).to(sums.dtype)
    return sums / lengths[:, None]


def bert_layer(layer, proj, h, tokens: Segments, firsts: Segments | None, first_only: bool,
               attend, exact=None):
    """One BERT layer on packed rows: ``[rows, H]``, or with ``first_only`` (the [CLS]-only
    last layer) ``[B, H]``. ``firsts`` are the texts' first tokens as queries ([CLS] pooling);
    ``exact`` as in :func:`fastimg.embed.forward.bert_layer`."""
    sa = layer.attention.self
    nh, hd = sa.num_attention_heads, sa.attention_head_size

    def split(x, n):  # [rows, n * width] -> [rows, n, heads, d]
        return x.view(-1, n, nh, hd)

    starts = tokens.starts
    first = h[starts] if exact is not None or first_only else None
    # as in the padded layer: the first rows' fp32 query, key and value written into the base
    if first_only:
        kv = split(proj.kv(h), 2)
        if exact is not None:
            kv[starts] = split(exact.proj.kv(first), 2)
        k, v = kv.unbind(1)
    else:
        qkv = split(proj.qkv(h), 3)
        if exact is not None:
            qkv[starts] = split(exact.proj.qkv(first), 3)
        q, k, v = qkv.unbind(1)
    if first_only:
        first_layer, first_proj = (layer, proj) if exact is None else (exact.layer, exact.proj)
        q_first = first_proj.q(first).view(-1, nh, hd)
        a_first = attend(q_first, k, v, firsts, tokens, sa.scaling).reshape(-1, nh * hd)
        return sublayers(first_layer, a_first, first)
    a = attend(q, k, v, tokens, tokens, sa.scaling).reshape(-1, nh * hd)
    out = sublayers(layer, a, h)
    if exact is not None:
        out[starts] = sublayers(exact.layer, a[starts], first)
    return out


def forward(model, ids, tokens: Segments, layers, pooling, projections, attention: str):
    """Pooled vectors of ``layers`` for a packed batch, concatenated: ``[B, L*H]``.

    ``ids`` are the packed token ids ``[rows]``; ``projections`` as in
    :func:`fastimg.embed.forward.forward` (the fast path only); ``attention`` is ``"varlen"``
    or ``"padded"`` (:func:`choose_attention`)."""
    import torch

    attend = _ATTEND[attention]
    wanted, last = set(layers), max(layers)
    h = model.embeddings(input_ids=ids[None], position_ids=tokens.positions[None])[0]
    pooled = {0: pool(h, tokens, pooling)} if 0 in wanted else {}
    firsts = Segments.first_tokens(tokens.n_texts, ids.device) if pooling == "cls" else None
    for i in range(1, last + 1):
        first_only = firsts is not None and i == last
        proj = projections[i - 1]
        h = bert_layer(model.encoder.layer[i - 1], proj, h, tokens, firsts, first_only, attend,
                       exact_first_row(proj, pooling))
        if i in wanted:
            pooled[i] = h if first_only else pool(h, tokens, pooling)
    return torch.cat([pooled[i] for i in layers], dim=1)
