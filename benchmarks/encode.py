"""Encoder: fastimg.embed against the author's loop (one review at a time, fp32, no sorting).

Both encode the same IMDB reviews with the same model in one process. On CPU the model is the
offline all-MiniLM-L6-v2; on CUDA a random-weight bert-base-sized BertModel (``BertConfig()``
defaults: 12 layers, hidden 768) with the MiniLM tokenizer (the same uncased WordPiece vocabulary
as bert-base-uncased), since bert-base weights may not be available offline. Also timed: plain
batching without length sorting, and a large fp32 (CPU) / fp16 (CUDA) matmul as the peak the
model's achieved FLOP rate is compared with.
"""
from __future__ import annotations

import csv
import gzip
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._harness import report

logger = logging.getLogger("benchmarks.encode")
ROOT = Path(__file__).resolve().parents[1]
LAST6 = 6


def imdb_path() -> Path:
    env = os.environ.get("FASTIMG_DATA")
    candidates = [Path(env) / "imdb/imdb.csv.gz", Path(env)] if env else []
    candidates.append(ROOT.parent / "shared/data/imdb/imdb.csv.gz")
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"IMDB reviews not found (looked at {[str(c) for c in candidates]}); "
                            f"set FASTIMG_DATA to the folder holding imdb/imdb.csv.gz")


def imdb_sample(n: int, seed: int = 0) -> list[str]:
    """``n`` reviews drawn at random (fixed seed) from the 50k IMDB reviews, in random order."""
    csv.field_size_limit(1 << 30)
    with gzip.open(imdb_path(), "rt", encoding="utf-8", newline="") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    pick = np.random.default_rng(seed).choice(len(texts), size=n, replace=False)
    return [texts[i] for i in pick]


def _sync(device):
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def matmul_gflops(device: str, dtype: str, size: int, repeats: int = 5) -> float:
    """Median GFLOP/s of a ``size``^3 matmul."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=getattr(torch, dtype))
    times = []
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return 2.0 * size ** 3 / statistics.median(times) / 1e9


def author_loop(texts, loaded, device, max_length):
    """The reference: one review at a time, fp32, padded to its own length, [CLS] of the last
    six hidden states, concatenated."""
    import torch

    model, tok = loaded.model, loaded.tokenizer
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tok(text, return_tensors="pt", truncation=True, max_length=max_length)
            enc = {k: v.to(device) for k, v in enc.items()}
            hidden = model(**enc, output_hidden_states=True).hidden_states
            rows.append(torch.cat([h[:, 0] for h in hidden[-LAST6:]], dim=1).cpu())
    return torch.cat(rows).numpy()


def _random_bert_base(tmp: str) -> str:
    """A random-weight bert-base-sized model with the MiniLM tokenizer, saved to ``tmp``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from fastimg.embed.models import resolve_model

    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(resolve_model("minilm").folder).save_pretrained(tmp)
    return tmp


def _timed(fn, device, repeats):
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run(quick: bool = False, json_path: str | None = None, device: str = "auto") -> dict:
    import torch

    from fastimg.embed import ENCODE_DEVICES, EncoderConfig, encode, load_model, model_flops
    from fastimg.embed.encoder import DEFAULT_BUDGET

    device = ENCODE_DEVICES.resolve(device)
    max_length = 256 if quick else 512
    n = 16 if quick else 512
    texts = imdb_sample(n)
    with tempfile.TemporaryDirectory() as tmp:
        if device == "cuda":
            model_name, model_desc = _random_bert_base(tmp), "random bert-base (BertConfig())"
        else:
            model_name, model_desc = "minilm", "all-MiniLM-L6-v2"
        loaded = load_model(model_name)
    loaded.model.to(device)
    cfg = loaded.model.config
    hidden, inter, n_layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    config = EncoderConfig(model=model_name, device=device, max_length=max_length)
    lengths = np.array([len(ids) for ids in loaded.tokenizer(
        texts, truncation=True, max_length=max_length)["input_ids"]])
    n_tokens = int(lengths.sum())
    repeats = 3 if device == "cuda" else 1

    # warm-up (allocator, kernels, thread pools) on a few reviews
    encode(texts[:8], config, model=loaded)
    author_loop(texts[:2], loaded, device, max_length)

    # the matmul peak is taken right before and after the encoder, under the same load
    peak_dtype = "float16" if device == "cuda" else "float32"
    peak_size = 8192 if device == "cuda" else 2048
    peak_before = matmul_gflops(device, peak_dtype, peak_size)
    stats: dict = {}
    fast_s, fast = _timed(lambda: encode(texts, config, model=loaded, stats=stats), device,
                          repeats)
    peak_after = matmul_gflops(device, peak_dtype, peak_size)
    unsorted_cfg = EncoderConfig(model=model_name, device=device, max_length=max_length,
                                 sort_by_length=False)
    unsorted_s, _ = _timed(lambda: encode(texts, unsorted_cfg, model=loaded), device, 1)
    base_s, base = _timed(lambda: author_loop(texts, loaded, device, max_length), device, 1)

    fast_flops = model_flops(lengths, n_layers, hidden, inter, first_token_last_layer=True)
    full_flops = model_flops(lengths, n_layers, hidden, inter)
    peak = (peak_before + peak_after) / 2
    peak_fp32 = peak if peak_dtype == "float32" else matmul_gflops(device, "float32", 8192)
    fast_gflops = fast_flops / fast_s / 1e9
    result = {
        "suite": "encode", "baseline": "author's loop: one review at a time, fp32, no sorting",
        "device": device, "model": model_desc, "n_docs": n, "max_length": max_length,
        "tokens": n_tokens, "mean_tokens": n_tokens / n, "layers": stats["layers"],
        "compute_dtype": stats["compute_dtype"], "output_dtype": "float16",
        "token_budget": config.token_budget or DEFAULT_BUDGET[device],
        "torch_threads": torch.get_num_threads(),
        "fastimg_s": fast_s, "baseline_s": base_s, "unsorted_batches_s": unsorted_s,
        "fastimg_docs_per_s": n / fast_s, "baseline_docs_per_s": n / base_s,
        "unsorted_docs_per_s": n / unsorted_s,
        "fastimg_tokens_per_s": n_tokens / fast_s, "baseline_tokens_per_s": n_tokens / base_s,
        "ratio_vs_unsorted": unsorted_s / fast_s,
        "padding_overhead": stats["padded_tokens"] / stats["tokens"] - 1.0,
        "max_abs_diff": float(np.abs(fast.astype(np.float32) - base).max()),
        "max_abs_value": float(np.abs(base).max()),
        "fastimg_gflops": fast_gflops,
        "fastimg_gflops_full_forward_equiv": full_flops / fast_s / 1e9,
        "baseline_gflops": full_flops / base_s / 1e9,
        "matmul_gflops": peak, "matmul_gflops_before": peak_before,
        "matmul_gflops_after": peak_after, "matmul_dtype": peak_dtype,
        "matmul_fp32_gflops": peak_fp32,
        "fraction_of_matmul_peak": fast_gflops / peak,
        "load_avg_1min": os.getloadavg()[0],
    }
    return report(result, json_path)
