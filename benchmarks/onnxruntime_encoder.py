"""ONNX Runtime on the exported model, the other CPU encoder a user might pick, as a baseline
for the encode suite.

Two columns (:data:`VARIANTS`), on fastimg's batches:

- ``ort fp32``: the transformers model exported to ONNX (torch's TorchScript exporter, eager
  attention so ORT recognises it) with ORT's BERT fusions (``onnxruntime.transformers.optimizer``:
  embedding + LayerNorm, fused attention, bias + GELU, skip + LayerNorm). Every layer runs in
  full (fastimg's last layer computes the [CLS] row only).
- ``ort int8``: the same graph through ORT's dynamic quantisation of its MatMul and Attention
  ops (every Linear layer, as fastimg's int8 quantises; ORT's default would quantise the
  embedding tables too).

fastimg's own int8 runs on ONNX Runtime too (:mod:`fastimg.embed.ort_int8`), on a graph of its
own forward: the last layer for [CLS] only, the [CLS] row in fp32, which ORT's int8 of the
exported model rounds.

ORT's dynamic int8 is not torch's: int8 weights with one scale per output channel, 7-bit
(``reduce_range``, which ORT's documentation asks for on AVX2 / AVX-512 CPUs without VNNI, so
that their u8 x s8 pair sums cannot saturate), and uint8 activations with one scale per call at
the full 8 bits; torch keeps 8-bit weights and 7-bit activations (:mod:`fastimg.embed.int8`).

Batches are fastimg's (:mod:`fastimg.embed.tokenize` and :mod:`fastimg.embed.batching`: chunks,
length sorting, the CPU's token budget and padding guard), so the kernels and the graph are what
differ; one thing more: these columns tokenise in line, where fastimg tokenises on a second
thread beside the model, so their times include tokenisation.
"""
from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("benchmarks.encode")

#: Column names in the encode suite's precision table (see the module's docstring).
VARIANTS = ("ort fp32", "ort int8")


class PooledCLS(torch.nn.Module):
    """``(input_ids, attention_mask) -> [B, L*H]``: the [CLS] rows of ``layers``."""

    def __init__(self, model, layers):
        super().__init__()
        self.model, self.layers = model, tuple(layers)

    def forward(self, input_ids, attention_mask):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=torch.zeros_like(input_ids),
                            output_hidden_states=True).hidden_states
        return torch.cat([hidden[i][:, 0] for i in self.layers], dim=1)


def export(model, layers, folder) -> dict[str, Path]:
    """Export ``model`` (a transformers BERT) pooled at ``layers``, fuse and quantise it.

    Returns ``{variant: path of its .onnx file}`` for :data:`VARIANTS`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    from fastimg.embed.ort_int8 import _quiet_root_logger

    folder = Path(folder)
    eager = copy.deepcopy(model).eval()
    eager.config._attn_implementation = "eager"  # ORT's fusions match the eager graph, not SDPA
    ids = torch.ones(2, 16, dtype=torch.long)
    raw, fused, int8 = (folder / f"{name}.onnx" for name in ("raw", "fp32", "int8"))
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "pooled": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(PooledCLS(eager, layers), (ids, torch.ones_like(ids)), raw,
                          input_names=["input_ids", "attention_mask"], output_names=["pooled"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
        cfg = model.config
        opt = optimizer.optimize_model(str(raw), model_type="bert",
                                       num_heads=cfg.num_attention_heads,
                                       hidden_size=cfg.hidden_size, opt_level=1)
        logger.info("onnxruntime fusions: %s",
                    {k: v for k, v in opt.get_fused_operator_statistics().items() if v})
        opt.save_model_to_file(str(fused))
        # the fused ops (Attention, SkipLayerNormalization) are outside ONNX's shape inference.
        # The quantiser warns, through the root logger, to pre-process the graph first
        # (quant_pre_process: ORT's graph optimisations and shape inference): noise here, as
        # for fastimg's own int8 graph, whose quiet context this borrows. The graph is ORT's
        # optimiser's output already; on MiniLM, pre-processed or not, it is the same graph and
        # its int8 quantises the same ops (all 18 MatMuls and 6 Attentions)
        with _quiet_root_logger():
            quantize_dynamic(fused, int8, weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=True, op_types_to_quantize=["MatMul", "Attention"],
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return dict(zip(VARIANTS, (fused, int8)))


class OrtEncoder:
    """Encodes texts through one exported model, in fastimg's batches.

    Parameters
    ----------
    path : str or Path
        An .onnx file from :func:`export`.
    tokenizer : transformers tokenizer
    config : fastimg.embed.EncoderConfig
        Truncation, maximum length, chunk rows, batch size and sorting are taken from it.
    threads : int
        ORT's intra-op threads (torch's thread count, so both use the same cores).
    """

    def __init__(self, path, tokenizer, config, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.tokenizer, self.config = tokenizer, config

    def encode(self, texts, stats: dict | None = None) -> np.ndarray:
        """``[N, L*H]`` float16 (fastimg's output dtype); ``stats["tokens"]``: real tokens."""
        from fastimg.embed.batching import budget_batches, length_order, pad_batch
        from fastimg.embed.plan import DEFAULT_BUDGET
        from fastimg.embed.tokenize import PADDING_GUARD, tokenize_chunk

        config = self.config
        budget = max(config.token_budget or DEFAULT_BUDGET["cpu"], config.max_length)
        max_padding, min_tokens = PADDING_GUARD["cpu"]
        parts, n_tokens = [], 0
        for start in range(0, len(texts), config.chunk_rows):
            seqs = tokenize_chunk(self.tokenizer, texts[start:start + config.chunk_rows], config)
            lengths = np.array([len(s) for s in seqs], dtype=np.int64)
            order = length_order(lengths, sort=config.sort_by_length)
            out = None
            for a, b in budget_batches(lengths[order], budget, config.max_batch_size,
                                       max_padding=max_padding, min_tokens=min_tokens):
                rows = order[a:b]
                ids, mask = pad_batch([seqs[r] for r in rows], self.tokenizer.pad_token_id)
                pooled = self.session.run(None, {"input_ids": ids,
                                                 "attention_mask": mask.astype(np.int64)})[0]
                if out is None:
                    out = np.empty((len(seqs), pooled.shape[1]), dtype=np.float16)
                out[rows] = pooled
            parts.append(out)
            n_tokens += int(lengths.sum())
        if stats is not None:
            stats["tokens"] = n_tokens
        return np.concatenate(parts)
