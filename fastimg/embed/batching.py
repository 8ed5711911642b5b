"""Pure helpers for the encoder: length sorting, token-budget batches, order restore,
head+tail truncation, padding and packing. No torch here."""
from __future__ import annotations

import numpy as np


def length_order(lengths, *, sort: bool = True) -> np.ndarray:
    """Positions of ``lengths`` longest first (stable), or the identity when ``sort`` is false."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if not sort:
        return np.arange(lengths.size, dtype=np.int64)
    return np.argsort(-lengths, kind="stable").astype(np.int64)


def budget_batches(lengths, token_budget: int, max_batch_size: int, *,
                   max_padding: float | None = None, min_tokens: int = 1024,
                   padded: bool = True) -> list[tuple[int, int]]:
    """Cut ``lengths`` (in processing order) into ``(start, stop)`` batches.

    A batch's padded size ``rows * max(length)`` (with ``padded=False``, for packed batches
    whose attention is unpadded too: its real tokens) stays within ``token_budget`` and its row
    count within ``max_batch_size`` (a single text always fits). With ``max_padding``, a batch
    that already holds ``min_tokens`` padded tokens is also cut before padding would exceed
    that fraction of its real tokens (on CPUs, padding is pure waste once batches are big
    enough).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    batches = []
    start = 0
    longest = 0
    real = 0
    for i, n in enumerate(lengths.tolist()):
        rows = i - start
        candidate = max(longest, n)
        padded_size = candidate * (rows + 1)
        size = padded_size if padded else real + n
        cut = rows and (size > token_budget or rows >= max_batch_size)
        if rows and not cut and max_padding is not None and longest * rows >= min_tokens:
            cut = padded_size > (1.0 + max_padding) * (real + n)
        if cut:
            batches.append((start, i))
            start, candidate, real = i, n, 0
        longest = candidate
        real += n
    if start < lengths.size:
        batches.append((start, int(lengths.size)))
    return batches


def head_tail(ids, max_length: int, head_tokens: int, cls_id: int, sep_id: int) -> list[int]:
    """``[CLS] + first head_tokens + last (max_length - 2 - head_tokens) + [SEP]`` of the content
    token ids ``ids`` (no special tokens); short texts are kept whole."""
    room = max_length - 2
    ids = list(ids)
    if len(ids) > room:
        tail = room - head_tokens
        ids = ids[:head_tokens] + (ids[len(ids) - tail:] if tail else [])
    return [cls_id, *ids, sep_id]


def pad_batch(seqs, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists to ``(ids int64 [B, T], mask bool [B, T])``."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    width = int(lengths.max()) if lengths.size else 0
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = seq
    mask = np.arange(width)[None, :] < lengths[:, None]
    return ids, mask


def pack_batch(seqs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate token id lists without padding.

    Returns
    -------
    ids : int64 [T]
        Every sequence's tokens, one sequence after the other (``T`` = total tokens).
    positions : int64 [T]
        Each token's position inside its sequence.
    segments : int64 [T]
        Each token's sequence (row of the batch).
    cu_seqlens : int32 [B + 1]
        Where each sequence starts in ``ids``, then ``T``.
    """
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    cu_seqlens = np.zeros(lengths.size + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu_seqlens[1:])
    total = int(cu_seqlens[-1])
    ids = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=total)
    segments = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    positions = np.arange(total, dtype=np.int64) - np.repeat(cu_seqlens[:-1].astype(np.int64),
                                                             lengths)
    return ids, positions, segments, cu_seqlens
