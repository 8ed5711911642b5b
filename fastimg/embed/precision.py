"""Precision backends of the encoder: each prepares a model and a compute context.

=========  ==========  =====================================================================
name       devices     what runs
=========  ==========  =====================================================================
``fp32``   cpu, cuda   the fp32 weights as loaded
``int8``   cpu         dynamic int8 quantisation of every ``nn.Linear`` (torch's own, fbgemm /
                       oneDNN kernels): int8 weights with one scale per output channel,
                       activations quantised per batch; embeddings, LayerNorm, softmax in fp32
``fp16``   cuda        fp32 weights under ``torch.autocast(float16)``
``bf16``   cuda        fp32 weights under ``torch.autocast(bfloat16)``
=========  ==========  =====================================================================

``"auto"`` is :data:`AUTO` for the device: fp16 on CUDA; on the CPU the precision that met the
bar on the measured IMDB slice (see :data:`AUTO` and ``benchmarks/RESULTS.md``).

Per-channel weight scales are chosen on purpose: a row of a weight keeps its scale whether it
sits in the model's own query / key / value Linear or in the fast path's fused QKV projection,
so the fast path quantises exactly the weights the generic forward does.

int8 uses torch's own dynamic quantisation, not ONNX Runtime: ORT's dynamic int8 would quantise
the activations the same way, and that is what costs the probe accuracy (``benchmarks/
RESULTS.md``), so it was not worth an extra dependency; it was not measured.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
import weakref
from dataclasses import dataclass

from fastimg.embed.forward import fused_qkv, qkv_weights

logger = logging.getLogger("fastimg.embed")

PRECISIONS = ("auto", "fp32", "int8", "fp16", "bf16")

#: What ``precision="auto"`` resolves to per device. CPU: fp32, because int8 missed both parts
#: of the bar set in issue 13 (>= 1.6x fp32 docs/s with linear-probe accuracy within 0.005) on
#: the measured IMDB slice (MiniLM, 512 tokens, 2-core Xeon VM): 1.31-1.52x, and probe accuracy
#: 0.746 against 0.812. The [CLS] vectors of MiniLM's early layers vary between texts by less
#: than the int8 error, so the standardised probe loses them. Figures: ``benchmarks/RESULTS.md``
#: (encode, precision).
AUTO = {"cuda": "fp16", "cpu": "fp32"}


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
            return _int8_model(model, fast)
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


# ---------------------------------------------------------------------------------------------
# int8: torch dynamic quantisation


@contextlib.contextmanager
def _quiet_quantization():
    # torch 2.14 still ships eager dynamic quantisation (fbgemm / oneDNN int8 kernels) but warns
    # on import of torch.ao.quantization (moving to torchao, not installed here) and on creating
    # qint8 tensors. Only these two messages are silenced; pytest runs with warnings as errors.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, "
                                r"torch\.quantize_per_channel", category=UserWarning)
        yield


class QuantizedQKV:
    """:class:`~fastimg.embed.forward.FusedQKV` as dynamic int8 Linear modules: the fused
    ``[3H, H]`` projection, and its query and key/value rows for the [CLS]-only last layer
    (packed int8 weights cannot be sliced)."""

    def __init__(self, weight, bias):
        width = weight.shape[0] // 3
        self.qkv = _int8_linear(weight, bias)
        self.q = _int8_linear(weight[:width], bias[:width])
        self.kv = _int8_linear(weight[width:], bias[width:])


def _int8_linear(weight, bias):
    import torch

    with _quiet_quantization():
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        linear.qconfig = per_channel_dynamic_qconfig
        return DynamicLinear.from_float(linear)


_INT8_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _int8_model(model, fast: bool):
    cached = _INT8_CACHE.get(model)
    if cached is None:
        import torch

        if next(model.parameters()).device.type != "cpu":
            raise ValueError("precision 'int8' runs on the CPU only; the model is on "
                             f"{next(model.parameters()).device}")
        with _quiet_quantization():
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            quantized = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                         dtype=torch.qint8, inplace=False)
        quantized.eval()
        cached = {"model": quantized}
        _INT8_CACHE[model] = cached
        logger.info("quantised the Linear layers of %s to int8 (dynamic, per channel)",
                    type(model).__name__)
    if fast and "projections" not in cached:
        # from the fp32 weights of the original model: the quantised copy has only packed ones
        cached["projections"] = [QuantizedQKV(*qkv_weights(layer))
                                 for layer in model.encoder.layer]
    return cached["model"], (cached["projections"] if fast else None)
