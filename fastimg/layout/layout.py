"""``DeepInsightLayout``: fit the feature-to-pixel map once, then turn any matrix into images."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import zipfile
from dataclasses import fields

import numpy as np

from fastimg._validation import check_feature_matrix
from fastimg.kernels import RasterPlan
from fastimg.raster import image_unit

from .config import LayoutConfig
from .embedding import embed_points
from .pixels import assign_pixels, rotate_to_bounding_rectangle
from .scaling import FeatureScaler

logger = logging.getLogger("fastimg.layout")

LAYOUT_FORMAT = 1
#: Fewer fitted rows than this are laid out with a warning (a small --limit, a tiny corpus).
MIN_FIT_ROWS_ADVISED = 100
#: A share of features constant on the fitted rows above this is said (layer 0 under [CLS]
#: pooling: the same vector for every text).
CONSTANT_SHARE_WARNED = 0.05


def _all_rows_equal(points: np.ndarray) -> bool:
    """Whether every row equals the first (the first two rows differing settles it cheaply;
    else two column reductions, without a temporary of the matrix's size)."""
    if points.shape[0] < 2 or not np.array_equal(points[0], points[1]):
        return False
    return bool((points.max(axis=0) == points.min(axis=0)).all())


class DeepInsightLayout:
    """DeepInsight's feature-to-pixel layout with an sklearn-style API.

    Parameters
    ----------
    config : LayoutConfig, optional
        All settings (default ``LayoutConfig()``).
    **overrides
        Fields of :class:`LayoutConfig` that replace the config's (``DeepInsightLayout(grid=32)``).

    Raises
    ------
    TypeError
        When ``config`` is not a :class:`LayoutConfig` or an override is not one of its fields.
    ValueError
        When an override is not a valid value of its field.

    Attributes
    ----------
    pixel_index_ : ndarray of int64, shape (n_features,)
        Flat pixel index (``row * width + col``) of every feature.
    coords_ : ndarray, shape (n_features, 2)
        Rotated 2-D coordinates of the features.
    scaler_ : FeatureScaler
    backend_ : str
        Embedding backend actually used.
    fit_seconds_ : float
        Seconds :meth:`fit` took (set by ``fit``; a loaded layout has none).

    Examples
    --------
    >>> layout = DeepInsightLayout(grid=(50, 50), random_state=0).fit(X_train)  # doctest: +SKIP
    >>> images = layout.transform(X_test)                                       # doctest: +SKIP
    """

    def __init__(self, config: LayoutConfig | None = None, **overrides):
        if config is not None and not isinstance(config, LayoutConfig):
            raise TypeError(f"config must be a LayoutConfig, got {type(config).__name__}; "
                            f"pass settings as keywords (DeepInsightLayout(grid=32))")
        unknown = sorted(set(overrides) - {f.name for f in fields(LayoutConfig)})
        if unknown:
            # a typo here must not silently fall back to the default
            raise TypeError(f"unknown LayoutConfig field(s) {unknown}; the fields are "
                            f"{[f.name for f in fields(LayoutConfig)]}")
        base = config or LayoutConfig()
        self.config = LayoutConfig.from_dict({**base.to_dict(), **overrides}) if overrides else base

    def get_params(self, deep: bool = True) -> dict:
        """The settings, as scikit-learn's ``clone`` and searches read them: ``{"config":
        LayoutConfig}`` (``deep`` adds each of its fields by name)."""
        params = {"config": self.config}
        if deep:
            params.update(self.config.to_dict())
        return params

    def set_params(self, **params) -> "DeepInsightLayout":
        """Replace ``config`` and/or fields of it (``set_params(perplexity=50)``), as a
        scikit-learn search does. A fitted map made with other settings is dropped: fit again.

        Parameters
        ----------
        **params
            ``config`` (a :class:`LayoutConfig`, replacing the current one) and/or fields of
            :class:`LayoutConfig`, applied over it.

        Returns
        -------
        DeepInsightLayout
            ``self``; unfitted when its settings changed (the same settings keep the fit).

        Raises
        ------
        TypeError, ValueError
            As the constructor does.
        """
        config = type(self)(params.pop("config", self.config), **params).config
        if config != self.config:  # a map of another grid would draw wrong images
            for name in [n for n in vars(self) if n.endswith("_") and not n.startswith("_")]:
                delattr(self, name)
        self.config = config
        return self

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, X, y=None) -> "DeepInsightLayout":
        """Fit the scaling and the feature-to-pixel map on the training rows.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
            Real numbers (float16, float32 or float64 are used as they are, other numbers as
            float32), finite, at least 2 rows and 2 features. A Fortran-ordered array or a
            DataFrame gives the same layout as a C-ordered array of the same values.
        y : ignored
            For scikit-learn compatibility.

        Returns
        -------
        DeepInsightLayout
            ``self``, fitted.

        Raises
        ------
        ValueError
            When ``X`` is not a 2-D matrix of real numbers, holds NaN or infinite values, has
            fewer than 2 rows or features, is constant, or has too few features for the
            t-SNE perplexity.
        """
        cfg = self.config
        start = time.perf_counter()
        # C order: the PCA's and t-SNE's sums follow the memory order of the matrix they get,
        # so a Fortran-ordered copy of the same values (np.asarray of a DataFrame is one)
        # would give another layout
        X = np.ascontiguousarray(check_feature_matrix(X))
        if X.shape[0] < 2:
            raise ValueError(f"need at least 2 samples to lay features out, got {X.shape[0]}")
        if X.shape[1] < 2:
            raise ValueError(f"need at least 2 features to lay out, got {X.shape[1]}")
        if X.shape[0] < MIN_FIT_ROWS_ADVISED:
            logger.warning("the layout is fitted on only %d rows: each feature is placed by its "
                           "values over them, so with fewer than %d the layout is mostly noise "
                           "(DeepInsight's results use thousands)", X.shape[0],
                           MIN_FIT_ROWS_ADVISED)
        with _threads(cfg.n_jobs):
            self._fit(X)
        self.fit_seconds_ = time.perf_counter() - start
        logger.info("layout fitted in %.1f s: %d features on %d x %d pixels (%d occupied)",
                    self.fit_seconds_, X.shape[1], *cfg.grid, self.n_occupied_pixels)
        return self

    def _fit(self, X) -> None:
        cfg = self.config
        self.scaler_ = FeatureScaler.fit(X, cfg.scaling)
        # features are the points, samples the dimensions; float32 halves the memory traffic
        # of the scaling and the PCA (t-SNE itself gets float64, see embed_points)
        points = self.scaler_.transform(X, dtype=np.float32).T
        if _all_rows_equal(points):
            raise ValueError("every feature has the same scaled values in the fitted rows (a "
                             "constant matrix?): a layout cannot tell the features apart")
        _warn_constant_features(points)
        if cfg.metric == "cosine":
            points = _lift_zero_vectors(points)
        if cfg.pca_components is not None and points.shape[1] > cfg.pca_components \
                and points.shape[0] > cfg.pca_components:
            from sklearn.decomposition import PCA

            logger.info("PCA pre-reduction: %d -> %d dimensions", points.shape[1],
                        cfg.pca_components)
            # copy=False: the scaled matrix is ours, so PCA may centre it in place
            points = PCA(n_components=cfg.pca_components, svd_solver="randomized",
                         iterated_power=cfg.pca_power_iterations, copy=False,
                         random_state=cfg.random_state).fit_transform(points)
        embedded, self.backend_ = embed_points(
            points, cfg.method, backend=cfg.backend, perplexity=cfg.perplexity,
            metric=cfg.metric, random_state=cfg.random_state, n_jobs=cfg.n_jobs)
        self.coords_ = rotate_to_bounding_rectangle(embedded)
        self.pixel_index_ = assign_pixels(self.coords_, cfg.grid, cfg.assignment,
                                          random_state=cfg.random_state)

    def __repr__(self) -> str:
        cfg = self.config
        state = (f"fitted: {self.n_features} features on {self.n_occupied_pixels} pixels"
                 if hasattr(self, "pixel_index_") else "not fitted")
        return (f"DeepInsightLayout(grid={cfg.grid}, method={cfg.method!r}, "
                f"scaling={cfg.scaling!r}, {state})")

    def _check_fitted(self):
        if not hasattr(self, "pixel_index_"):
            raise RuntimeError("this DeepInsightLayout is not fitted yet: call fit(X) first")

    @property
    def n_features(self) -> int:
        self._check_fitted()
        return int(self.pixel_index_.shape[0])

    @property
    def n_occupied_pixels(self) -> int:
        self._check_fitted()
        return int(np.unique(self.pixel_index_).size)

    def feature_pixels(self) -> np.ndarray:
        """``(row, col)`` of each feature's pixel, int64 ``[n_features, 2]`` (pyDeepInsight's
        ``coords()``)."""
        self._check_fitted()
        return np.stack(np.divmod(self.pixel_index_, self.config.grid[1]), axis=1)

    def feature_density(self) -> np.ndarray:
        """How many features each pixel holds, int64 ``[height, width]`` (pyDeepInsight's
        ``feature_density_matrix()``)."""
        self._check_fitted()
        height, width = self.config.grid
        return np.bincount(self.pixel_index_, minlength=height * width).reshape(height, width)

    def inverse_transform(self, images) -> np.ndarray:
        """The value of each feature's pixel in ``images``: float32 ``[n, n_features]``.

        The images hold the scaled features (features that share a pixel, their mean), so
        this is :meth:`transform`'s input after its scaling where each feature has a pixel of
        its own; it maps pixel attributions (saliency, Grad-CAM) back to the features.

        Parameters
        ----------
        images : array-like, shape (n, height, width), (n, 1, height, width) or (height, width)
            One image gives one row; a channel axis of one (a model's input, an attribution
            map of it) is dropped. ``uint8`` images (a store's) are scaled back to [0, 1], as
            the trainer reads them.
        """
        self._check_fitted()
        images = np.asarray(images)
        grid = tuple(self.config.grid)
        if images.ndim == 4 and images.shape[1] == 1:
            images = images[:, 0]
        if images.ndim not in (2, 3) or images.shape[-2:] != grid:
            raise ValueError(f"images must be of shape (n, {grid[0]}, {grid[1]}), (n, 1, "
                             f"{grid[0]}, {grid[1]}) or ({grid[0]}, {grid[1]}), got "
                             f"{images.shape}")
        values = np.ascontiguousarray(images.reshape(-1, grid[0] * grid[1])[:, self.pixel_index_],
                                      dtype=np.float32)
        if images.dtype == np.uint8:  # fastimg.raster.to_image_dtype's 0..255
            values *= image_unit(images.dtype)
        return values

    def raster_plan(self) -> RasterPlan:
        """The kernel contract for this layout (scaling fused)."""
        self._check_fitted()
        return RasterPlan.from_pixels(self.pixel_index_, self.config.grid,
                                      scaling=self.scaler_.method, shift=self.scaler_.shift,
                                      scale=self.scaler_.scale, fill_value=self.config.fill_value)

    # -- transforming ------------------------------------------------------------------------
    def transform(self, X, *, backend: str = "auto", out=None) -> np.ndarray:
        """Images of the rows of ``X``, made with the fitted scaling and map.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
            Real numbers, with the features the layout was fitted on, in that order.
        backend : {"auto", "cpu", "cuda", "numpy"}
            Rasterisation kernel (see :func:`fastimg.raster.rasterize`).
        out : ndarray of float32, shape (n_samples, height, width), optional
            C-contiguous array to write the images into.

        Returns
        -------
        ndarray of float32, shape (n_samples, height, width)
            ``out`` when given.

        Raises
        ------
        RuntimeError
            When the layout is not fitted.
        ValueError
            When ``X`` is not a 2-D matrix of real numbers with ``n_features`` columns, holds
            NaN or infinite values or values beyond float32's range, or ``out`` has the wrong
            shape, dtype or memory order; an unknown ``backend``, or one that cannot run here
            (``"cuda"`` without a CUDA GPU).
        """
        from fastimg.raster import checked_out, rasterize_named

        self._check_fitted()
        X = check_feature_matrix(X, n_features=self.n_features, check_finite=False,
                                 rows_required=False)
        if X.shape[0] == 0:  # no rows, no images (encode([]) gives no embeddings either)
            return checked_out(out, (0, *self.config.grid), backend)
        return rasterize_named(X, self.raster_plan(), backend=backend, out=out, name="X")

    def fit_transform(self, X, y=None, **kwargs) -> np.ndarray:
        """:meth:`fit` on ``X``, then :meth:`transform` it (``kwargs`` go to ``transform``).

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
            As :meth:`fit` takes it.
        y : ignored
            For scikit-learn compatibility.
        **kwargs
            ``backend`` and ``out``, as :meth:`transform` takes them (checked only after the
            fit).

        Returns
        -------
        ndarray
            The images of ``X``, as :meth:`transform` gives them.

        Raises
        ------
        ValueError
            As :meth:`fit` and :meth:`transform` raise it.
        TypeError
            For a keyword :meth:`transform` does not take (after the fit).
        """
        return self.fit(X).transform(X, **kwargs)

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-safe description of the fitted layout (stored in zarr attrs by the pipeline)."""
        self._check_fitted()
        from fastimg import __version__

        return {
            "format": LAYOUT_FORMAT,
            "config": self.config.to_dict(),
            "backend": self.backend_,
            "pixel_index": self.pixel_index_.tolist(),
            "coords": self.coords_.tolist(),
            "scaler": self.scaler_.to_dict(),
            "versions": _versions(self.backend_, __version__),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "DeepInsightLayout":
        """The fitted layout described by ``data`` (:meth:`to_dict`'s form).

        Raises
        ------
        ValueError
            When ``data`` is no such description, or one of another format.
        """
        if not isinstance(data, dict) or "format" not in data:
            keys = f" with keys {sorted(map(str, data))[:5]}" if isinstance(data, dict) else ""
            raise ValueError(f"not a fitted layout (a dict from DeepInsightLayout.to_dict, "
                             f"with its 'format'): got {type(data).__name__}{keys}")
        if data.get("format") != LAYOUT_FORMAT:
            raise ValueError(f"unsupported layout format {data.get('format')!r}")
        known = {f.name for f in fields(LayoutConfig)}  # a newer fastimg's fields left out
        config = _part(data, "config", lambda config: LayoutConfig.from_dict(
            {k: v for k, v in config.items() if k in known}), dict)
        layout = cls(config)
        layout.backend_ = _part(data, "backend", str, str)
        layout.pixel_index_ = _part(data, "pixel_index",
                                    lambda index: np.asarray(index, dtype=np.int64))
        layout.coords_ = _part(data, "coords",
                               lambda coords: np.asarray(coords, np.float64).reshape(-1, 2))
        layout.scaler_ = _part(data, "scaler", FeatureScaler.from_dict, dict)
        layout.versions_ = data.get("versions", {})
        return layout

    def save(self, path) -> None:
        """Write the fitted layout to ``path``: ``.json`` (one JSON document; a path without a
        suffix too) or ``.npz`` (arrays plus a JSON header; loaded without pickle).

        Parameters
        ----------
        path : str or os.PathLike
            The file to write (replaced when it exists); its suffix, in any case, picks the
            format.

        Raises
        ------
        ValueError
            For another suffix (``layout.pkl`` was written as JSON under that name).
        RuntimeError
            When the layout is not fitted.
        """
        path = os.fspath(path)
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in ("", ".json", ".npz"):
            raise ValueError(f"{path}: a layout is saved as .json or .npz, not {suffix}")
        data = self.to_dict()
        if path.lower().endswith(".npz"):
            arrays = {k: np.asarray(data.pop(k)) for k in ("pixel_index", "coords")}
            scaler = data.pop("scaler")
            with open(path, "wb") as fh:  # a path not ending in .npz gets one from numpy
                np.savez(fh, header=json.dumps({**data, "scaler_method": scaler["method"]}),
                         shift=np.asarray(scaler["shift"], np.float32),
                         scale=np.asarray(scaler["scale"], np.float32), **arrays)
        else:
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(data, fh)

    @classmethod
    def load(cls, path) -> "DeepInsightLayout":
        """The layout :meth:`save` wrote to ``path`` (``.npz``, else JSON).

        Parameters
        ----------
        path : str or os.PathLike
            A file :meth:`save` wrote: read as npz (without pickle) when its name ends in
            ``.npz`` (in any case), else as JSON.

        Returns
        -------
        DeepInsightLayout
            The fitted layout (without ``fit_seconds_``).

        Raises
        ------
        FileNotFoundError
            When ``path`` does not exist.
        IsADirectoryError
            When ``path`` is a folder (a store's layout is
            ``fastimg.store.StoreReader(path).layout()``).
        ValueError
            When ``path`` holds no layout saved by :meth:`save` (another JSON or npz file).
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path} is a folder, not a saved layout (a store's layout: "
                                    f"fastimg.store.StoreReader(path).layout())")
        try:
            if path.lower().endswith(".npz"):
                with open(path, "rb") as fh:  # numpy leaves a file it cannot unzip open
                    return cls.from_dict(_read_npz(np.load(fh, allow_pickle=False)))
            with open(path, encoding="utf-8") as fh:
                return cls.from_dict(json.load(fh))
        # JSON and decoding errors are ValueErrors; an empty npz is an EOFError, a cut one a
        # BadZipFile
        except (KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise ValueError(f"{path} holds no layout saved by DeepInsightLayout.save "
                             f"({message})") from None


def _part(data: dict, name: str, convert, kind: type | None = None):
    """``convert(data[name])``, or a ValueError naming the part of a layout description that
    is missing, not of ``kind``, or unreadable (a scaler without its method)."""
    if name not in data:
        raise ValueError(f"not a fitted layout: its {name!r} is missing")
    value = data[name]
    if kind is not None and not isinstance(value, kind):
        raise ValueError(f"not a fitted layout: its {name!r} is of type {type(value).__name__}, "
                         f"not a {kind.__name__}")
    try:
        return convert(value)
    except KeyError as exc:
        raise ValueError(f"not a fitted layout: its {name!r} has no {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a fitted layout: its {name!r} is unreadable ({exc})") from None


def _read_npz(npz) -> dict:
    """The layout description :meth:`DeepInsightLayout.save` wrote into an npz archive."""
    if isinstance(npz, np.ndarray):
        raise ValueError("it holds one array (.npy), not an npz archive")
    with npz:
        header = json.loads(str(npz["header"]))
        if not isinstance(header, dict):
            raise ValueError("its header is no JSON object")
        header["scaler"] = {"method": header.pop("scaler_method"),
                            "shift": npz["shift"], "scale": npz["scale"]}
        header["pixel_index"] = npz["pixel_index"]
        header["coords"] = npz["coords"]
    return header


def _threads(n_jobs: int):
    """BLAS and OpenMP limited to ``n_jobs`` threads (unlimited for -1): their sums, and so
    the layout, depend on the thread count, which would otherwise follow the machine's cores
    or ``OMP_NUM_THREADS``.

    The limit covers only the libraries loaded when it is set, so the fit's own (scikit-learn's
    PCA loads SciPy's OpenBLAS and an OpenMP runtime) are loaded first: one the fit loaded
    inside the limit would run on every core, and the layout would depend on whether an
    earlier step of the process (an encoder) had loaded it. A resumed build, a ``relayout``
    and an uninterrupted build then gave different layouts from the same embeddings.
    """
    if n_jobs == -1:
        return contextlib.nullcontext()
    import importlib

    from threadpoolctl import threadpool_limits

    importlib.import_module("sklearn.decomposition")  # loaded before the limit, see above
    return threadpool_limits(n_jobs)


def _warn_constant_features(points: np.ndarray) -> None:
    """Say when more than :data:`CONSTANT_SHARE_WARNED` of the features (the rows of
    ``points``) are constant on the fitted rows: real encoders have a few, but layer 0 under
    [CLS] pooling is the same vector for every text, and its features carry nothing."""
    constant = int((points.max(axis=1) == points.min(axis=1)).sum())
    n_features = points.shape[0]
    if constant > CONSTANT_SHARE_WARNED * n_features:
        logger.warning("%d of the %d features (%.0f%%) are constant on the %d fitted rows: "
                       "they carry nothing (with [CLS] pooling, the embedding layer's, layer "
                       "0, is the same for every text)", constant, n_features,
                       100 * constant / n_features, points.shape[1])


def _lift_zero_vectors(points: np.ndarray) -> np.ndarray:
    """Give features that are constant on the training rows (all-zero after scaling; real
    encoders have a few) a tiny constant vector: a zero vector has no cosine distance (NaN in
    every t-SNE backend), a constant one is equidistant from everything else."""
    zero = ~points.any(axis=1)
    if zero.any():
        logger.info("%d features are constant on the fitted rows", int(zero.sum()))
        points = points.copy()
        points[zero] = np.finfo(np.float32).tiny ** 0.5
    return points


def _versions(backend: str, fastimg_version: str) -> dict:
    from fastimg._provenance import installed_versions

    versions = {"fastimg": fastimg_version, "numpy": np.__version__}
    if backend == "cuml":
        # the module the fit ran on: pip names its distribution by CUDA version (cuml-cu13,
        # cuml-cu12), conda's is cuml
        import cuml

        versions["cuml"] = str(cuml.__version__)
    embedding = ("openTSNE",) if backend == "opentsne" else ()
    return {**versions, **installed_versions(*embedding, "scikit-learn", "scipy")}
