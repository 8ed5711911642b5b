"""Same coordinates in, same pixels out: fastimg against pyDeepInsight's ImageTransformer."""
import numpy as np
import pytest

from fastimg.kernels import RasterPlan
from fastimg.layout import DeepInsightLayout, FeatureScaler
from fastimg.layout.pixels import assign_bin, rotate_to_bounding_rectangle
from fastimg.raster import rasterize
from conftest import structured_matrix

pdi = pytest.importorskip("pyDeepInsight")
from pyDeepInsight.utils import Norm2Scaler  # noqa: E402


class FixedEmbedding:
    """A 'feature extractor' that returns precomputed coordinates."""

    def __init__(self, coords):
        self.coords = coords

    def fit_transform(self, X):
        return self.coords


@pytest.fixture(params=[(50, 50), (20, 35)], ids=["square", "non_square"])
def fitted(request, rng):
    x = structured_matrix(rng, 64, 600).astype(np.float32)
    coords = rng.standard_normal((600, 2)) @ [[2.0, 0.5], [0.3, 1.0]]
    it = pdi.ImageTransformer(feature_extractor=FixedEmbedding(coords), pixels=request.param)
    it.fit(x)
    return x, coords, it, request.param


def plan_from_pdi(it, shape, **kwargs):
    rc = it.coords()
    return RasterPlan.from_pixels(rc[:, 0] * shape[1] + rc[:, 1], shape, **kwargs)


def test_raster_matches_pydeepinsight_scalar(fitted):
    x, _, it, shape = fitted
    scaled = Norm2Scaler().fit_transform(x)
    expected = it.transform(scaled, img_format="scalar")
    got = rasterize(scaled.astype(np.float32), plan_from_pdi(it, shape), backend="cpu")
    assert np.abs(got - expected).max() <= 1e-5


def test_fused_norm2_matches_pydeepinsight_scaler_then_transform(fitted):
    x, _, it, shape = fitted
    train = x[:48]
    new = x[48:] + 0.5 * np.abs(x).max()  # above the training range: clipping to 1 is exercised
    pdi_scaler = Norm2Scaler().fit(train)
    ours = FeatureScaler.fit(train, "norm2")
    plan = plan_from_pdi(it, shape, scaling="norm2", shift=ours.shift, scale=ours.scale)
    for data in (train, new):
        expected = it.transform(pdi_scaler.transform(data), img_format="scalar")
        assert np.abs(rasterize(data, plan, backend="cpu") - expected).max() <= 1e-5


def test_values_below_the_training_minimum_give_zero_not_nan(fitted):
    x, _, it, shape = fitted
    ours = FeatureScaler.fit(x, "norm2")
    plan = plan_from_pdi(it, shape, scaling="norm2", shift=ours.shift, scale=ours.scale)
    low = x[:4] - 10 * np.abs(x).max()
    occupied = np.unique(plan.pixel_of_feature)
    assert (rasterize(low, plan, backend="cpu").reshape(4, -1)[:, occupied] == 0).all()


def test_bin_pixels_match_pydeepinsight_for_the_same_rotated_coordinates(fitted):
    _, _, it, shape = fitted
    rc = it.coords()
    np.testing.assert_array_equal(assign_bin(it._xrot, shape), rc[:, 0] * shape[1] + rc[:, 1])


def test_bounding_rectangle_is_no_larger_than_pydeepinsights(fitted):
    _, coords, it, _ = fitted
    ours = np.ptp(rotate_to_bounding_rectangle(coords), axis=0).prod()
    assert ours <= np.ptp(it._xrot, axis=0).prod() + 1e-9


def test_layout_transform_matches_pydeepinsight_with_our_coordinates(rng):
    x = structured_matrix(rng, 60, 300)
    layout = DeepInsightLayout(grid=(24, 30), scaling="norm2", assignment="bin").fit(x)
    it = pdi.ImageTransformer(feature_extractor=FixedEmbedding(layout.coords_), pixels=(24, 30))
    it.fit(x)
    it._xrot = layout.coords_  # already rotated by our (correct) bounding rectangle
    it._calculate_coords()
    rc = it.coords()
    np.testing.assert_array_equal(layout.pixel_index_, rc[:, 0] * 30 + rc[:, 1])
    expected = it.transform(Norm2Scaler().fit_transform(x), img_format="scalar")
    assert np.abs(layout.transform(x) - expected).max() <= 1e-5


def test_pixel_coordinates_density_and_inverse_match_pydeepinsights(rng):
    """feature_pixels / feature_density / inverse_transform are pyDeepInsight's coords() /
    feature_density_matrix() / inverse_transform() for the same map."""
    x = structured_matrix(rng, 60, 300)
    layout = DeepInsightLayout(grid=(24, 30), scaling="norm2", assignment="bin").fit(x)
    it = pdi.ImageTransformer(feature_extractor=FixedEmbedding(layout.coords_), pixels=(24, 30))
    it.fit(x)
    it._xrot = layout.coords_
    it._calculate_coords()
    np.testing.assert_array_equal(layout.feature_pixels(), it.coords())
    np.testing.assert_array_equal(layout.feature_density(), it.feature_density_matrix())
    images = layout.transform(x)
    np.testing.assert_allclose(layout.inverse_transform(images), it.inverse_transform(images),
                               rtol=0, atol=0)
