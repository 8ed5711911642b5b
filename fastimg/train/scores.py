"""Scores of a classifier on one split, from its confusion matrix: what accuracy hides when the
classes are imbalanced."""
from __future__ import annotations

import numpy as np


def confusion_matrix(targets, predictions, n_classes: int) -> np.ndarray:
    """``[n_classes, n_classes]`` counts: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets, dtype=np.int64),
                       np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def class_scores(confusion, class_names) -> dict:
    """Precision, recall, F1 and support of every class, and their summaries.

    Parameters
    ----------
    confusion : array-like of int, ``[n_classes, n_classes]``
        Row = true class, column = predicted class (:func:`confusion_matrix`).
    class_names : sequence of str
        One per row.

    Returns
    -------
    dict
        ``per_class``: ``{name: {"precision", "recall", "f1", "support"}}`` (a class never
        predicted has precision 0, as scikit-learn's ``zero_division=0``); ``macro_f1``, the
        mean F1 of the classes in the split or in its predictions (a class absent from the
        split but predicted counts, with F1 0, as in scikit-learn), and ``balanced_accuracy``,
        the mean recall of the classes in the split; None where there is no such class.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.shape != (len(class_names),) * 2:
        raise ValueError(f"confusion matrix of shape {confusion.shape} for "
                         f"{len(class_names)} classes")
    hits = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    present, seen = support > 0, (support > 0) | (predicted > 0)
    return {
        "per_class": {str(name): {"precision": float(precision[k]), "recall": float(recall[k]),
                                  "f1": float(f1[k]), "support": int(support[k])}
                      for k, name in enumerate(class_names)},
        "macro_f1": float(f1[seen].mean()) if seen.any() else None,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else None,
    }
