"""From 2-D coordinates to pixels: minimum-bounding-rectangle rotation, then ``bin`` or
``assignment``.

Conventions (those of pyDeepInsight): the first coordinate maps to image rows (height), the
second to columns (width); the pixel of row ``r``, column ``c`` has flat index ``r * width + c``
and its centre at ``(r + 0.5, c + 0.5)``.
"""
from __future__ import annotations

import numpy as np

from fastimg._validation import check_grid, check_seed, non_finite_rows

ASSIGNMENTS = ("bin", "assignment")


def _checked_coords(coords) -> np.ndarray:
    """``coords`` as an array when it is an (n, 2) matrix of finite real numbers, else a
    ValueError naming it (numpy's broadcast or index errors named nothing)."""
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise ValueError(f"coords must be an (n_features, 2) array of 2-D coordinates, got "
                         f"shape {coords.shape}")
    if not np.issubdtype(coords.dtype, np.number) or np.iscomplexobj(coords):
        raise ValueError(f"coords must hold real numbers, got dtype {coords.dtype}")
    rows = non_finite_rows(coords)
    if rows is not None:
        raise ValueError(f"coords hold NaN or infinite values ({rows})")
    return coords


def rotate_to_bounding_rectangle(coords: np.ndarray) -> np.ndarray:
    """Rotate ``coords`` so that their minimum-area bounding rectangle is axis-aligned.

    Same construction as DeepInsight: the optimal rectangle has one side collinear with an edge of
    the convex hull, so only the hull's edge angles are tried. Each candidate rotates by minus the
    edge angle, which puts that edge on the x axis (pyDeepInsight rotates by plus the angle, so its
    "minimum" rectangle is usually not minimal), and the hull is closed (its last edge counts).

    Raises
    ------
    ValueError
        When ``coords`` is not an (n, 2) array of finite numbers.
    """
    from scipy.spatial import ConvexHull, QhullError

    coords = _checked_coords(coords)

    try:
        hull = coords[ConvexHull(coords).vertices]
    except QhullError:  # all points collinear (or fewer than 3): nothing to rotate
        return coords.copy()
    edges = np.diff(np.vstack([hull, hull[:1]]), axis=0)
    angles = np.unique(np.abs(np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2)))
    cos, sin = np.cos(angles), np.sin(angles)
    rotations = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], axis=1)
    rotated_hull = np.einsum("rij,nj->rni", rotations, hull)
    extent = rotated_hull.max(axis=1) - rotated_hull.min(axis=1)
    best = rotations[np.argmin(extent[:, 0] * extent[:, 1])]
    return coords @ best.T


def scale_to_grid(coords: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Map each axis of ``coords`` linearly onto ``[0, height]`` and ``[0, width]``."""
    low = coords.min(axis=0)
    span = coords.max(axis=0) - low
    span[span == 0] = 1.0  # a degenerate axis puts every point on the first row / column
    return (coords - low) / span * np.asarray(shape, dtype=np.float64)


def assign_bin(coords: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """DeepInsight's default: floor of the scaled coordinates; several features may share a pixel.

    Returns the flat pixel index of every feature.
    """
    height, width = shape
    cell = np.floor(scale_to_grid(coords, shape)).astype(np.int64)
    row = np.minimum(cell[:, 0], height - 1)
    col = np.minimum(cell[:, 1], width - 1)
    return row * width + col


def pixel_centres(shape: tuple[int, int]) -> np.ndarray:
    """Centres of all pixels in flat-index order, shape (height * width, 2)."""
    rows, cols = np.indices(shape)
    return np.stack([rows.ravel(), cols.ravel()], axis=1) + 0.5


def assign_unique(coords: np.ndarray, shape: tuple[int, int], *,
                  random_state: int | None = 0) -> np.ndarray:
    """At most one feature (or feature cluster) per pixel, minimising total squared distance.

    With at least as many pixels as features every feature gets a pixel of its own (a linear sum
    assignment of features to pixel centres). With more features than pixels the features are
    first grouped into ``height * width`` k-means clusters and each cluster gets a pixel (the
    features on one point share its pixel when there are no more distinct points than pixels).
    Unlike pyDeepInsight's version this is correct on non-square grids.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    scaled = scale_to_grid(coords, shape)
    centres = pixel_centres(shape)
    n_pixels = centres.shape[0]
    if scaled.shape[0] <= n_pixels:
        groups = scaled
        labels = np.arange(scaled.shape[0])
    else:
        groups, labels = np.unique(scaled, axis=0, return_inverse=True)
        labels = labels.ravel()
        if groups.shape[0] > n_pixels:  # else features that share a point share its pixel
            from sklearn.cluster import KMeans

            kmeans = KMeans(n_clusters=n_pixels, n_init=1, random_state=random_state)
            kmeans.fit(scaled)
            groups, labels = kmeans.cluster_centers_, kmeans.labels_
    group_rows, pixels = linear_sum_assignment(cdist(groups, centres, "sqeuclidean"))
    pixel_of_group = np.empty(groups.shape[0], dtype=np.int64)
    pixel_of_group[group_rows] = pixels
    return pixel_of_group[labels]


def assign_pixels(coords: np.ndarray, shape: tuple[int, int], method: str = "bin", *,
                  random_state: int | None = 0) -> np.ndarray:
    """Flat pixel index of every feature, by ``method`` in :data:`ASSIGNMENTS`.

    Parameters
    ----------
    coords : array-like, shape (n_features, 2)
        Finite 2-D coordinates of the features (rotated: :func:`rotate_to_bounding_rectangle`).
    shape : int or (int, int)
        The grid ``(height, width)``; an int means a square grid.
    method : {"bin", "assignment"}
        ``"bin"`` (this function's default, DeepInsight's): the pixel each feature falls on,
        shared by the features that fall on it. ``"assignment"`` (:class:`LayoutConfig`'s
        default): a pixel of its own for each feature (see :func:`assign_unique`).
    random_state : int or None
        Seed of the k-means grouping of ``"assignment"`` with more features than pixels.

    Returns
    -------
    ndarray of int64, shape (n_features,)
        ``row * width + col`` of each feature's pixel.

    Raises
    ------
    ValueError
        When ``coords`` is not an (n, 2) array of finite numbers (NaN went to pixel 0), or
        ``shape``, ``method`` or ``random_state`` is invalid.
    """
    coords = _checked_coords(coords)
    shape = check_grid(shape, "shape")
    if random_state is not None:  # refused for either method, not by KMeans's name
        random_state = check_seed("random_state", random_state)
    if method == "bin":
        return assign_bin(coords, shape)
    if method == "assignment":
        return assign_unique(coords, shape, random_state=random_state)
    raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {method!r}")
