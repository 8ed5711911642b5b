"""The kernel contract: a :class:`RasterPlan` says which features land on which pixel.

Every backend (numpy reference, numba CPU, numba CUDA) consumes the same plan, so the
contract lives here and nowhere else. A plan is pure data: int32 / float32 arrays that can be
handed to a compiled kernel as they are.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Feature scaling applied inside the kernels, per feature ``f`` and value ``x``:
#: ``none``   -> x
#: ``minmax`` -> clip((x + shift[f]) * scale[f], 0, 1)
#: ``norm2``  -> min(log(max(x + shift[f], 1)) * scale[f], 1)   (DeepInsight's log normalisation;
#:               values below the training minimum give 0, where pyDeepInsight gives NaN)
SCALING_CODES = {"none": 0, "minmax": 1, "norm2": 2}


@dataclass(frozen=True)
class RasterPlan:
    """Everything a rasterisation kernel needs, in kernel-friendly arrays.

    Parameters
    ----------
    height, width : int
        Grid shape; pixel ``p`` is row ``p // width``, column ``p % width``.
    pixel_of_feature : ndarray of int32, shape (F,)
        Flat pixel index of every feature (for scatter kernels).
    order : ndarray of int32, shape (F,)
        Feature indices sorted by pixel (stable, so ties keep feature order; for gather kernels).
    starts : ndarray of int32, shape (H * W + 1,)
        Features of pixel ``p`` are ``order[starts[p]:starts[p + 1]]``.
    inv_count : ndarray of float32, shape (H * W,)
        ``1 / number of features on the pixel`` (0 for empty pixels).
    empty_fill : ndarray of float32, shape (H * W,)
        ``fill_value`` on empty pixels, 0 elsewhere, so ``sum * inv_count + empty_fill`` is the
        pixel value without a branch.
    shift, scale : ndarray of float32, shape (F,)
        Per-feature scaling parameters (see ``SCALING_CODES``).
    scaling : str
        One of ``SCALING_CODES``.
    fill_value : float
        Value written to pixels that no feature falls on.
    """

    height: int
    width: int
    pixel_of_feature: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    inv_count: np.ndarray
    empty_fill: np.ndarray
    shift: np.ndarray
    scale: np.ndarray
    scaling: str = "none"
    fill_value: float = 0.0

    @property
    def n_features(self) -> int:
        return int(self.order.shape[0])

    @property
    def n_pixels(self) -> int:
        return self.height * self.width

    @property
    def scaling_code(self) -> int:
        return SCALING_CODES[self.scaling]

    @classmethod
    def from_pixels(
        cls,
        pixel_index,
        shape,
        *,
        scaling="none",
        shift=None,
        scale=None,
        fill_value=0.0,
    ) -> "RasterPlan":
        """Build a plan from the flat pixel index of every feature.

        Parameters
        ----------
        pixel_index : array-like of int, shape (F,)
            ``row * width + col`` for every feature (whole numbers; ``2.0`` is 2).
        shape : int or (int, int)
            ``(height, width)``, each at least 1; an int means a square grid.
        scaling : {"none", "minmax", "norm2"}
        shift, scale : array-like of float, shape (F,), optional
            Scaling parameters; default to the identity (0 and 1).
        fill_value : float
            Value of empty pixels.

        Raises
        ------
        ValueError
            When ``shape`` is not a grid, ``pixel_index`` is not a 1-D array of whole
            numbers in ``[0, height * width)``, or a scaling argument is invalid.
        """
        height, width = _grid(shape)
        given = np.asarray(pixel_index)
        if given.dtype.kind not in "iuf" or (given.dtype.kind == "f"
                                             and not np.array_equal(given, np.trunc(given))):
            # int64 of 1.7 is 1: the feature would land on another pixel without a word
            raise ValueError(f"pixel_index must hold whole numbers (flat pixel indices), got "
                             f"dtype {given.dtype}"
                             + (" with fractions" if given.dtype.kind == "f" else ""))
        pixel_index = given.astype(np.int64)
        n_pixels = height * width
        if pixel_index.ndim != 1:
            raise ValueError("pixel_index must be one-dimensional")
        if pixel_index.size and (pixel_index.min() < 0 or pixel_index.max() >= n_pixels):
            raise ValueError(f"pixel_index values must lie in [0, {n_pixels})")
        if scaling not in SCALING_CODES:
            raise ValueError(f"scaling must be one of {sorted(SCALING_CODES)}, got {scaling!r}")
        n_features = pixel_index.shape[0]
        order = np.argsort(pixel_index, kind="stable").astype(np.int32)
        counts = np.bincount(pixel_index, minlength=n_pixels)
        starts = np.zeros(n_pixels + 1, dtype=np.int32)
        np.cumsum(counts, out=starts[1:])
        with np.errstate(divide="ignore"):
            inv_count = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0).astype(np.float32)
        shift = np.zeros(n_features, np.float32) if shift is None else np.asarray(shift, np.float32)
        scale = np.ones(n_features, np.float32) if scale is None else np.asarray(scale, np.float32)
        if shift.shape != (n_features,) or scale.shape != (n_features,):
            raise ValueError("shift and scale must have one value per feature")
        empty_fill = np.where(counts == 0, fill_value, 0.0).astype(np.float32)
        return cls(height, width, pixel_index.astype(np.int32), order, starts, inv_count,
                   empty_fill, np.ascontiguousarray(shift), np.ascontiguousarray(scale), scaling,
                   float(fill_value))


def _grid(shape) -> tuple[int, int]:
    """``shape`` (an int, or a pair of whole numbers) as ``(height, width)``, each >= 1, else
    ValueError (an int failed with "'int' object is not iterable", a negative pair passed)."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (shape, shape)
    try:
        height, width = shape
        if not all(isinstance(s, (int, np.integer, float, np.floating))
                   and not isinstance(s, (bool, np.bool_)) and float(s).is_integer()
                   and s >= 1 for s in (height, width)):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"shape must be an int or a (height, width) pair of whole numbers "
                         f">= 1, got {shape!r}") from None
    return int(height), int(width)
