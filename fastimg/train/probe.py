"""The linear-probe baseline: a logistic regression on a store's embeddings (or its pixels),
tuned on validation like the image route, so the two figures compare."""
from __future__ import annotations

import logging
import math
import numbers
import time
import warnings

import numpy as np
from tqdm.auto import tqdm

from fastimg._validation import check_count, check_seed
from fastimg.train.data import ChunkedReader, StoreData

logger = logging.getLogger("fastimg.train")


#: Inverse regularisation strengths the linear probes choose from on the validation split.
PROBE_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)

#: Training rows a probe is fitted on at most (a seeded sample beyond): the pixel probe of
#: 160,000 training images of 50 x 50 ran over 10 minutes at 8.8 GB; the full IMDB store's
#: 20,000 training rows are all used.
PROBE_MAX_FIT_ROWS = 50_000


def _c_values(grid) -> tuple[float, ...]:
    """``grid`` as a tuple of floats, or a ValueError unless it is a non-empty sequence of
    positive, finite numbers (sklearn's own refusal named the parameter C, not grid)."""
    # a 0-d array is no list (tuple() of it: "iteration over a 0-d array")
    values = tuple(grid) if isinstance(grid, (list, tuple)) or np.ndim(grid) == 1 else ()
    if not values or not all(isinstance(c, numbers.Real) and not isinstance(c, bool)
                             and math.isfinite(c) and c > 0 for c in values):
        raise ValueError(f"grid must be a non-empty list of positive, finite C values, got "
                         f"{grid!r}")
    return tuple(float(c) for c in values)


def linear_probe(data, *, features: str = "embeddings", seed: int = 0,
                 max_iter: int = 1000, grid=PROBE_C_GRID, progress: bool = False,
                 max_fit_rows: int | None = PROBE_MAX_FIT_ROWS,
                 storage_options: dict | None = None) -> dict | None:
    """Logistic regression on the stored embeddings (or the image pixels), fitted on the
    training split, its ``C`` chosen on the validation split, scored on the test split.

    It is tuned the way the image route is (selection on validation only), so the two are
    comparable: the validation figure is selection-biased, the test figure is not.

    Parameters
    ----------
    data : str, path or StoreData
        A labelled store (a local path or an fsspec URL), or its opened
        :class:`~fastimg.train.data.StoreData`.
    features : {"embeddings", "pixels"}
        ``"embeddings"``: the baseline the image route should match. ``"pixels"``: the image
        values, each pixel standardised with the training split's statistics (the bar for
        the image route: what a linear model gets from the images themselves).
    seed : int
    max_iter : int
    grid : sequence of float
        The ``C`` values tried.
    progress : bool
        A progress bar over the ``C`` values: on a large store each fit takes minutes (the
        pixel probe of 160,000 training images of 50 x 50 ran over 10 minutes), and without
        it the run looked hung after its last epoch.
    max_fit_rows : int or None
        The scaler and the regressions are fitted on at most this many training rows, a
        sample drawn with ``seed`` (None: all); validation and test are scored in full.
    storage_options : dict, optional
        fsspec options for a store URL (an opened ``StoreData`` has its own).

    Returns
    -------
    dict or None
        ``C``, ``val_accuracy_by_C``, ``train_accuracy`` (on the rows fitted), ``fit_rows``,
        ``train_rows``, ``val_accuracy``, ``test_accuracy`` (None without a test split),
        ``converged``, ``seconds``; None when the store has no embeddings
        (``features="embeddings"``) or one training class.

    Raises
    ------
    ValueError
        A setting out of range (``features``, ``seed``, ``max_iter``, ``grid``,
        ``max_fit_rows``), ``storage_options`` with a ``StoreData``, or a store without
        labels.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if features not in ("embeddings", "pixels"):
        raise ValueError(f"features must be 'embeddings' or 'pixels', got {features!r}")
    seed = check_seed("seed", seed)
    max_iter = check_count("max_iter", max_iter)
    if max_fit_rows is not None:
        max_fit_rows = check_count("max_fit_rows", max_fit_rows, 2, "or None")
    grid = _c_values(grid)
    if not isinstance(data, StoreData):
        data = StoreData(data, storage_options)
    elif storage_options is not None:  # an opened store's were given when it was opened
        raise ValueError("storage_options go with a store's path, not with an opened StoreData")
    array = data.embeddings if features == "embeddings" else data.images
    if array is None:
        return None
    start = time.perf_counter()
    reader = ChunkedReader(array)
    rows = {s: data.rows(s) for s in ("train", "val", "test")}
    if np.unique(data.targets[rows["train"]]).size < 2 or rows["val"].size == 0:
        return None
    train_rows = int(rows["train"].size)
    if max_fit_rows is not None and train_rows > max_fit_rows:
        rng = np.random.default_rng(seed)
        rows["train"] = np.sort(rng.choice(rows["train"], size=max_fit_rows, replace=False))
    scaler = StandardScaler().fit(reader.read(rows["train"]).reshape(rows["train"].size, -1))
    x = {s: scaler.transform(reader.read(r).reshape(r.size, -1)) if r.size else None
         for s, r in rows.items()}
    y = {s: data.targets[r] for s, r in rows.items()}
    by_c, best, converged = {}, None, {}
    n_train, n_features = x["train"].shape
    logger.info("linear probe on the %s: %d training rows (of %d) x %d features, C in %s",
                features, n_train, train_rows, n_features, ", ".join(f"{c:g}" for c in grid))
    # counted by hand: a bar iterating over the grid shows its count only when it redraws,
    # and the C shown at each fit's start redrew it at 0/5 all along
    with tqdm(total=len(grid), desc=f"probe {features}", unit="C", leave=False,
              disable=not progress) as bar:
        for c in grid:
            bar.set_postfix_str(f"C={c:g}", refresh=True)
            model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                model.fit(x["train"], y["train"])
            converged[c] = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
            by_c[c] = float(model.score(x["val"], y["val"]))
            if best is None or by_c[c] > by_c[best[0]]:  # ties: the stronger regularisation
                best = (c, model)
            bar.update(1)
    c, model = best
    out = {"features": features,
           "model": f"StandardScaler + LogisticRegression(C={c:g}), C chosen on val",
           "C": c, "val_accuracy_by_C": {f"{k:g}": v for k, v in by_c.items()},
           "converged": converged[c],
           "train_accuracy": float(model.score(x["train"], y["train"])),
           "fit_rows": n_train, "train_rows": train_rows,
           "val_accuracy": by_c[c],
           "test_accuracy": (float(model.score(x["test"], y["test"]))
                             if x["test"] is not None else None),
           "selection_biased": {"val": True, "test": False}}
    out["seconds"] = time.perf_counter() - start
    return out
