"""The Python library API as a user calls it: bad arguments give clear errors naming the
argument, array-likes and memory orders give the same results, configs stay JSON-safe."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fastimg import build_dataset, relayout
from fastimg.corpus import CorpusConfig
from fastimg.embed import EncoderConfig, check_texts, encode
from fastimg.images import ImagesConfig, build_image_store
from fastimg.kernels import RasterPlan
from fastimg.layout import DeepInsightLayout, LayoutConfig
from fastimg.raster import rasterize
from fastimg.store import open_store
from fastimg.train import fit

SMALL = dict(grid=(10, 10), perplexity=5)


@pytest.fixture(scope="module")
def matrix():
    return np.random.default_rng(0).standard_normal((200, 60)).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(matrix):
    return DeepInsightLayout(**SMALL).fit(matrix)


# -- DeepInsightLayout -----------------------------------------------------------------------
def test_fit_is_reproducible_and_round_trips(matrix, fitted, tmp_path):
    again = DeepInsightLayout(**SMALL).fit(matrix)
    images = fitted.transform(matrix)
    assert again.transform(matrix).tobytes() == images.tobytes()
    restored = DeepInsightLayout.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert restored.transform(matrix).tobytes() == images.tobytes()
    for name in ("layout.json", "layout.npz"):
        fitted.save(tmp_path / name)
        loaded = DeepInsightLayout.load(tmp_path / name)
        assert loaded.to_dict() == fitted.to_dict()
    # another suffix was written as JSON under its name
    with pytest.raises(ValueError, match=r"layout.pkl: a layout is saved as .json or .npz, "
                                         r"not .pkl$"):
        fitted.save(tmp_path / "layout.pkl")
    assert not (tmp_path / "layout.pkl").exists()


def test_loading_a_file_that_holds_no_layout_says_so(tmp_path, fitted):
    # a bundle.json or a list gave "unsupported layout format None" or an AttributeError, an
    # npz of other arrays a KeyError, a binary file a UnicodeDecodeError
    np.savez(tmp_path / "arrays.npz", X=np.zeros((3, 3)))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "other.json").write_text(json.dumps({"class_names": ["a"]}))
    (tmp_path / "text.json").write_text("not json")
    (tmp_path / "binary.json").write_bytes((tmp_path / "arrays.npz").read_bytes())
    # an empty npz gave EOFError, a truncated one BadZipFile, a header of a list TypeError
    (tmp_path / "empty.npz").write_bytes(b"")
    fitted.save(tmp_path / "whole.npz")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:200])
    np.savez(tmp_path / "header.npz", header=np.array("[1, 2]"))
    np.save(tmp_path / "array.npy", np.zeros(3))  # np.load gave an array, not an archive
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    for name in ("arrays.npz", "list.json", "other.json", "text.json", "binary.json",
                 "empty.npz", "cut.npz", "header.npz", "array.npz"):
        with pytest.raises(ValueError, match=f"{name} holds no layout saved by .*save"):
            DeepInsightLayout.load(tmp_path / name)
    with pytest.raises(IsADirectoryError, match=r"StoreReader\(path\)\.layout\(\)"):
        DeepInsightLayout.load(tmp_path)
    with pytest.raises(ValueError, match="not a fitted layout"):
        DeepInsightLayout.from_dict([1, 2])
    # a description with a part missing or of the wrong type raised KeyError, AttributeError
    data = fitted.to_dict()
    for broken, said in (({"format": data["format"]}, "its 'config' is missing"),
                         ({k: v for k, v in data.items() if k != "pixel_index"},
                          "its 'pixel_index' is missing"),
                         ({**data, "config": 5}, "its 'config' is of type int, not a dict"),
                         # these named no part, or the wrong one
                         ({**data, "scaler": {"shift": [0.0], "scale": [1.0]}},
                          "its 'scaler' has no 'method'"),
                         ({**data, "pixel_index": None},
                          "its 'pixel_index' is unreadable \\(.*\\)")):
        with pytest.raises(ValueError, match=f"^not a fitted layout: {said}$"):
            DeepInsightLayout.from_dict(broken)


def test_fit_does_not_depend_on_memory_order(matrix, fitted):
    # the PCA's sums follow the memory order: a Fortran-ordered copy gave another layout
    fortran = DeepInsightLayout(**SMALL).fit(np.asfortranarray(matrix))
    np.testing.assert_array_equal(fortran.pixel_index_, fitted.pixel_index_)
    np.testing.assert_array_equal(fortran.coords_, fitted.coords_)


def test_fit_on_a_dataframe_equals_fit_on_its_array(matrix, fitted):
    pd = pytest.importorskip("pandas")
    frame = DeepInsightLayout(**SMALL).fit(pd.DataFrame(matrix))  # np.asarray: Fortran order
    np.testing.assert_array_equal(frame.pixel_index_, fitted.pixel_index_)


def test_fit_needs_two_features(matrix):
    with pytest.raises(ValueError, match="at least 2 features"):
        DeepInsightLayout(grid=10, method="pca").fit(matrix[:, :1])


def test_a_sparse_matrix_is_named_as_such(matrix, fitted):
    # a TF-IDF matrix is sparse; np.asarray made it a 0-d array: "got shape ()"
    sparse = pytest.importorskip("scipy.sparse")
    for call in (DeepInsightLayout(grid=10, method="pca").fit, fitted.transform):
        with pytest.raises(ValueError, match=r"X is a sparse matrix .*X\.toarray\(\)"):
            call(sparse.csr_matrix(matrix))


def test_unknown_override_is_refused():
    with pytest.raises(TypeError, match="gird"):
        DeepInsightLayout(gird=32)  # was silently dropped: a 50 x 50 layout
    with pytest.raises(TypeError, match="LayoutConfig"):
        DeepInsightLayout({"grid": 32})


def test_unfitted_layout_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        DeepInsightLayout().n_occupied_pixels


@pytest.mark.parametrize("out", [np.empty((200, 5, 5), np.float32),
                                 np.empty((200, 100), np.float32),
                                 np.empty((200, 10, 10), np.float64),
                                 np.empty((200, 10, 20), np.float32)[:, :, ::2]])
def test_transform_refuses_an_out_of_the_wrong_shape(matrix, fitted, out):
    # a smaller out used to be written past its end by the compiled kernel
    with pytest.raises(ValueError, match=r"out must be .*\(200, 10, 10\)"):
        fitted.transform(matrix, out=out)


def test_transform_into_out(matrix, fitted):
    out = np.empty((200, 10, 10), np.float32)
    assert fitted.transform(matrix, out=out) is out
    np.testing.assert_array_equal(out, fitted.transform(matrix))


# -- LayoutConfig ----------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    (dict(grid=(50.7, 50)), "grid"), (dict(grid="50"), "grid"), (dict(grid=True), "grid"),
    (dict(perplexity=float("nan")), "perplexity"), (dict(perplexity=float("inf")), "perplexity"),
    (dict(perplexity="30"), "perplexity"), (dict(pca_components=2.5), "pca_components"),
    (dict(pca_components="50"), "pca_components"),
    (dict(pca_power_iterations=1.5), "pca_power_iterations"),
    (dict(n_jobs=1.5), "n_jobs"), (dict(n_jobs="1"), "n_jobs"),
    (dict(fill_value=float("nan")), "fill_value"), (dict(fill_value="0"), "fill_value"),
    (dict(metric=None), "metric"),
    # any string passed, and a typo failed in the t-SNE, after the encode
    (dict(metric="cosin"), "metric must be one of"),
])
def test_layout_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        LayoutConfig(**kw)


def test_layout_config_takes_numpy_scalars_as_json_numbers():
    config = LayoutConfig(grid=np.int64(8), perplexity=np.float32(5), random_state=np.int64(3),
                          pca_components=np.int64(20), n_jobs=np.int64(1),
                          fill_value=np.float64(-1))
    data = json.loads(json.dumps(config.to_dict()))
    assert LayoutConfig.from_dict(data) == config
    assert data["random_state"] == 3 and data["perplexity"] == 5.0



def test_layout_config_from_dict_refuses_a_misspelt_key_as_its_siblings_do(tmp_path):
    """LayoutConfig.from_dict({"perplexty": 5}) gave perplexity 30 unsaid, where
    EncoderConfig and TrainConfig refuse unknown keys; a stored layout of a newer fastimg,
    with a field this one lacks, is still read."""
    with pytest.raises(ValueError, match=r"unknown LayoutConfig keys: \['perplexty'\]"):
        LayoutConfig.from_dict({"grid": 8, "perplexty": 5})
    layout = DeepInsightLayout(grid=8, method="pca", random_state=0).fit(
        np.random.default_rng(0).random((40, 30)).astype(np.float32))
    data = layout.to_dict()
    data["config"]["a_newer_field"] = 1
    assert DeepInsightLayout.from_dict(data).config == layout.config


@pytest.mark.parametrize("description", [None, [["grid", 8]], "grid=8"])
def test_config_from_dict_of_no_dict_names_what_it_takes(description):
    # was "'NoneType' object is not iterable", "argument of type 'NoneType' is not iterable"
    from fastimg.embed import EncoderConfig
    from fastimg.train import TrainConfig

    for cls in (LayoutConfig, EncoderConfig, TrainConfig):
        with pytest.raises(TypeError, match=rf"^{cls.__name__}\.from_dict takes a dict \(what "
                                            rf"to_dict gives\), got {type(description).__name__}$"):
            cls.from_dict(description)


def test_python_numbers_are_saved_as_given():
    # the stage keys of stores built with perplexity=30 (an int) must not change; numpy
    # scalars become the Python numbers they are
    config = LayoutConfig(perplexity=30, fill_value=0)
    assert type(config.perplexity) is int and type(config.fill_value) is int
    config = LayoutConfig(perplexity=np.float32(30.5), fill_value=np.int64(0))
    assert type(config.perplexity) is float and type(config.fill_value) is int
    assert LayoutConfig(grid=(8.0, 8)).grid == (8, 8)


# -- rasterize -------------------------------------------------------------------------------
@pytest.fixture()
def plan():
    return RasterPlan.from_pixels([0, 1, 2, 3, 3, 8], (3, 3), fill_value=-1)


@pytest.mark.parametrize("x, match", [
    (np.full((2, 6), "a"), "x must hold real numbers"),
    (np.array([[None] * 6]), "x must hold real numbers"),
    (np.ones((2, 6), complex), "x must hold real numbers"),
    (np.ones((2, 6), bool), "x must hold real numbers"),
    (np.zeros((0, 6), np.float32), "x is empty"),
    (np.zeros(6, np.float32), "x must be a 2-D matrix"),
    (np.zeros((2, 5), np.float32), "6 features"),
])
def test_rasterize_names_a_bad_x(plan, x, match):
    with pytest.raises(ValueError, match=match):
        rasterize(x, plan)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_rasterize_refuses_a_bad_out(plan, backend):
    x = np.ones((4, 6), np.float32)
    for out in (np.empty((4, 2, 2), np.float32), np.empty((4, 9), np.float32),
                np.empty((4, 3, 3), np.float64)):
        with pytest.raises(ValueError, match="out must be"):
            rasterize(x, plan, backend=backend, out=out)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_float64_beyond_float32_is_named_as_such_in_transform(matrix, fitted, plan, backend):
    # fit said so; transform and rasterize warned of an overflow in a cast and then called
    # the finite values "NaN or infinite"
    import warnings

    huge = matrix.astype(np.float64) * 1e39
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # each names its own argument: transform's X was called "x", rasterize's name
        with pytest.raises(ValueError, match="^X holds values beyond float32's range"):
            fitted.transform(huge, backend=backend)
        with pytest.raises(ValueError, match="^x holds values beyond float32's range"):
            rasterize(np.full((2, 6), 1e39), plan, backend=backend)
        with pytest.raises(ValueError, match=r"^x contains NaN or infinite values \(rows \[0"):
            rasterize(np.full((2, 6), np.nan), plan, backend=backend)
        nan = np.array(matrix[:3], np.float32)
        nan[1, 0] = np.nan
        with pytest.raises(ValueError, match=r"^X contains NaN or infinite values \(rows \[1\]"):
            fitted.transform(nan, backend=backend)


def test_rasterize_wants_a_plan():
    with pytest.raises(TypeError, match="plan must be a RasterPlan"):
        rasterize(np.ones((2, 6), np.float32), {"height": 3})


# -- build_image_store -----------------------------------------------------------------------
def test_build_image_store_takes_array_likes(matrix, tmp_path):
    pd = pytest.importorskip("pandas")
    config = LayoutConfig(**SMALL)
    build_image_store(matrix, tmp_path / "a.zarr", config, progress=False)
    reference = open_store(tmp_path / "a.zarr").images[:]
    for name, value in (("list", matrix.tolist()), ("frame", pd.DataFrame(matrix)),
                        ("fortran", np.asfortranarray(matrix))):
        build_image_store(value, tmp_path / f"{name}.zarr", config, progress=False)
        np.testing.assert_array_equal(open_store(tmp_path / f"{name}.zarr").images[:],
                                      reference, err_msg=name)


def test_build_image_store_names_a_path_given_as_the_matrix(matrix, tmp_path):
    # build_image_store(out, matrix), build_dataset's order, said "input matrix must be 2-D
    # with at least one row, got shape ()"
    with pytest.raises(TypeError, match=r"matrix must be an array, got the path .*a.zarr.*"
                                        r"takes the matrix first"):
        build_image_store(str(tmp_path / "a.zarr"), matrix, progress=False)
    with pytest.raises(TypeError, match="matrix must be an array, got the path"):
        build_image_store(tmp_path / "m.npy", tmp_path / "a.zarr", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_build_image_store_with_a_numpy_seed(matrix, tmp_path):
    # np.int64 used to reach json.dumps of the stage settings: TypeError after the checks
    config = LayoutConfig(**SMALL, random_state=np.int64(1))
    summary = build_image_store(matrix, tmp_path / "s.zarr", config, progress=False)
    assert summary["rows"] == 200


def test_build_image_store_checks_its_configs(matrix, tmp_path):
    with pytest.raises(TypeError, match="layout_config must be a LayoutConfig"):
        build_image_store(matrix, tmp_path / "a.zarr", {"grid": 10})
    with pytest.raises(TypeError, match="config must be an ImagesConfig"):
        build_image_store(matrix, tmp_path / "a.zarr", LayoutConfig(), {"fit_rows": 10})
    for fit_rows in (2.5, 100.0, "100", True):
        with pytest.raises(ValueError, match="fit_rows"):
            ImagesConfig(fit_rows=fit_rows)
    assert json.dumps(ImagesConfig(fit_rows=np.int64(10)).fit_rows) == "10"


@pytest.mark.parametrize("call, match", [
    # a config in the wrong slot (encoder_config skipped), as a dict, or a grid tuple: each
    # failed deep inside ("'LayoutConfig' object has no attribute 'model'"), naming neither
    (lambda out: build_dataset(out, CorpusConfig(input="r.csv"), LayoutConfig()),
     "encoder_config must be an EncoderConfig or None, got LayoutConfig"),
    (lambda out: build_dataset(out, {"dataset": "imdb"}),
     r"corpus_config must be a CorpusConfig, got dict; build one with CorpusConfig\(\*\*"),
    (lambda out: build_dataset(out, CorpusConfig(input="r.csv"), None, None, {"fit_on": "all"}),
     "config must be a DatasetConfig or None, got dict"),
    (lambda out: relayout(out, out.with_name("b.zarr"), (32, 32)),
     "layout_config must be a LayoutConfig or None, got tuple"),
    (lambda out: fit(out, {"epochs": 1}),
     r"config must be a TrainConfig or None, got dict; .* or TrainConfig.from_dict"),
    (lambda out: encode(["a review"], {"max_length": 8}),
     r"config must be an EncoderConfig or None, got dict; build one with EncoderConfig\(\*\*"),
    # os.fspath's "expected str, bytes or os.PathLike object, not NoneType" named no store
    (lambda out: build_dataset(None, CorpusConfig(input="r.csv")),
     r"a store is a path or an fsspec URL \(str or os.PathLike\), got NoneType"),
    # a client that is none: "'int' object has no attribute 'nthreads'" after the layout
    (lambda out: build_dataset(out, CorpusConfig(input="r.csv"), client=4),
     r"^client must be a dask.distributed Client, got int$"),
])
def test_library_entry_points_name_a_config_of_the_wrong_type(tmp_path, call, match):
    with pytest.raises(TypeError, match=match):
        call(tmp_path / "a.zarr")
    assert list(tmp_path.iterdir()) == []  # refused before anything is read or written


def test_reading_labels_of_an_images_store_names_the_store(matrix, tmp_path):
    # reader.labels(), targets(), ids() and rows() raised zarr's bare KeyError: 'labels'
    from fastimg.store import StoreError

    build_image_store(matrix, tmp_path / "m.zarr", LayoutConfig(**SMALL), progress=False)
    reader = open_store(tmp_path / "m.zarr")
    for call, name in ((reader.labels, "labels"), (reader.targets, "labels"),
                       (reader.ids, "ids"), (lambda: reader.rows("train"), "split"),
                       (reader.split_codes, "split")):
        with pytest.raises(StoreError, match=rf"m.zarr has no {name}: it holds the images"):
            call()
    assert reader.class_names == [] and not reader.has_labels


def test_store_ids_are_a_plain_str_array(tmp_path):
    # zarr gave numpy's StringDType: ids.astype(str) raised "cannot cast dtype StringDType()"
    # and np.save pickled them
    from fastimg import store

    ids = np.array(["train/neg/3_4", "r1", "a much longer id than the others"])
    store.write_store(tmp_path / "s.zarr", {store.IDS: ids, store.LABELS: np.arange(3),
                                            store.SPLIT: np.zeros(3, np.int8)},
                      {"kind": "dataset", "summary": {"class_names": ["a", "b", "c"]}})
    read = open_store(tmp_path / "s.zarr").ids()
    assert read.dtype.kind == "U" and read.tolist() == ids.tolist()
    np.save(tmp_path / "ids.npy", read)
    assert np.load(tmp_path / "ids.npy", allow_pickle=False).tolist() == ids.tolist()


@pytest.mark.parametrize("how", ["fit_rows", "split"])
def test_build_image_store_fits_the_layout_on_its_rows_only(matrix, tmp_path, how):
    """The layout of an in-memory matrix is fitted on the first ``fit_rows`` rows, or on the
    training rows of ``split``, only: validation and test rows must not shape it."""
    from fastimg import store

    train = np.arange(200) < 120 if how == "fit_rows" else np.arange(200) % 3 != 0
    kwargs = ({"config": ImagesConfig(fit_rows=120)} if how == "fit_rows" else
              {"split": np.where(train, "train", "val")})
    build_image_store(matrix, tmp_path / "s.zarr", LayoutConfig(**SMALL), progress=False,
                      **kwargs)
    attrs = store.StoreReader(tmp_path / "s.zarr").group.attrs[store.ATTRS_KEY]
    stored = DeepInsightLayout.from_dict(attrs["layout"])
    expected = DeepInsightLayout(**SMALL).fit(matrix[train])
    np.testing.assert_array_equal(stored.scaler_.shift, expected.scaler_.shift)
    np.testing.assert_array_equal(stored.pixel_index_, expected.pixel_index_)


# -- encoder config and texts ----------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    (dict(layers=(1.5, 2)), "layers"), (dict(layers=["1", "2"]), "layers"),
    (dict(layers=(True,)), "layers"), (dict(sort_by_length="no"), "sort_by_length"),
    (dict(revision=3), "revision"), (dict(layers="1,2,3"), r"such as \(1, 2, 3\)"),
])
def test_encoder_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        EncoderConfig(**kw)


def test_encoder_config_takes_numpy_ints_and_paths(tmp_path):
    config = EncoderConfig(model=tmp_path, layers=np.array([1, -1]), max_length=np.int64(64),
                           chunk_rows=np.int64(8), max_batch_size=np.int32(4),
                           token_budget=np.int64(128), head_tokens=np.int64(5),
                           truncation="head+tail")
    assert config.model == str(tmp_path) and config.layers == (1, -1)
    data = json.loads(config.to_json())
    assert EncoderConfig.from_dict(data) == config
    assert data["max_length"] == 64 and data["head_tokens"] == 5
    assert EncoderConfig(model=Path("x")) == EncoderConfig(model="x")


def test_check_texts_names_a_lone_surrogate():
    assert check_texts(["caf\u00e9", "ok"]) == ["caf\u00e9", "ok"]
    with pytest.raises(ValueError, match=r"texts\[1\] holds a lone surrogate"):
        check_texts(["fine", "bad \ud800 text"])


def test_every_lazy_export_is_listed_and_resolves():
    import fastimg

    assert set(fastimg.__all__) <= set(dir(fastimg))
    assert all(getattr(fastimg, name) is not None for name in fastimg.__all__)


def test_subpackages_are_attributes_of_a_bare_import():
    # the README's `texts_to_images(..., model=fastimg.embed.load_model(name, revision))` after
    # `import fastimg` raised "module 'fastimg' has no attribute 'embed'" (a fresh interpreter:
    # here other tests have imported the subpackages already)
    import subprocess
    import sys

    code = ("import fastimg; assert callable(fastimg.embed.load_model); "
            "assert fastimg.kernels.raster_reference and fastimg.train.load_run; "
            # the public modules too: fastimg.images.build_image_store and
            # fastimg.dataset.load_layout raised AttributeError until fastimg.build_dataset
            # (or a from-import) had imported them
            "assert fastimg.images.build_image_store and fastimg.dataset.load_layout; "
            "assert fastimg.raster.rasterize_to_array")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_stored_encoder_configs_with_an_empty_revision_still_load():
    from fastimg.embed import EncoderConfig

    assert EncoderConfig.from_dict({"model": "minilm", "revision": ""}).revision == ""


def test_library_warnings_reach_a_program_that_set_up_no_logging(tmp_path):
    """The fastimg logger had a NullHandler: a notebook never saw a warning (a layout fitted
    on three rows, a setting ignored, empty texts)."""
    import subprocess
    import sys

    script = ("import numpy as np\n"
              "from fastimg.layout import DeepInsightLayout\n"
              "DeepInsightLayout(grid=8, method='pca').fit(\n"
              "    np.random.default_rng(0).random((3, 40)).astype('float32'))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("the layout is fitted on only 3 rows"), done.stderr


def test_a_matrix_of_no_rows_gives_no_images(tmp_path):
    """transform(np.empty((0, F))) raised "X is empty", where encode([]) and
    texts_to_images(path, []) give empty results: the last, empty batch of a loop crashed."""
    rng = np.random.default_rng(0)
    layout = DeepInsightLayout(grid=(6, 7), method="pca", random_state=0).fit(
        rng.random((40, 30)).astype(np.float32))
    images = layout.transform(np.empty((0, 30), np.float32))
    assert images.shape == (0, 6, 7) and images.dtype == np.float32
    with pytest.raises(ValueError, match="X has 29 features but the layout was fitted on 30"):
        layout.transform(np.empty((0, 29)))
    with pytest.raises(ValueError, match="X is empty"):  # fitting needs rows
        DeepInsightLayout(grid=8).fit(np.empty((0, 30)))
    # out of another grid's shape was taken and returned as the images
    with pytest.raises(ValueError, match=r"out must be a writeable, C-contiguous float32 array "
                                         r"of shape \(0, 6, 7\), got float32 of shape "
                                         r"\(0, 3, 3\)"):
        layout.transform(np.empty((0, 30)), out=np.empty((0, 3, 3), np.float32))
    # a float64 out and an unknown backend were returned as no images, unsaid
    with pytest.raises(ValueError, match=r"float32 array .* got float64 of shape \(0, 6, 7\)"):
        layout.transform(np.empty((0, 30)), out=np.empty((0, 6, 7)))
    with pytest.raises(ValueError, match="unknown raster backend 'nope'"):
        layout.transform(np.empty((0, 30)), backend="nope")


def test_a_gpu_backend_on_a_machine_without_one_is_one_line():
    """transform(X, backend="cuda") raised numba's CudaSupportError (five lines, after an
    AttributeError), and embed_points(backend="cuml") cuML's or an ImportError."""
    from fastimg.layout.embedding import TSNE_BACKENDS, embed_points
    from fastimg.raster import RASTER_BACKENDS, rasterize

    # each half needs its own backend to be missing (numba's CUDA, cuML with cupy)
    raster_runs = RASTER_BACKENDS._backends["cuda"].available()
    cuml_runs = TSNE_BACKENDS._backends["cuml"].available()
    if raster_runs and cuml_runs:
        pytest.skip("a CUDA GPU with both GPU backends is here: they run")
    rng = np.random.default_rng(0)
    layout = DeepInsightLayout(grid=(6, 7), method="pca", random_state=0).fit(
        rng.random((40, 30)).astype(np.float32))
    x = rng.random((5, 30)).astype(np.float32)
    refusal = (r"^backend='cuda' cannot run here \(no CUDA GPU that it can use; it needs pip "
               r"install 'fastimg\[gpu\]'\); backend='auto' picks one that can$")
    if not raster_runs:
        with pytest.raises(ValueError, match=refusal):
            layout.transform(x, backend="cuda")
        with pytest.raises(ValueError, match=refusal):
            rasterize(x, layout.raster_plan(), backend="cuda")
    if not cuml_runs:
        with pytest.raises(ValueError, match=r"^backend='cuml' cannot run here"):
            embed_points(rng.random((60, 8)), method="tsne", backend="cuml", perplexity=5)

