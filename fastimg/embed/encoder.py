"""The encoder driver: texts -> pooled hidden states of chosen layers, concatenated.

Work is done chunk by chunk (``config.chunk_rows`` texts). A background thread
(:mod:`~fastimg.embed.tokenize`) tokenises the next chunk and pads or packs its batches (pinned
memory on CUDA) while the model (:mod:`~fastimg.embed.forward` for padded batches,
:mod:`~fastimg.embed.packed` for packed ones, prepared by a :mod:`~fastimg.embed.precision`
backend; int8 on ONNX Runtime: :mod:`~fastimg.embed.ort_int8`) runs the current one; inside a
chunk texts are sorted by token length and cut into batches by a token budget, and the results
are put back in input order. Into zarr, another thread (:mod:`~fastimg.embed.commit`) writes
finished chunks while the model runs on. Because a chunk's batches depend only on that chunk,
:func:`encode` and :func:`encode_to_array` give the same bytes, interrupted or not.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import warnings
from dataclasses import dataclass

import numpy as np

from fastimg._registry import Registry, torch_cuda_available
from fastimg.embed import forward as forward_mod
from fastimg.embed import packed as packed_mod
from fastimg.embed import precision as precision_mod
from fastimg.embed.commit import Committer
from fastimg.embed.config import EncoderConfig, resolve_layers
from fastimg.embed.flops import model_flops
from fastimg.embed.models import LoadedModel, load_model, resolve_model
from fastimg.embed.tokenize import Producer

logger = logging.getLogger("fastimg.embed")

__all__ = ["ATTRS_KEY", "DEFAULT_ARRAY", "ENCODE_DEVICES", "EmptyTextWarning", "check_texts",
           "encode", "encode_to_array", "model_flops", "run_settings", "texts_digest"]

ATTRS_KEY = "fastimg_embed"
DEFAULT_ARRAY = "embeddings"
DEFAULT_BUDGET = {"cpu": 8192, "cuda": 65536}


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
    precision: precision_mod.PrecisionBackend
    layers: tuple[int, ...]
    token_budget: int
    n_features: int
    int8_engine: str | None  # "onnxruntime" or "torch" with int8, else None


def _resolve_device(config: EncoderConfig) -> str:
    """The device kind; with ``device="auto"`` a precision that names its device wins (int8 runs
    on the CPU even beside a GPU; fp16 / bf16 need CUDA)."""
    device = ENCODE_DEVICES.resolve(config.device)
    if config.device != "auto" or config.precision == "auto":
        return device
    devices = precision_mod.BACKENDS[config.precision].devices
    if device in devices:
        return device
    if "cpu" in devices:
        logger.info("precision %r runs on the CPU: device 'auto' resolved to cpu",
                    config.precision)
        return "cpu"
    raise ValueError(f"precision {config.precision!r} needs a CUDA GPU and torch sees none "
                     f"(the CPU precisions are fp32 and int8)")


#: models whose position ids start after the padding id (``padding_idx + 1``): two positions
#: fewer than ``max_position_embeddings`` hold tokens
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer")


def _positions(model_config) -> int | None:
    """How many tokens a text may have in this model, when its config says."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    if getattr(model_config, "model_type", None) in _OFFSET_POSITIONS:
        positions -= 2
    return positions


def _plan(config: EncoderConfig, model: LoadedModel | None):
    """``(plan, model source)``, without loading weights when no model is given."""
    if model is not None:
        src, model_config = model.source, model.model.config
        n_layers, hidden = model.n_layers, model.hidden_size
    else:
        src = resolve_model(config.model, config.revision)
        model_config = src.hf_config()
        n_layers, hidden = int(model_config.num_hidden_layers), int(model_config.hidden_size)
    device = _resolve_device(config)
    precision = precision_mod.resolve(config.precision, device)
    ENCODE_DEVICES.check(device)  # after the precision's own refusal of this device
    positions = _positions(model_config)
    if positions is not None and config.max_length > positions:
        raise ValueError(f"max_length {config.max_length} is longer than the {positions} "
                         f"positions of model {config.model!r}")
    layers = resolve_layers(config.layers, n_layers)
    budget = config.token_budget or DEFAULT_BUDGET[device]
    engine = (precision_mod.int8_engine(config.int8_engine, config.batching,
                                        model_config) if precision.quantize else None)
    return _Plan(device, precision, layers, max(budget, config.max_length), len(layers) * hidden,
                 engine), src


# ---------------------------------------------------------------------------------------------
# the driver


def _batch_runner(model, plan: _Plan, config, fast: bool, packed: bool, attention):
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


def _prepare(texts, config, model):
    if config is None:
        config = EncoderConfig()
    elif not isinstance(config, EncoderConfig):
        raise TypeError(f"config must be an EncoderConfig, got {type(config).__name__}")
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
        When ``texts`` is a str or holds a non-str item.
    ValueError
        When the layer selection does not fit the model.
    ModelNotAvailableError
        When the model cannot be found.
    """
    texts, config, model = _prepare(texts, config, model)
    plan, _ = _plan(config, model)
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
                 device=plan.device, precision=plan.precision.name,
                 compute_dtype=plan.precision.compute_dtype, int8_engine=plan.int8_engine)
    return stats


def run_settings(texts, config: EncoderConfig, model: LoadedModel | None = None) -> dict:
    """The settings that must match for a resume: model identity, layers, pooling, lengths,
    device kind, precision, output dtype, batching (when packed), for int8 its engine and what
    cuts the batches, and the input itself.

    Parameters
    ----------
    texts : sequence of str
    config : EncoderConfig
    model : LoadedModel, optional
        Saves reading the model's config from disk.

    Returns
    -------
    dict
        JSON-ready; ``device`` is the resolved kind (``"cpu"`` / ``"cuda"``) and ``precision``
        the resolved precision (``"fp32"``, ``"int8"``, ``"fp16"`` or ``"bf16"``).
    """
    return _settings(texts, config, *_plan(config, model))


def _settings(texts, config: EncoderConfig, plan: _Plan, src) -> dict:
    """:func:`run_settings` for a resolved plan and model source."""
    settings = {
        "model": config.model,
        "model_fingerprint": src.fingerprint(),
        "revision": config.revision,
        "layers": list(plan.layers),
        "pooling": config.pooling,
        "max_length": config.max_length,
        "truncation": config.truncation,
        "head_tokens": config.effective_head_tokens if config.truncation == "head+tail" else None,
        "device": plan.device,
        "precision": plan.precision.name,
        "output_dtype": config.output_dtype,
        "n_texts": len(texts),
        "texts_sha256": texts_digest(texts),
    }
    if plan.precision.quantize:
        # a Linear's int8 activations share one scale per batch, so a text's int8 numbers depend
        # on its batch mates: another token budget moved them as far as int8 moves them from
        # fp32 (benchmarks/RESULTS.md). What cuts the batches is part of what must match
        # (chunk boundaries need no entry: a resume keeps the stored array's chunk size)
        settings["int8"] = {**precision_mod.INT8_SCHEME, "engine": plan.int8_engine, "batches": {
            "token_budget": plan.token_budget, "max_batch_size": config.max_batch_size,
            "sort_by_length": config.sort_by_length}}
    if config.batching != "padded":
        # packed batches round differently (on a GPU, by up to ~1e-2 in fp16): a resume must not
        # mix them with padded ones. Absent when padded, so stores written before keep their key
        settings["batching"] = config.batching
    return settings


# settings whose change alone does not change what is computed
_INFORMATIONAL = ("model",)


def _differences(old: dict, new: dict) -> list[str]:
    """``'setting: stored -> now'`` per differing setting, nested ones by their dotted path."""
    from fastimg.store.keys import differences

    def kept(settings):
        return {k: v for k, v in settings.items() if k not in _INFORMATIONAL}

    return differences("", kept(old), kept(new))


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
        ``on_chunk(rows_done)`` after each chunk is committed, on the thread that writes the
        chunks (:mod:`fastimg.embed.commit`); an exception it raises stops the run (tests use it
        to interrupt one).
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
    plan, src = _plan(config, model)
    settings = _settings(texts, config, plan, src)
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

        def commit(start, stop, block):
            array[start:stop] = block
            array.attrs[ATTRS_KEY] = {**meta, "rows_done": stop}
            if on_chunk is not None:
                on_chunk(stop)

        # closing(): an exception here stops the tokeniser thread at once; the committer writes
        # chunk after chunk in order while the model runs on the next one
        with contextlib.closing(_iter_chunks(texts, config, model, plan, rows_done, progress,
                                             stats)) as chunks, Committer(commit) as committer:
            for start, stop, block in chunks:
                committer.submit(start, stop, block)
    array.attrs[ATTRS_KEY] = {**meta, "rows_done": len(texts), "complete": True}
    return array
