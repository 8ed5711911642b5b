"""Per-class scores of a run's evaluation (fastimg.train.scores) against scikit-learn's."""
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_recall_fscore_support

from fastimg.train.scores import class_scores, confusion_matrix


def test_scores_match_scikit_learn_on_imbalanced_classes():
    rng = np.random.default_rng(0)
    targets = rng.choice(4, size=300, p=[0.7, 0.2, 0.08, 0.02])
    predictions = np.where(rng.random(300) < 0.6, targets, rng.integers(0, 3, 300))
    predictions[predictions == 3] = 0  # d is never predicted
    names = ["a", "b", "c", "d"]
    scores = class_scores(confusion_matrix(targets, predictions, 4), names)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, labels=range(4), zero_division=0)
    for k, name in enumerate(names):
        got = scores["per_class"][name]
        assert got == pytest.approx({"precision": precision[k], "recall": recall[k],
                                     "f1": f1[k], "support": support[k]})
    assert scores["per_class"]["d"]["precision"] == 0 < scores["per_class"]["d"]["support"]
    assert scores["macro_f1"] == pytest.approx(f1_score(targets, predictions, average="macro"))
    assert scores["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(targets, predictions))


def test_a_class_absent_from_the_split_counts_only_where_it_is_predicted():
    confusion = confusion_matrix([0, 0, 1, 1], [0, 1, 1, 1], 3)
    scores = class_scores(confusion, ["x", "y", "z"])
    assert scores["per_class"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                        "support": 0}
    assert scores["balanced_accuracy"] == pytest.approx(0.75)
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    # z absent from the split but predicted: its F1 of 0 counts, as in scikit-learn
    targets, predictions = [0, 0, 1, 1], [0, 2, 1, 1]
    scores = class_scores(confusion_matrix(targets, predictions, 3), ["x", "y", "z"])
    assert scores["macro_f1"] == pytest.approx(f1_score(targets, predictions, average="macro",
                                                        zero_division=0))
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert class_scores(np.zeros((2, 2)), ["x", "y"])["macro_f1"] is None
    with pytest.raises(ValueError, match="3 classes"):
        class_scores(np.zeros((2, 2)), ["x", "y", "z"])
