"""int8 on the CPU through torch's kernels: dynamic quantisation of the Linear layers, the [CLS]
row kept in fp32.

The engine for what ONNX Runtime's graph (:mod:`fastimg.embed.ort_int8`) does not cover: other
models, packed batches (:func:`fastimg.embed.precision.int8_engine`), or when
asked for. Every ``nn.Linear`` runs torch's dynamic int8 kernel (fbgemm / oneDNN): int8 weights
with one scale per output channel, activations quantised per call with one scale for the whole
input.
Two things keep the embeddings' meaning, both measured on IMDB with MiniLM
(``benchmarks/RESULTS.md``, "int8"):

- **The pooled [CLS] row is computed in fp32** (:class:`~fastimg.embed.forward.ExactFirstRow`).
  MiniLM's early-layer [CLS] vectors differ between texts by 0.001-0.02 where their values reach
  10, and int8 rounding of that row moved them 2-5x further than that spread; the row is one of
  a text's hundreds, so computing it in fp32 (over the keys and values of the int8 pass) costs
  almost nothing. The other rows only reach it through attention, which averages their rounding.
- **Activations keep torch's 7-bit range** (``DynamicLinear`` passes ``reduce_range=True``):
  fbgemm's AVX2 kernels add pairs of u8 x s8 products in 16 bits and saturate on 8-bit inputs
  (on machine A a sum of 383 came out as 193), while VNNI kernels would not. One range on every
  CPU keeps the embeddings the same wherever a build or its cluster workers run.

A text's int8 numbers depend on its batch: a Linear's activations are quantised with one scale
for the whole batch, set by its largest value. The same 64 IMDB reviews encoded with a token
budget of 8,192 and of 2,048 differed by up to 0.18 (mean 0.006), as far as int8 is from fp32
(fp32: 5e-4, mean 1e-8, float16 rounding). Builds stay byte-reproducible, since the corpus and
the settings fix the batches; what cuts them (token budget, batch size, length sorting) is in
int8's run settings, so a resume or a reused stage never mixes two batchings (chunk boundaries
need no entry: a resume keeps the stored chunk size).

Per-channel weight scales are chosen on purpose: a row of a weight keeps its scale whether it
sits in the model's own query / key / value Linear or in the fast path's fused QKV projection,
so the fast path quantises exactly the weights the generic forward does.

Imported only when int8 is asked for (it imports torch at the top).
"""
from __future__ import annotations

import contextlib
import logging
import warnings
import weakref

import torch

from fastimg.embed.forward import ExactFirstRow, FusedQKV, qkv_weights

logger = logging.getLogger("fastimg.embed")


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


def int8_linear(weight, bias):
    """A dynamic int8 Linear (torch's ``DynamicLinear``, per-channel symmetric weights) of an
    fp32 ``[out, in]`` weight and ``[out]`` bias."""
    with _quiet_quantization():
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        linear.qconfig = per_channel_dynamic_qconfig
        return DynamicLinear.from_float(linear)


class QuantizedQKV:
    """:class:`~fastimg.embed.forward.FusedQKV` in int8: the fused ``[3H, H]`` projection and
    its query and key/value rows (packed int8 weights cannot be sliced), with the layer's fp32
    twin for the [CLS] row (``exact``)."""

    def __init__(self, weight, bias, exact: ExactFirstRow):
        width = weight.shape[0] // 3
        self.qkv = int8_linear(weight, bias)
        self.q = int8_linear(weight[:width], bias[:width])
        self.kv = int8_linear(weight[width:], bias[width:])
        self.exact = exact


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def prepare(model, fast: bool):
    """``(int8 model, QuantizedQKV per layer or None)`` for an fp32 model on the CPU.

    ``model`` is left as it is; the quantised copy is cached while ``model`` lives (a benchmark
    or a build encodes several times with one loaded model)."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("precision 'int8' runs on the CPU only; the model is on "
                         f"{next(model.parameters()).device}")
    cached = _CACHE.get(model)
    if cached is None:
        with _quiet_quantization():
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            quantized = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                         dtype=torch.qint8, inplace=False)
        cached = {"model": quantized.eval()}
        _CACHE[model] = cached
        logger.info("quantised the Linear layers of %s to int8 (dynamic, per channel)",
                    type(model).__name__)
    if fast and "projections" not in cached:
        # from the fp32 weights of the original model: the quantised copy has only packed ones
        projections = []
        for layer in model.encoder.layer:
            weight, bias = qkv_weights(layer)
            exact = ExactFirstRow(layer, FusedQKV(weight, bias))
            projections.append(QuantizedQKV(weight, bias, exact))
        cached["projections"] = projections
    return cached["model"], (cached["projections"] if fast else None)
