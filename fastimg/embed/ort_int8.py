"""int8 on the CPU through ONNX Runtime: fastimg's BERT forward as an ORT graph, quantised.

The graph (:mod:`fastimg.embed.onnx_graph`) is fastimg's fast path: layers up to the last
wanted one (with [CLS] pooling the last for the [CLS] row only), and ORT's fused attention,
bias + GELU and skip + LayerNorm kernels where torch runs chains of fp32 ops. Its every-row
MatMuls run ORT's dynamic int8 (weights int8, one scale per output channel, 7-bit; activations
uint8, one scale per call); with [CLS] pooling the pooled row is computed in fp32, as
:mod:`fastimg.embed.int8` does with torch's kernels (mean pooling averages the rounding of every
token instead, as there). On IMDB (MiniLM, 512 tokens, machine A) it ran 1.50-1.70x fp32 with a
linear probe 0.0025 below fp32's, where torch's int8 ran 1.28-1.38x in the same runs
(``benchmarks/RESULTS.md``, "int8: torch's kernels or ONNX Runtime's" and "int8 on ONNX Runtime
through the encoder").

Like torch's, a text's int8 numbers depend on its batch (activation scales are per batch), so
what cuts the batches is part of int8's run settings. Imported only when int8 runs on ONNX
Runtime.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
import weakref
from pathlib import Path

import numpy as np

logger = logging.getLogger("fastimg.embed")

_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_ORT_PACKAGE = f"{os.sep}onnxruntime{os.sep}"


class _OnnxRuntimeChatter(logging.Filter):
    """Drops ONNX Runtime's records below ERROR."""

    def filter(self, record):
        return record.levelno >= logging.ERROR or _ORT_PACKAGE not in record.pathname


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantiser logs through the root logger (an INFO line per tensor and a
    WARNING to pre-process the graph, which fastimg's graph does not need): drop its records
    below ERROR while it runs, and nobody else's. A root logger without handlers gets a
    NullHandler meanwhile: ``logging.info`` would otherwise call ``basicConfig`` and leave the
    user's process a stderr handler."""
    root = logging.getLogger()
    quiet, null = _OnnxRuntimeChatter(), logging.NullHandler()
    no_handlers = not root.handlers
    root.addFilter(quiet)
    if no_handlers:
        root.addHandler(null)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        if no_handlers:
            root.removeHandler(null)


class OrtForward:
    """Pooled vectors of padded batches through one ONNX Runtime session.

    Parameters
    ----------
    path : str or Path
        A graph from :func:`fastimg.embed.onnx_graph.save_int8`.
    threads : int
        ORT's intra-op threads (torch's thread count: the cores the fp32 path would use).
    """

    def __init__(self, path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``[B, L*H]`` float32 for token ids ``[B, T]`` (int64) and their mask (bool)."""
        return self.session.run(["pooled"], {"input_ids": ids, "attention_mask": mask})[0]


def prepare(model, layers, pooling: str = "cls") -> OrtForward:
    """The int8 session of an fp32 BERT ``model`` on the CPU, pooling (``"cls"`` or ``"mean"``)
    the rows of ``layers`` (indices into ``hidden_states``).

    Built once per model, layer selection, pooling and thread count while ``model`` lives (a
    benchmark or a build encodes several times with one loaded model), from its weights at that
    time (a model changed in place afterwards needs a new one); ``model`` is left as it is.

    Raises
    ------
    ValueError
        For a model on another device, or one the graph does not cover
        (:func:`fastimg.embed.onnx_graph.build`).
    """
    import torch

    from fastimg.embed.forward import fast_path_ok

    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"int8 on ONNX Runtime runs on the CPU only; the model is on {device}")
    if not fast_path_ok(model):  # checked before the cache: a cached session is no excuse
        raise ValueError(f"int8 engine 'onnxruntime' needs the BERT modules of the fast path; "
                         f"this {type(model).__name__} lacks them (use int8_engine 'torch')")
    threads = torch.get_num_threads()
    key = (tuple(layers), pooling, threads)
    with _LOCK:
        sessions = _CACHE.setdefault(model, {})
        if key not in sessions:
            sessions[key] = _build(model, layers, pooling, threads)
    return sessions[key]


def _build(model, layers, pooling: str, threads: int) -> OrtForward:
    from fastimg.embed import onnx_graph

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fastimg-int8-") as tmp, _quiet_root_logger():
        path = Path(tmp) / "int8.onnx"
        onnx_graph.save_int8(model, layers, path, pooling=pooling)
        session = OrtForward(path, threads)
    logger.info("built the int8 ONNX Runtime graph of %s (layers %s, %s pooling, %d threads) in "
                "%.1f s", type(model).__name__, list(layers), pooling, threads,
                time.perf_counter() - t0)
    return session
