"""The tokeniser thread: tokenises chunk after chunk and queues padded or packed batches.

It runs beside the forward pass (tokenising a 512-token review costs far less than encoding it,
but not nothing), so the model never waits for text. Batches depend only on their chunk: that is
what makes an interrupted run resume to the same bytes.
"""
from __future__ import annotations

import queue
import threading

import numpy as np

from fastimg.embed.batching import (budget_batches, head_tail, length_order, pack_batch,
                                    pad_batch)

# (padding allowed per batch as a fraction of its real tokens, once the batch holds this many
# padded tokens): past a size where the matmuls run at full speed, padding is pure waste
PADDING_GUARD = {"cpu": (0.1, 1024), "cuda": (0.1, 16384)}


def tokenize_chunk(tokenizer, texts, config) -> list[list[int]]:
    """Token ids of ``texts`` (special tokens included), truncated as ``config`` says."""
    if not texts:
        return []
    if config.truncation == "head":
        return tokenizer(texts, add_special_tokens=True, truncation=True,
                         max_length=config.max_length, return_attention_mask=False,
                         return_token_type_ids=False)["input_ids"]
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise ValueError("truncation='head+tail' needs a tokenizer with cls and sep tokens")
    content = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    head = config.effective_head_tokens
    return [head_tail(ids, config.max_length, head, cls_id, sep_id)
            for ids in content]


class Producer(threading.Thread):
    """Tokenises chunk after chunk and queues padded or packed batches (pinned on CUDA).

    Parameters
    ----------
    texts : list of str
    spans : list of (start, stop)
        The chunks, in order.
    tokenizer : transformers tokenizer
    config : EncoderConfig
    device : {"cpu", "cuda"}
    token_budget : int
        Tokens per batch: padded ones, or real ones when ``packed`` with ``unpadded_attention``
        (padded attention still lays a packed batch out as ``rows x longest``).
    pad_id : int
    packed : bool
        Queue packed batches (:func:`~fastimg.embed.batching.pack_batch`) instead of padded ones.
    unpadded_attention : bool
        Attention of packed batches has no padding either: batches are then cut by the token
        budget alone, without :data:`PADDING_GUARD` (which keeps padded attention cheap).

    Items on :attr:`queue`: ``("batch", tensors, n_tokens, max_len)`` with ``tensors``
    ``(rows, ids, mask)`` (padded) or ``(rows, ids, positions, texts, cu_seqlens)`` (packed),
    ``rows`` being the batch's texts as rows of the chunk;
    ``("chunk", start, stop)`` after a chunk's last batch, ``("done",)`` or
    ``("error", exception)``.
    """

    def __init__(self, texts, spans, tokenizer, config, device, token_budget, pad_id,
                 packed=False, unpadded_attention=False):
        super().__init__(name="fastimg-tokenize", daemon=True)
        self.texts, self.spans, self.tokenizer = texts, spans, tokenizer
        self.config, self.device, self.pad_id = config, device, pad_id
        self.token_budget, self.packed = token_budget, packed
        self.unpadded_attention = unpadded_attention
        self.queue: queue.Queue = queue.Queue(maxsize=16)
        self.stop = threading.Event()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self):
        import torch

        pin = self.device == "cuda"
        try:
            for start, stop in self.spans:
                seqs = tokenize_chunk(self.tokenizer, self.texts[start:stop], self.config)
                lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
                order = length_order(lengths, sort=self.config.sort_by_length)
                max_padding, min_tokens = PADDING_GUARD[self.device]
                if self.unpadded_attention or not self.config.sort_by_length:
                    max_padding = None  # cut by the budget only
                for a, b in budget_batches(lengths[order], self.token_budget,
                                           self.config.max_batch_size, max_padding=max_padding,
                                           min_tokens=min_tokens,
                                           padded=not self.unpadded_attention):
                    rows = order[a:b]
                    batch = [seqs[r] for r in rows]
                    arrays = pack_batch(batch) if self.packed else pad_batch(batch, self.pad_id)
                    tensors = tuple(torch.from_numpy(x) for x in (rows, *arrays))
                    if pin:
                        tensors = tuple(t.pin_memory() for t in tensors)
                    item = ("batch", tensors, int(lengths[rows].sum()), int(lengths[rows].max()))
                    if not self._put(item):
                        return
                if not self._put(("chunk", start, stop)):
                    return
            self._put(("done",))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            self._put(("error", exc))
