import numpy as np
import pytest
import zarr

from fastimg.kernels import RasterPlan
from fastimg.raster import rasterize, rasterize_to_array


@pytest.fixture
def plan(rng):
    return RasterPlan.from_pixels(rng.integers(0, 48, 90), (6, 8), scaling="minmax",
                                  shift=np.zeros(90, np.float32), scale=np.ones(90, np.float32))


def zarr_target(tmp_path, n, dtype="float16", chunk=16, name="images.zarr"):
    return zarr.create_array(str(tmp_path / name), shape=(n, 6, 8), dtype=dtype,
                             chunks=(chunk, 6, 8))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_streamed_memmap_equals_in_memory(rng, tmp_path, plan, dtype):
    source = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16,
                                       shape=(100, 90))
    source[:] = rng.random((100, 90))
    target = zarr_target(tmp_path, 100, dtype)
    rasterize_to_array(source, plan, target, block_rows=32, progress=False)
    expected = rasterize(np.asarray(source), plan).astype(dtype)
    np.testing.assert_array_equal(target[:], expected)


def test_zarr_source_and_uint8_images(rng, tmp_path, plan):
    source = zarr.create_array(str(tmp_path / "x.zarr"), shape=(50, 90), dtype="float32",
                               chunks=(20, 90))
    source[:] = rng.random((50, 90)).astype(np.float32)
    target = zarr_target(tmp_path, 50, "uint8")
    rasterize_to_array(source, plan, target, progress=False)
    expected = np.rint(rasterize(source[:], plan) * 255).astype(np.uint8)
    np.testing.assert_array_equal(target[:], expected)


def test_resume_skips_rows_before_start_row(rng, tmp_path, plan):
    x = rng.random((64, 90)).astype(np.float32)
    target = zarr_target(tmp_path, 64, "float32")
    target[:] = -1.0
    rasterize_to_array(x, plan, target, start_row=32, block_rows=16, progress=False)
    assert (target[:32] == -1.0).all()
    np.testing.assert_array_equal(target[32:], rasterize(x[32:], plan))


def test_nan_in_a_block_names_the_rows(rng, tmp_path, plan):
    x = rng.random((64, 90)).astype(np.float32)
    x[40, 3] = np.nan
    with pytest.raises(ValueError, match=r"rows \[40\]\)"):  # the row, not its block 32..47
        rasterize_to_array(x, plan, zarr_target(tmp_path, 64), block_rows=16, progress=False)


def test_shape_mismatches(rng, tmp_path, plan):
    with pytest.raises(ValueError, match="features"):
        rasterize_to_array(rng.random((10, 91)), plan, zarr_target(tmp_path, 10), progress=False)
    with pytest.raises(ValueError, match="target shape"):
        rasterize_to_array(rng.random((11, 90)), plan, zarr_target(tmp_path, 10, name="b.zarr"),
                           progress=False)


def test_the_cpu_kernel_leaves_torch_threads_alone():
    """Asking Numba for its thread count launches its OpenMP layer, which resets the process's
    OpenMP threads (torch's): a cluster worker's one torch thread became two, and its encodings
    changed in the last bit. A fresh interpreter, so that nothing has launched it yet."""
    import subprocess
    import sys

    pytest.importorskip("torch")
    code = """
import numpy as np, torch
torch.set_num_threads(1)
torch.ones(256, 256) @ torch.ones(256, 256)  # torch's OpenMP runtime started, as in a build
from fastimg.kernels import RasterPlan
from fastimg.raster import rasterize
plan = RasterPlan.from_pixels(np.arange(40) % 16, (4, 4))
rasterize(np.random.default_rng(0).random((5000, 40), dtype=np.float32), plan, backend="cpu")
print(torch.get_num_threads())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "1"


def test_an_unknown_raster_backend_is_refused_before_any_work(rng, tmp_path, monkeypatch):
    from fastimg import store
    from fastimg.images import ImagesConfig, build_image_store
    from fastimg.layout import DeepInsightLayout, LayoutConfig

    def no_fit(*args, **kwargs):
        raise AssertionError("the layout was fitted before the backend was checked")

    monkeypatch.setattr(DeepInsightLayout, "fit", no_fit)
    out = tmp_path / "out.zarr"
    with pytest.raises(ValueError, match="unknown raster backend 'bogus'"):
        build_image_store(rng.random((40, 30)).astype(np.float32), out,
                          LayoutConfig(method="pca", grid=(6, 6)),
                          ImagesConfig(raster_backend="bogus"), progress=False)
    assert not out.exists() and not store.partial_path(out).exists()


def test_configs_refuse_an_unknown_raster_backend_when_made():
    """DatasetConfig(raster_backend="gpu") was accepted and refused only by a build, where
    LayoutConfig refuses its unknown backend as it is made; a known one that cannot run on
    this machine is still a config (a store built on a GPU is read here)."""
    from fastimg.dataset import DatasetConfig
    from fastimg.images import ImagesConfig

    for config in (DatasetConfig, ImagesConfig):
        with pytest.raises(ValueError, match="unknown raster backend 'gpu'"):
            config(raster_backend="gpu")
        assert config(raster_backend="cuda").raster_backend == "cuda"


def test_uint8_images_of_unscaled_features_outside_0_1_are_refused(rng, tmp_path):
    """--scaling none --dtype uint8 clipped embeddings to [0, 1] silently: 71% of the pixels
    of a MiniLM store were 0. Refused before the layout is fitted: the refusal came after it,
    and left an unfinished build that a rerun "resumed" into the same refusal."""
    from fastimg import store
    from fastimg.images import ImagesConfig, build_image_store
    from fastimg.layout import LayoutConfig

    layout = LayoutConfig(method="pca", grid=(6, 6), scaling="none")
    out = tmp_path / "out.zarr"
    with pytest.raises(ValueError, match=r"scaling='none' .* -\d.* to \d"):
        build_image_store(rng.normal(size=(40, 30)).astype(np.float32), out, layout,
                          ImagesConfig(image_dtype="uint8"), progress=False)
    assert not out.exists() and not store.partial_path(out).exists()
    ok = tmp_path / "ok.zarr"  # features in [0, 1] already: nothing is clipped
    build_image_store(rng.random((40, 30)).astype(np.float32), ok, layout,
                      ImagesConfig(image_dtype="uint8"), progress=False)
    assert store.StoreReader(ok).images.dtype == np.uint8


@pytest.mark.parametrize("dtype", ["uint8", "float16", "float32"])
def test_image_unit_reads_each_stored_dtype_back_into_the_unit_interval(dtype):
    from fastimg.raster import image_unit, to_image_dtype

    values = np.random.default_rng(0).random((4, 5, 6), dtype=np.float32)
    back = to_image_dtype(values, dtype).astype(np.float32) * image_unit(dtype)
    step = 1 / 255 if dtype == "uint8" else 1e-3  # uint8 rounds to the nearest of 0..255
    assert np.abs(back - values).max() <= step / 2 + 1e-7
    assert back.dtype == np.float32
