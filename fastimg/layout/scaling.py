"""Feature scaling fitted on the training rows: ``norm2`` (DeepInsight), ``minmax``, ``none``.

The fitted parameters are expressed as the per-feature ``shift`` / ``scale`` pair the kernels
apply (see :data:`fastimg.kernels.SCALING_CODES`), so fitting happens here once and the
scaling itself is fused into the rasterisation pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastimg.kernels import SCALING_CODES, scale_features

SCALINGS = tuple(SCALING_CODES)
_BLOCK_ROWS = 8192


def _blocks(n_rows):
    for start in range(0, n_rows, _BLOCK_ROWS):
        yield slice(start, min(n_rows, start + _BLOCK_ROWS))


@dataclass(frozen=True, eq=False)
class FeatureScaler:
    """Fitted per-feature scaling.

    ``norm2`` follows DeepInsight's log normalisation (pyDeepInsight's ``Norm2Scaler``):
    ``log(x + |min_f| + 1) / max`` with the minimum per feature and the maximum global, clipped to
    [0, 1] for new data. ``minmax`` is ``(x - min_f) / (max_f - min_f)`` clipped to [0, 1].

    Attributes
    ----------
    method : {"norm2", "minmax", "none"}
        The scaling.
    shift : ndarray of float32, shape (n_features,)
        Added to each feature first: ``|min_f| + 1`` (``norm2``), ``-min_f`` (``minmax``) or 0
        (``none``).
    scale : ndarray of float32, shape (n_features,)
        Multiplies each shifted feature (after the log for ``norm2``): one value for every
        feature, 1 / the largest ``log(x + shift)`` of the fitted rows (``norm2``; 1 when that
        is 0), ``1 / (max_f - min_f)`` (``minmax``; 0 for a constant feature, which scales to
        0) or 1 (``none``).
    """

    method: str
    shift: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, method: str = "norm2") -> "FeatureScaler":
        """The scaling ``method`` fitted on the rows of ``x``.

        Parameters
        ----------
        x : array-like, shape (n_samples, n_features)
            The training rows: real numbers, finite (not checked here:
            :meth:`DeepInsightLayout.fit <fastimg.layout.DeepInsightLayout.fit>` does). Read
            in blocks of rows; the minima and maxima are kept in float64.
        method : {"norm2", "minmax", "none"}
            The scaling (``"none"`` reads nothing of ``x`` but its shape).

        Returns
        -------
        FeatureScaler

        Raises
        ------
        ValueError
            When ``method`` is unknown, or ``x`` is not a non-empty 2-D matrix.
        """
        if method not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {method!r}")
        x = np.asarray(x)
        if x.ndim != 2 or 0 in x.shape:
            raise ValueError(f"x must be a non-empty 2-D matrix (samples x features), got "
                             f"shape {x.shape}")
        n_features = x.shape[1]
        if method == "none":
            return cls(method, np.zeros(n_features, np.float32), np.ones(n_features, np.float32))
        col_min = np.min([x[b].min(axis=0) for b in _blocks(x.shape[0])], axis=0).astype(
            np.float64)
        if method == "minmax":
            col_max = np.max([x[b].max(axis=0) for b in _blocks(x.shape[0])], axis=0).astype(
                np.float64)
            span = col_max - col_min
            scale = np.divide(1.0, span, out=np.zeros_like(span), where=span > 0)
            return cls(method, (-col_min).astype(np.float32), scale.astype(np.float32))
        shift = np.abs(col_min) + 1.0
        # log is monotonic, so max(log(x + shift)) = log(max_f(col_max_f + shift_f)): one
        # min/max pass instead of a float64 log of the whole matrix (same value, in float64)
        col_max = np.max([x[b].max(axis=0) for b in _blocks(x.shape[0])], axis=0).astype(
            np.float64)
        log_max = float(np.log(col_max + shift).max())
        scale = 1.0 / log_max if log_max > 0 else 1.0
        return cls(method, shift.astype(np.float32),
                   np.full(n_features, scale, dtype=np.float32))

    def transform(self, x: np.ndarray, dtype=np.float64) -> np.ndarray:
        """Scaled copy of ``x`` in ``dtype`` (the kernels fuse this step; this is for the layout
        fit and for inspection). float64 (the default) is the numpy oracle's precision; the
        layout fit uses float32, which halves the memory traffic.

        Parameters
        ----------
        x : array-like, shape (n_samples, n_features)
            Rows with the features the scaler was fitted on.
        dtype : {numpy.float64, numpy.float32}
            Precision of the result (any spelling :class:`numpy.dtype` accepts).

        Returns
        -------
        ndarray of ``dtype``, shape (n_samples, n_features)
            A new array; clipped to [0, 1] for ``norm2`` and ``minmax``, ``x`` as it is for
            ``none``.

        Raises
        ------
        ValueError
            When ``dtype`` is neither float32 nor float64, or ``x`` is not a 2-D matrix with
            the fitted number of features.
        """
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.shift.shape[0]:
            # numpy's "operands could not be broadcast together" named neither
            raise ValueError(f"x must be a 2-D matrix with the {self.shift.shape[0]} features "
                             f"the scaler was fitted on, got shape {x.shape}")
        return scale_features(x, self.method, self.shift, self.scale, dtype=dtype)

    def to_dict(self) -> dict:
        return {"method": self.method, "shift": self.shift.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureScaler":
        return cls(data["method"], np.asarray(data["shift"], np.float32),
                   np.asarray(data["scale"], np.float32))
