"""The encoder stage on a tiny random BertModel (no download): batching, layers, resume, errors."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fastimg.embed import (  # noqa: E402
    ENCODE_DEVICES,
    EmptyTextWarning,
    EncoderConfig,
    ModelNotAvailableError,
    encode,
    encode_chunks,
    encode_to_array,
    load_model,
    model_flops,
    resolve_layers,
    resolve_model,
    run_settings,
)
from fastimg.embed import plan as plan_mod  # noqa: E402
from fastimg.embed import forward as forward_mod  # noqa: E402
from fastimg.embed import precision as precision_mod  # noqa: E402
from fastimg.embed import models as models_mod  # noqa: E402
from fastimg.embed import packed as packed_mod  # noqa: E402
from fastimg.embed.batching import (  # noqa: E402
    budget_batches,
    head_tail,
    length_order,
    pack_batch,
    pad_batch,
)

from conftest import TINY_WORDS as WORDS  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tiny_bert_dir):
    """A 12-layer, 32-wide random BertModel and a WordPiece tokenizer (see conftest)."""
    return tiny_bert_dir


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    return load_model(str(tiny_dir))


def make_texts(n, seed=0, max_words=60):
    rng = np.random.default_rng(seed)
    vocab = WORDS + ["zebra", "quixotic", "fjord", "!", "."]
    return [" ".join(rng.choice(vocab, size=int(rng.integers(1, max_words)))) for _ in range(n)]


def cfg(tiny_dir, **kw):
    kw.setdefault("output_dtype", "float32")
    kw.setdefault("device", "cpu")
    return EncoderConfig(model=str(tiny_dir), **kw)


def direct(tiny, texts, layers, pooling="cls", max_length=512):
    """One text at a time through the plain transformers forward (the oracle)."""
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tiny.tokenizer(text, return_tensors="pt", truncation=True,
                                 max_length=max_length)
            hs = tiny.model(**enc, output_hidden_states=True).hidden_states
            pick = [hs[i][:, 0] if pooling == "cls" else hs[i].mean(1) for i in layers]
            rows.append(torch.cat(pick, dim=1)[0].numpy())
    return np.stack(rows)


# --- config and pure helpers ------------------------------------------------------------------


def test_config_json_round_trip():
    c = EncoderConfig(layers=[6, 7, -1], pooling="mean", truncation="head+tail", head_tokens=64)
    assert c.layers == (6, 7, -1)
    again = EncoderConfig.from_json(json.dumps(c.to_dict()))
    assert again == c
    assert EncoderConfig.from_dict(EncoderConfig().to_dict()) == EncoderConfig()


@pytest.mark.parametrize("kw, match", [
    (dict(layers="first6"), "layers"), (dict(layers=[]), "empty"), (dict(pooling="max"), "pooling"),
    (dict(truncation="tail"), "truncation"), (dict(max_length=2), "max_length"),
    (dict(precision="int4"), "precision"), (dict(token_budget=100), "token_budget"),
    (dict(precision="int8", device="cuda"), "runs on cpu only, not on cuda"),
    (dict(precision="fp16", device="cpu"), "runs on cuda only, not on cpu"),
    (dict(precision="bf16", device="cpu"), "runs on cuda only"),
    (dict(truncation="head+tail", max_length=64, head_tokens=63), "head_tokens"),
])
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        EncoderConfig(**kw)
    with pytest.raises(ValueError, match="unknown"):
        EncoderConfig.from_dict({"modle": "x"})


def test_a_run_the_machine_or_model_cannot_do_is_refused_before_any_work(tiny_bert_dir):
    """One line each, from run_settings (what build-dataset computes before writing)."""
    base = dict(model=str(tiny_bert_dir))
    with pytest.raises(ValueError, match="max_length 513 is longer than the 512 positions"):
        run_settings(["a"], EncoderConfig(max_length=513, **base))
    assert run_settings(["a"], EncoderConfig(max_length=512, **base))["max_length"] == 512
    # a dict for the config failed with "'dict' object has no attribute 'model'", and one str
    # was read as its characters ("n_texts": 3)
    with pytest.raises(TypeError, match=r"^config must be an EncoderConfig, got dict"):
        run_settings(["a"], base)
    with pytest.raises(TypeError, match="not a single str"):
        run_settings("abc", EncoderConfig(**base))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device='cuda' cannot run here \(no CUDA GPU"):
            run_settings(["a"], EncoderConfig(device="cuda", **base))


def test_resolve_layers():
    with pytest.raises(ValueError, match=r"^layers='.*': index -1 names hidden_states\[6\] twice"):
        resolve_layers((6, -1), 6)
    assert resolve_layers("last6", 12) == (7, 8, 9, 10, 11, 12)
    assert resolve_layers("last6", 6) == (1, 2, 3, 4, 5, 6)
    assert resolve_layers("author", 12) == (6, 7, 8, 9, 10, 11)
    assert resolve_layers((0, -1, 3), 6) == (0, 6, 3)
    with pytest.raises(ValueError, match="at least 11 layers; this one has 6"):
        resolve_layers("author", 6)
    with pytest.raises(ValueError, match="at least 6 layers"):
        resolve_layers("last6", 4)
    with pytest.raises(ValueError, match="out of range .* 6 layers"):
        resolve_layers((7,), 6)
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers((-8,), 6)
    # what EncoderConfig refuses: returned as given ([1.5], []) or a TypeError ("foo", 5)
    for spec, said in (([1.5], "or a list of ints, got [1.5]"), ([], "is an empty list"),
                       ("foo", "got 'foo'"), (5, "or a list of ints, got 5")):
        with pytest.raises(ValueError, match=re.escape(said)):
            resolve_layers(spec, 12)


def test_batching_helpers():
    lengths = np.array([5, 30, 7, 30, 1, 12])
    order = length_order(lengths)
    assert lengths[order].tolist() == [30, 30, 12, 7, 5, 1] and order[:2].tolist() == [1, 3]
    assert length_order(lengths, sort=False).tolist() == list(range(6))
    batches = budget_batches(lengths[order], token_budget=60, max_batch_size=3)
    assert batches[0][0] == 0 and batches[-1][1] == 6
    assert all(b == c for (_, b), (c, _) in zip(batches, batches[1:]))
    for a, b in batches:
        assert (b - a) * lengths[order][a:b].max() <= 60 or b - a == 1
        assert b - a <= 3
    assert budget_batches([100, 1], token_budget=10, max_batch_size=8) == [(0, 1), (1, 2)]
    # padding guard: once a batch holds min_tokens, stop before padding exceeds 10 %
    sorted_lengths = [100, 100, 95, 60, 59, 58]
    assert budget_batches(sorted_lengths, 10_000, 64) == [(0, 6)]
    assert budget_batches(sorted_lengths, 10_000, 64, max_padding=0.1,
                          min_tokens=150) == [(0, 3), (3, 6)]
    assert head_tail(range(10), 8, 2, 101, 102) == [101, 0, 1, 6, 7, 8, 9, 102]
    assert head_tail(range(10), 8, 6, 101, 102) == [101, 0, 1, 2, 3, 4, 5, 102]
    assert head_tail(range(3), 8, 2, 101, 102) == [101, 0, 1, 2, 102]
    ids, mask = pad_batch([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.sum(1).tolist() == [3, 1]



def test_length_order_keeps_texts_of_equal_length_in_input_order():
    """The order is documented stable: numpy's default sort is stable only for short arrays
    (insertion sort), so this takes more than the 6 lengths above."""
    lengths = np.random.default_rng(0).integers(1, 5, 200)
    expected = sorted(range(lengths.size), key=lambda i: -lengths[i])  # Python's sort is stable
    assert length_order(lengths).tolist() == expected


def test_the_padding_guard_starts_once_a_batch_holds_exactly_min_tokens():
    # two rows of 100 hold 200 padded tokens: a third of 50 would pad 300 for 250 real (+20 %)
    assert budget_batches([100, 100, 50], 10_000, 64, max_padding=0.1,
                          min_tokens=200) == [(0, 2), (2, 3)]
    assert budget_batches([100, 100, 50], 10_000, 64, max_padding=0.1,
                          min_tokens=201) == [(0, 3)]


def test_roberta_like_models_hold_two_tokens_fewer_than_their_positions():
    """Their position ids start after the padding id: a 514-position RoBERTa takes 512
    tokens, and a longer max_length must be refused before it fails inside the model."""
    from transformers import BertConfig, RobertaConfig

    assert plan_mod._positions(RobertaConfig(max_position_embeddings=514)) == 512
    assert plan_mod._positions(BertConfig(max_position_embeddings=512)) == 512


def test_packing_helpers():
    ids, positions, texts, cu = pack_batch([[1, 2, 3], [4], [5, 6]])
    assert ids.tolist() == [1, 2, 3, 4, 5, 6] and cu.tolist() == [0, 3, 4, 6]
    assert positions.tolist() == [0, 1, 2, 0, 0, 1] and texts.tolist() == [0, 0, 0, 1, 2, 2]
    assert cu.dtype == np.int32  # what FlashAttention's variable-length kernel takes
    # packed batches are cut by their real tokens: 100 + 60 fits a budget of 160, padded
    # (2 x 100) does not
    assert budget_batches([100, 60, 50], 160, 64, padded=False) == [(0, 2), (2, 3)]
    assert budget_batches([100, 60, 50], 160, 64) == [(0, 1), (1, 3)]


# --- correctness against the plain forward -----------------------------------------------------


@pytest.mark.parametrize("layers, pooling", [
    ("last6", "cls"), ("author", "cls"), ((0, 3, -1), "mean"), ((2, 5), "cls")])
def test_batched_sorted_equals_one_at_a_time(tiny, tiny_dir, layers, pooling):
    texts = make_texts(37)
    stats = {}
    # small chunks and budget: several chunks, several batches per chunk, padding inside batches
    got = encode(texts, cfg(tiny_dir, layers=layers, pooling=pooling, chunk_rows=16,
                            token_budget=600, max_length=64), model=tiny, stats=stats)
    want = direct(tiny, texts, resolve_layers(layers, 12), pooling, max_length=64)
    assert got.shape == (37, len(resolve_layers(layers, 12)) * 32) and got.dtype == np.float32
    assert stats["batches"] > 3 and stats["padded_tokens"] > stats["tokens"]
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


def test_generic_path_matches_fast_path(tiny, tiny_dir, monkeypatch):
    texts = make_texts(20, seed=3)
    c = cfg(tiny_dir, layers="author", pooling="mean", token_budget=400, max_length=64)
    fast = encode(texts, c, model=tiny)
    monkeypatch.setattr(forward_mod, "fast_path_ok", lambda model: False)
    generic = encode(texts, c, model=tiny)
    np.testing.assert_allclose(fast, generic, atol=1e-4, rtol=0)


# --- packed batches ---------------------------------------------------------------------------


def _packed_qkv(rng, lengths, heads=4, dim=8):
    rows = int(sum(lengths))
    q, k, v = (torch.from_numpy(rng.standard_normal((rows, heads, dim)).astype(np.float32))
               for _ in range(3))
    ids, positions, texts, cu = (torch.from_numpy(x) for x in pack_batch(
        [[0] * n for n in lengths]))
    return q, k, v, packed_mod.Segments.of(positions, texts, cu, int(max(lengths)))


@pytest.mark.parametrize("lengths", [[5, 1, 9, 9, 3], [4, 4, 4]])
def test_padded_attention_is_attention_within_each_text(rng, lengths):
    q, k, v, tokens = _packed_qkv(rng, lengths)
    got = packed_mod.padded_attention(q, k, v, tokens, tokens, 0.3)
    starts = [0, *np.cumsum(lengths)]
    for a, b in zip(starts[:-1], starts[1:]):
        one = [x[a:b].transpose(0, 1)[None] for x in (q, k, v)]  # [1, heads, n, d]
        want = torch.nn.functional.scaled_dot_product_attention(*one, scale=0.3)[0]
        torch.testing.assert_close(got[a:b], want.transpose(0, 1), atol=1e-5, rtol=0)
    # the [CLS]-only last layer: one query per text, every token a key
    first = packed_mod.Segments.first_tokens(len(lengths), "cpu")
    got_first = packed_mod.padded_attention(q[tokens.starts], k, v, first, tokens, 0.3)
    torch.testing.assert_close(got_first, got[tokens.starts], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layers, pooling", [
    ("last6", "cls"), ((0, 3, -1), "mean"), ((2, 5), "cls"), ((0,), "mean")])
def test_packed_batches_equal_padded_batches(tiny, tiny_dir, layers, pooling):
    texts = make_texts(37, seed=7) + ["zebra"]
    stats = {}
    c = dict(layers=layers, pooling=pooling, chunk_rows=16, token_budget=600, max_length=64)
    packed = encode(texts, cfg(tiny_dir, batching="packed", **c), model=tiny, stats=stats)
    padded = encode(texts, cfg(tiny_dir, **c), model=tiny)
    assert stats["batching"] == "packed" and stats["attention"] == "padded"
    assert stats["batches"] > 3 and stats["padded_tokens"] == stats["tokens"]  # none in GEMMs
    np.testing.assert_allclose(packed, padded, atol=1e-5, rtol=0)


def test_packed_int8_is_as_close_to_fp32_as_padded_int8(tiny, tiny_dir):
    texts = make_texts(24, seed=11)
    c = dict(token_budget=400, max_length=64, layers="author", pooling="mean")
    ref = encode(texts, cfg(tiny_dir, **c), model=tiny)
    padded = encode(texts, cfg(tiny_dir, precision="int8", **c), model=tiny)
    packed = encode(texts, cfg(tiny_dir, precision="int8", batching="packed", **c), model=tiny)
    # activations are quantised per batch, and packed batches hold other rows (no padding)
    assert 0 < np.abs(packed - ref).mean() <= 1.5 * np.abs(padded - ref).mean()


def test_packed_batching_falls_back_for_other_models(tiny, tiny_dir, monkeypatch, caplog):
    monkeypatch.setattr(forward_mod, "fast_path_ok", lambda model: False)
    stats = {}
    with caplog.at_level("WARNING", logger="fastimg.embed"):
        got = encode(make_texts(5), cfg(tiny_dir, batching="packed"), model=tiny, stats=stats)
    assert stats["batching"] == "padded" and stats["attention"] is None
    assert "packed' needs a BERT encoder" in caplog.text
    np.testing.assert_allclose(got, encode(make_texts(5), cfg(tiny_dir), model=tiny),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_varlen_attention_path_runs_through_on_meta_tensors(monkeypatch, pooling):
    """FlashAttention needs CUDA; on meta tensors torch runs its shape function instead, which
    checks the plumbing here: dtypes, shapes, int32 offsets and the [CLS]-only last layer's one
    query per text. The numbers are checked on a GPU (tests/test_gpu.py)."""
    from torch.nn.attention import varlen

    calls = []
    real = varlen.varlen_attn

    def spy(q, k, v, cu_q, cu_k, max_q, max_k, **kw):
        assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
        calls.append((q.shape[0], k.shape[0], cu_q.dtype, cu_k.dtype, max_q, max_k))
        return real(q, k, v, cu_q, cu_k, max_q, max_k, **kw)

    monkeypatch.setattr(varlen, "varlen_attn", spy)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3,
                                     num_attention_heads=4, intermediate_size=64)
    model = transformers.BertModel(config).eval().half().to("meta")
    ids, positions, texts, cu = (torch.from_numpy(x).to("meta")
                                 for x in pack_batch([[1] * 5, [2] * 3, [3] * 7]))
    tokens = packed_mod.Segments.of(positions, texts, cu, 7)
    out = packed_mod.forward(model, ids, tokens, (0, 2, 3), pooling, forward_mod.fused_qkv(model),
                             "varlen")
    assert out.shape == (3, 96) and out.dtype == torch.float16
    every = (15, 15, torch.int32, torch.int32, 7, 7)
    last = (3, 15, torch.int32, torch.int32, 1, 7) if pooling == "cls" else every
    assert calls == [every, every, last]


@pytest.mark.parametrize("unpadded_attention", [False, True])
def test_packed_batches_with_padded_attention_fit_the_budget_padded(tiny, tiny_dir,
                                                                   unpadded_attention):
    from fastimg.embed.tokenize import Producer

    # unsorted: one long text among short ones makes the padded layout far bigger than the
    # real tokens; padded attention materialises that layout, so the budget must bound it
    texts = make_texts(60, seed=4, max_words=6) + [" ".join(WORDS * 3)] + make_texts(60, seed=5,
                                                                                    max_words=6)
    c = cfg(tiny_dir, batching="packed", sort_by_length=False, token_budget=400, max_length=96)
    producer = Producer(texts, [(0, len(texts))], tiny.tokenizer, c, "cpu", 400, 0, packed=True,
                        unpadded_attention=unpadded_attention)
    producer.start()
    items = []
    while (item := producer.queue.get(timeout=60))[0] != "done":
        assert item[0] != "error", item
        items.append(item)
    producer.join()
    sizes = [(int(t[0].shape[0]) * max_len, n_tokens) for kind, t, n_tokens, max_len in
             (i for i in items if i[0] == "batch")]
    assert sum(real for _, real in sizes) == sum(len(x) for x in tiny.tokenizer(
        texts, truncation=True, max_length=96)["input_ids"])
    if unpadded_attention:  # varlen: the real tokens are what is computed
        assert max(real for _, real in sizes) <= 400 < max(padded for padded, _ in sizes)
    else:
        assert max(padded for padded, _ in sizes) <= 400


def test_packed_attention_choice():
    assert packed_mod.choose_attention("cpu", "float32") == "padded"
    assert packed_mod.choose_attention("cpu", "int8") == "padded"
    assert packed_mod.choose_attention("cuda", "float32") == "padded"  # flash: fp16 / bf16 only
    assert packed_mod.choose_attention("cuda", "float16", (9, 0)) == "varlen"
    assert packed_mod.choose_attention("cuda", "bfloat16", (8, 0)) == "varlen"
    # T4 / V100: FlashAttention's kernels need sm80
    assert packed_mod.choose_attention("cuda", "float16", (7, 5)) == "padded"
    assert packed_mod.choose_attention("cuda", "bfloat16", (7, 0)) == "padded"
    with pytest.raises(ValueError, match="batching"):
        EncoderConfig(batching="nested")


def test_packed_attention_pads_when_varlen_attn_takes_no_scale(monkeypatch):
    """varlen_attn's first form (torch 2.9) had no ``scale``: calling it with one would raise
    TypeError on every packed batch of a GPU run, so such a torch pads instead."""
    from torch.nn.attention import varlen

    def without_scale(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False,
                      return_aux=None):
        raise AssertionError("not called")

    monkeypatch.setattr(varlen, "varlen_attn", without_scale)
    assert packed_mod.choose_attention("cuda", "float16", (9, 0)) == "padded"
    monkeypatch.setattr(varlen, "varlen_attn", lambda *args, **kwargs: None)
    assert packed_mod.choose_attention("cuda", "float16", (9, 0)) == "varlen"


def test_order_is_restored(tiny, tiny_dir):
    texts = make_texts(30, seed=1)
    c = cfg(tiny_dir, max_length=64, token_budget=300)
    base = encode(texts, c, model=tiny)
    perm = np.random.default_rng(5).permutation(30)
    shuffled = encode([texts[i] for i in perm], c, model=tiny)
    np.testing.assert_allclose(shuffled, base[perm], atol=1e-4, rtol=0)
    unsorted = encode(texts, cfg(tiny_dir, max_length=64, token_budget=300,
                                 sort_by_length=False), model=tiny)
    np.testing.assert_allclose(unsorted, base, atol=1e-4, rtol=0)


def test_default_output_is_float16(tiny, tiny_dir):
    texts = make_texts(5)
    x = encode(texts, EncoderConfig(model=str(tiny_dir), device="cpu"), model=tiny)
    assert x.dtype == np.float16 and x.shape == (5, 6 * 32)
    ref = encode(texts, cfg(tiny_dir), model=tiny)
    np.testing.assert_array_equal(x, ref.astype(np.float16))


def test_long_texts_are_truncated_head(tiny, tiny_dir):
    texts = [" ".join(["good film"] * 200), "bad"]
    got = encode(texts, cfg(tiny_dir, max_length=40), model=tiny)
    want = direct(tiny, texts, resolve_layers("last6", 12), max_length=40)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


def test_head_tail_truncation(tiny, tiny_dir):
    words = ["the", "film", "was", "good", "bad", "plot"]
    long_text = " ".join(words[i % 6] + " " + words[(i * 7) % 6] for i in range(100))
    texts = [long_text, "short one"]
    c = cfg(tiny_dir, max_length=32, truncation="head+tail", head_tokens=10)
    got = encode(texts, c, model=tiny)
    tok = tiny.tokenizer
    content = tok(long_text, add_special_tokens=False)["input_ids"]
    ids = [tok.cls_token_id] + content[:10] + content[-20:] + [tok.sep_token_id]
    with torch.no_grad():
        hs = tiny.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    want = torch.cat([hs[i][:, 0] for i in range(7, 13)], dim=1)[0].numpy()
    np.testing.assert_allclose(got[0], want, atol=1e-3, rtol=0)
    head_only = encode(texts, cfg(tiny_dir, max_length=32), model=tiny)
    assert np.abs(head_only[0] - got[0]).max() > 1e-3  # the tail changed the long text
    np.testing.assert_allclose(head_only[1], got[1], atol=1e-4, rtol=0)


# --- bad input --------------------------------------------------------------------------------


def test_empty_list(tiny, tiny_dir):
    x = encode([], cfg(tiny_dir, layers=(1, 2)), model=tiny)
    assert x.shape == (0, 64)


def test_empty_and_whitespace_texts_warn_and_encode(tiny, tiny_dir):
    c = cfg(tiny_dir)
    with pytest.warns(EmptyTextWarning, match="2 of 3 texts"):
        x = encode(["", "  \n\t", "good film"], c, model=tiny)
    want = direct(tiny, [""], resolve_layers("last6", 12))[0]
    np.testing.assert_allclose(x[0], want, atol=1e-3, rtol=0)
    np.testing.assert_allclose(x[1], want, atol=1e-3, rtol=0)
    assert np.isfinite(x).all()


@pytest.mark.parametrize("bad, match", [
    ("a single string", "single str"), (["ok", 3], r"texts\[1\] is int"),
    (["ok", None], r"texts\[1\] is NoneType"), ([b"bytes"], "bytes"), (42, "sequence of str")])
def test_non_str_input_raises_type_error(tiny, tiny_dir, bad, match):
    with pytest.raises(TypeError, match=match):
        encode(bad, cfg(tiny_dir), model=tiny)


def test_layers_checked_against_model_depth(tiny, tiny_dir):
    with pytest.raises(ValueError, match="out of range for a model with 12 layers"):
        encode(["x"], cfg(tiny_dir, layers=(13,)), model=tiny)


def test_load_model_takes_a_path_and_names_a_name_of_the_wrong_type(tiny_dir):
    # a pathlib folder (EncoderConfig takes one) and None failed with AttributeError:
    # 'PosixPath' object has no attribute 'lower'
    loaded = load_model(Path(tiny_dir))
    assert loaded.source.folder == str(tiny_dir) and loaded.n_layers == 12
    assert resolve_model(Path(tiny_dir)).folder == str(tiny_dir)
    for name in (None, 3, ""):
        with pytest.raises(TypeError, match="name must be a model alias, a local folder or a "
                                            "hub id"):
            load_model(name)


def test_a_loaded_models_repr_is_one_line(tiny, tiny_dir):
    # the dataclass's repr printed the tokenizer's and the whole torch module's
    assert repr(tiny) == (f"LoadedModel({str(tiny_dir)!r}, BertModel, 12 layers, hidden 32, "
                          f"folder={str(tiny_dir)!r})")


def test_unknown_model_offline_fails_with_one_clear_message(monkeypatch, tmp_path):
    monkeypatch.setattr(models_mod, "_hub_endpoint_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelNotAvailableError, match="not in the Hugging Face cache, and the hub "
                                                     "is unreachable") as info:
        resolve_model("no-such-org/no-such-model-fastimg")
    assert info.value.__cause__ is None
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="unreachable"):
        encode(["x"], EncoderConfig(model="no-such-org/no-such-model-fastimg"))


def test_device_registry():
    assert ENCODE_DEVICES.resolve("cpu") == "cpu"
    assert ENCODE_DEVICES.resolve("auto") in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown encode device"):
        ENCODE_DEVICES.resolve("tpu")


def test_model_flops():
    # 1 layer, H=2, I=4, one sequence of 3 tokens: 2*3*(16+16) + 4*9*2
    assert model_flops([3], 1, 2, 4) == 2 * 3 * 32 + 72
    assert model_flops([3, 3], 2, 2, 4) == 4 * (2 * 3 * 32 + 72)
    # the [CLS] path of 0 layers counted -26,680,320 FLOPs; negative lengths and widths passed
    for args, said in ((([10], 0, 384, 1536), "n_layers_run must be a whole number >= 1"),
                       (([-3], 1, 2, 4), "lengths must be token counts >= 0"),
                       (([3], 1, 0, 4), "hidden must be a whole number >= 1")):
        with pytest.raises(ValueError, match=said):
            model_flops(*args, first_token_last_layer=True)


# --- streaming to zarr, resume ----------------------------------------------------------------


class Interrupt(Exception):
    pass


def _interrupt_after_first_chunk(texts, config, target, model):
    def stop(rows_done):
        raise Interrupt

    with pytest.raises(Interrupt):
        encode_to_array(texts, config, target, model=model, progress=False, on_chunk=stop)


def test_encode_to_array_refuses_a_target_or_name_that_is_none(tiny, tiny_dir, tmp_path,
                                                                monkeypatch):
    # target=5 made a store named ./5 in the working folder, name="" took the group itself
    # for an array ("exists ... but was not written by fastimg.embed"), a file target raised
    # pathlib's FileExistsError from inside zarr
    monkeypatch.chdir(tmp_path)
    c = cfg(tiny_dir, max_length=16)
    (tmp_path / "a.txt").write_text("x")
    for target, name, error, said in (
            (5, "embeddings", TypeError, "target must be a zarr.Group or a path, got int"),
            (tmp_path / "s.zarr", "", ValueError, "name must be the array's name in the group"),
            (tmp_path / "s.zarr", 5, TypeError, "name must be the array's name in the group"),
            (tmp_path / "a.txt", "embeddings", NotADirectoryError, "is a file, not a zarr")):
        with pytest.raises(error, match=said):
            encode_to_array(["a film"], c, target, name=name, model=tiny, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_resume_after_interruption_is_byte_identical(tiny, tiny_dir, tmp_path):
    import zarr

    texts = make_texts(50, seed=7)
    c = cfg(tiny_dir, output_dtype="float16", chunk_rows=8, token_budget=300, max_length=64)
    full = encode_to_array(texts, c, tmp_path / "full.zarr", model=tiny, progress=False)
    assert full.chunks == (8, 192) and full.attrs["fastimg_embed"]["complete"]

    def stop_after_three(rows_done):
        if rows_done >= 24:
            raise Interrupt

    with pytest.raises(Interrupt):
        encode_to_array(texts, c, tmp_path / "cut.zarr", model=tiny, progress=False,
                        on_chunk=stop_after_three)
    cut = zarr.open_group(str(tmp_path / "cut.zarr"), mode="r")["embeddings"]
    meta = cut.attrs["fastimg_embed"]
    assert meta["rows_done"] == 24 and not meta["complete"]
    assert not np.asarray(cut[24:]).any()  # nothing after the last complete chunk

    seen = []
    stats = {}
    again = encode_to_array(texts, c, tmp_path / "cut.zarr", model=tiny, progress=False,
                            on_chunk=seen.append, stats=stats)
    assert seen == [32, 40, 48, 50]  # finished chunks were not encoded again
    assert stats["tokens"] < sum(len(tiny.tokenizer(t)["input_ids"]) for t in texts)
    assert again.attrs["fastimg_embed"]["complete"]
    np.testing.assert_array_equal(np.asarray(again[:]), np.asarray(full[:]))
    assert np.asarray(again[:]).tobytes() == np.asarray(full[:]).tobytes()
    # and the in-memory encoder gives the same bytes
    np.testing.assert_array_equal(encode(texts, c, model=tiny), np.asarray(full[:]))
    # a complete array is left alone
    done = encode_to_array(texts, c, tmp_path / "cut.zarr", model=tiny, progress=False,
                           on_chunk=seen.append)
    assert seen == [32, 40, 48, 50] and done.shape == (50, 192)


@pytest.mark.parametrize("encoder", [encode, encode_chunks])
def test_a_model_name_where_a_loaded_model_goes_is_refused(tiny_dir, encoder):
    # was an AttributeError ('str' object has no attribute 'source') from the plan
    with pytest.raises(TypeError, match="model must be a LoadedModel.*load_model"):
        encoder(["a film"], EncoderConfig(model=str(tiny_dir)), model=str(tiny_dir))


@pytest.mark.parametrize("encoder", [encode, encode_chunks])
def test_a_loaded_model_other_than_the_configs_is_refused(tiny, tiny_dir, tmp_path, encoder):
    """The loaded model was used and the config's model ignored without a word (a store
    would have recorded the config's model beside another model's embeddings)."""
    import shutil

    other = shutil.copytree(tiny_dir, tmp_path / "other-bert")
    with pytest.raises(ValueError, match=f"model is loaded from {tiny_dir}, but the encoder "
                                         f"settings name '{other}'"):
        list(encoder(["a film"], EncoderConfig(model=str(other)), model=tiny))
    assert len(list(encoder(["a film"], model=tiny))) == 1  # no settings: the model's own


def test_encode_chunks_gives_the_rows_of_encode_a_chunk_at_a_time(tiny, tiny_dir):
    from fastimg.embed import encode_chunks

    texts = make_texts(21, seed=3)
    c = cfg(tiny_dir, chunk_rows=8, max_length=64)
    chunks = list(encode_chunks(texts, c, model=tiny))
    assert [(start, stop) for start, stop, _ in chunks] == [(0, 8), (8, 16), (16, 21)]
    np.testing.assert_array_equal(np.concatenate([block for *_, block in chunks]),
                                  encode(texts, c, model=tiny))
    assert list(encode_chunks([], c, model=tiny)) == []
    with pytest.raises(TypeError):  # checked when called, before any chunk is asked for
        encode_chunks("one str", c, model=tiny)


@pytest.mark.parametrize("change, field", [
    (dict(pooling="mean"), "pooling"), (dict(max_length=32), "max_length"),
    (dict(layers="author"), "layers"), (dict(truncation="head+tail"), "truncation"),
    (dict(output_dtype="float32"), "output_dtype"), (dict(precision="int8"), "precision"),
    (dict(batching="packed"), "batching")])
def test_resume_with_other_settings_is_refused(tiny, tiny_dir, tmp_path, change, field):
    texts = make_texts(20, seed=2)
    base = dict(output_dtype="float16", chunk_rows=8, max_length=64)
    c = cfg(tiny_dir, **base)

    _interrupt_after_first_chunk(texts, c, tmp_path / "e.zarr", tiny)
    other = cfg(tiny_dir, **{**base, **change})
    with pytest.raises(ValueError, match=f"cannot resume 'embeddings'.*{field}: .* -> "):
        encode_to_array(texts, other, tmp_path / "e.zarr", model=tiny, progress=False)


def test_an_int8_resume_keeps_its_batches(tiny, tiny_dir, tmp_path):
    """int8's activations share one scale per batch: a resume with another token budget would
    mix two batchings and is refused; another chunk size resumes with the stored one."""
    texts = make_texts(20, seed=2)
    base = dict(output_dtype="float16", chunk_rows=8, max_length=64, token_budget=300,
                precision="int8")
    full = encode(texts, cfg(tiny_dir, **base), model=tiny)
    _interrupt_after_first_chunk(texts, cfg(tiny_dir, **base), tmp_path / "e.zarr", tiny)
    with pytest.raises(ValueError, match=r"int8\.batches\.token_budget: 300 -> 200"):
        encode_to_array(texts, cfg(tiny_dir, **{**base, "token_budget": 200}),
                        tmp_path / "e.zarr", model=tiny, progress=False)
    again = encode_to_array(texts, cfg(tiny_dir, **{**base, "chunk_rows": 4}),
                            tmp_path / "e.zarr", model=tiny, progress=False)
    assert again.chunks[0] == 8
    assert np.asarray(again[:]).tobytes() == full.tobytes()


def test_resume_with_other_texts_or_model_is_refused(tiny, tiny_dir, tmp_path):
    texts = make_texts(20, seed=2)
    c = cfg(tiny_dir, chunk_rows=8, max_length=64)

    _interrupt_after_first_chunk(texts, c, tmp_path / "e.zarr", tiny)
    edited = [*texts[:-1], texts[-1] + " !"]
    with pytest.raises(ValueError, match="texts_sha256"):
        encode_to_array(edited, c, tmp_path / "e.zarr", model=tiny, progress=False)
    with pytest.raises(ValueError, match="n_texts"):
        encode_to_array(texts[:10], c, tmp_path / "e.zarr", model=tiny, progress=False)
    with pytest.raises(ValueError, match="model_fingerprint"):
        encode_to_array(texts, EncoderConfig(model="minilm", device="cpu", chunk_rows=8,
                                             max_length=64, output_dtype="float32"),
                        tmp_path / "e.zarr", progress=False)


def test_autocast_path_runs_on_cpu(tiny, tiny_dir, monkeypatch):
    """The reduced-precision (autocast) branch, as used on CUDA with float16, here in bfloat16
    (bf16 is a CUDA precision for users: on this CPU it measured slower than fp32)."""
    import dataclasses

    bf16 = dataclasses.replace(precision_mod.BACKENDS["bf16"], devices=("cpu", "cuda"))
    monkeypatch.setitem(precision_mod.BACKENDS, "bf16", bf16)
    texts = make_texts(12, seed=4)
    stats = {}
    low = encode(texts, cfg(tiny_dir, precision="bf16", token_budget=300, max_length=64),
                 model=tiny, stats=stats)
    assert stats["compute_dtype"] == "bfloat16" and stats["precision"] == "bf16"
    assert np.isfinite(low).all()
    ref = encode(texts, cfg(tiny_dir, token_budget=300, max_length=64), model=tiny)
    assert np.abs(low - ref).max() > 0  # autocast was on
    # bf16 is off by about 1e-3 here, where two texts' vectors differ by up to 0.05 (the
    # random tiny model maps every text near one point): atol=0.15 passed another text's row
    assert np.abs(ref - ref[::-1]).max() > 0.02
    np.testing.assert_allclose(low, ref, atol=0.01, rtol=0)


# --- precision: int8 --------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_int8_is_close_to_fp32(tiny, tiny_dir, engine):
    texts = make_texts(24, seed=11)
    stats = {}
    q = encode(texts, cfg(tiny_dir, precision="int8", int8_engine=engine, token_budget=400,
                          max_length=64), model=tiny, stats=stats)
    ref = encode(texts, cfg(tiny_dir, precision="fp32", token_budget=400, max_length=64),
                 model=tiny)
    assert stats["precision"] == "int8" and stats["compute_dtype"] == "int8"
    assert stats["device"] == "cpu" and stats["int8_engine"] == engine
    diff = np.abs(q - ref)
    # quantised, so not equal; but closer than two different texts' vectors are (the random
    # tiny model maps all texts near one point, so compare with that spread), and each int8
    # vector's nearest fp32 vector is its own text's
    assert diff.max() > 0
    assert diff.mean() < 0.02 * np.abs(ref).mean()
    assert diff.mean() < 0.25 * np.abs(ref - ref[::-1]).mean()
    centre = ref.mean(0)
    dist = (((q - centre)[:, None] - (ref - centre)[None]) ** 2).sum(-1)
    assert (dist.argmin(1) == np.arange(len(texts))).all()
    # the fp32 model the caller holds is left as it was
    assert type(tiny.model.encoder.layer[0].attention.self.query) is torch.nn.Linear


@pytest.mark.parametrize("layers, pooling", [("last6", "cls"), ("author", "mean"), ((0, 3), "cls")])
def test_int8_fast_path_matches_generic_path(tiny, tiny_dir, monkeypatch, layers, pooling):
    texts = make_texts(20, seed=3)
    c = cfg(tiny_dir, precision="int8", int8_engine="torch", layers=layers, pooling=pooling,
            token_budget=400, max_length=64)
    fast = encode(texts, c, model=tiny)
    monkeypatch.setattr(forward_mod, "fast_path_ok", lambda model: False)
    generic = encode(texts, c, model=tiny)
    ref = encode(texts, cfg(tiny_dir, layers=layers, pooling=pooling, token_budget=400,
                            max_length=64), model=tiny)
    # per-channel weight scales make the fused QKV weights those of the generic model, so with
    # mean pooling (every row int8) the two agree to float rounding; with [CLS] pooling the fast
    # path computes the pooled row in fp32, which the generic int8 forward does not, so there
    # it must be at least as close to fp32
    if pooling == "mean":
        np.testing.assert_allclose(fast, generic, atol=1e-4, rtol=0)
    else:
        int8_error = np.abs(generic - ref).mean()
        assert 0 < np.abs(fast - ref).mean() <= int8_error
        assert np.abs(fast - generic).max() < 10 * np.abs(generic - ref).max()


@pytest.mark.parametrize("batching", ["padded", "packed"])
def test_int8_computes_the_pooled_cls_row_in_fp32(tiny, tiny_dir, monkeypatch, batching):
    from fastimg.embed import int8

    texts = make_texts(48, seed=11)
    c = dict(token_budget=400, max_length=64, batching=batching)
    ref = encode(texts, cfg(tiny_dir, **c), model=tiny)
    c.update(int8_engine="torch")
    exact = encode(texts, cfg(tiny_dir, precision="int8", **c), model=tiny)
    _, projections = int8.prepare(tiny.model, fast=True)
    for proj in projections:  # every row rounded, the [CLS] row too
        monkeypatch.setattr(proj, "exact", None)
    rounded = encode(texts, cfg(tiny_dir, precision="int8", **c), model=tiny)
    error = {name: np.abs(x - ref).mean() for name, x in (("exact", exact), ("rounded", rounded))}
    # the [CLS] row still attends over int8 keys and values, so it is close, not equal
    assert 0 < error["exact"] < 0.5 * error["rounded"], error


def test_int8_runs_on_cpu_with_device_auto(tiny, tiny_dir):
    stats = {}
    encode(make_texts(3), EncoderConfig(model=str(tiny_dir), precision="int8"), model=tiny,
           stats=stats)
    assert stats["device"] == "cpu" and stats["precision"] == "int8"


def test_gpu_precision_without_gpu_is_one_clear_error(tiny, tiny_dir, monkeypatch):
    monkeypatch.setattr(plan_mod.ENCODE_DEVICES, "_auto", "cpu")
    for name in ("fp16", "bf16"):
        with pytest.raises(ValueError, match=f"precision '{name}' needs a CUDA GPU"):
            encode(["x"], EncoderConfig(model=str(tiny_dir), precision=name), model=tiny)



def test_int8_with_device_auto_runs_on_the_cpu_beside_a_gpu(tiny_dir, monkeypatch):
    """int8 has CPU kernels only: ``device="auto"`` on a machine with a GPU must take the
    CPU for it rather than refuse (the GPU is faked: only the device's name is resolved)."""
    monkeypatch.setattr(plan_mod.ENCODE_DEVICES, "_auto", "cuda")
    assert plan_mod._resolve_device(EncoderConfig(model=str(tiny_dir), precision="int8")) == "cpu"
    assert plan_mod._resolve_device(EncoderConfig(model=str(tiny_dir))) == "cuda"


def test_precisions_per_device():
    assert precision_mod.available("cpu") == ["fp32", "int8"]
    assert precision_mod.available("cuda") == ["fp32", "fp16", "bf16"]
    assert precision_mod.resolve("auto", "cuda").name == "fp16"
    assert precision_mod.resolve("auto", "cpu").name == precision_mod.AUTO["cpu"]
    with pytest.raises(ValueError, match="'int8' runs on cpu only"):
        precision_mod.resolve("int8", "cuda")


def test_run_settings_hold_device_and_precision(tiny, tiny_dir):
    texts = make_texts(4)
    s = run_settings(texts, cfg(tiny_dir, precision="int8"), model=tiny)
    assert s["device"] == "cpu" and s["precision"] == "int8"
    # int8 stores of versions 1 and 2 hold other numbers (or do not say whose kernels ran)
    assert s["int8"]["version"] == 3 and s["int8"]["engine"] == "onnxruntime"
    # int8 numbers depend on the batch (one activation scale per batch): its cuts must match
    other = run_settings(texts, cfg(tiny_dir, precision="int8", token_budget=4096), model=tiny)
    assert other["int8"]["batches"]["token_budget"] == 4096 != s["int8"]["batches"]["token_budget"]
    s = run_settings(texts, cfg(tiny_dir), model=tiny)
    assert s["device"] == "cpu" and s["precision"] == precision_mod.AUTO["cpu"]
    # padded batches leave the settings (and so the stage keys of older stores) as they were
    assert "batching" not in s
    assert run_settings(texts, cfg(tiny_dir, batching="packed"), model=tiny)["batching"] == "packed"
    # configs written before precision replaced dtype (older stores and runs) read as its
    # precision; a dtype beside a precision, or one never offered, is still refused
    old = {k: v for k, v in EncoderConfig().to_dict().items() if k != "precision"}
    assert EncoderConfig.from_dict({**old, "dtype": "float32"}).precision == "fp32"
    assert EncoderConfig.from_dict({**old, "dtype": "auto"}).precision == "auto"
    with pytest.raises(ValueError, match="replaced by 'precision'"):
        EncoderConfig.from_dict({**EncoderConfig().to_dict(), "dtype": "auto"})
    with pytest.raises(ValueError, match="replaced by 'precision'"):
        EncoderConfig.from_dict({**old, "dtype": "int4"})


def test_interrupted_run_stops_the_tokenizer_thread(tiny, tiny_dir, tmp_path):
    import threading

    texts = make_texts(40, seed=9)
    c = cfg(tiny_dir, chunk_rows=4, max_length=64)

    _interrupt_after_first_chunk(texts, c, tmp_path / "e.zarr", tiny)
    assert not [t for t in threading.enumerate() if t.name == "fastimg-tokenize"]


def test_callbacks_run_outside_inference_mode(tiny, tiny_dir, tmp_path):
    modes = []
    encode_to_array(make_texts(9), cfg(tiny_dir, chunk_rows=4, max_length=64), tmp_path / "e.zarr",
                    model=tiny, progress=False,
                    on_chunk=lambda rows: modes.append(torch.is_inference_mode_enabled()))
    assert modes == [False, False, False]


def test_committer_commits_in_order_and_raises_in_the_caller(caplog):
    import threading

    from fastimg.embed.commit import Committer

    done, threads = [], set()

    def commit(i):
        threads.add(threading.current_thread().name)
        if i == 3:
            raise Interrupt("disk full")
        done.append(i)

    with pytest.raises(Interrupt, match="disk full"):
        with Committer(commit) as committer:
            for i in range(8):
                committer.submit(i)
    # a prefix is committed, nothing after the failure, all on the committer's thread
    assert done == [0, 1, 2] and threads == {"fastimg-commit"}
    assert "failed too" not in caplog.text  # the commit's own error, raised once, not logged
    # an error in the caller's loop keeps what was already submitted
    done.clear()
    with pytest.raises(KeyError):
        with Committer(commit) as committer:
            committer.submit(0)
            committer.submit(1)
            raise KeyError("stop")
    assert done == [0, 1]
    # when both fail, the caller's error propagates and the commit's is logged, not lost
    failed = threading.Event()

    def failing_commit(i):
        failed.set()
        raise Interrupt("disk full")

    with caplog.at_level("ERROR", logger="fastimg.embed"), pytest.raises(KeyError):
        with Committer(failing_commit) as committer:
            committer.submit(0)
            assert failed.wait(timeout=30)
            raise KeyError("stop")
    assert "committing a chunk failed too: Interrupt: disk full" in caplog.text


# --- models fastimg cannot pool, tokenizers that cannot serve the weights ---------------------


@pytest.mark.parametrize("make, pooling, match", [
    (lambda: transformers.GPT2Config(n_embd=32, n_layer=6, n_head=4), "cls",
     r"is a decoder \(gpt2\).*use pooling 'mean'"),
    (lambda: transformers.BertConfig(hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
                                     is_decoder=True), "cls", r"is a decoder \(bert\)"),
    (lambda: transformers.T5Config(d_model=32, d_ff=64, num_layers=6, num_heads=4, d_kv=8),
     "cls", r"is an encoder-decoder \(t5\)"),
    (lambda: transformers.T5Config(d_model=32, d_ff=64, num_layers=6, num_heads=4, d_kv=8),
     "mean", r"is an encoder-decoder \(t5\)"),
])
def test_a_model_that_is_no_encoder_is_refused_from_its_config(tmp_path, make, pooling, match):
    """From config.json alone, before any weights load (build-dataset's run_settings): a
    decoder's first token attends only to itself, and a T5's model wants decoder inputs."""
    make().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=match):
        run_settings(["a"], EncoderConfig(model=str(tmp_path), pooling=pooling, max_length=32))


def test_a_decoder_under_mean_pooling_is_planned(tmp_path):
    transformers.GPT2Config(n_embd=32, n_layer=6, n_head=4).save_pretrained(tmp_path)
    settings = run_settings(["a"], EncoderConfig(model=str(tmp_path), pooling="mean",
                                                 max_length=32))
    assert settings["layers"] == [1, 2, 3, 4, 5, 6]


def _weights_only(src, dst):
    """The folder ``src`` without its tokenizer files (``model.save_pretrained`` alone)."""
    import shutil

    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, dst / name)
    return dst


def test_a_folder_without_its_tokenizer_is_refused(tiny_dir, tmp_path):
    """transformers 5 builds an empty tokenizer for such a folder: every word would be [UNK]
    and the embeddings would tell texts apart by their length alone."""
    folder = _weights_only(tiny_dir, tmp_path / "weights")
    with pytest.raises(ValueError, match="has no tokenizer vocabulary .only its 5 special"):
        load_model(str(folder))
    with pytest.raises(ValueError, match="has no tokenizer vocabulary"):
        models_mod.load_tokenizer(str(folder))


def test_a_tokenizer_of_another_model_is_refused(tiny_dir, tmp_path):
    """Ids past the embedding table failed mid-encoding (an IndexError: 'a bug')."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path / "small"
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=20, hidden_size=32, num_hidden_layers=6,
                         num_attention_heads=4, intermediate_size=64)).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"makes ids up to \d+, but its embedding table has 20 "
                                         r"rows"):
        load_model(str(folder))
    assert models_mod.load_tokenizer(str(tiny_dir)).is_fast


def test_tokens_added_without_resized_embeddings_are_named_as_such(tmp_path):
    """The message said 'tokenizer and weights come from different models' of one model."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path / "added"
    # MiniLM's tokenizer: ids 0..len-1 without gaps, so an added token gets the id past them
    tokenizer = AutoTokenizer.from_pretrained(models_mod.resolve_model("minilm").folder)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=6,
                         num_attention_heads=4, intermediate_size=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    models_mod.load_tokenizer(str(folder))  # ids fit the table
    assert tokenizer.add_tokens(["<url>"]) == 1
    tokenizer.save_pretrained(folder)
    with pytest.raises(ValueError, match=r"1 added token\(s\) \('<url>'\) past its embedding "
                                         r"table of \d+ rows: resize"):
        models_mod.load_tokenizer(str(folder))


def test_a_relative_model_folder_is_kept_as_its_absolute_path(tiny_dir, tmp_path, monkeypatch):
    """A store or run made with ``--model ./my-bert`` found no encoder from another working
    directory (predict, texts_to_images, cluster workers)."""
    monkeypatch.chdir(tiny_dir.parent)
    config = EncoderConfig(model=tiny_dir.name)
    assert config.model == str(tiny_dir)
    assert EncoderConfig(model=f"./{tiny_dir.name}/") == config
    assert run_settings(["a"], EncoderConfig(model=tiny_dir.name, max_length=16))["model"] == \
        str(tiny_dir)
    monkeypatch.chdir(tmp_path)
    assert EncoderConfig.from_dict(config.to_dict()) == config
    (tmp_path / "minilm").mkdir()  # an alias stays an alias, as resolve_model reads it
    (tmp_path / "org").mkdir()
    assert EncoderConfig(model="minilm").model == "minilm"
    assert EncoderConfig(model="org/no-such-model").model == "org/no-such-model"
