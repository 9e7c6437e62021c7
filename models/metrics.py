"""Signal loss and pooling-weight quality, with the chance level of every figure beside it.

NumPy only, so the same functions score weights from PyTorch, ONNX Runtime or the service.

The signal-set rule (``SIGNAL_RULE``): a real token is estimated to be signal when its head-mean
pooling weight exceeds the uniform share 1/n, n = the number of real tokens in its row. Uniform
weights (AvgPool) therefore estimate an empty set. The rule is known to split near-uniform weights
arbitrarily at high SNR; the diagnostics issue revisits it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

SIGNAL_RULE = "head-mean weight > 1/n_real"

FloatArray = NDArray[np.floating]
BoolArray = NDArray[np.bool_]


def signal_loss(pred: FloatArray, target: FloatArray) -> float:
    """Mean squared error over samples and features: pred, target (S, D)."""
    return float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))


def head_mean(weights: FloatArray) -> NDArray[np.float64]:
    """(S, H, N) or (S, N) weights -> (S, N) mean over heads."""
    w = np.asarray(weights, dtype=np.float64)
    return w.mean(axis=1) if w.ndim == 3 else w


def estimate_signal_set(weights: FloatArray, attention_mask: BoolArray) -> BoolArray:
    """Apply ``SIGNAL_RULE``.

    Args:
        weights: (S, H, N) or (S, N) pooling weights.
        attention_mask: (S, N) bool, True = real token.

    Returns:
        (S, N) bool, True where a real token's head-mean weight exceeds 1/n_real.
    """
    w = head_mean(weights)
    n_real = attention_mask.sum(axis=1, keepdims=True)
    estimated: BoolArray = (w > 1.0 / n_real) & attention_mask
    return estimated


def _f1(estimated: BoolArray, truth: BoolArray) -> tuple[NDArray[np.float64], ...]:
    """Per-row precision, recall and F1; an empty estimate has precision 0."""
    hits = (estimated & truth).sum(axis=1).astype(np.float64)
    n_est = estimated.sum(axis=1)
    n_true = truth.sum(axis=1)
    precision = np.divide(hits, n_est, out=np.zeros_like(hits), where=n_est > 0)
    recall = np.divide(hits, n_true, out=np.zeros_like(hits), where=n_true > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(hits), where=denom > 0)
    return precision, recall, f1


@dataclass(frozen=True)
class WeightQuality:
    """How well pooling weights single out the signal tokens, averaged over samples.

    Attributes:
        signal_mass: weight (head mean) on the true signal tokens; chance = k / n.
        precision, recall, f1: of the set estimated by ``SIGNAL_RULE`` against the true signal set.
        *_chance: the same figure for uniform weights (mass) or for the all-tokens estimate
            (precision k/n, recall 1, F1 2k/(k+n)), the baseline a useful diagnostic must beat.
        estimated_size: mean size of the estimated set; true_size: mean number of signal tokens.
    """

    signal_mass: float
    signal_mass_chance: float
    precision: float
    precision_chance: float
    recall: float
    f1: float
    f1_chance: float
    estimated_size: float
    true_size: float
    rule: str = SIGNAL_RULE

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def weight_quality(
    weights: FloatArray, attention_mask: BoolArray, signal_mask: BoolArray
) -> WeightQuality:
    """Score pooling weights against the ground-truth signal tokens.

    Args:
        weights: (S, H, N) or (S, N) pooling weights, rows summing to 1 over real tokens.
        attention_mask: (S, N) bool, True = real token.
        signal_mask: (S, N) bool, True = signal token (a subset of the real tokens).
    """
    attention_mask = np.asarray(attention_mask, dtype=bool)
    signal_mask = np.asarray(signal_mask, dtype=bool) & attention_mask
    w = head_mean(weights)
    n_real = attention_mask.sum(axis=1).astype(np.float64)
    n_signal = signal_mask.sum(axis=1).astype(np.float64)

    estimated = estimate_signal_set(w, attention_mask)
    precision, recall, f1 = _f1(estimated, signal_mask)
    _, _, f1_all = _f1(attention_mask, signal_mask)
    return WeightQuality(
        signal_mass=float(np.mean((w * signal_mask).sum(axis=1))),
        signal_mass_chance=float(np.mean(n_signal / n_real)),
        precision=float(precision.mean()),
        precision_chance=float(np.mean(n_signal / n_real)),
        recall=float(recall.mean()),
        f1=float(f1.mean()),
        f1_chance=float(f1_all.mean()),
        estimated_size=float(estimated.sum(axis=1).mean()),
        true_size=float(n_signal.mean()),
    )


def trivial_baselines(x: FloatArray, y: FloatArray) -> dict[str, float]:
    """Signal loss of the two trivial predictors of the paper: the mean of all tokens, and x_0.

    x: (S, N, D), y: (S, D).
    """
    return {
        "predict_mean_of_all": signal_loss(np.asarray(x).mean(axis=1), y),
        "predict_x0": signal_loss(np.asarray(x)[:, 0], y),
    }
