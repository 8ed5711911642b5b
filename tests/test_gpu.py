"""GPU tests: the real CUDA backends on hardware (skipped without a CUDA GPU).

The CUDA raster kernel's logic is also checked everywhere under the simulator
(``test_kernels_cudasim.py``); these tests check what the simulator cannot: real launches, device
arrays in and out, float16 loads on the device.
"""
import numpy as np
import pytest

from fastimg.kernels import RasterPlan, raster_reference

pytestmark = pytest.mark.gpu


def _plan(rng, n_features, shape, scaling):
    pixels = rng.integers(0, shape[0] * shape[1], n_features)
    return RasterPlan.from_pixels(pixels, shape, scaling=scaling,
                                  shift=rng.random(n_features).astype(np.float32) + 1.0,
                                  scale=rng.random(n_features).astype(np.float32) + 0.1,
                                  fill_value=-0.25)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("scaling", ["none", "minmax", "norm2"])
@pytest.mark.parametrize("shape,n_features", [((50, 50), 4608), ((7, 13), 300), ((16, 16), 40)])
def test_cuda_kernel_matches_reference_on_hardware(rng, dtype, scaling, shape, n_features):
    from fastimg.raster import rasterize

    plan = _plan(rng, n_features, shape, scaling)
    x = rng.random((1031, n_features)).astype(dtype)
    got = rasterize(x, plan, backend="cuda")
    want = raster_reference(x, plan, np.empty((x.shape[0], *shape)))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_cuda_kernel_takes_device_arrays_and_counts_non_finite(rng):
    from numba import cuda

    from fastimg.kernels.cuda import CudaPlan, raster_cuda

    plan = _plan(rng, 500, (20, 20), "norm2")
    x = rng.random((300, 500)).astype(np.float16)
    x[7, 3] = np.nan
    d_out = cuda.device_array((300, 20, 20), dtype=np.float32)
    n_bad = raster_cuda(cuda.to_device(x), CudaPlan(plan), d_out)
    assert n_bad == 1
    x[7, 3] = 0
    raster_cuda(cuda.to_device(x), CudaPlan(plan), d_out)
    want = raster_reference(x, plan, np.empty((300, 20, 20)))
    np.testing.assert_allclose(d_out.copy_to_host(), want, atol=1e-5, rtol=0)


def test_cuda_backend_is_available_on_a_gpu():
    from fastimg.raster import RASTER_BACKENDS

    assert RASTER_BACKENDS.get("cuda")[0] == "cuda"


@pytest.mark.parametrize("precision, compute_dtype, tol", [
    ("auto", "float16", 2e-2), ("fp16", "float16", 2e-2), ("bf16", "bfloat16", 5e-2),
    ("fp32", "float32", 1e-3)])
def test_encoder_on_cuda_matches_fp32_on_cpu(tiny_bert_dir, precision, compute_dtype, tol):
    from fastimg.embed import EncoderConfig, encode

    texts = [" ".join(["good film"] * n) + " the end" for n in range(1, 40)]
    common = dict(model=str(tiny_bert_dir), output_dtype="float32", max_length=96)
    stats = {}
    on_gpu = encode(texts, EncoderConfig(device="cuda", precision=precision, **common),
                    stats=stats)
    on_cpu = encode(texts, EncoderConfig(device="cpu", precision="fp32", **common))
    assert stats["device"] == "cuda" and stats["compute_dtype"] == compute_dtype
    scale = float(np.abs(on_cpu).max())
    assert float(np.abs(on_gpu - on_cpu).max()) < tol * scale


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_packed_batches_on_cuda_match_padded(tiny_bert_dir, precision, pooling):
    from fastimg.embed import EncoderConfig, encode

    texts = [" ".join(["good film"] * n) + " the end" for n in range(1, 40)]
    common = dict(model=str(tiny_bert_dir), output_dtype="float32", max_length=96,
                  device="cuda", precision=precision, pooling=pooling, token_budget=512)
    stats = {}
    packed = encode(texts, EncoderConfig(batching="packed", **common), stats=stats)
    padded = encode(texts, EncoderConfig(**common))
    assert stats["attention"] == ("padded" if precision == "fp32" else "varlen")
    tol = {"fp16": 2e-2, "bf16": 5e-2, "fp32": 1e-4}[precision]
    assert float(np.abs(packed - padded).max()) < tol * float(np.abs(padded).max())


@pytest.fixture(scope="module")
def long_bert_dir(tiny_bert_dir, tmp_path_factory):
    """Like ``tiny_bert_dir`` but 512 positions and heads of 16: texts past 128 tokens, where
    torch's varlen attention takes cuDNN's kernel instead of FlashAttention's on Hopper."""
    import shutil

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("long-bert")
    shutil.copytree(tiny_bert_dir, path, dirs_exist_ok=True)  # the tokenizer, whatever its files
    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.update(dict(hidden_size=64, num_hidden_layers=6, intermediate_size=128,
                       max_position_embeddings=512))
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)  # replaces the tiny model's config and weights
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("good film", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids, "the copied tokenizer lost its vocabulary"
    return path


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_packed_batches_past_128_tokens_match_padded(long_bert_dir, precision, pooling):
    from fastimg.embed import EncoderConfig, encode

    texts = [" ".join(["good film"] * n) + " the end" for n in range(40, 200, 7)]
    common = dict(model=str(long_bert_dir), output_dtype="float32", max_length=300,
                  layers=(1, 3, 6), device="cuda", precision=precision, pooling=pooling,
                  token_budget=2048)
    stats = {}
    packed = encode(texts, EncoderConfig(batching="packed", **common), stats=stats)
    padded = encode(texts, EncoderConfig(**common))
    assert stats["attention"] == "varlen"
    assert stats["tokens"] > 128 * len(texts)  # on average past cuDNN's 128 tokens
    tol = {"fp16": 2e-2, "bf16": 5e-2}[precision]
    assert float(np.abs(packed - padded).max()) < tol * float(np.abs(padded).max())


def test_encoder_auto_device_is_cuda_on_a_gpu():
    from fastimg.embed import ENCODE_DEVICES

    assert ENCODE_DEVICES.resolve("auto") == "cuda"
