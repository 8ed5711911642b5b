import zipfile

import numpy as np
import pytest

from fastimg.layout import DeepInsightLayout, FeatureScaler, LayoutConfig, assign_pixels
from fastimg.layout.pixels import ASSIGNMENTS, rotate_to_bounding_rectangle
from conftest import structured_matrix


@pytest.fixture
def matrix(rng):
    return structured_matrix(rng, 120, 400)


def test_same_seed_same_layout_other_seed_other_layout(matrix):
    a = DeepInsightLayout(grid=16, random_state=3).fit(matrix)
    b = DeepInsightLayout(grid=16, random_state=3).fit(matrix)
    c = DeepInsightLayout(grid=16, random_state=4).fit(matrix)
    np.testing.assert_array_equal(a.pixel_index_, b.pixel_index_)
    assert not np.array_equal(a.pixel_index_, c.pixel_index_)


def test_several_tsne_threads_give_the_same_layout_every_run(matrix):
    a = DeepInsightLayout(grid=16, n_jobs=2).fit(matrix)
    b = DeepInsightLayout(grid=16, n_jobs=2).fit(matrix)
    np.testing.assert_array_equal(a.coords_, b.coords_)


def test_one_thread_gives_the_same_layout_whatever_blas_and_openmp_threads(rng):
    """BLAS's sums depend on its thread count (``OMP_NUM_THREADS``, the machine's cores): the
    fit runs BLAS and OpenMP on ``n_jobs`` threads. (With n_jobs=-1, which leaves them as
    they are, this matrix gives two layouts.)"""
    from threadpoolctl import threadpool_limits

    X = structured_matrix(rng, 400, 1500, rank=12)
    coords = []
    for threads in (1, 4):
        with threadpool_limits(threads):
            coords.append(DeepInsightLayout(grid=40, n_jobs=1).fit(X).coords_)
    np.testing.assert_array_equal(*coords)


def test_correlated_features_land_close(rng):
    # two groups of features driven by two independent factors must form two regions
    factors = rng.standard_normal((200, 2))
    x = np.repeat(factors, 100, axis=1) + 0.05 * rng.standard_normal((200, 200))
    layout = DeepInsightLayout(grid=20, scaling="minmax", perplexity=10).fit(x)
    rows, cols = np.divmod(layout.pixel_index_, 20)
    pos = np.stack([rows, cols], 1).astype(float)
    within = np.linalg.norm(pos[:100] - pos[:100].mean(0), axis=1).mean()
    between = np.linalg.norm(pos[:100].mean(0) - pos[100:].mean(0))
    assert between > 2 * within


@pytest.mark.parametrize("fmt", ["json", "npz", "NPZ"])
def test_save_load_round_trip(matrix, tmp_path, fmt):
    layout = DeepInsightLayout(grid=(12, 9), scaling="minmax").fit(matrix)
    layout.save(tmp_path / f"layout.{fmt}")
    # an .NPZ file held JSON: numpy and other tools could not read it
    assert zipfile.is_zipfile(tmp_path / f"layout.{fmt}") == (fmt != "json")
    loaded = DeepInsightLayout.load(tmp_path / f"layout.{fmt}")
    np.testing.assert_array_equal(loaded.pixel_index_, layout.pixel_index_)
    assert loaded.config == layout.config
    new = matrix[:7] * 1.5
    np.testing.assert_array_equal(loaded.transform(new), layout.transform(new))


def test_scikit_learn_clones_and_sets_its_settings(matrix):
    """Described as sklearn-style, it had no get_params/set_params: sklearn.clone and the
    parameter searches could not take it."""
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    layout = DeepInsightLayout(grid=10, method="pca").fit(matrix)
    copy = clone(layout)
    assert copy.config == layout.config and not hasattr(copy, "pixel_index_")
    pipe = Pipeline([("layout", copy)]).set_params(layout__grid=(8, 6))
    assert copy.config.grid == (8, 6) and copy.config.method == "pca"
    assert copy.get_params()["grid"] == [8, 6] and "config" in copy.get_params(deep=False)
    assert pipe.fit(matrix).named_steps["layout"].transform(matrix[:3]).shape == (3, 8, 6)
    layout.set_params(method="pca")  # the same settings: the fitted map stays
    assert hasattr(layout, "pixel_index_")
    layout.set_params(grid=12)  # a map of the 10 x 10 grid would draw wrong images
    with pytest.raises(RuntimeError, match="not fitted"):
        layout.transform(matrix[:2])
    with pytest.raises(TypeError, match="unknown LayoutConfig field"):
        layout.set_params(perplexityy=5)


@pytest.mark.parametrize("method", ["pca", "kpca"])
def test_other_embedding_methods(matrix, method):
    """The map's points are the method's 2-D embedding of the scaled features, up to the
    rotation onto the bounding rectangle (pairwise distances kept): pca is the features' top
    two principal components, kpca an RBF kernel PCA of the 50-component PCA pre-reduction.
    (Shape and occupancy alone passed with the method ignored, t-SNE run instead.)"""
    from scipy.spatial.distance import pdist
    from sklearn.decomposition import PCA, KernelPCA

    layout = DeepInsightLayout(grid=10, method=method).fit(matrix)
    assert layout.pixel_index_.shape == (400,)
    assert 10 < layout.n_occupied_pixels <= 100
    points = FeatureScaler.fit(matrix, "norm2").transform(matrix).T  # features are the points
    if method == "pca":
        want = PCA(n_components=2, svd_solver="full").fit_transform(points)
    else:
        reduced = PCA(n_components=50, svd_solver="full").fit_transform(points)
        want = KernelPCA(n_components=2, kernel="rbf").fit_transform(reduced)
    np.testing.assert_allclose(pdist(layout.coords_), pdist(want), atol=1e-3, rtol=0)


def test_sklearn_tsne_backend(matrix):
    """The backend's name alone passed whatever embedding ran: the map's points are
    scikit-learn's t-SNE (perplexity 30, cosine, seed 0) of the scaled features (scaled in
    float32, see DeepInsightLayout._fit), up to the rotation onto the bounding rectangle."""
    from scipy.spatial.distance import pdist
    from sklearn.manifold import TSNE

    layout = DeepInsightLayout(grid=10, backend="sklearn", pca_components=None).fit(matrix)
    assert layout.backend_ == "sklearn"
    points = FeatureScaler.fit(matrix, "norm2").transform(matrix, dtype=np.float32).T
    want = TSNE(n_components=2, perplexity=30, metric="cosine", random_state=0,
                n_jobs=1).fit_transform(np.ascontiguousarray(points, dtype=np.float64))
    np.testing.assert_allclose(pdist(layout.coords_), pdist(want), atol=1e-6, rtol=0)


def test_assignment_gives_each_feature_its_own_pixel_on_non_square_grid(rng):
    x = structured_matrix(rng, 80, 100)
    layout = DeepInsightLayout(grid=(8, 15), assignment="assignment", perplexity=10).fit(x)
    assert np.unique(layout.pixel_index_).size == 100
    assert layout.pixel_index_.max() < 120
    assert layout.transform(x).shape == (80, 8, 15)


def test_default_layout_keeps_every_feature_in_a_pixel_of_its_own(rng):
    # the default assignment: no two features averaged into one pixel, so the image holds
    # every scaled feature value (bin, DeepInsight's own, averages the features of a pixel)
    x = structured_matrix(rng, 60, 90)
    layout = DeepInsightLayout(grid=10, perplexity=10).fit(x)
    images = layout.transform(x).reshape(60, -1)
    np.testing.assert_allclose(images[:, layout.pixel_index_], layout.scaler_.transform(x),
                               atol=1e-6)


def test_assignment_with_more_features_than_pixels_clusters_first(rng):
    coords = rng.random((300, 2))
    pixels = assign_pixels(coords, (5, 7), "assignment")
    assert np.unique(pixels).size == 35  # every pixel used, none twice per cluster


def test_bin_matches_floor_of_scaled_coordinates():
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [0.49, 0.99], [0.5, 0.2]])
    pixels = assign_pixels(coords, (2, 4), "bin")
    np.testing.assert_array_equal(pixels, [0, 7, 3, 4])


@pytest.mark.parametrize("coords, shape, match", [
    # NaN went to pixel 0 with a RuntimeWarning; three columns and an int shape failed inside
    # numpy ("operands could not be broadcast", "cannot unpack non-iterable int object")
    (np.array([[0.0, 0.0], [np.nan, 1.0]]), (2, 2), r"coords hold NaN or infinite values "
                                                     r"\(rows \[1\]\)"),
    (np.zeros((4, 3)), (2, 2), r"coords must be an \(n_features, 2\) array"),
    (np.zeros(4), (2, 2), r"coords must be an \(n_features, 2\) array"),
    (np.zeros((4, 2)), (2,), r"shape must be an int or a \(height, width\) pair"),
])
def test_pixel_helpers_name_bad_coordinates_and_shapes(coords, shape, match):
    for method in ASSIGNMENTS:
        with pytest.raises(ValueError, match=match):
            assign_pixels(coords, shape, method)
    if shape == (2, 2):
        with pytest.raises(ValueError, match=match):
            rotate_to_bounding_rectangle(coords)


def test_feature_scaler_names_a_matrix_of_the_wrong_shape(rng):
    # transform of another feature count failed with numpy's "operands could not be
    # broadcast together", fit of a 1-D array with "tuple index out of range"
    from fastimg.layout import FeatureScaler

    scaler = FeatureScaler.fit(rng.normal(size=(5, 4)), "minmax")
    with pytest.raises(ValueError, match=r"x must be a 2-D matrix with the 4 features the "
                                         r"scaler was fitted on, got shape \(2, 3\)"):
        scaler.transform(rng.normal(size=(2, 3)))
    with pytest.raises(ValueError, match=r"x must be a non-empty 2-D matrix"):
        FeatureScaler.fit(np.zeros(4), "norm2")
    assert scaler.transform(rng.normal(size=(2, 4)).tolist()).shape == (2, 4)


def test_assign_pixels_takes_a_square_grid_as_an_int():
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [0.49, 0.99], [0.5, 0.2]])
    np.testing.assert_array_equal(assign_pixels(coords, 2, "bin"),
                                  assign_pixels(coords, (2, 2), "bin"))


@pytest.mark.parametrize("method", ["bin", "assignment"])
def test_assign_pixels_names_a_seed_it_cannot_use(rng, method):
    # sklearn's "The 'random_state' parameter of KMeans must be ..." for "assignment" with more
    # features than pixels; nothing at all for "bin"
    with pytest.raises(ValueError, match=r"^random_state must be a whole number from 0 "):
        assign_pixels(rng.random((40, 2)), (3, 3), method, random_state=-5)


def test_rotation_aligns_a_tilted_rectangle(rng):
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    base = np.vstack([corners, rng.random((500, 2))]) * [10.0, 1.0]  # its MBR is the 10 x 1 box
    angle = 0.6
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rotated = rotate_to_bounding_rectangle(base @ rot.T)
    extent = np.ptp(rotated, axis=0)
    assert extent.prod() == pytest.approx(10.0, rel=1e-9)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_training_data_is_a_value_error(matrix, bad):
    matrix[3, 5] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        DeepInsightLayout(grid=10).fit(matrix)


def test_feature_mismatch_between_fit_and_transform(matrix):
    layout = DeepInsightLayout(grid=10).fit(matrix)
    with pytest.raises(ValueError, match="399 features but the layout was fitted on 400"):
        layout.transform(matrix[:, :399])


@pytest.mark.parametrize("grid", [1, (1, 5), (5, 0)])
def test_grid_smaller_than_two_by_two(grid):
    with pytest.raises(ValueError, match="at least 2 x 2"):
        LayoutConfig(grid=grid)


def test_too_few_features_for_perplexity(rng):
    with pytest.raises(ValueError, match="perplexity 30 needs at least 91 features"):
        DeepInsightLayout(grid=10).fit(rng.random((50, 60)))


def test_too_few_samples(rng):
    with pytest.raises(ValueError, match="at least 2 samples"):
        DeepInsightLayout(grid=10).fit(rng.random((1, 200)))


def test_unknown_options_are_value_errors():
    with pytest.raises(ValueError, match="scaling"):
        LayoutConfig(scaling="log")
    with pytest.raises(ValueError, match="t-SNE backend"):
        LayoutConfig(backend="tsnecuda")


def test_transform_before_fit():
    with pytest.raises(RuntimeError, match="not fitted"):
        DeepInsightLayout().transform(np.zeros((2, 3)))


def test_features_constant_on_the_training_rows_get_a_pixel(rng):
    # scaled to all-zero vectors, they have no cosine distance: openTSNE's
    # exact neighbour search divides by their norm and fails on the NaN
    x = rng.standard_normal((30, 200))
    x[:, [3, 50, 77]] = -0.5  # norm2: log(x + |min| + 1) = log(1) = 0
    layout = DeepInsightLayout(grid=(10, 10), backend="opentsne", perplexity=5,
                               random_state=0).fit(x)
    assert layout.pixel_index_.shape == (200,)
    assert np.isfinite(layout.coords_).all()


@pytest.mark.parametrize("method", ["norm2", "minmax", "none"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_float32_scaling_matches_float64(rng, method, dtype):
    from fastimg.layout import FeatureScaler

    x = (3.0 * rng.standard_normal((300, 50))).astype(dtype)
    scaler = FeatureScaler.fit(x, method)
    got = scaler.transform(x[::-1], dtype=np.float32)  # also a non-contiguous input
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, scaler.transform(x[::-1]), atol=2e-6, rtol=0)


def test_norm2_scale_is_one_over_the_log_of_the_largest_shifted_value(rng):
    from fastimg.layout import FeatureScaler

    x = rng.standard_normal((500, 40)).astype(np.float32)
    scaler = FeatureScaler.fit(x, "norm2")
    shift = np.abs(x.min(axis=0).astype(np.float64)) + 1.0
    expected = 1.0 / np.log(x.astype(np.float64) + shift).max()  # pyDeepInsight's Norm2Scaler
    np.testing.assert_allclose(scaler.scale, expected, rtol=1e-7)


def test_pca_power_iterations_must_be_non_negative():
    with pytest.raises(ValueError, match="pca_power_iterations"):
        LayoutConfig(pca_power_iterations=-1)


def test_cuml_backend_through_fakes_returns_numpy_and_records_cumls_version(
        matrix, monkeypatch):
    """The cuML t-SNE backend runs only beside a GPU: here cuML and CuPy are fakes that keep
    their contract (``fit_transform`` of a device array returns a device array, which
    ``cupy.asnumpy`` brings back). pip installs cuML as ``cuml-cu13`` (the gpu extra) or
    ``cuml-cu12``, never as ``cuml``: the layout's provenance names the version of the module
    the fit ran on."""
    import dataclasses
    import sys
    import types

    from sklearn.decomposition import PCA

    from fastimg.layout.embedding import TSNE_BACKENDS

    class DeviceArray:  # what CuPy hands back: not a numpy array
        def __init__(self, data):
            self.data = data

    calls = {}

    class TSNE:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def fit_transform(self, x):
            assert isinstance(x, DeviceArray) and x.data.dtype == np.float32
            return DeviceArray(PCA(n_components=2, random_state=0).fit_transform(x.data))

    cupy = types.ModuleType("cupy")
    cupy.float32 = np.float32
    cupy.asarray = lambda x, dtype=None: DeviceArray(np.asarray(x, dtype=dtype))
    cupy.asnumpy = lambda x: x.data
    cuml = types.ModuleType("cuml")
    cuml.__version__ = "26.2.0"
    manifold = types.ModuleType("cuml.manifold")
    manifold.TSNE = TSNE
    cuml.manifold = manifold
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cuml", cuml)
    monkeypatch.setitem(sys.modules, "cuml.manifold", manifold)
    # and a GPU beside them (a backend that cannot run here is refused before it is loaded)
    cuml_backend = TSNE_BACKENDS._backends["cuml"]
    monkeypatch.setitem(TSNE_BACKENDS._backends, "cuml",
                        dataclasses.replace(cuml_backend, available=lambda: True))
    layout = DeepInsightLayout(grid=10, backend="cuml", random_state=4).fit(matrix)
    assert layout.backend_ == "cuml" and layout.pixel_index_.shape == (400,)
    assert calls["init"]["random_state"] == 4 and calls["init"]["metric"] == "cosine"
    assert layout.to_dict()["versions"]["cuml"] == "26.2.0"


def test_assignment_gives_each_feature_its_nearest_pixel_when_none_are_shared(rng):
    """When no two features fall on one pixel, the assignment has nothing to resolve: each
    feature's nearest pixel centre is the pixel it falls on, so ``assignment`` equals
    ``bin``. Catches centres off by half a pixel, swapped axes and features paired with
    another feature's pixel."""
    shape = (30, 40)
    coords = rng.random((25, 2)) * [3.0, 5.0]
    bins = assign_pixels(coords, shape, "bin")
    assert np.unique(bins).size == bins.size  # this draw puts no two on one pixel
    np.testing.assert_array_equal(assign_pixels(coords, shape, "assignment"), bins)


def test_features_clustered_onto_fewer_pixels_stay_near_their_own_coordinates(rng):
    from fastimg.layout.pixels import pixel_centres, scale_to_grid

    shape = (5, 7)
    coords = rng.random((300, 2))
    pixels = assign_pixels(coords, shape, "assignment")
    distance = np.linalg.norm(scale_to_grid(coords, shape) - pixel_centres(shape)[pixels],
                              axis=1)
    assert np.median(distance) < 1.0  # within about a pixel; a shuffled map is ~3 away


def test_more_features_than_pixels_on_fewer_distinct_points_share_pixels(rng):
    """Features on few distinct coordinates (layer 0's [CLS] vector is the same for every
    text: its features sit together) ran k-means with more clusters than distinct points:
    scikit-learn's ConvergenceWarning, raw, and clusters without a feature. Features that
    share their coordinates share a pixel; distinct ones get pixels of their own."""
    shape = (5, 6)
    points = rng.random((20, 2))
    which = np.concatenate([np.arange(20), rng.integers(0, 20, 30)])  # 50 features > 30
    pixels = assign_pixels(points[which], shape, "assignment")  # warnings are errors here
    assert np.unique(pixels).size == 20
    for point in range(20):
        assert np.unique(pixels[which == point]).size == 1


def test_a_layout_with_many_constant_features_says_so(rng, caplog):
    """--layers 0 with [CLS] pooling (the embedding layer's [CLS] row is the same for every
    text) built images a seventh of whose features carry nothing, without a word."""
    import logging

    x = structured_matrix(rng, 120, 60)

    def warnings_of(matrix):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fastimg.layout"):
            DeepInsightLayout(grid=(8, 8), method="pca").fit(matrix)
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    assert warnings_of(x) == []
    x[:, :10] = 0.25
    assert warnings_of(x) == [
        "10 of the 60 features (17%) are constant on the 120 fitted rows: they carry nothing "
        "(with [CLS] pooling, the embedding layer's, layer 0, is the same for every text)"]


def test_minmax_scaling_of_a_feature_constant_on_the_training_rows_is_zero(rng):
    from fastimg.layout import FeatureScaler

    x = rng.standard_normal((50, 6))
    x[:, 2] = 4.0
    scaler = FeatureScaler.fit(x, "minmax")
    assert scaler.scale[2] == 0
    new = rng.standard_normal((10, 6)) + 4.0
    scaled = scaler.transform(new)
    assert np.isfinite(scaled).all() and (scaled[:, 2] == 0).all()


def test_a_layout_fitted_on_few_rows_warns_and_fits(rng, caplog):
    """`build-dataset --limit 3` (a layout fitted on 2 rows) built without a word though each
    feature was placed by noise; below MIN_FIT_ROWS_ADVISED fitted rows the layout says so."""
    import logging

    from fastimg.layout.layout import MIN_FIT_ROWS_ADVISED

    def warnings_of(n_rows):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fastimg.layout"):
            layout = DeepInsightLayout(grid=(8, 8), method="pca").fit(
                structured_matrix(rng, n_rows, 40))
        assert layout.pixel_index_.shape == (40,)
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    assert warnings_of(12) == [
        f"the layout is fitted on only 12 rows: each feature is placed by its values over them, "
        f"so with fewer than {MIN_FIT_ROWS_ADVISED} the layout is mostly noise (DeepInsight's "
        f"results use thousands)"]
    assert warnings_of(MIN_FIT_ROWS_ADVISED) == []


@pytest.mark.parametrize("assignment", ["assignment", "bin"])
def test_pixels_density_and_inverse_transform_describe_the_map(rng, assignment):
    x = structured_matrix(rng, 40, 30)
    layout = DeepInsightLayout(grid=(6, 9), method="pca", assignment=assignment).fit(x)
    rows, cols = layout.feature_pixels().T
    np.testing.assert_array_equal(rows * 9 + cols, layout.pixel_index_)
    assert (0 <= rows).all() and (rows < 6).all() and (0 <= cols).all() and (cols < 9).all()
    density = layout.feature_density()
    assert density.shape == (6, 9) and density.sum() == 30
    assert (density > 0).sum() == layout.n_occupied_pixels
    for feature in range(30):
        assert density[rows[feature], cols[feature]] == np.sum(
            layout.pixel_index_ == layout.pixel_index_[feature])
    scaled = layout.scaler_.transform(x, dtype=np.float32)
    back = layout.inverse_transform(layout.transform(x))
    assert back.shape == (40, 30) and back.dtype == np.float32
    # each feature's pixel holds it, or the mean of the features that share the pixel
    expected = np.stack([scaled[:, layout.pixel_index_ == p].mean(1)
                         for p in layout.pixel_index_], axis=1)
    np.testing.assert_allclose(back, expected, rtol=1e-6, atol=1e-6)
    if assignment == "assignment":                 # a pixel each: the scaled features back
        np.testing.assert_allclose(back, scaled, rtol=1e-6, atol=1e-6)
    else:                                          # binned: some pixels are shared
        assert layout.n_occupied_pixels < 30
    np.testing.assert_array_equal(layout.inverse_transform(layout.transform(x)[3]), back[3:4])
    # a model's input or its attribution map, [n, 1, H, W]
    np.testing.assert_array_equal(layout.inverse_transform(layout.transform(x)[:, None]), back)
    with pytest.raises(ValueError, match=r"images must be of shape \(n, 6, 9\), \(n, 1, 6, 9\) "
                                         r"or \(6, 9\), got \(40, 9, 6\)"):
        layout.inverse_transform(np.zeros((40, 9, 6)))
    with pytest.raises(ValueError, match=r"got \(40, 3, 6, 9\)"):
        layout.inverse_transform(np.zeros((40, 3, 6, 9)))


def test_inverse_transform_reads_uint8_images_as_the_trainer_does(rng):
    # a uint8 store's images (to_image_dtype: [0, 1] as 0..255) came back 255 times the
    # scaled features the docstring promises
    from fastimg.raster import to_image_dtype

    x = structured_matrix(rng, 40, 30)
    layout = DeepInsightLayout(grid=(6, 9), method="pca", assignment="assignment").fit(x)
    images = layout.transform(x)
    stored = to_image_dtype(images, "uint8")
    back = layout.inverse_transform(stored)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, layout.inverse_transform(images), rtol=0, atol=0.5 / 255)


def test_embed_points_defaults_are_the_layouts():
    """embed_points ran t-SNE on every core by default (-1) where a layout's default is one
    thread, the count that gives the same map on every machine."""
    import inspect

    from fastimg.layout.embedding import embed_points

    config = LayoutConfig()
    defaults = {name: p.default for name, p in inspect.signature(embed_points).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"method": config.method, "backend": config.backend,
                        "perplexity": config.perplexity, "metric": config.metric,
                        "random_state": config.random_state, "n_jobs": config.n_jobs}
