"""2-D embeddings of the features (the points of the transposed matrix), one registry.

``tsne`` has three backends: ``cuml`` (GPU), ``opentsne`` (CPU default: FFT-accelerated
gradient, optionally multi-threaded) and ``sklearn`` (what pyDeepInsight uses, for parity).
``pca`` and ``kpca`` are the other two methods DeepInsight offers.
"""
from __future__ import annotations

import logging

import numpy as np

from fastimg._registry import Registry, has_module

logger = logging.getLogger("fastimg.layout")

METHODS = ("tsne", "pca", "kpca")
# the distances every t-SNE backend computes (openTSNE's exact and Annoy neighbours,
# scikit-learn, cuML): a layout's settings mean the same on a laptop and on a GPU
TSNE_METRICS = ("cosine", "euclidean", "manhattan")
_FFT_MIN_POINTS = 4_000  # openTSNE gradient: Barnes-Hut below, FFT interpolation from here


def _cuda_available() -> bool:
    if not (has_module("cuml") and has_module("cupy")):
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any driver/runtime failure means "no GPU"
        return False


def _load_opentsne():
    import openTSNE

    def fit(points, *, perplexity, metric, random_state, n_jobs):
        # exact neighbours are cheap at a few thousand points and keep results reproducible
        neighbors = "exact" if points.shape[0] <= 10_000 else "auto"
        # openTSNE's "auto" picks Barnes-Hut below 10k points, but its FFT-interpolated gradient
        # was ~1.4x faster at 4,608 points (same trustworthiness); at 768 points Barnes-Hut was
        # 3.4x faster (the FFT grid has a fixed minimum size), hence the switch at 4,000
        gradient = "fft" if points.shape[0] >= _FFT_MIN_POINTS else "bh"
        tsne = openTSNE.TSNE(n_components=2, perplexity=perplexity, metric=metric,
                             random_state=random_state, n_jobs=n_jobs, neighbors=neighbors,
                             initialization="pca", negative_gradient_method=gradient)
        return np.asarray(tsne.fit(points))

    return fit


def _load_sklearn_tsne():
    from sklearn.manifold import TSNE

    def fit(points, *, perplexity, metric, random_state, n_jobs):
        tsne = TSNE(n_components=2, perplexity=perplexity, metric=metric,
                    random_state=random_state, n_jobs=n_jobs)
        return tsne.fit_transform(points)

    return fit


def _load_cuml_tsne():
    import cupy
    from cuml.manifold import TSNE

    def fit(points, *, perplexity, metric, random_state, n_jobs):
        tsne = TSNE(n_components=2, perplexity=perplexity, metric=metric,
                    random_state=random_state)
        return cupy.asnumpy(tsne.fit_transform(cupy.asarray(points, dtype=cupy.float32)))

    return fit


TSNE_BACKENDS = Registry("t-SNE", setting="backend")
TSNE_BACKENDS.add("cuml", _load_cuml_tsne, available=_cuda_available, priority=2, extra="gpu")
TSNE_BACKENDS.add("opentsne", _load_opentsne, priority=1)
TSNE_BACKENDS.add("sklearn", _load_sklearn_tsne, priority=0)


def min_points_for_perplexity(perplexity: float) -> int:
    """t-SNE needs more than ``3 * perplexity`` points to build its neighbourhoods."""
    return int(np.floor(3 * perplexity)) + 1


def embed_points(points: np.ndarray, method: str = "tsne", *, backend: str = "auto",
                 perplexity: float = 30.0, metric: str = "cosine", random_state: int | None = 0,
                 n_jobs: int = 1) -> tuple[np.ndarray, str]:
    """Embed ``points`` [n_points, dim] in 2-D (DeepInsight: the features of the transposed
    matrix).

    Parameters
    ----------
    points : ndarray, shape (n_points, dim)
    method : {"tsne", "pca", "kpca"}
    backend : {"auto", "opentsne", "sklearn", "cuml"}
        t-SNE implementation (``"auto"``: cuML beside a GPU, else openTSNE).
    perplexity : float
        t-SNE's; it needs more than ``3 * perplexity`` points.
    metric : {"cosine", "euclidean", "manhattan"}
        t-SNE's distance between points.
    random_state : int or None
    n_jobs : int
        t-SNE's threads (-1: all cores). Each thread count gives its own map; 1, as
        :class:`~fastimg.layout.LayoutConfig`'s default, gives the same on every machine.

    Returns
    -------
    coords : ndarray, shape (n_points, 2)
    backend : str
        The backend actually used (``"auto"`` resolved), e.g. ``"opentsne"``.

    Raises
    ------
    ValueError
        An unknown ``method`` or ``backend``, one that cannot run here, or too few points
        for the perplexity.
    """
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=random_state).fit_transform(points), "sklearn"
    if method == "kpca":
        from sklearn.decomposition import KernelPCA

        kpca = KernelPCA(n_components=2, kernel="rbf", random_state=random_state)
        return kpca.fit_transform(points), "sklearn"
    if method != "tsne":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    needed = min_points_for_perplexity(perplexity)
    if points.shape[0] < needed:
        raise ValueError(
            f"t-SNE with perplexity {perplexity:g} needs at least {needed} features (the points "
            f"of the transposed matrix), got {points.shape[0]}: lower the perplexity or use "
            f"method='pca'")
    TSNE_BACKENDS.check(backend)  # cuML without a GPU: not its traceback
    name, fit = TSNE_BACKENDS.get(backend)
    logger.info("t-SNE (%s) on %d points x %d dims, perplexity %g, metric %s", name,
                points.shape[0], points.shape[1], perplexity, metric)
    coords = fit(np.ascontiguousarray(points, dtype=np.float32 if name == "cuml" else np.float64),
                 perplexity=perplexity, metric=metric, random_state=random_state, n_jobs=n_jobs)
    return np.asarray(coords, dtype=np.float64), name
