"""Layout fit: fastimg (norm2 + PCA pre-reduction + openTSNE) against pyDeepInsight's default fit
(Norm2Scaler + sklearn t-SNE, cosine metric) on the same matrix.

Both maps are scored with the same metric: the trustworthiness (k = 5) of the 2-D feature
map with respect to the cosine distances between the scaled features, i.e. how much of the
neighbourhood structure of the transposed matrix the layout keeps.

The timed fit is on a synthetic low-rank matrix (the size of the paper's training set). Real
[CLS] embeddings have another structure, so when the IMDB reviews are present the suite also
encodes a small slice with MiniLM (1,000 reviews at 128 tokens, [CLS] of the last six layers)
and scores both fits on it (``real_*``; ``real_skipped`` says why when the data is absent).
"""
from __future__ import annotations

import importlib
import time
import warnings

import numpy as np

from benchmarks._harness import report, step
from fastimg.images import synthetic_matrix
from fastimg.layout import DeepInsightLayout


def _cosine_distances(points: np.ndarray) -> np.ndarray:
    unit = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    dist = 1.0 - unit @ unit.T
    np.fill_diagonal(dist, 0.0)
    return np.clip(dist, 0.0, None)


def trustworthiness(distances: np.ndarray, coords: np.ndarray, k: int = 5) -> float:
    from sklearn.manifold import trustworthiness as sk_trustworthiness

    return float(sk_trustworthiness(distances, coords, n_neighbors=k, metric="precomputed"))


def _baseline_fit(x: np.ndarray, shift: float = 0.0):
    """pyDeepInsight's default fit; returns the scaled matrix and the fitted transformer."""
    from pyDeepInsight import ImageTransformer
    from pyDeepInsight.utils import Norm2Scaler

    scaled = Norm2Scaler().fit_transform(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        it = ImageTransformer(feature_extractor="tsne", pixels=50)
    it._fe.set_params(random_state=0)
    it.fit(scaled + shift)
    return scaled, it


def warm_up(x: np.ndarray) -> None:
    """One-off costs out of the timed fits, as the other suites warm up first.

    fastimg's first fit in a process pays for openTSNE's and scikit-learn's first calls and the
    thread pools (no Numba kernel runs in a layout fit): about 1.5 s of a 3.8 s fit at the
    quick size, which every later fit skips; a fit of a 256 x 256 corner pays them here. The
    baseline's modules are imported here too (pyDeepInsight's import took 8 s on a busy
    2-core machine), as the build and raster suites import them before their clocks start.
    """
    DeepInsightLayout(grid=50, assignment="bin", random_state=0).fit(x[:256, :256])
    for module in ("pyDeepInsight", "pyDeepInsight.utils"):
        importlib.import_module(module)


def real_embeddings_scores(quick: bool = False) -> dict:
    """Trustworthiness of both fits on MiniLM embeddings of IMDB reviews, or why not."""
    from pyDeepInsight.utils import Norm2Scaler

    from benchmarks.encode import imdb_path, imdb_sample
    from fastimg.embed import EncoderConfig, encode

    try:
        imdb_path()
    except FileNotFoundError as exc:
        return {"real_skipped": str(exc)}
    # quick (CI smoke): the last layer only, 384 features, so both t-SNE fits take seconds
    n_reviews, max_length, layers = (64, 64, (6,)) if quick else (1_000, 128, "last6")
    step(f"real embeddings: {n_reviews} IMDB reviews encoded, then the fits")
    start = time.perf_counter()
    x = encode(imdb_sample(n_reviews, seed=1), EncoderConfig(
        model="minilm", layers=layers, max_length=max_length, device="cpu",
        output_dtype="float32"), progress=False)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    layout = DeepInsightLayout(grid=50, assignment="bin", random_state=0).fit(x)
    fast_s = time.perf_counter() - start
    result = {
        "real_data": f"{n_reviews} IMDB reviews, all-MiniLM-L6-v2, {max_length} tokens, [CLS] "
                     f"of layers {layers}",
        "real_shape": list(x.shape), "real_encode_s": encode_s, "real_fastimg_s": fast_s,
        "real_occupied_pixels_fastimg": layout.n_occupied_pixels,
    }
    distances = _cosine_distances(Norm2Scaler().fit_transform(x).T.astype(np.float32))
    result["real_trustworthiness_fastimg"] = trustworthiness(distances, layout.coords_)
    if quick:  # the smoke run checks the path; sklearn's t-SNE alone takes minutes on a busy CI
        return {**result, "real_baseline_skipped": "quick run"}
    # sklearn's cosine t-SNE gives NaN for features constant over the rows (MiniLM has a few):
    # the baseline gets them shifted off zero so that it runs at all (as in the build suite)
    start = time.perf_counter()
    _, it = _baseline_fit(x, shift=1e-9)
    return {**result, "real_baseline_s": time.perf_counter() - start,
            "real_trustworthiness_baseline": trustworthiness(distances, it._xrot),
            "real_occupied_pixels_baseline": int(np.unique(it.coords(), axis=0).shape[0])}


def run(quick: bool = False, json_path: str | None = None) -> dict:
    n_rows, n_features = (2_000, 768) if quick else (40_000, 4_608)
    x = synthetic_matrix(n_rows, n_features, rank=32, seed=0, dtype=np.float32)

    step(f"warm-up (a small fit), then fastimg's fit on {n_rows} x {n_features}")
    warm_up(x)
    start = time.perf_counter()
    # assignment="bin": pyDeepInsight's pixel map, so both sides make the same map
    layout = DeepInsightLayout(grid=50, assignment="bin", random_state=0).fit(x)
    fast_s = time.perf_counter() - start

    step(f"pyDeepInsight's fit on {n_rows} x {n_features}")
    start = time.perf_counter()
    scaled, it = _baseline_fit(x)
    base_s = time.perf_counter() - start

    distances = _cosine_distances(scaled.T.astype(np.float32))
    return report({
        "suite": "layout", "baseline": "pyDeepInsight Norm2Scaler + ImageTransformer('tsne').fit",
        "shape": [n_rows, n_features], "grid": [50, 50],
        "fastimg_s": fast_s, "baseline_s": base_s, "fastimg_backend": layout.backend_,
        "trustworthiness_fastimg": trustworthiness(distances, layout.coords_),
        "trustworthiness_baseline": trustworthiness(distances, it._xrot),
        "occupied_pixels_fastimg": layout.n_occupied_pixels,
        "occupied_pixels_baseline": int(np.unique(it.coords(), axis=0).shape[0]),
        **real_embeddings_scores(quick),
    }, json_path)
