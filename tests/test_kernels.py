"""Contract tests: every in-process kernel backend against the numpy reference."""
import numpy as np
import pytest

from fastimg.kernels import RasterPlan, raster_reference
from fastimg.raster import RASTER_BACKENDS, rasterize

BACKENDS = ["cpu", "numpy"]


def make_plan(rng, n_features, shape, scaling="none", fill_value=0.0):
    pixels = rng.integers(0, shape[0] * shape[1], n_features)
    shift = rng.random(n_features).astype(np.float32) + 1.0
    scale = rng.random(n_features).astype(np.float32) + 0.1
    return RasterPlan.from_pixels(pixels, shape, scaling=scaling, shift=shift, scale=scale,
                                  fill_value=fill_value)


def reference(x, plan):
    out = np.empty((x.shape[0], plan.height, plan.width))
    return raster_reference(x, plan, out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("scaling", ["none", "minmax", "norm2"])
@pytest.mark.parametrize("shape,n_features", [((16, 16), 40), ((16, 16), 700), ((7, 13), 300)])
def test_backend_matches_reference(rng, backend, dtype, scaling, shape, n_features):
    plan = make_plan(rng, n_features, shape, scaling, fill_value=-0.5)
    x = rng.random((37, n_features)).astype(dtype)
    got = rasterize(x, plan, backend=backend)
    assert got.shape == (37, *shape) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference(x, plan), atol=1e-5, rtol=0)


def test_reference_is_the_mean_of_each_pixel():
    # features 0 and 2 share pixel (0, 1); feature 1 sits alone on (1, 0); the rest is empty
    plan = RasterPlan.from_pixels([1, 2, 1], (2, 2), fill_value=9.0)
    x = np.array([[1.0, 5.0, 3.0]])
    got = reference(x, plan)
    np.testing.assert_array_equal(got[0], [[9.0, 2.0], [5.0, 9.0]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scaling, expected", [
    # the SCALING_CODES formulas by hand, one feature per pixel, shift 2 and scale 0.25:
    # minmax clip((x + 2) / 4, 0, 1); norm2 min(log(max(x + 2, 1)) / 4, 1)
    ("none", [-3.0, -0.5, 0.0, 1.0, 30.0, 100.0]),
    ("minmax", [0.0, 0.375, 0.5, 0.75, 1.0, 1.0]),
    ("norm2", [0.0, np.log(1.5) / 4, np.log(2.0) / 4, np.log(3.0) / 4, np.log(32.0) / 4, 1.0]),
])
def test_scaling_follows_the_documented_formulas(backend, scaling, expected):
    """The other tests compare every backend with raster_reference (the "numpy" backend is
    raster_reference itself): a scaling formula wrong in the oracle and a kernel alike, or in
    the oracle alone for the "numpy" backend, passed them. Values below and above the clip
    bounds (x + shift < 1 under norm2, log(102) / 4 > 1) are among them."""
    x = np.array([[-3.0, -0.5, 0.0, 1.0, 30.0, 100.0]], np.float32)
    plan = RasterPlan.from_pixels([0, 1, 2, 3, 4, 5], (2, 4), scaling=scaling,
                                  shift=np.full(6, 2.0, np.float32),
                                  scale=np.full(6, 0.25, np.float32), fill_value=-9.0)
    got = rasterize(x, plan, backend=backend).reshape(-1)
    np.testing.assert_allclose(got, [*expected, -9.0, -9.0], atol=1e-6, rtol=0)


def test_empty_pixels_get_fill_value_and_others_do_not(rng):
    plan = make_plan(rng, 10, (8, 8), fill_value=-7.0)
    got = rasterize(rng.random((5, 10)).astype(np.float32), plan, backend="cpu")
    occupied = np.zeros(64, bool)
    occupied[plan.pixel_of_feature] = True
    flat = got.reshape(5, -1)
    assert (flat[:, ~occupied] == -7.0).all()
    assert (flat[:, occupied] != -7.0).all()


def test_cpu_kernel_is_deterministic(rng):
    plan = make_plan(rng, 500, (20, 20), "norm2")
    x = rng.random((300, 500)).astype(np.float16)
    first = rasterize(x, plan, backend="cpu")
    for _ in range(3):
        np.testing.assert_array_equal(rasterize(x, plan, backend="cpu"), first)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_a_value_error(rng, backend, dtype, bad):
    plan = make_plan(rng, 30, (6, 6))
    x = rng.random((10, 30)).astype(dtype)
    x[4, 17] = bad
    with pytest.raises(ValueError, match=r"^x contains NaN or infinite values \(rows \[4\]\)"):
        rasterize(x, plan, backend=backend)


@pytest.mark.parametrize("out, said", [
    ([[0.0]], "got a list"), (np.zeros((2, 6, 6)), "got float64 of shape (2, 6, 6)"),
    (np.zeros((2, 6, 6), np.float32)[:, ::-1], "not C-contiguous")])
def test_an_out_that_cannot_take_the_images_is_described(rng, out, said):
    """out=[[0.0]] was "got list  of shape None"."""
    plan = make_plan(rng, 30, (6, 6))
    with pytest.raises(ValueError, match="out must be") as caught:
        rasterize(rng.random((2, 30)).astype(np.float32), plan, out=out)
    assert str(caught.value).endswith(said), str(caught.value)


def test_feature_count_mismatch_is_a_value_error(rng):
    plan = make_plan(rng, 30, (6, 6))
    with pytest.raises(ValueError, match="30 features"):
        rasterize(rng.random((4, 31)), plan, backend="cpu")


def test_plan_rejects_pixels_outside_the_grid():
    with pytest.raises(ValueError, match="pixel_index"):
        RasterPlan.from_pixels([0, 4], (2, 2))


@pytest.mark.parametrize("pixels, shape, match", [
    # 1.7 became pixel 1 without a word; (-1, -1) made a plan of "1 pixel"; an int shape
    # failed with "'int' object is not iterable", a triple with "too many values to unpack"
    ([0.5, 1.7], (2, 2), "pixel_index must hold whole numbers"),
    (["0", "1"], (2, 2), "pixel_index must hold whole numbers"),
    ([0], (-1, -1), r"shape must be an int or a \(height, width\) pair"),
    ([0], (2, 2, 2), r"shape must be an int or a \(height, width\) pair"),
    ([0], (2.5, 2), r"shape must be an int or a \(height, width\) pair"),
])
def test_plan_refuses_fractions_and_bad_shapes(pixels, shape, match):
    with pytest.raises(ValueError, match=match):
        RasterPlan.from_pixels(pixels, shape)


def test_plan_takes_a_square_grid_as_an_int_and_whole_floats():
    plan = RasterPlan.from_pixels(np.array([0.0, 3.0]), 2)
    assert (plan.height, plan.width) == (2, 2)
    assert plan.pixel_of_feature.tolist() == [0, 3]


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="cpu"):
        RASTER_BACKENDS.resolve("tpu")


def test_auto_resolves_to_the_cpu_kernel():
    # host-to-host rasterisation is faster on the CPU kernel even beside a GPU (raster.py)
    assert RASTER_BACKENDS.resolve("auto") == "cpu"


@pytest.mark.parametrize("scaling", ["none", "norm2"])
def test_cpu_blocks_shared_by_threads_match_reference(rng, monkeypatch, scaling):
    from fastimg.kernels import cpu

    monkeypatch.setattr(cpu, "_ROWS_PER_BLOCK", 8)  # many blocks, a partial last one
    plan = make_plan(rng, 300, (12, 12), scaling, fill_value=0.25)
    x = rng.random((101, 300)).astype(np.float16)
    out = np.empty((101, 12, 12), np.float32)
    assert cpu.raster_cpu(x, plan, out) == 0
    np.testing.assert_allclose(out, reference(x, plan), atol=1e-5, rtol=0)
    x[[3, 50, 50, 100], [0, 1, 2, 299]] = [np.nan, np.inf, -np.inf, np.nan]
    assert cpu.raster_cpu(x, plan, out) == 4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("scaling", ["none", "minmax", "norm2"])
def test_negative_values_and_values_below_the_fitted_minimum_match_reference(rng, backend,
                                                                             dtype, scaling):
    """Embeddings are mostly signed float16, and new rows fall below the training minimum
    (``x + shift < 1`` under norm2, clipped to 0): the uniform [0, 1) inputs above reach
    neither the float16 sign bit nor the norm2 floor."""
    plan = make_plan(rng, 300, (12, 12), scaling, fill_value=-0.5)
    x = (3.0 * rng.standard_normal((37, 300))).astype(dtype)
    assert (x < -2.0).any()  # x + shift < 1 for some values (shift is in [1, 2))
    got = rasterize(x, plan, backend=backend)
    np.testing.assert_allclose(got, reference(x, plan), atol=1e-5, rtol=0)
