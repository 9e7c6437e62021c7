"""Signal loss and pooling-weight quality, with the chance level of every figure beside it.

NumPy only, so the same functions score weights from PyTorch, ONNX Runtime or the service.

The project's signal-set rule (``SIGNAL_RULE``): a real token is estimated to be signal when its
head-mean pooling weight is at least a quarter of the row's largest. Chosen by measurement
(``python -m models.signature_study``, results/signature-cpu/): among the candidates in
``NAMED_RULES``, on the validation split of the service's default model, it met every
requirement and had the highest mean F1 over the SNR bands 1/128..1. The old rule, weight > 1/n,
split near-uniform weights in half at high SNR (F1 0.82 at SNR 1 against 0.99) and found
nothing in uniform weights; a rule relative to the largest weight reads uniform weights as "all
tokens" (SNR 1) and a sharp pool as its few tokens. A model trained on data with signal masks
chooses its own rule from ``RULE_CANDIDATES`` on its validation split (:func:`choose_rule`,
:mod:`models.weight_metrics`); without masks it keeps the project's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from modelrepo.signal_rules import DEFAULT_RULE_NAME, NAMED, SignalRule

SIGNAL_RULE_NAME = DEFAULT_RULE_NAME  # the project's rule, one of NAMED_RULES

FloatArray = NDArray[np.floating]
BoolArray = NDArray[np.bool_]


def signal_loss(pred: FloatArray, target: FloatArray) -> float:
    """Mean squared error over samples and features: pred, target (S, D)."""
    return float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))


def auc(scores: FloatArray, positive: BoolArray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting 1/2.

    scores, positive: (M,). NaN when either class is empty.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Average ranks (1-based), ties sharing the mean of their ranks (Mann-Whitney U).
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0
    rank_sum = float(mean_rank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def head_mean(weights: FloatArray) -> NDArray[np.float64]:
    """(S, H, N) or (S, N) weights -> (S, N) mean over heads."""
    w = np.asarray(weights, dtype=np.float64)
    return w.mean(axis=1) if w.ndim == 3 else w


# The candidates the Signature study scored, by name. Rules and their one implementation live in
# modelrepo.signal_rules, which the service uses too: a manifest's figures and the service's
# signal sets come from the same code.
NAMED_RULES: dict[str, SignalRule] = dict(NAMED)
PROJECT_RULE = NAMED_RULES[SIGNAL_RULE_NAME]
SIGNAL_RULE = PROJECT_RULE.definition

# What a model's own rule is chosen from on its validation split (``choose_rule``): the named
# rules, then thresholds on the ranking at finer steps. The project's rule comes first, so it
# wins ties.
RULE_CANDIDATES: tuple[SignalRule, ...] = tuple(
    dict.fromkeys(
        [
            PROJECT_RULE,
            *NAMED_RULES.values(),
            *(SignalRule("share_of_max", v) for v in (0.05, 0.15, 0.2, 0.3, 0.4, 0.6, 0.75, 0.9)),
            *(SignalRule("uniform_share", v) for v in (0.25, 0.75, 1.5, 2.0, 3.0)),
            *(SignalRule("mass", v) for v in (0.5, 0.7, 0.8, 0.99)),
            *(SignalRule("largest_gap", v) for v in (1.5, 2.0, 3.0, 5.0, 10.0)),
        ]
    )
)


def estimate_signal_set(
    weights: FloatArray, attention_mask: BoolArray, rule: SignalRule = PROJECT_RULE
) -> BoolArray:
    """Apply a signal-set rule (by default the project's, ``SIGNAL_RULE``).

    Args:
        weights: (S, H, N) or (S, N) pooling weights.
        attention_mask: (S, N) bool, True = real token.
        rule: the rule.

    Returns:
        (S, N) bool, True on the real tokens the rule estimates to be signal.
    """
    return rule.select(head_mean(weights), np.asarray(attention_mask))


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
        precision, recall, f1: of the set estimated by the rule against the true signal set.
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
    rule: str = SIGNAL_RULE  # the rule's definition

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def weight_quality(
    weights: FloatArray,
    attention_mask: BoolArray,
    signal_mask: BoolArray,
    rule: SignalRule = PROJECT_RULE,
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

    estimated = estimate_signal_set(w, attention_mask, rule)
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
        rule=rule.definition,
    )


def trivial_baselines(
    x: FloatArray, y: FloatArray, attention_mask: BoolArray | None = None
) -> dict[str, float]:
    """Signal loss of the two trivial predictors of the paper: the mean of all (real) tokens,
    and x_0.

    x: (S, N, D), y: (S, D), attention_mask: (S, N) or None (every token real).
    """
    x = np.asarray(x, dtype=np.float64)
    if attention_mask is None:
        mean = x.mean(axis=1)
    else:
        m = np.asarray(attention_mask, dtype=np.float64)[..., None]
        mean = (x * m).sum(axis=1) / m.sum(axis=1)
    return {"predict_mean_of_all": signal_loss(mean, y), "predict_x0": signal_loss(x[:, 0], y)}


SNR_BANDS = tuple(range(-7, 1))  # log2 of the paper's SNR grid: 1/128 ... 1


def snr_band_label(band: int) -> str:
    return "1" if band == 0 else f"1/{2**-band}"


def snr_bands(
    pooled: FloatArray,
    weights: FloatArray,
    x: FloatArray,
    y: FloatArray,
    attention_mask: BoolArray,
    signal_mask: BoolArray,
) -> list[dict[str, object]]:
    """Signal loss and weight quality per SNR band, for data whose SNR varies per sample.

    A sample's band is log2(k / n) rounded to the nearest integer (the paper's grid point
    nearest its SNR). Each band reports its sample count, the model's signal loss, the
    mean-of-all-tokens baseline's, and the weight quality with chance levels.
    """
    attention_mask = np.asarray(attention_mask, dtype=bool)
    signal_mask = np.asarray(signal_mask, dtype=bool)
    snr = signal_mask.sum(axis=1) / attention_mask.sum(axis=1)
    band_of = np.clip(np.rint(np.log2(snr)), SNR_BANDS[0], SNR_BANDS[-1]).astype(int)
    out: list[dict[str, object]] = []
    for band in SNR_BANDS:
        rows = band_of == band
        if not rows.any():
            continue
        trivial = trivial_baselines(x[rows], y[rows], attention_mask[rows])
        out.append(
            {
                "band": snr_band_label(band),
                "log2_snr": band,
                "samples": int(rows.sum()),
                "signal_loss": signal_loss(pooled[rows], y[rows]),
                "mean_of_all_loss": trivial["predict_mean_of_all"],
                "weights": weight_quality(
                    weights[rows], attention_mask[rows], signal_mask[rows]
                ).as_dict(),
            }
        )
    return out
