"""The encoder core: texts -> pooled hidden states of chosen layers, concatenated.

Work is done chunk by chunk (``config.chunk_rows`` texts). A background thread tokenises the next
chunk and pads its batches (pinned memory on CUDA) while the model runs the current one; inside a
chunk texts are sorted by token length and cut into batches by a padded-token budget, and the
results are written back in input order. Because a chunk's batches depend only on that chunk,
:func:`encode` and :func:`encode_to_array` give the same bytes, interrupted or not.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np

from fastimg._registry import Registry, torch_cuda_available
from fastimg.embed.batching import budget_batches, head_tail, length_order, pad_batch
from fastimg.embed.config import EncoderConfig, resolve_layers
from fastimg.embed.models import LoadedModel, load_model, resolve_model

logger = logging.getLogger("fastimg.embed")

ATTRS_KEY = "fastimg_embed"
DEFAULT_ARRAY = "embeddings"
DEFAULT_BUDGET = {"cpu": 8192, "cuda": 65536}
# (padding allowed per batch as a fraction of its real tokens, once the batch holds this many
# padded tokens): past a size where the matmuls run at full speed, padding is pure waste
PADDING_GUARD = {"cpu": (0.1, 1024), "cuda": (0.1, 16384)}
_FAST_PATH_TYPES = ("bert",)


class EmptyTextWarning(UserWarning):
    """Some texts are empty or whitespace-only (they are encoded as ``[CLS] [SEP]``)."""


#: Device of the encoder: ``"auto"`` picks CUDA when torch sees a GPU, else the CPU.
ENCODE_DEVICES = Registry("encode device")
ENCODE_DEVICES.add("cuda", lambda: "cuda", available=torch_cuda_available, priority=2)
ENCODE_DEVICES.add("cpu", lambda: "cpu", priority=1)


def check_texts(texts) -> list[str]:
    """Return ``texts`` as a list of str, or raise TypeError naming the first bad item."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of str, not a single "
                        f"{type(texts).__name__}; wrap it in a list")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}") from None
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__} ({text!r:.40}), expected str")
    return texts


def _warn_empty(texts, stacklevel=3) -> None:
    n_empty = sum(1 for t in texts if not t.strip())
    if n_empty:
        warnings.warn(f"{n_empty} of {len(texts)} texts are empty or whitespace-only; they are "
                      f"encoded as [CLS] [SEP] alone", EmptyTextWarning, stacklevel=stacklevel)


def texts_digest(texts) -> str:
    """sha256 over the texts (length-prefixed, UTF-8): identifies the input of a run."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Plan:
    """Everything resolved once per run."""

    device: str
    compute_dtype: str
    layers: tuple[int, ...]
    token_budget: int
    n_features: int


def _plan(config: EncoderConfig, n_layers: int, hidden: int) -> _Plan:
    device = ENCODE_DEVICES.resolve(config.device)
    dtype = config.dtype
    if dtype == "auto":
        dtype = "float16" if device == "cuda" else "float32"
    layers = resolve_layers(config.layers, n_layers)
    budget = config.token_budget or DEFAULT_BUDGET[device]
    return _Plan(device, dtype, layers, max(budget, config.max_length), len(layers) * hidden)


# ---------------------------------------------------------------------------------------------
# tokenisation (runs in the producer thread)


def _tokenize(tokenizer, texts, config: EncoderConfig) -> list[list[int]]:
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


class _Producer(threading.Thread):
    """Tokenises chunk after chunk and queues padded batches (pinned on CUDA)."""

    def __init__(self, texts, spans, tokenizer, config, plan, pad_id):
        super().__init__(name="fastimg-tokenize", daemon=True)
        self.texts, self.spans, self.tokenizer = texts, spans, tokenizer
        self.config, self.plan, self.pad_id = config, plan, pad_id
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

        pin = self.plan.device == "cuda"
        try:
            for start, stop in self.spans:
                seqs = _tokenize(self.tokenizer, self.texts[start:stop], self.config)
                lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
                order = length_order(lengths, sort=self.config.sort_by_length)
                max_padding, min_tokens = PADDING_GUARD[self.plan.device]
                if not self.config.sort_by_length:  # plain batching: cut by the budget only
                    max_padding = None
                for a, b in budget_batches(lengths[order], self.plan.token_budget,
                                           self.config.max_batch_size, max_padding=max_padding,
                                           min_tokens=min_tokens):
                    rows = order[a:b]
                    ids, mask = pad_batch([seqs[r] for r in rows], self.pad_id)
                    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
                    if pin:
                        ids, mask = ids.pin_memory(), mask.pin_memory()
                    if not self._put(("batch", rows, ids, mask, int(lengths[rows].sum()))):
                        return
                if not self._put(("chunk", start, stop)):
                    return
            self._put(("done",))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            self._put(("error", exc))


# ---------------------------------------------------------------------------------------------
# the model forward


def _fast_path_ok(model) -> bool:
    """True for BERT encoders whose layers we can run ourselves (and stop early)."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in _FAST_PATH_TYPES:
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


def _pool(h, mask_f, pooling):
    if pooling == "cls":
        return h[:, 0]
    if mask_f is None:
        return h.mean(dim=1)
    return (h * mask_f).sum(dim=1) / mask_f.sum(dim=1).clamp_min(1.0)


def _fused_qkv(model) -> list:
    """Per layer, the query, key and value projections stacked into one ``[3H, H]`` weight
    (one GEMM instead of three)."""
    import torch

    fused = []
    with torch.no_grad():
        for layer in model.encoder.layer:
            sa = layer.attention.self
            weight = torch.cat([sa.query.weight, sa.key.weight, sa.value.weight]).contiguous()
            bias = torch.cat([sa.query.bias, sa.key.bias, sa.value.bias]).contiguous()
            fused.append((weight, bias))
    return fused


def _bert_layer(layer, qkv, h, attn_mask, query_first_only: bool):
    """One BERT layer (post-LN) with SDPA; with ``query_first_only`` only the first token's
    output is computed (all tokens still serve as keys and values)."""
    import torch.nn.functional as F

    sa = layer.attention.self
    batch, length, _ = h.shape
    nh, hd = sa.num_attention_heads, sa.attention_head_size
    width = nh * hd
    weight, bias = qkv
    if query_first_only:
        hq = h[:, :1]
        q = F.linear(hq, weight[:width], bias[:width]).view(batch, 1, nh, hd).transpose(1, 2)
        kv = F.linear(h, weight[width:], bias[width:]).view(batch, length, 2, nh, hd)
        kv = kv.permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
    else:
        hq = h
        qkv_out = F.linear(h, weight, bias).view(batch, length, 3, nh, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv_out[0], qkv_out[1], qkv_out[2]
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=sa.scaling)
    a = a.transpose(1, 2).reshape(batch, hq.shape[1], width)
    a = layer.attention.output(a, hq)
    return layer.output(layer.intermediate(a), a)


def _forward(model, ids, mask, layers, pooling, fused, padded: bool):
    """Pooled vectors of ``layers`` (indices into hidden_states), concatenated: [B, L*H].

    ``fused`` is :func:`_fused_qkv` of the model (the fast path) or None (the generic
    transformers forward with ``output_hidden_states``)."""
    import torch

    mask_f = mask.unsqueeze(-1).to(torch.float32) if (pooling == "mean" and padded) else None
    if fused is None:
        out = model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        return torch.cat([_pool(out.hidden_states[i], mask_f, pooling) for i in layers], dim=1)
    wanted = set(layers)
    last = max(layers)
    attn_mask = mask[:, None, None, :] if padded else None
    h = model.embeddings(input_ids=ids)
    pooled = {0: _pool(h, mask_f, pooling)} if 0 in wanted else {}
    for i in range(1, last + 1):
        first_only = pooling == "cls" and i == last
        h = _bert_layer(model.encoder.layer[i - 1], fused[i - 1], h, attn_mask, first_only)
        if i in wanted:
            pooled[i] = _pool(h, mask_f, pooling)
    return torch.cat([pooled[i] for i in layers], dim=1)


def model_flops(lengths, n_layers_run: int, hidden: int, intermediate: int, *,
                first_token_last_layer: bool = False) -> float:
    """Matmul FLOPs of a BERT forward over sequences of ``lengths`` tokens (no padding).

    A full layer costs ``2*T*(4*H*H + 2*H*I)`` for the projections and the FFN plus ``4*T*T*H``
    for attention scores and weighted values. With ``first_token_last_layer`` (what the encoder
    runs for [CLS] pooling) the last layer computes keys and values for all ``T`` tokens but
    queries, attention, output projection and FFN for the first token only.
    """
    t = np.asarray(lengths, dtype=np.float64)
    h, i = float(hidden), float(intermediate)
    full = 2.0 * t * (4 * h * h + 2 * h * i) + 4.0 * t ** 2 * h
    if not first_token_last_layer:
        return float(full.sum() * n_layers_run)
    last = 2.0 * t * (2 * h * h) + 2.0 * (2 * h * h + 2 * h * i) + 4.0 * t * h
    return float(full.sum() * (n_layers_run - 1) + last.sum())


# ---------------------------------------------------------------------------------------------
# the driver


def _iter_chunks(texts, config, loaded: LoadedModel, plan: _Plan, start_row: int,
                 progress: bool, stats: dict):
    """Yield ``(start, stop, embeddings [stop-start, F])`` for every chunk from ``start_row``."""
    import torch
    from tqdm.auto import tqdm

    n = len(texts)
    spans = [(s, min(n, s + config.chunk_rows)) for s in range(start_row, n, config.chunk_rows)]
    if not spans:
        return
    model = loaded.model
    device = torch.device(plan.device)
    if next(model.parameters()).device != device:
        model.to(device)
    model.eval()
    fast = _fast_path_ok(model)
    fused = _fused_qkv(model) if fast else None
    out_dtype = getattr(torch, config.output_dtype)
    if plan.compute_dtype == "float32":
        autocast = contextlib.nullcontext
    else:
        def autocast():
            return torch.autocast(device.type, dtype=getattr(torch, plan.compute_dtype))
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    producer = _Producer(texts, spans, tokenizer, config, plan, pad_id)
    logger.info("encoding %d texts on %s (%s, %s path, layers %s, %s pooling, budget %d tokens)",
                n - start_row, plan.device, plan.compute_dtype, "fast" if fast else "generic",
                list(plan.layers), config.pooling, plan.token_budget)
    non_blocking = device.type == "cuda"
    t0 = time.perf_counter()
    chunk_out = None
    bar = tqdm(total=n, initial=start_row, unit="doc", desc="encode", disable=not progress,
               smoothing=0.1)
    producer.start()
    try:
        while True:
            item = producer.queue.get()
            kind = item[0]
            if kind == "error":
                raise item[1]
            if kind == "done":
                break
            if kind == "chunk":
                _, start, stop = item
                result = chunk_out[: stop - start].cpu().numpy()
                chunk_out = None
                yield start, stop, result  # outside inference mode: the caller's code runs here
                continue
            _, rows, ids, mask, n_tokens = item
            padded = bool(ids.shape[0] * ids.shape[1] != n_tokens)
            with torch.inference_mode():
                if chunk_out is None:
                    chunk_out = torch.empty((config.chunk_rows, plan.n_features), dtype=out_dtype,
                                            device=device)
                ids = ids.to(device, non_blocking=non_blocking)
                mask = mask.to(device, non_blocking=non_blocking)
                with autocast():
                    pooled = _forward(model, ids, mask, plan.layers, config.pooling, fused,
                                      padded)
                positions = torch.from_numpy(rows).to(device, non_blocking=non_blocking)
                chunk_out[positions] = pooled.to(out_dtype)
            stats["tokens"] += n_tokens
            stats["padded_tokens"] += int(ids.numel())
            stats["batches"] += 1
            bar.update(len(rows))
            elapsed = time.perf_counter() - t0
            bar.set_postfix_str(f"{stats['tokens'] / max(elapsed, 1e-9):,.0f} tok/s",
                                refresh=False)
    finally:
        producer.stop.set()
        bar.close()
        producer.join(timeout=5)


def _prepare(texts, config, model):
    if config is None:
        config = EncoderConfig()
    elif not isinstance(config, EncoderConfig):
        raise TypeError(f"config must be an EncoderConfig, got {type(config).__name__}")
    texts = check_texts(texts)
    return texts, config, model


def _shape_info(config: EncoderConfig, model: LoadedModel | None):
    """(n_layers, hidden, source) without loading weights when no model is given."""
    if model is not None:
        return model.n_layers, model.hidden_size, model.source
    src = resolve_model(config.model, config.revision)
    cfg = src.hf_config()
    return int(cfg.num_hidden_layers), int(cfg.hidden_size), src


def encode(texts, config: EncoderConfig | None = None, *, model: LoadedModel | None = None,
           progress: bool = False, stats: dict | None = None) -> np.ndarray:
    """Encode ``texts`` in memory.

    Parameters
    ----------
    texts : sequence of str
        The texts; empty ones are encoded as ``[CLS] [SEP]`` (with an :class:`EmptyTextWarning`).
    config : EncoderConfig, optional
        Defaults to ``EncoderConfig()`` (MiniLM, last six layers, [CLS], 512 tokens).
    model : LoadedModel, optional
        A model from :func:`~fastimg.embed.load_model` for ``config.model`` (avoids reloading).
    progress : bool
        Show a tqdm bar (docs/s and tokens/s).
    stats : dict, optional
        Filled with ``tokens``, ``padded_tokens``, ``batches``, ``layers``, ``device`` and
        ``compute_dtype``.

    Returns
    -------
    numpy.ndarray
        ``[len(texts), len(layers) * hidden]`` in ``config.output_dtype`` (float16 by default).

    Raises
    ------
    TypeError
        When ``texts`` is a str or holds a non-str item.
    ValueError
        When the layer selection does not fit the model.
    ModelNotAvailableError
        When the model cannot be found.
    """
    texts, config, model = _prepare(texts, config, model)
    n_layers, hidden, _ = _shape_info(config, model)
    plan = _plan(config, n_layers, hidden)
    stats = _init_stats(stats, plan)
    out = np.empty((len(texts), plan.n_features), dtype=config.output_dtype)
    if not texts:
        return out
    _warn_empty(texts)
    if model is None:
        model = load_model(config.model, config.revision)
    with contextlib.closing(_iter_chunks(texts, config, model, plan, 0, progress,
                                         stats)) as chunks:
        for start, stop, block in chunks:
            out[start:stop] = block
    return out


def _init_stats(stats, plan: _Plan) -> dict:
    stats = {} if stats is None else stats
    stats.update(tokens=0, padded_tokens=0, batches=0, layers=list(plan.layers),
                 device=plan.device, compute_dtype=plan.compute_dtype)
    return stats


def run_settings(texts, config: EncoderConfig, model: LoadedModel | None = None) -> dict:
    """The settings that must match for a resume: model identity, layers, pooling, lengths,
    dtypes and the input itself."""
    n_layers, hidden, src = _shape_info(config, model)
    plan = _plan(config, n_layers, hidden)
    return {
        "model": config.model,
        "model_fingerprint": src.fingerprint(),
        "revision": config.revision,
        "layers": list(plan.layers),
        "pooling": config.pooling,
        "max_length": config.max_length,
        "truncation": config.truncation,
        "head_tokens": config.effective_head_tokens if config.truncation == "head+tail" else None,
        "compute_dtype": plan.compute_dtype,
        "output_dtype": config.output_dtype,
        "n_texts": len(texts),
        "texts_sha256": texts_digest(texts),
    }


# settings whose change alone does not change what is computed
_INFORMATIONAL = ("model",)


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted((set(old) | set(new)) - set(_INFORMATIONAL))
    return [f"{k}: stored {old.get(k)!r}, now {new.get(k)!r}" for k in keys
            if old.get(k) != new.get(k)]


def encode_to_array(texts, config: EncoderConfig | None, target, *, name: str = DEFAULT_ARRAY,
                    model: LoadedModel | None = None, progress: bool = True,
                    on_chunk=None, stats: dict | None = None):
    """Encode ``texts`` into a zarr array, chunk by chunk, resuming an interrupted run.

    The array ``name`` in group ``target`` has shape ``[N, len(layers) * hidden]`` and row chunks
    of ``config.chunk_rows``. Its attribute ``fastimg_embed`` holds the run settings, the config,
    ``rows_done`` (written after each chunk) and ``complete``. Rerunning on an unfinished array
    with the same settings skips the finished chunks; different settings are refused.

    Parameters
    ----------
    texts : sequence of str
    config : EncoderConfig or None
    target : zarr.Group, str or path
        A group, or the path of one (created when missing, zarr v3).
    name : str
        Array name inside the group.
    model : LoadedModel, optional
        Preloaded model for ``config.model``.
    progress : bool
        Show a tqdm bar.
    on_chunk : callable, optional
        ``on_chunk(rows_done)`` after each chunk is committed (tests use it to interrupt a run).
    stats : dict, optional
        Filled as in :func:`encode`.

    Returns
    -------
    zarr.Array
        The finished array.

    Raises
    ------
    ValueError
        When the array exists with other settings (the message lists every difference) or was
        not written by this function.
    """
    import zarr

    texts, config, model = _prepare(texts, config, model)
    group = target if isinstance(target, zarr.Group) else zarr.open_group(
        str(target), mode="a", zarr_format=3)
    settings = run_settings(texts, config, model)
    n_layers, hidden, _ = _shape_info(config, model)
    plan = _plan(config, n_layers, hidden)
    stats = _init_stats(stats, plan)
    shape = (len(texts), plan.n_features)
    if name in group:
        array = group[name]
        meta = dict(array.attrs.get(ATTRS_KEY) or {})
        if "settings" not in meta:
            raise ValueError(f"array {name!r} exists in {group.store} but was not written by "
                             f"fastimg.embed; choose another name or remove it")
        diffs = _differences(meta["settings"], settings)
        if diffs:
            raise ValueError(f"cannot resume {name!r}: it was encoded with other settings ("
                             + "; ".join(diffs)
                             + "). Use another target or delete it to start over")
        if tuple(array.shape) != shape:
            raise ValueError(f"cannot resume {name!r}: shape {tuple(array.shape)}, "
                             f"expected {shape}")
        rows_done = int(meta.get("rows_done", 0))
        chunk_rows = int(array.chunks[0])
        if chunk_rows != config.chunk_rows:
            logger.info("resuming with the stored chunk size %d (config says %d)", chunk_rows,
                        config.chunk_rows)
            config = EncoderConfig.from_dict({**config.to_dict(), "chunk_rows": chunk_rows})
        if meta.get("complete"):
            logger.info("%s is complete (%d rows); nothing to do", name, rows_done)
            return array
        logger.info("resuming %s after %d of %d rows", name, rows_done, len(texts))
    else:
        array = group.create_array(name, shape=shape, dtype=config.output_dtype,
                                   chunks=(min(config.chunk_rows, max(1, len(texts))),
                                           plan.n_features), fill_value=0)
        meta = {"settings": settings, "config": config.to_dict(), "rows_done": 0,
                "complete": False}
        array.attrs[ATTRS_KEY] = meta
        rows_done = 0
    if rows_done < len(texts):
        if rows_done == 0:
            _warn_empty(texts)
        if model is None:
            model = load_model(config.model, config.revision)
        # closing(): an exception here stops the tokeniser thread at once
        with contextlib.closing(_iter_chunks(texts, config, model, plan, rows_done, progress,
                                             stats)) as chunks:
            for start, stop, block in chunks:
                array[start:stop] = block
                meta = {**meta, "rows_done": stop}
                array.attrs[ATTRS_KEY] = meta
                if on_chunk is not None:
                    on_chunk(stop)
    array.attrs[ATTRS_KEY] = {**meta, "rows_done": len(texts), "complete": True}
    return array
