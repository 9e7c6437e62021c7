"""Test metrics of the task heads, with the figure a trivial predictor gets beside each.

NumPy only. Classification: accuracy (beside the majority class's), macro-F1, cross-entropy,
and for two classes the AUC of the positive class's probability. Regression: MSE (beside
predicting the training mean), R2 (1 - MSE / variance of the test targets, per target, averaged
over targets as scikit-learn's default) and the variance-weighted R2 (1 - total MSE / total
variance: targets of tiny variance, such as border pixels, cannot dominate it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.metrics import auc


def softmax(logits: NDArray[np.floating]) -> NDArray[np.float64]:
    """(S, C) logits -> (S, C) probabilities."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    probabilities: NDArray[np.float64] = z / z.sum(axis=1, keepdims=True)
    return probabilities


def macro_f1(predicted: NDArray[np.int64], labels: NDArray[np.int64], classes: int) -> float:
    """The mean over classes of each class's F1 (a class never predicted nor present: skipped)."""
    scores = []
    for c in range(classes):
        tp = float(np.sum((predicted == c) & (labels == c)))
        n_pred, n_true = float(np.sum(predicted == c)), float(np.sum(labels == c))
        if n_pred + n_true == 0:
            continue
        scores.append(2 * tp / (n_pred + n_true))
    return float(np.mean(scores))


def classification_metrics(
    logits: NDArray[np.floating], labels: NDArray[np.int64], train_labels: NDArray[np.int64]
) -> dict[str, Any]:
    """logits (S, C), labels (S,) and the training split's labels (for the majority class)."""
    labels = np.asarray(labels, dtype=np.int64)
    classes = logits.shape[1]
    p = softmax(logits)
    predicted = p.argmax(axis=1)
    majority = int(np.bincount(np.asarray(train_labels, np.int64), minlength=classes).argmax())
    metrics: dict[str, Any] = {
        "accuracy": float(np.mean(predicted == labels)),
        "accuracy_majority_class": float(np.mean(labels == majority)),
        "macro_f1": macro_f1(predicted, labels, classes),
        "cross_entropy": float(
            -np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)))
        ),
        "confusion": [
            [int(np.sum((labels == t) & (predicted == q))) for q in range(classes)]
            for t in range(classes)
        ],
    }
    if classes == 2:
        metrics["auc"] = auc(p[:, 1], labels == 1)
    return metrics


def regression_metrics(
    prediction: NDArray[np.floating],
    targets: NDArray[np.floating],
    train_mean: NDArray[np.floating],
) -> dict[str, Any]:
    """prediction, targets (S, T) and the training split's mean target (T,)."""
    pred = np.asarray(prediction, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    mse_per_target = ((pred - y) ** 2).mean(axis=0)
    variance = y.var(axis=0)
    r2 = np.where(variance > 0, 1.0 - mse_per_target / np.where(variance > 0, variance, 1.0), 0.0)
    total = float(variance.sum())
    return {
        "mse": float(mse_per_target.mean()),
        "mse_predict_train_mean": float(((np.asarray(train_mean) - y) ** 2).mean()),
        "r2": float(r2.mean()),
        "r2_variance_weighted": 1.0 - float(mse_per_target.sum()) / total if total > 0 else 0.0,
    }
