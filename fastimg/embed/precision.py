"""Precision backends of the encoder: each prepares a model and a compute context.

=========  ==========  =====================================================================
name       devices     what runs
=========  ==========  =====================================================================
``fp32``   cpu, cuda   the fp32 weights as loaded
``int8``   cpu         dynamic int8 of the Linear layers, on one of :data:`INT8_ENGINES`:
                       int8 weights with one scale per output channel, activations quantised
                       per batch (so a text's numbers depend on the batch it is in);
                       embeddings, LayerNorm, softmax in fp32, and with [CLS] pooling of a
                       BERT encoder the pooled row too
``fp16``   cuda        fp32 weights under ``torch.autocast(float16)``
``bf16``   cuda        fp32 weights under ``torch.autocast(bfloat16)``
=========  ==========  =====================================================================

``"auto"`` is :data:`AUTO` for the device: fp16 on CUDA; on the CPU the precision that met the
bar on the measured IMDB slice (see :data:`AUTO` and ``benchmarks/RESULTS.md``).

int8's engine (:func:`int8_engine`) is ONNX Runtime where its graph covers the run, torch's own
kernels elsewhere. Chosen by measurement (``benchmarks/RESULTS.md``, "int8: torch's kernels or
ONNX Runtime's" and "int8 on ONNX Runtime through the encoder"): on fastimg's graph, ORT's fused
attention, GELU and LayerNorm and its int8 MatMuls ran 1.50-1.70x fp32 with the linear probe
0.0025 below fp32's, torch's int8 1.28-1.38x and 0.0056 below, in the same runs; ORT's int8 of
the exported transformers model ran 1.45-1.52x but rounded the pooled [CLS] row and lost 0.045.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from fastimg.embed.forward import fast_path_config_ok, fused_qkv

PRECISIONS = ("auto", "fp32", "int8", "fp16", "bf16")

#: What ``precision="auto"`` resolves to per device. CPU: fp32, because int8 is not reliably at
#: the bar set in issue 13 (>= 1.6x fp32 docs/s with linear-probe accuracy within 0.005 on the
#: measured IMDB slice). On machine A (MiniLM, 512 tokens, 2-core AMD EPYC, AVX2) int8 on ONNX
#: Runtime keeps the accuracy (0.0025 below fp32 on 20 paired resplits, standard error 0.001)
#: but ran 1.50x / 1.52x (1,000 reviews / slice) through the encoder, and 1.56x / 1.58x with its
#: query, key and value apart, where a graph of the same numbers ran 1.58x / 1.70x as a benchmark
#: column; attention, in fp32, takes a third of its time on 512-token batches. With mean pooling
#: it ran 1.46-1.56x / 1.46-1.50x in two runs, 0.0022 below fp32. Figures:
#: ``benchmarks/RESULTS.md`` (encode, int8).
AUTO = {"cuda": "fp16", "cpu": "fp32"}


#: Recorded in the run settings of int8 encodings, with the engine. Version 2 computed the
#: pooled [CLS] row in fp32 (BERT encoders with [CLS] pooling); version 3 records the engine
#: (stores of versions 1 and 2 hold torch's numbers, so their resume and reuse are refused).
INT8_SCHEME = {"version": 3}

#: int8's engines: ``"onnxruntime"`` (:mod:`fastimg.embed.ort_int8`) covers BERT encoders with
#: exact GELU in padded batches ([CLS] or mean pooling); ``"torch"`` (:mod:`fastimg.embed.int8`)
#: every model, pooling and batching; ``"auto"`` picks ONNX Runtime where it covers the run.
INT8_ENGINES = ("auto", "onnxruntime", "torch")


def int8_engine(requested: str, batching: str, model_config=None) -> str:
    """The engine int8 runs on: ``"onnxruntime"`` or ``"torch"``.

    Parameters
    ----------
    requested : {"auto", "onnxruntime", "torch"}
    batching : str
        As in :class:`~fastimg.embed.EncoderConfig` (either pooling is covered).
    model_config : transformers PretrainedConfig, optional
        The model's config (known before its weights are loaded); None checks the rest only
        (:class:`~fastimg.embed.EncoderConfig` does, before a model is named).

    Raises
    ------
    ValueError
        When ``"onnxruntime"`` is asked for a run its graph does not cover.
    """
    if requested == "torch":
        return "torch"
    needs = []
    if model_config is not None:
        if not fast_path_config_ok(model_config):
            needs.append(f"a BERT encoder (this is {getattr(model_config, 'model_type', None)!r})")
        elif getattr(model_config, "hidden_act", None) != "gelu":
            needs.append(f"exact GELU (this model has {model_config.hidden_act!r})")
    if batching != "padded":
        needs.append(f"batching 'padded' (not {batching!r})")
    if not needs:
        return "onnxruntime"
    if requested == "auto":
        return "torch"
    raise ValueError("int8 engine 'onnxruntime' needs " + ", ".join(needs)
                     + "; engine 'torch' (or 'auto') runs the rest")


@dataclass(frozen=True)
class PrecisionBackend:
    """One precision: the devices it runs on and how it prepares a model.

    Attributes
    ----------
    name : str
    devices : tuple of str
        Device kinds it runs on (``"cpu"``, ``"cuda"``).
    compute_dtype : str
        What the matmuls run in (``"float32"``, ``"int8"``, ``"float16"``, ``"bfloat16"``).
    autocast : str or None
        torch dtype name for ``torch.autocast``; None runs the model as prepared.
    quantize : bool
        Replace the Linear layers with dynamic int8 ones.
    """

    name: str
    devices: tuple[str, ...]
    compute_dtype: str
    autocast: str | None = None
    quantize: bool = False

    def prepare(self, model, fast: bool):
        """``(model to run, QKV projections or None)`` for a model already on its device.

        ``model`` is never modified: int8 works on a quantised copy, cached while ``model``
        lives (a benchmark or a build encodes several times with one loaded model)."""
        if self.quantize:
            from fastimg.embed import int8

            return int8.prepare(model, fast)
        return model, (fused_qkv(model) if fast else None)

    def context(self, device_type: str):
        """The context the forward runs in (autocast for fp16 / bf16)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type, dtype=getattr(torch, self.autocast))


BACKENDS = {
    "fp32": PrecisionBackend("fp32", ("cpu", "cuda"), "float32"),
    "int8": PrecisionBackend("int8", ("cpu",), "int8", quantize=True),
    "fp16": PrecisionBackend("fp16", ("cuda",), "float16", autocast="float16"),
    "bf16": PrecisionBackend("bf16", ("cuda",), "bfloat16", autocast="bfloat16"),
}

_HINT = {"cpu": "the CPU precisions are fp32 and int8",
         "cuda": "the CUDA precisions are fp32, fp16 and bf16"}


def check_device(precision: str, device: str) -> None:
    """Raise ValueError (one line) when ``precision`` does not run on ``device``."""
    if precision == "auto" or device == "auto":
        return
    backend = BACKENDS[precision]
    if device not in backend.devices:
        where = " and ".join(backend.devices)
        raise ValueError(f"precision {precision!r} runs on {where} only, not on {device} "
                         f"({_HINT[device]})")


def available(device: str) -> list[str]:
    """Precisions that run on ``device`` (the encode benchmark compares them all)."""
    return [name for name, backend in BACKENDS.items() if device in backend.devices]


def resolve(precision: str, device: str) -> PrecisionBackend:
    """The backend for ``precision`` on a resolved ``device``; ``"auto"`` picks :data:`AUTO`."""
    name = AUTO[device] if precision == "auto" else precision
    check_device(name, device)
    return BACKENDS[name]
