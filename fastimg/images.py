"""`fastimg images`: a feature matrix you already have -> layout -> zarr image store."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass

import numpy as np

from fastimg._validation import check_feature_matrix
from fastimg.layout import LayoutConfig
from fastimg.raster import IMAGE_DTYPES
from fastimg.store import StoreWriter
from fastimg.store.keys import StagePlan

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


def matrix_digest(matrix, block_rows: int = 8192) -> str:
    """sha256 of a matrix's shape, dtype and values, read block by block."""
    digest = hashlib.sha256(json.dumps([list(matrix.shape), str(matrix.dtype)]).encode())
    for start in range(0, matrix.shape[0], block_rows):
        digest.update(np.ascontiguousarray(matrix[start:start + block_rows]).tobytes())
    return digest.hexdigest()


def build_image_store(matrix, out, layout_config: LayoutConfig | None = None,
                      config: ImagesConfig | None = None, *, force: bool = False,
                      progress: bool = True) -> dict:
    """Fit a layout on ``matrix`` (or its first ``fit_rows`` rows) and write every row's image
    into a new zarr store at ``out``. Returns the summary written into the store's attrs.

    An interrupted run resumes (the layout and the finished image blocks are kept) when it is
    started again on the same matrix with the same settings.
    """
    from fastimg import stages

    layout_config = layout_config or LayoutConfig()
    config = config or ImagesConfig()
    n_rows = matrix.shape[0]
    fit_rows = np.arange(min(config.fit_rows or n_rows, n_rows))
    check_feature_matrix(np.asarray(matrix[:fit_rows.size]), name="input matrix")
    plan = (StagePlan()
            .add("input", {"sha256": matrix_digest(matrix), "shape": list(matrix.shape)})
            .add("layout", stages.layout_settings(layout_config, "first_rows", fit_rows))
            .add("images", stages.images_settings(config)))
    stages.open_existing(out, plan, force=force)
    timings = {}
    with StoreWriter.open(out) as writer:
        writer.begin("input", plan.keys["input"], plan.settings["input"])
        layout = stages.run_layout(writer, plan, layout_config, fit_rows, matrix, timings)
        stages.run_images(writer, plan, layout, matrix, config, progress, timings)
        height, width = layout_config.grid
        summary = {
            "rows": n_rows, "features": int(matrix.shape[1]), "image_shape": [height, width],
            "image_dtype": config.image_dtype, "fit_rows": int(fit_rows.size),
            "occupied_pixels": layout.n_occupied_pixels, "timings": timings,
        }
        writer.finish({"kind": "images",
                       "config": {"layout": layout_config.to_dict(), "images": asdict(config)},
                       "layout": layout.to_dict(), "summary": summary})
    return summary
