"""``synthetic_matrix``: the demo matrix of ``fastimg images --synthetic``, made block by block."""
import tracemalloc

import numpy as np
import pytest

import fastimg.images
from fastimg.images import synthetic_matrix


def _one_draw(n, f, rank=16, seed=0, dtype=np.float16):
    """The matrix as one draw of the whole noise (what the blocks must reproduce)."""
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((n, rank)).astype(np.float32)
    loadings = rng.standard_normal((rank, f)).astype(np.float32)
    noise = 0.3 * rng.standard_normal((n, f)).astype(np.float32)
    return (factors @ loadings / np.sqrt(rank) + noise).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("block", [1, 7, 64, 8192])
def test_blocks_give_the_values_of_one_draw(monkeypatch, dtype, block):
    monkeypatch.setattr(fastimg.images, "SYNTHETIC_BLOCK_ROWS", block)
    got = synthetic_matrix(50, 13, seed=3, dtype=dtype)
    assert got.dtype == dtype
    expected = _one_draw(50, 13, seed=3, dtype=dtype)
    # the same draws; the product equal to its rounding: BLAS sums a 1-row or 7-row block in
    # another order than the whole matrix (bytes equal on one machine, not on another: a
    # noise drawn out of order would be off by about 1, not by a few float32 steps)
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=0,
                               atol=4 * np.finfo(dtype).eps * np.abs(expected).max())
    assert got.tobytes() == synthetic_matrix(50, 13, seed=3, dtype=dtype).tobytes()


def test_memory_is_the_output_and_a_block(monkeypatch):
    monkeypatch.setattr(fastimg.images, "SYNTHETIC_BLOCK_ROWS", 256)
    n, f = 4096, 256
    tracemalloc.start()
    try:
        out = synthetic_matrix(n, f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a whole-matrix draw holds float64 noise (4x the float16 output) and float32 copies
    assert peak < 2 * out.nbytes, (peak, out.nbytes)


def test_a_matrix_past_the_machines_memory_is_refused_before_any_work(monkeypatch, tmp_path,
                                                                      capsys):
    """np.empty of more than the machine has succeeds (the pages come later), so the fill
    ran until the kernel killed the process: no message, exit 137."""
    from fastimg.cli import main

    monkeypatch.setattr(fastimg.images, "total_memory_bytes", lambda: 100 * 40 * 2 - 1)
    with pytest.raises(MemoryError, match=r"a 100 x 40 float16 matrix needs 0\.0 GiB, more "):
        synthetic_matrix(100, 40)
    assert main(["images", "--synthetic", "100x40", "--out", str(tmp_path / "o.zarr")]) == 2
    assert "error: out of memory: a 100 x 40 float16 matrix needs" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()
    monkeypatch.setattr(fastimg.images, "total_memory_bytes", lambda: 100 * 40 * 2)
    assert synthetic_matrix(100, 40).shape == (100, 40)
