"""Precision backends of the encoder: each prepares a model and a compute context.

=========  ==========  =====================================================================
name       devices     what runs
=========  ==========  =====================================================================
``fp32``   cpu, cuda   the fp32 weights as loaded
``int8``   cpu         dynamic int8 quantisation of every ``nn.Linear`` (torch's own, fbgemm /
                       oneDNN kernels): int8 weights with one scale per output channel,
                       activations quantised per batch (so a text's numbers depend on the
                       batch it is in); embeddings, LayerNorm, softmax in fp32, and with
                       [CLS] pooling of a BERT encoder the pooled row too
                       (:mod:`fastimg.embed.int8`)
``fp16``   cuda        fp32 weights under ``torch.autocast(float16)``
``bf16``   cuda        fp32 weights under ``torch.autocast(bfloat16)``
=========  ==========  =====================================================================

``"auto"`` is :data:`AUTO` for the device: fp16 on CUDA; on the CPU the precision that met the
bar on the measured IMDB slice (see :data:`AUTO` and ``benchmarks/RESULTS.md``).

int8 uses torch's own dynamic quantisation kernels. ONNX Runtime's were measured beside them
(the encode benchmark's ``ort`` columns; ``benchmarks/RESULTS.md``, "int8: torch's kernels or
ONNX Runtime's"): ORT's int8 of the exported model runs faster (1.52x fp32 against 1.37x) but
rounds the pooled [CLS] row and loses 0.045 probe accuracy; fastimg's own forward written as an
ORT graph, the [CLS] row in fp32 (``benchmarks/onnx_graph.py``), reached 1.58-1.70x fp32 with
the probe 0.0025 below fp32's, at the bar set for ``auto``. It is not an encoder backend yet.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from fastimg.embed.forward import fused_qkv

PRECISIONS = ("auto", "fp32", "int8", "fp16", "bf16")

#: What ``precision="auto"`` resolves to per device. CPU: fp32, because int8 misses the speed
#: half of the bar set in issue 13 (>= 1.6x fp32 docs/s with linear-probe accuracy within
#: 0.005): 1.28-1.50x on machine A (MiniLM, 512 tokens, 2-core AMD EPYC, AVX2), where attention
#: and GELU stay fp32 and take about a third of int8's time. Its probe accuracy, which the [CLS]
#: row in fp32 brought back from 0.057 below fp32, is 0.002-0.006 below on 20 paired resplits
#: (standard error 0.001). ONNX Runtime's fused kernels on the same graph reach the bar but are
#: not an encoder backend yet (see the docstring above). Figures: ``benchmarks/RESULTS.md``
#: (encode, int8).
AUTO = {"cuda": "fp16", "cpu": "fp32"}


#: Recorded in the run settings of int8 encodings. Version 2 computes the pooled [CLS] row in
#: fp32 (BERT encoders with [CLS] pooling); stores encoded by version 1 hold other numbers, so
#: their resume and reuse are refused.
INT8_SCHEME = {"version": 2}


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
