"""Plain numpy implementation of the kernel contract: the oracle every backend is tested against."""
from __future__ import annotations

import numpy as np

from .plan import RasterPlan


def scale_features(x: np.ndarray, scaling: str, shift: np.ndarray, scale: np.ndarray,
                   dtype=np.float64) -> np.ndarray:
    """Apply per-feature scaling (see ``SCALING_CODES``) to a copy of ``x`` in ``dtype``.

    float64 (the default) is the oracle's precision; the layout fit asks for float32. Every step
    after the one copy runs in place, so no temporaries of the matrix's size are made.
    """
    out = np.array(x, dtype=dtype)
    if scaling == "none":
        return out
    out += np.asarray(shift, dtype=dtype)
    if scaling == "norm2":
        np.maximum(out, 1.0, out=out)
        np.log(out, out=out)
    out *= np.asarray(scale, dtype=dtype)
    return np.clip(out, 0.0, 1.0, out=out)


def raster_reference(x: np.ndarray, plan: RasterPlan, out: np.ndarray) -> np.ndarray:
    """Write the image of every row of ``x`` into ``out``.

    Parameters
    ----------
    x : ndarray, shape (n, F)
        Features (any float dtype; computed in float64).
    plan : RasterPlan
    out : ndarray, shape (n, H, W)
        Preallocated output; each pixel gets the mean of the scaled features on it, empty
        pixels ``plan.fill_value``.
    """
    scaled = scale_features(x, plan.scaling, plan.shift, plan.scale)
    flat = np.full((x.shape[0], plan.n_pixels), plan.fill_value, dtype=np.float64)
    for p in range(plan.n_pixels):
        members = plan.order[plan.starts[p]:plan.starts[p + 1]]
        if members.size:
            flat[:, p] = scaled[:, members].mean(axis=1)
    out[...] = flat.reshape(out.shape)
    return out
