"""int8 on the CPU: dynamic quantisation of the Linear layers, the [CLS] row kept in fp32.

Every ``nn.Linear`` runs torch's dynamic int8 kernel (fbgemm / oneDNN): int8 weights with one
scale per output channel, activations quantised per call with one scale for the whole input.
Two things keep the embeddings' meaning, both measured on IMDB with MiniLM
(``benchmarks/RESULTS.md``, "int8"):

- **The pooled [CLS] row is computed in fp32** (:class:`~fastimg.embed.forward.ExactFirstRow`).
  MiniLM's early-layer [CLS] vectors differ between texts by 0.001-0.02 where their values reach
  10, and int8 rounding of that row moved them 2-5x further than that spread; the row is one of
  a text's hundreds, so computing it in fp32 (over the keys and values of the int8 pass) costs
  almost nothing. The other rows only reach it through attention, which averages their rounding.
- **8-bit activations where the kernels take them** (:func:`full_range_activations`). torch's
  ``DynamicLinear`` always passes ``reduce_range=True`` (7-bit activations), because fbgemm's
  AVX2 kernels add pairs of u8 x s8 products in 16 bits and saturate on 8-bit inputs. Where a
  one-off check shows the kernels exact on 8-bit inputs (VNNI / AVX-512 machines), they get
  them: half the rounding error.

Per-channel weight scales are chosen on purpose: a row of a weight keeps its scale whether it
sits in the model's own query / key / value Linear or in the fast path's fused QKV projection,
so the fast path quantises exactly the weights the generic forward does.

Imported only when int8 is asked for (it imports torch at the top).
"""
from __future__ import annotations

import contextlib
import copy
import functools
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


def _packed_weight(weight, bias):
    """fbgemm / oneDNN packed int8 weights (per-channel symmetric scales) of a Linear."""
    with _quiet_quantization():
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        linear.qconfig = per_channel_dynamic_qconfig
        return DynamicLinear.from_float(linear)._packed_params._packed_params


class Int8Linear(torch.nn.Module):
    """A Linear layer on torch's dynamic int8 kernel, with the activation range chosen.

    Parameters
    ----------
    weight, bias : torch.Tensor
        The fp32 ``[out, in]`` weight and ``[out]`` bias.
    reduce_range : bool
        Quantise activations to 7 bits (what ``DynamicLinear`` always does) instead of 8.
    """

    def __init__(self, weight, bias, reduce_range: bool):
        super().__init__()
        self.in_features, self.out_features = int(weight.shape[1]), int(weight.shape[0])
        self._packed = _packed_weight(weight, bias)
        self.reduce_range = reduce_range

    def forward(self, x):
        return torch.ops.quantized.linear_dynamic(x, self._packed,
                                                  reduce_range=self.reduce_range).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"activation_bits={activation_bits(self.reduce_range)}")


def activation_bits(reduce_range: bool) -> int:
    return 7 if reduce_range else 8


@functools.lru_cache(maxsize=None)
def full_range_activations(engine: str | None = None) -> bool:
    """Whether this CPU's int8 kernels are exact on 8-bit activations.

    The check is one product that saturates a 16-bit sum of two u8 x s8 products (fbgemm's
    AVX2 kernels): inputs of 255 against weights of 127 over 384 inputs. Where it comes out
    right (VNNI and AVX-512 kernels accumulate in 32 bits), 8-bit activations are safe.
    """
    del engine  # the cache key: the kernels are the quantised engine's
    in_features = 384
    with torch.no_grad():
        weight = torch.ones(8, in_features)
        x = torch.ones(4, in_features)
        x[:, 0] = 0.0  # the input's minimum is 0, so 1.0 quantises to 255
        got = Int8Linear(weight, torch.zeros(8), reduce_range=False)(x)
    want = float(in_features - 1)
    exact = bool(torch.allclose(got, torch.full_like(got, want), rtol=0.01))
    logger.info("int8 kernels on 8-bit activations: %s (%.1f for %.1f); activations get %d bits",
                "exact" if exact else "saturated", float(got[0, 0]), want, 8 if exact else 7)
    return exact


def reduce_range() -> bool:
    """Whether activations must be quantised to 7 bits on this machine."""
    return not full_range_activations(torch.backends.quantized.engine)


def scheme() -> dict:
    """What int8 computes on this machine, for the run settings (a resume must match it)."""
    return {"activation_bits": activation_bits(reduce_range()), "pooled_cls_row": "fp32"}


class QuantizedQKV:
    """:class:`~fastimg.embed.forward.FusedQKV` in int8: the fused ``[3H, H]`` projection and
    its query and key/value rows (packed int8 weights cannot be sliced), with the layer's fp32
    twin for the [CLS] row (``exact``)."""

    def __init__(self, weight, bias, exact: ExactFirstRow, reduce_range: bool):
        width = weight.shape[0] // 3
        self.qkv = Int8Linear(weight, bias, reduce_range)
        self.q = Int8Linear(weight[:width], bias[:width], reduce_range)
        self.kv = Int8Linear(weight[width:], bias[width:], reduce_range)
        self.exact = exact


def quantize_linears(model, reduce_range: bool):
    """A copy of ``model`` with every ``nn.Linear`` an :class:`Int8Linear`."""
    quantized = copy.deepcopy(model)
    for name, module in list(quantized.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:
                bias = child.bias if child.bias is not None else torch.zeros(child.out_features)
                setattr(module, child_name, Int8Linear(child.weight.detach(), bias.detach(),
                                                       reduce_range))
    return quantized.eval()


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def prepare(model, fast: bool):
    """``(int8 model, QuantizedQKV per layer or None)`` for an fp32 model on the CPU.

    ``model`` is left as it is; the quantised copy is cached while ``model`` lives (a benchmark
    or a build encodes several times with one loaded model)."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("precision 'int8' runs on the CPU only; the model is on "
                         f"{next(model.parameters()).device}")
    narrow = reduce_range()
    cached = _CACHE.get(model)
    if cached is None or cached["reduce_range"] != narrow:
        cached = {"model": quantize_linears(model, narrow), "reduce_range": narrow}
        _CACHE[model] = cached
        logger.info("quantised the Linear layers of %s to int8 (dynamic, per channel, %d-bit "
                    "activations)", type(model).__name__, activation_bits(narrow))
    if fast and "projections" not in cached:
        # from the fp32 weights of the original model: the quantised copy has only packed ones
        projections = []
        for layer in model.encoder.layer:
            weight, bias = qkv_weights(layer)
            exact = ExactFirstRow(layer, FusedQKV(weight, bias))
            projections.append(QuantizedQKV(weight, bias, exact, narrow))
        cached["projections"] = projections
    return cached["model"], (cached["projections"] if fast else None)
