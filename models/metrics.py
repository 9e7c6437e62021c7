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

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

SIGNAL_RULE_NAME = "quarter-max"  # the project's rule, one of NAMED_RULES (defined below)

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


def _uniform_share(w: NDArray[np.float64], mask: BoolArray, share: float) -> BoolArray:
    n_real = mask.sum(axis=1, keepdims=True)
    chosen: BoolArray = (w > share / n_real) & mask
    return chosen


def _share_of_max(w: NDArray[np.float64], mask: BoolArray, share: float) -> BoolArray:
    top = np.where(mask, w, -np.inf).max(axis=1, keepdims=True)
    chosen: BoolArray = (w >= share * top) & mask
    return chosen


def _mass(w: NDArray[np.float64], mask: BoolArray, mass: float) -> BoolArray:
    """The fewest largest-weight tokens holding ``mass`` of the weight."""
    order = np.argsort(np.where(mask, -w, np.inf), axis=1, kind="stable")
    sorted_w = np.take_along_axis(np.where(mask, w, 0.0), order, axis=1)
    before = np.cumsum(sorted_w, axis=1) - sorted_w  # mass of the tokens ahead of each
    keep_sorted = before < mass * sorted_w.sum(axis=1, keepdims=True)
    keep = np.zeros_like(mask)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    return keep & mask


def _largest_gap(w: NDArray[np.float64], mask: BoolArray, ratio: float) -> BoolArray:
    """The tokens above the largest drop between consecutive sorted weights, when that drop is
    at least a factor ``ratio``; all real tokens when no drop is (near-uniform weights)."""
    tiny = np.finfo(np.float64).tiny
    log_w = np.log(np.maximum(w, tiny))
    # Padding sorts last and repeats the row's smallest real weight: it adds no drop.
    floor = np.where(mask, log_w, np.inf).min(axis=1, keepdims=True)
    log_w = np.where(mask, log_w, floor)
    order = np.argsort(-log_w, axis=1, kind="stable")
    ranked = np.take_along_axis(log_w, order, axis=1)
    drops = ranked[:, :-1] - ranked[:, 1:]  # (S, N - 1), >= 0
    n_real = mask.sum(axis=1)
    if drops.shape[1] == 0:
        return mask.copy()
    cut = drops.argmax(axis=1)
    keep_n = np.where(drops.max(axis=1) >= np.log(ratio), cut + 1, n_real)
    keep = np.zeros_like(mask)
    np.put_along_axis(keep, order, np.arange(mask.shape[1])[None, :] < keep_n[:, None], axis=1)
    return keep & mask


RuleKind = Literal["share_of_max", "uniform_share", "mass", "largest_gap"]
_RULE_KINDS: dict[str, Callable[[NDArray[np.float64], BoolArray, float], BoolArray]] = {
    "share_of_max": _share_of_max,
    "uniform_share": _uniform_share,
    "mass": _mass,
    "largest_gap": _largest_gap,
}


def _fraction(value: float) -> int | None:
    """n when value == 1/n for a whole n, else None."""
    n = round(1.0 / value)
    return n if abs(n * value - 1.0) < 1e-9 else None


@dataclass(frozen=True)
class SignalRule:
    """A signal-set rule: which real tokens of a row its head-mean weights call signal.

    Attributes:
        kind: ``share_of_max`` (weight >= value x the row's largest), ``uniform_share``
            (weight > value / n_real), ``mass`` (the fewest largest weights holding ``value``
            of the row's weight) or ``largest_gap`` (sort the row's weights; the tokens above
            the largest ratio between consecutive ones, if that ratio is at least ``value``,
            else every real token).
        value: the kind's parameter, > 0 (<= 1 for ``share_of_max`` and ``mass``, > 1 for
            ``largest_gap``).
    """

    kind: RuleKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in _RULE_KINDS:
            raise ValueError(f"signal rule kind must be one of {tuple(_RULE_KINDS)}")
        bounded = self.kind in ("share_of_max", "mass")
        low = 1.0 if self.kind == "largest_gap" else 0.0
        if not (self.value > low and (not bounded or self.value <= 1)):
            raise ValueError(f"signal rule {self.kind}: value {self.value} out of range")

    @property
    def definition(self) -> str:
        """The rule in words (the form manifests and the service have always shown)."""
        n = _fraction(self.value)
        if self.kind == "share_of_max":
            share = f"max weight / {n}" if n else f"{self.value:g} x max weight"
            return f"head-mean weight >= {share}"
        if self.kind == "uniform_share":
            if n == 1:
                return "head-mean weight > 1/n_real"
            return (
                f"head-mean weight > 1/({n} n_real)"
                if n
                else f"head-mean weight > {self.value:g}/n_real"
            )
        if self.kind == "largest_gap":
            return (
                "head-mean weights above the largest drop between consecutive sorted weights, "
                f"if it is at least {self.value:g}x (else all tokens)"
            )
        return f"the fewest largest head-mean weights holding {self.value * 100:g}% of the weight"

    def apply(self, weights: NDArray[np.float64], attention_mask: BoolArray) -> BoolArray:
        """(S, N) head-mean weights and mask -> (S, N) bool, True on estimated signal tokens."""
        return _RULE_KINDS[self.kind](weights, attention_mask, self.value)

    def as_dict(self) -> dict[str, str | float]:
        return {"kind": self.kind, "value": self.value, "definition": self.definition}


# The candidates the Signature study scored, by name.
NAMED_RULES: dict[str, SignalRule] = {
    "uniform": SignalRule("uniform_share", 1.0),
    "half-uniform": SignalRule("uniform_share", 0.5),
    "half-max": SignalRule("share_of_max", 0.5),
    "quarter-max": SignalRule("share_of_max", 0.25),
    "tenth-max": SignalRule("share_of_max", 0.1),
    "mass-90": SignalRule("mass", 0.9),
    "mass-95": SignalRule("mass", 0.95),
}
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
    return rule.apply(head_mean(weights), np.asarray(attention_mask))


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
