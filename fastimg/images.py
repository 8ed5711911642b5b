"""The main job until the encoder stage lands: a feature matrix -> layout -> zarr image store."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from fastimg import store
from fastimg._validation import check_feature_matrix
from fastimg.layout import DeepInsightLayout, LayoutConfig
from fastimg.raster import IMAGE_DTYPES, rasterize_to_array

logger = logging.getLogger("fastimg")


@dataclass(frozen=True)
class ImagesConfig:
    """Settings of :func:`build_image_store` beyond the layout's own.

    Parameters
    ----------
    fit_rows : int or None
        Fit the layout on the first ``fit_rows`` rows only (the training rows); ``None``: all.
    image_dtype : {"float16", "float32", "uint8"}
    raster_backend : {"auto", "cpu", "cuda", "numpy"}
    """

    fit_rows: int | None = None
    image_dtype: str = "float16"
    raster_backend: str = "auto"

    def __post_init__(self):
        if self.image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"image dtype must be one of {IMAGE_DTYPES}, got {self.image_dtype!r}")
        if self.fit_rows is not None and self.fit_rows < 2:
            raise ValueError(f"fit_rows must be at least 2, got {self.fit_rows}")


def synthetic_matrix(n_samples: int, n_features: int, *, rank: int = 16, seed: int = 0,
                     dtype=np.float16) -> np.ndarray:
    """A low-rank matrix with feature groups, shaped like stacked [CLS] embeddings."""
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((n_samples, rank)).astype(np.float32)
    loadings = rng.standard_normal((rank, n_features)).astype(np.float32)
    noise = 0.3 * rng.standard_normal((n_samples, n_features)).astype(np.float32)
    return (factors @ loadings / np.sqrt(rank) + noise).astype(dtype)


def _fill_store(group, matrix, fit_rows, layout_config, config, progress):
    n_rows = matrix.shape[0]
    timings = {}
    start = time.perf_counter()
    train = check_feature_matrix(np.asarray(matrix[:fit_rows]), name="input matrix")
    layout = DeepInsightLayout(layout_config).fit(train)
    timings["layout_s"] = time.perf_counter() - start
    height, width = layout_config.grid
    images = store.create_images(group, n_rows, (height, width), config.image_dtype)
    start = time.perf_counter()
    rasterize_to_array(matrix, layout.raster_plan(), images, backend=config.raster_backend,
                       progress=progress)
    timings["raster_s"] = time.perf_counter() - start
    summary = {
        "rows": n_rows, "features": int(matrix.shape[1]), "image_shape": [height, width],
        "image_dtype": config.image_dtype, "fit_rows": fit_rows,
        "occupied_pixels": layout.n_occupied_pixels, "timings": timings,
    }
    return layout, summary


def build_image_store(matrix, out, layout_config: LayoutConfig | None = None,
                      config: ImagesConfig | None = None, *, force: bool = False,
                      progress: bool = True) -> dict:
    """Fit a layout on ``matrix`` (or its first ``fit_rows`` rows) and write every row's image
    into a new zarr store at ``out``. Returns the summary written into the store's attrs."""
    layout_config = layout_config or LayoutConfig()
    config = config or ImagesConfig()
    fit_rows = min(config.fit_rows or matrix.shape[0], matrix.shape[0])
    group = store.create_partial(out, force=force)
    try:
        layout, summary = _fill_store(group, matrix, fit_rows, layout_config, config, progress)
    except Exception:
        # a failed build leaves nothing behind; an interrupted one (Ctrl-C) keeps its .partial
        store.discard_partial(out)
        raise
    store.finish(group, out, {"config": {"layout": layout_config.to_dict(),
                                         "images": asdict(config)},
                              "layout": layout.to_dict(), "summary": summary})
    return summary
