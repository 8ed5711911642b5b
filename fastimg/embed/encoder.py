"""The encoder driver: texts -> pooled hidden states of chosen layers, concatenated.

Work is done chunk by chunk (``config.chunk_rows`` texts). A background thread
(:mod:`~fastimg.embed.tokenize`) tokenises the next chunk and pads or packs its batches (pinned
memory on CUDA) while the model (:mod:`~fastimg.embed.forward` for padded batches,
:mod:`~fastimg.embed.packed` for packed ones, prepared by a :mod:`~fastimg.embed.precision`
backend; int8 on ONNX Runtime: :mod:`~fastimg.embed.ort_int8`) runs the current one; inside a
chunk texts are sorted by token length and cut into batches by a token budget, and the results
are put back in input order. What a run resolves first (device, precision, layers, budget) is
:mod:`~fastimg.embed.plan`'s; writing into zarr and resuming there is
:mod:`~fastimg.embed.resume`'s. Because a chunk's batches depend only on that chunk,
:func:`encode` and :func:`~fastimg.embed.resume.encode_to_array` give the same bytes,
interrupted or not.
"""
from __future__ import annotations

import contextlib
import logging
import time

import numpy as np

from fastimg._validation import check_config
from fastimg.embed import forward as forward_mod
from fastimg.embed import packed as packed_mod
from fastimg.embed.config import EncoderConfig
from fastimg.embed.models import LoadedModel, check_loaded_model, load_model
from fastimg.embed.plan import Plan, make_plan
from fastimg.embed.texts import check_texts, warn_empty
from fastimg.embed.tokenize import Producer

logger = logging.getLogger("fastimg.embed")

__all__ = ["check_inputs", "encode", "encode_chunks", "init_stats", "iter_chunks"]


# ---------------------------------------------------------------------------------------------
# the driver


def _batch_runner(model, plan: Plan, config, fast: bool, packed: bool, attention):
    """``run_batch(tensors, n_tokens, max_len) -> (rows of the chunk, pooled vectors)`` for the
    queued batches of :class:`~fastimg.embed.tokenize.Producer`, on the plan's engine."""
    import torch

    if plan.int8_engine == "onnxruntime":  # padded CPU batches of a BERT encoder
        from fastimg.embed import ort_int8

        session = ort_int8.prepare(model, plan.layers, config.pooling)

        def run_onnxruntime(tensors, n_tokens: int, max_len: int):
            rows, ids, mask = tensors
            return rows, torch.from_numpy(session(ids.numpy(), mask.numpy()))

        return run_onnxruntime
    device = torch.device(plan.device)
    model, projections = plan.precision.prepare(model, fast)
    non_blocking = device.type == "cuda"

    def run_torch(tensors, n_tokens: int, max_len: int):
        rows, ids, *rest = (t.to(device, non_blocking=non_blocking) for t in tensors)
        with plan.precision.context(device.type):
            if packed:
                positions, text_of_row, cu_seqlens = rest
                tokens = packed_mod.Segments.of(positions, text_of_row, cu_seqlens, max_len)
                return rows, packed_mod.forward(model, ids, tokens, plan.layers, config.pooling,
                                                projections, attention)
            return rows, forward_mod.forward(model, ids, rest[0], plan.layers, config.pooling,
                                             projections, ids.numel() != n_tokens)

    return run_torch


def iter_chunks(texts, config, loaded: LoadedModel, plan: Plan, start_row: int,
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
    fast = forward_mod.fast_path_ok(model)
    packed = config.batching == "packed"
    if packed and not fast:
        logger.warning("batching 'packed' needs a BERT encoder (the fast path); %s runs the "
                       "generic transformers forward with padded batches", type(model).__name__)
        packed = False
    attention = (packed_mod.choose_attention(device.type, plan.precision.compute_dtype)
                 if packed else None)
    stats.update(batching="packed" if packed else "padded", attention=attention)
    run_batch = _batch_runner(model, plan, config, fast, packed, attention)
    out_dtype = getattr(torch, config.output_dtype)
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    producer = Producer(texts, spans, tokenizer, config, plan.device, plan.token_budget, pad_id,
                        packed=packed, unpadded_attention=attention == "varlen")
    logger.info("encoding %d texts on %s (%s%s, %s path, %s batches%s, layers %s, %s pooling, "
                "budget %d tokens)", n - start_row, plan.device, plan.precision.name,
                f" on {plan.int8_engine}" if plan.int8_engine else "",
                "fast" if fast else "generic", stats["batching"],
                f" with {attention} attention" if packed else "", list(plan.layers),
                config.pooling, plan.token_budget)

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
            _, tensors, n_tokens, max_len = item
            with torch.inference_mode():
                if chunk_out is None:
                    chunk_out = torch.empty((config.chunk_rows, plan.n_features), dtype=out_dtype,
                                            device=device)
                rows, pooled = run_batch(tensors, n_tokens, max_len)
                chunk_out[rows] = pooled.to(out_dtype)
            stats["tokens"] += n_tokens
            stats["padded_tokens"] += n_tokens if packed else int(rows.numel()) * max_len
            stats["batches"] += 1
            bar.update(int(rows.shape[0]))
            elapsed = time.perf_counter() - t0
            bar.set_postfix_str(f"{stats['tokens'] / max(elapsed, 1e-9):,.0f} tok/s",
                                refresh=False)
    finally:
        producer.stop.set()
        bar.close()
        producer.join(timeout=5)


def check_inputs(texts, config, model):
    """``(texts as a list of str, config, model)``: the texts and the config checked, the
    config defaulted."""
    if config is None:  # a model given alone is encoded with the default settings
        check_loaded_model(model)
        config = EncoderConfig()
    else:
        check_loaded_model(model, check_config("config", config, EncoderConfig))
    texts = check_texts(texts)
    return texts, config, model


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
        Filled with ``tokens``, ``padded_tokens``, ``batches``, ``layers``, ``device``,
        ``precision`` (resolved: fp32, int8, fp16 or bf16), ``compute_dtype``, ``int8_engine``
        (``"onnxruntime"`` or ``"torch"`` with int8, else None), ``batching``
        (``"padded"`` or ``"packed"``, as run) and ``attention`` (packed: ``"varlen"`` or
        ``"padded"``; else None).

    Returns
    -------
    numpy.ndarray
        ``[len(texts), len(layers) * hidden]`` in ``config.output_dtype`` (float16 by default).

    Raises
    ------
    TypeError
        When ``texts`` is a str or holds a non-str item, or ``model`` is not a
        :class:`LoadedModel` (a model name or folder).
    ValueError
        When the layer selection does not fit the model.
    ModelNotAvailableError
        When the model cannot be found.
    """
    texts, config, model = check_inputs(texts, config, model)
    plan, _ = make_plan(config, model)
    stats = init_stats(stats, plan)
    out = np.empty((len(texts), plan.n_features), dtype=config.output_dtype)
    for start, stop, block in _chunks_of(texts, config, model, plan, progress, stats):
        out[start:stop] = block
    return out


def encode_chunks(texts, config: EncoderConfig | None = None, *,
                  model: LoadedModel | None = None, progress: bool = False,
                  stats: dict | None = None):
    """Encode ``texts`` a chunk (``config.chunk_rows`` texts) at a time, for callers that use
    each chunk's embeddings and let them go (memory stays at a chunk, whatever the number of
    texts).

    Takes the parameters of :func:`encode`; the texts, the config and the layers are checked
    when it is called, the model is loaded at the first chunk.

    Returns
    -------
    iterator of (int, int, numpy.ndarray)
        ``(start, stop, embeddings of texts[start:stop])`` in order; the embeddings are those
        :func:`encode` gives for those rows.
    """
    texts, config, model = check_inputs(texts, config, model)
    plan, _ = make_plan(config, model)
    stats = init_stats(stats, plan)
    return _chunks_of(texts, config, model, plan, progress, stats)


def _chunks_of(texts, config, model, plan, progress, stats):
    if not texts:
        return
    warn_empty(texts)
    if model is None:
        model = load_model(config.model, config.revision)
    with contextlib.closing(iter_chunks(texts, config, model, plan, 0, progress,
                                        stats)) as chunks:
        yield from chunks


def init_stats(stats, plan: Plan) -> dict:
    """``stats`` (a new dict when None) reset for a run of ``plan``."""
    stats = {} if stats is None else stats
    stats.update(tokens=0, padded_tokens=0, batches=0, layers=list(plan.layers),
                 device=plan.device, precision=plan.precision.name,
                 compute_dtype=plan.precision.compute_dtype, int8_engine=plan.int8_engine)
    return stats
