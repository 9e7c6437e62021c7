"""The pooling weights against known signal tokens: per SNR band, rule-free, and the rule choice.

NumPy only. Used by training on data sets with a ``signal_mask`` (``models.train``) and by the
digits-bags study.

- :class:`SNRBands`: which band a set's SNR (k/n, its share of signal tokens) falls in: the
  project's grid (log2(k/n) rounded: 1/128 ... 1) or explicit edges.
- :func:`instance_auc`: does a set's ranking of its tokens by weight put the signal first? No
  rule, no threshold: chance is 0.5 whatever the SNR.
- :func:`choose_rule`: the signal-set rule of ``RULE_CANDIDATES`` with the highest mean F1 over
  the bands, scored on the validation split; each model gets its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelrepo.signal_rules import SignalRule
from models.metrics import (
    RULE_CANDIDATES,
    SNR_BANDS,
    BoolArray,
    FloatArray,
    auc,
    head_mean,
    snr_band_label,
    weight_quality,
)

_CHUNK = 256  # sets compared at once in instance_auc (memory: chunk x N x N)


def _fraction_label(value: float) -> str:
    n = round(1.0 / value)
    return f"1/{n}" if n > 1 and abs(n * value - 1.0) < 1e-9 else f"{value:g}"


@dataclass(frozen=True)
class SNRBands:
    """SNR bands for sets with at least one signal token.

    Attributes:
        edges: increasing, ending at 1.0: band i is [edges[i], edges[i + 1]), the last closed.
            Empty: the project's grid, a set's band being log2(k/n) rounded to the nearest
            integer in -7 ... 0 (labels 1/128 ... 1, as ``models.metrics.snr_bands``).
    """

    edges: tuple[float, ...] = ()

    @property
    def labels(self) -> list[str]:
        if not self.edges:
            return [snr_band_label(b) for b in SNR_BANDS]
        last = len(self.edges) - 2
        return [
            f"[{_fraction_label(lo)}, {_fraction_label(hi)}{']' if i == last else ')'}"
            for i, (lo, hi) in enumerate(zip(self.edges, self.edges[1:], strict=False))
        ]

    def assign(self, snr: FloatArray) -> NDArray[np.int64]:
        """(S,) SNR -> (S,) band index, -1 outside every band (no signal, or below the edges)."""
        snr = np.asarray(snr, dtype=np.float64)
        out = np.full(snr.shape, -1, dtype=np.int64)
        has = snr > 0
        if not self.edges:
            grid = np.clip(np.rint(np.log2(np.where(has, snr, 1.0))), SNR_BANDS[0], SNR_BANDS[-1])
            out[has] = (grid - SNR_BANDS[0]).astype(np.int64)[has]
            return out
        edges = np.asarray(self.edges)
        index = np.searchsorted(edges, snr, side="right") - 1
        index = np.where(snr >= edges[-1], len(edges) - 2, index)  # the last band is closed
        inside = has & (snr >= edges[0]) & (snr <= edges[-1])
        out[inside] = index[inside]
        return out


def set_snr(attention_mask: BoolArray, signal_mask: BoolArray) -> NDArray[np.float64]:
    """(S, N) masks -> (S,) k/n, the share of each set's real tokens that are signal."""
    mask = np.asarray(attention_mask, dtype=bool)
    signal = np.asarray(signal_mask, dtype=bool) & mask
    snr: NDArray[np.float64] = signal.sum(axis=1) / mask.sum(axis=1)
    return snr


def instance_auc(
    weights: FloatArray, attention_mask: BoolArray, signal_mask: BoolArray
) -> dict[str, float | int]:
    """How well the head-mean weights rank each set's signal tokens above its noise tokens.

    ``instance_auc``: the mean over sets holding both signal and noise tokens of that set's AUC
    (the probability that a signal token outweighs a noise token of the same set, ties 1/2);
    ``instance_auc_pooled``: one AUC over all real tokens of those sets, each weight scaled by
    its set's n (so 1 = a uniform share); ``sets``: how many sets were scored. Chance: 0.5.

    weights: (S, H, N) or (S, N); attention_mask, signal_mask: (S, N) bool.
    """
    w = head_mean(weights)
    mask = np.asarray(attention_mask, dtype=bool)
    signal = np.asarray(signal_mask, dtype=bool) & mask
    noise = mask & ~signal
    rows = np.flatnonzero(signal.any(axis=1) & noise.any(axis=1))
    if rows.size == 0:
        return {"instance_auc": float("nan"), "instance_auc_pooled": float("nan"), "sets": 0}
    per_set = []
    for start in range(0, rows.size, _CHUNK):
        r = rows[start : start + _CHUNK]
        ws, sig, noi = w[r], signal[r], noise[r]
        # (chunk, N signal position, N noise position): 1 if signal outweighs noise, 1/2 on ties.
        greater = (ws[:, :, None] > ws[:, None, :]) + 0.5 * (ws[:, :, None] == ws[:, None, :])
        pairs = sig[:, :, None] & noi[:, None, :]
        per_set.append((greater * pairs).sum(axis=(1, 2)) / pairs.sum(axis=(1, 2)))
    scaled = w[rows] * mask[rows].sum(axis=1, keepdims=True)
    pooled = auc(scaled[mask[rows]], signal[rows][mask[rows]])
    return {
        "instance_auc": float(np.concatenate(per_set).mean()),
        "instance_auc_pooled": pooled,
        "sets": int(rows.size),
    }


def band_quality(
    weights: FloatArray,
    attention_mask: BoolArray,
    signal_mask: BoolArray,
    bands: SNRBands,
    rule: SignalRule,
) -> list[dict[str, Any]]:
    """Per SNR band: sets, the weight quality under ``rule`` (chance beside each figure) and the
    instance AUC. Bands without sets are left out."""
    band = bands.assign(set_snr(attention_mask, signal_mask))
    out = []
    for index, label in enumerate(bands.labels):
        rows = band == index
        if not rows.any():
            continue
        w, m, s = weights[rows], attention_mask[rows], signal_mask[rows]
        out.append(
            {
                "band": label,
                "index": index,
                "sets": int(rows.sum()),
                "weights": weight_quality(w, m, s, rule).as_dict(),
                **instance_auc(w, m, s),
            }
        )
    return out


def choose_rule(
    weights: FloatArray,
    attention_mask: BoolArray,
    signal_mask: BoolArray,
    bands: SNRBands,
    candidates: Sequence[SignalRule] = RULE_CANDIDATES,
) -> tuple[SignalRule, list[dict[str, Any]]]:
    """The candidate with the highest mean F1 over the SNR bands (each band counts once, so the
    rare low-SNR sets weigh as much as the common ones); the first candidate wins ties.

    Score it on the validation split. Returns the rule and every candidate's mean F1 and
    per-band F1.
    """
    band = bands.assign(set_snr(attention_mask, signal_mask))
    present = [i for i in range(len(bands.labels)) if (band == i).any()]
    if not present:
        raise ValueError("no set holds a signal token: there is nothing to choose a rule on")
    labels = [bands.labels[i] for i in present]
    table = []
    for rule in candidates:
        f1 = [
            weight_quality(
                weights[band == i], attention_mask[band == i], signal_mask[band == i], rule
            ).f1
            for i in present
        ]
        table.append({**rule.to_dict(), "mean_f1": float(np.mean(f1)), "bands": labels, "f1": f1})
    best = max(range(len(table)), key=lambda i: (table[i]["mean_f1"], -i))
    return candidates[best], table
