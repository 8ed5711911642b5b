"""Encoder: fastimg.embed against the author's loop (one review at a time, fp32, no sorting).

Both encode the same IMDB reviews with the same model in one process. Every precision the
device runs (CPU: fp32, int8 on ONNX Runtime, its default engine here, and int8 on torch's
kernels; CUDA: fp32, fp16, bf16) encodes the same reviews too, side by side: docs/s, tokens/s,
the ratio to fp32, the max / mean absolute difference of the embeddings and the achieved model
FLOP rate as a fraction of the matmul rate; so do packed batches (``batching="packed"``, every
precision that runs them), with their ratio to padded, and on the CPU the transformers model
exported to ONNX Runtime in the same batches (:mod:`benchmarks.onnxruntime_encoder`): fp32 and
dynamic int8, the other int8 a user might pick. With ``pooling="mean"`` the precision columns
pool the mean of each text's tokens (the exported columns pool [CLS] and are left out; the
comparison with the author's loop pools [CLS], as the loop does).
With ``probe=N`` each precision also encodes an N-review IMDB slice (``CorpusConfig(dataset=
"imdb", limit=N, seed=0)``: train / validation / test stratified by label) and a linear probe
(StandardScaler + LogisticRegression, C chosen on the fp32 validation rows and used for every
precision) is scored on its test rows, and on 20 stratified 50/50 resplits of the slice's train
and test rows (paired: the mean difference from fp32 and its standard error, since one test
split moves by more than the differences asked about): what lower precision costs in meaning.
The precisions are timed block by block, alternating which goes first, so load drift on a
shared machine does not bias their ratio. On CUDA the model has random weights, so there the
probe measures nothing about meaning; run it on the CPU (MiniLM) or point the suite at real
weights. On the CPU the model is the offline all-MiniLM-L6-v2; on CUDA a random-weight
bert-base-sized BertModel (``BertConfig()`` defaults: 12 layers, hidden 768) with the MiniLM
tokenizer (the same uncased WordPiece vocabulary as bert-base-uncased), since bert-base weights
may not be available offline. Also timed: plain batching without length sorting, and a large
fp32 (CPU) / fp16 (CUDA) matmul as the peak the model's achieved FLOP rate is compared with.
"""
from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._harness import BenchmarkError, MissingData, report, step

logger = logging.getLogger("benchmarks.encode")
ROOT = Path(__file__).resolve().parents[1]
LAST6 = 6


def imdb_path() -> Path:
    """The IMDB reviews, ``imdb/imdb.csv.gz`` in ``$FASTIMG_DATA`` when it is set, else in
    ``../shared/data`` beside the checkout.

    Raises
    ------
    MissingData
        The file is not there (a FileNotFoundError too).
    """
    env = os.environ.get("FASTIMG_DATA")
    # only $FASTIMG_DATA when it is set: fastimg's own loader reads no other folder
    root = Path(env) if env else ROOT.parent / "shared/data"
    path = root / "imdb/imdb.csv.gz"
    if not path.is_file():
        where = "$FASTIMG_DATA" if env else "beside the checkout; $FASTIMG_DATA is not set"
        raise MissingData(f"IMDB reviews not found: no {path} ({where}); set FASTIMG_DATA "
                          f"to the folder holding imdb/imdb.csv.gz")
    return path


def use_imdb() -> Path:
    """:func:`imdb_path`, with ``$FASTIMG_DATA`` set to its folder when unset, so that fastimg's
    loader (``CorpusConfig(dataset="imdb")``) reads the same file instead of looking in its
    cache and downloading the reviews."""
    path = imdb_path()
    os.environ.setdefault("FASTIMG_DATA", str(path.parents[1]))
    return path


def imdb_sample(n: int, seed: int = 0) -> list[str]:
    """``n`` reviews drawn at random (fixed seed) from the 50k IMDB reviews, in random order."""
    csv.field_size_limit(1 << 30)
    with gzip.open(imdb_path(), "rt", encoding="utf-8", newline="") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    if n > len(texts):
        raise BenchmarkError(f"{n} reviews asked for; {imdb_path()} holds {len(texts)}")
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


def random_model(out: str, tokenizer: str | None = None, config: str | None = None,
                 seed: int = 0) -> str:
    """A random-weight BERT saved to ``out``: bert-base's shape (``BertConfig()``), or that of
    the ``config.json`` in folder ``config``, with the tokenizer in folder ``tokenizer`` (default
    MiniLM's: the same uncased WordPiece vocabulary as bert-base-uncased).

    Speed does not depend on the weights' values, so such a model times an encoder exactly where
    the real weights are not at hand (a GPU machine without the hub).
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from fastimg.embed.models import resolve_model

    torch.manual_seed(seed)
    BertModel(BertConfig.from_pretrained(config) if config else BertConfig()).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer or resolve_model("minilm").folder).save_pretrained(out)
    return out


def _timed(fn, device, repeats):
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


PROBE_CS = (0.01, 0.1, 1.0)


def probe_slice(n: int, seed: int = 0):
    """The IMDB probe slice: a seeded sample of ``n`` reviews, stratified by split and label."""
    from fastimg.corpus import CorpusConfig, load_corpus

    use_imdb()
    corpus = load_corpus(CorpusConfig(dataset="imdb", limit=n, seed=seed))
    return corpus.texts, np.asarray(corpus.labels), np.asarray(corpus.split)


def _probe_fit(x, y, split, c):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train = split == "train"
    scaler = StandardScaler().fit(x[train])
    clf = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x[train]), y[train])
    return {part: float(clf.score(scaler.transform(x[split == part]), y[split == part]))
            for part in ("val", "test") if (split == part).any()}


PROBE_RESPLITS = 20


def _resplit_accuracy(x, y, c, splits) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scores = []
    for train, test in splits:
        scaler = StandardScaler().fit(x[train])
        clf = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x[train]), y[train])
        scores.append(clf.score(scaler.transform(x[test]), y[test]))
    return np.asarray(scores)


def probe_accuracy(embeddings: dict, y, split, resplits: int = PROBE_RESPLITS) -> dict:
    """Linear-probe accuracy per precision; C is picked on the fp32 validation rows.

    One test split moves with tiny perturbations (a lower precision flips a few percent of its
    predictions either way), so each precision is also scored on ``resplits`` stratified 50/50
    resplits of the train and test rows (not the validation rows, which chose C), the same ones
    for every precision, with that C: the mean paired difference from fp32 and its standard
    error."""
    from sklearn.model_selection import StratifiedShuffleSplit

    ref = embeddings["fp32"].astype(np.float32)
    by_c = {c: _probe_fit(ref, y, split, c) for c in PROBE_CS}
    best_c = max(PROBE_CS, key=lambda c: (by_c[c].get("val", 0.0), -c))
    out = {"C": best_c, "C_val_accuracy": {str(c): by_c[c].get("val") for c in PROBE_CS},
           "resplits": resplits}
    # the validation rows chose C: they stay out of the resplits
    rows = np.flatnonzero(split != "val")
    splits = [(rows[a], rows[b]) for a, b in StratifiedShuffleSplit(
        n_splits=resplits, test_size=0.5, random_state=0).split(rows, y[rows])] if resplits else []
    ref_resplit = _resplit_accuracy(ref, y, best_c, splits) if splits else None
    for name, x in embeddings.items():
        x = x.astype(np.float32)
        scores = by_c[best_c] if name == "fp32" else _probe_fit(x, y, split, best_c)
        out[name] = {"val_accuracy": scores.get("val"), "test_accuracy": scores["test"]}
        if splits:
            diff = _resplit_accuracy(x, y, best_c, splits) - ref_resplit
            out[name].update(resplit_accuracy=float(ref_resplit.mean() + diff.mean()),
                             resplit_minus_fp32=float(diff.mean()),
                             resplit_minus_fp32_se=float(diff.std(ddof=1) / np.sqrt(len(diff))))
    return out


def _diff(x, ref, against: str = "fp32") -> dict:
    d = np.abs(x.astype(np.float32) - ref.astype(np.float32))
    return {f"max_abs_diff_vs_{against}": float(d.max()),
            f"mean_abs_diff_vs_{against}": float(d.mean())}


def _interleaved(texts, encoders, device, blocks: int):
    """Encode ``texts`` with every encoder (``{name: fn(texts, stats) -> embeddings}``), block
    by block, alternating which goes first (ABBA): on a shared machine the load drifts, and this
    spreads the drift evenly over the encoders instead of charging it to whichever ran last.

    Returns ``{name: (seconds, tokens, embeddings)}``."""
    names = list(encoders)
    edges = np.linspace(0, len(texts), min(blocks, len(texts)) + 1).astype(int)
    secs = dict.fromkeys(names, 0.0)
    tokens = dict.fromkeys(names, 0)
    parts: dict = {name: [] for name in names}
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        for name in (names if i % 2 == 0 else names[::-1]):
            stats: dict = {}
            t, x = _timed(lambda: encoders[name](texts[a:b], stats), device, 1)
            secs[name] += t
            tokens[name] += stats["tokens"]
            parts[name].append(x)
    return {name: (secs[name], tokens[name], np.concatenate(parts[name])) for name in names}


def _fastimg_encoders(configs, loaded) -> dict:
    from fastimg.embed import encode

    return {name: (lambda texts, stats, c=config: encode(texts, c, model=loaded, stats=stats))
            for name, config in configs.items()}


def _onnxruntime_encoders(loaded, config, folder) -> dict:
    """The ONNX Runtime columns (:data:`benchmarks.onnxruntime_encoder.VARIANTS`) in
    ``config``'s batches."""
    import torch

    from benchmarks import onnxruntime_encoder as ort_encoder
    from fastimg.embed.config import resolve_layers

    cfg = loaded.model.config
    layers = resolve_layers(config.layers, cfg.num_hidden_layers)
    paths = ort_encoder.export(loaded.model, layers, folder)
    return {name: ort_encoder.OrtEncoder(path, loaded.tokenizer, config,
                                         torch.get_num_threads()).encode
            for name, path in paths.items()}


def variants(device: str) -> dict:
    """``{name: EncoderConfig overrides}`` timed side by side: every precision of ``device`` in
    padded batches (int8 on each engine: ``"int8"`` is the default, ONNX Runtime for MiniLM,
    ``"int8 torch"`` torch's kernels), then in packed batches (``"<padded name> packed"``; int8's
    on torch, the engine that runs them)."""
    from fastimg.embed.precision import available

    padded = {name: {"precision": name} for name in available(device)}
    if "int8" in padded:
        padded["int8 torch"] = {"precision": "int8", "int8_engine": "torch"}
    out = dict(padded)
    for name, overrides in padded.items():
        if name != "int8":  # ONNX Runtime runs padded batches only
            out[f"{name} packed"] = {**overrides, "batching": "packed"}
    return out


def precision_section(texts, loaded, model_name, device, max_length, probe: int = 0,
                      blocks: int = 4, flops: float | None = None,
                      matmul_gflops: float | None = None, pooling: str = "cls") -> dict:
    """Every precision of ``device``, padded and packed (:func:`variants`), pooling as
    ``pooling`` says, on the same texts (and the probe slice, padded only), in one process; on
    the CPU with [CLS] pooling also ONNX Runtime's columns
    (:mod:`benchmarks.onnxruntime_encoder`), in the same batches. With
    ``flops`` (the model FLOPs of ``texts``) and ``matmul_gflops``, each fastimg variant's
    achieved GFLOP/s and its fraction of that matmul rate."""
    from fastimg.embed import EncoderConfig

    # read before the timed part: a corpus that cannot be found fails now, not after it
    probe_data = probe_slice(probe) if probe else None
    configs = {name: EncoderConfig(model=model_name, device=device, max_length=max_length,
                                   pooling=pooling, **kw) for name, kw in variants(device).items()}
    encoders = _fastimg_encoders(configs, loaded)
    with tempfile.TemporaryDirectory() as tmp:
        # the transformers model exported to ONNX Runtime: what a user might run instead
        others = (_onnxruntime_encoders(loaded, configs["fp32"], tmp)
                  if device == "cpu" and pooling == "cls" else {})
        encoders.update(others)
        for encoder in encoders.values():  # warm-up: kernels, thread pools, int8's quantisation
            encoder(texts[:8], {})
    step(f"{len(encoders)} precisions and engines, {blocks} blocks of {len(texts)} reviews")
    names = list(configs)
    section: dict = {"precisions": names, "pooling": pooling, "onnxruntime": list(others),
                     "n_docs": len(texts), "blocks": blocks,
                     "load_avg_1min_before": os.getloadavg()[0]}
    timed = _interleaved(texts, encoders, device, blocks)
    ref = timed["fp32"][2]
    for name, (secs, n_tokens, x) in timed.items():
        section[name] = {"s": secs, "docs_per_s": len(texts) / secs,
                         "tokens_per_s": n_tokens / secs,
                         "speedup_vs_fp32": timed["fp32"][0] / secs, **_diff(x, ref)}
        if name in configs and configs[name].batching == "packed":
            padded_s, _, padded_x = timed[name.removesuffix(" packed")]
            section[name].update(speedup_vs_padded=padded_s / secs,
                                 **_diff(x, padded_x, against="padded"))
        if flops and name in configs:  # fastimg's variants (ORT's exported graph does more)
            gflops = section[name]["gflops"] = flops / secs / 1e9
            if matmul_gflops:
                section[name]["fraction_of_matmul"] = gflops / matmul_gflops
    section["max_abs_value"] = float(np.abs(ref.astype(np.float32)).max())
    if probe_data is not None:
        padded = [n for n, c in configs.items() if c.batching == "padded"]
        p_texts, y, split = probe_data
        step(f"the probe slice, {len(p_texts)} reviews, then the linear probes")
        timed = _interleaved(p_texts, {n: encoders[n] for n in padded + list(others)}, device,
                             2 * blocks)
        ref = timed["fp32"][2]
        for name, (secs, n_tokens, x) in timed.items():
            section[name].update(
                probe_s=secs, probe_docs_per_s=len(p_texts) / secs,
                probe_tokens_per_s=n_tokens / secs,
                probe_speedup_vs_fp32=timed["fp32"][0] / secs,
                **{f"probe_{k}": v for k, v in _diff(x, ref).items()})
        acc = probe_accuracy({name: v[2] for name, v in timed.items()}, y, split)
        section["probe"] = {"n_docs": len(p_texts), "precisions": padded,
                            "onnxruntime": list(others),
                            "rows": {part: int((split == part).sum())
                                     for part in ("train", "val", "test")}, **acc}
        for name in timed:
            section[name]["probe_accuracy_minus_fp32"] = (
                acc[name]["test_accuracy"] - acc["fp32"]["test_accuracy"])
            section[name]["probe_resplit_minus_fp32"] = acc[name]["resplit_minus_fp32"]
            section[name]["probe_resplit_minus_fp32_se"] = acc[name]["resplit_minus_fp32_se"]
    section["load_avg_1min_after"] = os.getloadavg()[0]
    return section


def run(quick: bool = False, json_path: str | None = None, device: str = "auto",
        docs: int | None = None, probe: int | None = None, tokenizer: str | None = None,
        pooling: str = "cls") -> dict:
    """Run the suite; ``docs`` overrides the number of reviews (512, quick 16), ``probe`` the
    size of the probe slice (0 = no probe; quick 40), ``tokenizer`` the folder of the CUDA
    model's tokenizer (default MiniLM's, see :func:`random_model`) and ``pooling`` that of the
    precision columns (the comparison with the author's loop pools [CLS], as the loop does)."""
    import torch

    from fastimg.embed import ENCODE_DEVICES, EncoderConfig, encode, load_model, model_flops
    from fastimg.embed.plan import DEFAULT_BUDGET

    device = ENCODE_DEVICES.resolve(device)
    max_length = 256 if quick else 512
    n = docs or (16 if quick else 512)
    probe = (40 if quick else 0) if probe is None else probe
    texts = imdb_sample(n)
    with tempfile.TemporaryDirectory() as tmp:
        if device == "cuda":
            model_name = random_model(tmp, tokenizer)
            model_desc = "random bert-base (BertConfig())"
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

    step(f"{model_desc} on {device}: warm-up, then fastimg on {n} reviews")
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
    fast_flops = model_flops(lengths, n_layers, hidden, inter, first_token_last_layer=True)
    section_flops = fast_flops if pooling == "cls" else model_flops(lengths, n_layers, hidden,
                                                                     inter)
    precisions = precision_section(texts, loaded, model_name, device, max_length, probe,
                                   flops=section_flops, pooling=pooling,
                                   matmul_gflops=(peak_before + peak_after) / 2)
    print_precisions(precisions)  # now: the baseline runs below are long at full size
    if json_path:  # replaced by the full result at the end
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump({"suite": "encode", "partial": True, "precision_section": precisions}, fh,
                      indent=2)
    step(f"unsorted batches, then the author's loop on {n} reviews")
    unsorted_cfg = EncoderConfig(model=model_name, device=device, max_length=max_length,
                                 sort_by_length=False)
    unsorted_s, _ = _timed(lambda: encode(texts, unsorted_cfg, model=loaded), device, 1)
    base_s, base = _timed(lambda: author_loop(texts, loaded, device, max_length), device, 1)

    full_flops = model_flops(lengths, n_layers, hidden, inter)
    peak = (peak_before + peak_after) / 2
    peak_fp32 = peak if peak_dtype == "float32" else matmul_gflops(device, "float32", 8192)
    fast_gflops = fast_flops / fast_s / 1e9
    result = {
        "suite": "encode", "baseline": "author's loop: one review at a time, fp32, no sorting",
        "device": device, "model": model_desc, "n_docs": n, "max_length": max_length,
        "tokens": n_tokens, "mean_tokens": n_tokens / n, "layers": stats["layers"],
        "precision": stats["precision"], "compute_dtype": stats["compute_dtype"],
        "output_dtype": "float16",
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
    # report() prints flat keys; the nested precision section is printed as a table below and
    # written with the rest
    result = report(result, None)
    result["precision_section"] = precisions
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return result


def print_precisions(section: dict) -> None:
    """The precisions side by side (the benchmark's CLI output)."""
    names = section["precisions"] + section["onnxruntime"]
    rows = [("docs/s", "docs_per_s", "{:.2f}"), ("tokens/s", "tokens_per_s", "{:,.0f}"),
            ("x fp32", "speedup_vs_fp32", "{:.2f}"),
            ("max |diff|", "max_abs_diff_vs_fp32", "{:.4g}"),
            ("mean |diff|", "mean_abs_diff_vs_fp32", "{:.4g}")]
    if "gflops" in section[names[0]]:
        rows += [("model GFLOP/s", "gflops", "{:,.0f}"),
                 ("x matmul rate", "fraction_of_matmul", "{:.0%}")]
    rows += [("x padded", "speedup_vs_padded", "{:.2f}"),
             ("max |diff| padded", "max_abs_diff_vs_padded", "{:.4g}")]
    if "probe" in section:
        rows += [("probe docs/s", "probe_docs_per_s", "{:.2f}"),
                 ("probe x fp32", "probe_speedup_vs_fp32", "{:.2f}"),
                 ("probe mean |diff|", "probe_mean_abs_diff_vs_fp32", "{:.4g}"),
                 ("probe acc - fp32", "probe_accuracy_minus_fp32", "{:+.4f}"),
                 ("resplits - fp32", "probe_resplit_minus_fp32", "{:+.4f}"),
                 ("  (standard error)", "probe_resplit_minus_fp32_se", "{:.4f}")]
    width = max(12, *(len(n) + 2 for n in names))

    def line(label, cells):
        print(f"{label:<18}" + "".join(f"{c:>{width}}" for c in cells))

    print(f"-- precisions on the same {section['n_docs']} reviews, {section['pooling']} "
          f"pooling (load {section['load_avg_1min_before']:.2f} -> "
          f"{section['load_avg_1min_after']:.2f})")
    line("", names)
    for label, key, fmt in rows:
        line(label, [fmt.format(section[n][key]) if key in section[n] else "-" for n in names])
    if "probe" in section:
        probe = section["probe"]
        line("probe test acc", [format(probe[n]["test_accuracy"], ".4f") if n in probe else "-"
                                for n in names])
        print(f"{'':<18}({probe['n_docs']} reviews {probe['rows']}, C={probe['C']}; "
              f"{probe['resplits']} paired 50/50 resplits of train + test)")
