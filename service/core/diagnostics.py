"""Per-item signal/noise diagnostics from the pooling weights (NumPy only).

All figures come from the head-mean weights w_1..w_n over an item's n real tokens (sum 1):

- ``entropy`` = -sum w_i ln w_i (nats). 0 when one token takes everything, ln n when uniform.
- ``normalized_entropy`` = entropy / ln n in [0, 1] (null for n = 1).
- ``effective_tokens`` = exp(entropy): how many tokens the pool effectively averages over
  (1 for a single token, n for AvgPool). For a signal-optimal pool it equals k, the signal count.
- ``max_weight`` and ``max_token``: the largest weight and its token index.
- ``top_tokens``: the ``top_k`` tokens by weight, largest first.
- ``signal_tokens``: the estimated signal set, by the model's own signal-set rule (its
  manifest's ``signal_rule``; the project's default is head-mean weight >= the item's largest
  weight / 4, chosen by measurement across SNR in ``models.signature_study``).
- ``estimated_snr`` = |signal_tokens| / n, the paper's SNR k/N as the weights see it.
- ``noise_mass`` = the weight on tokens outside the signal set (0 for a signal-optimal pool).

:class:`ItemDiagnostics` is the one definition of an item's diagnostics: answers are built from
it and the OpenAPI document describes it.
"""

from __future__ import annotations

import math
from typing import Annotated, NamedTuple

import numpy as np
from numpy.typing import NDArray
from pydantic import Field
from typing_extensions import TypedDict  # pydantic reads typing.TypedDict only from 3.12

from modelrepo import DEFAULT_RULE, SignalRule

SIGNAL_RULE = DEFAULT_RULE.definition  # for models whose manifest chose no rule of their own


class TopToken(TypedDict):
    token: Annotated[int, Field(description="the token's position in the item")]
    weight: Annotated[float, Field(description="its head-mean pooling weight")]


class ItemDiagnostics(TypedDict):
    """What the pooling weights say about one item (module docstring: the definitions).

    A TypedDict: built as a plain dict for each item of each answer (what orjson writes
    fastest), typed for mypy, and described in the OpenAPI document from this one definition.
    """

    entropy: Annotated[float, Field(description="-sum w ln w over the real tokens (nats)")]
    normalized_entropy: Annotated[
        float | None, Field(description="entropy / ln n in [0, 1]; null for one token")
    ]
    effective_tokens: Annotated[float, Field(description="exp(entropy)")]
    max_weight: float
    max_token: int
    top_tokens: list[TopToken]
    signal_tokens: Annotated[
        list[int], Field(description="the estimated signal set, by the model's signal_rule")
    ]
    estimated_snr: Annotated[float, Field(description="|signal_tokens| / n")]
    noise_mass: Annotated[float, Field(description="weight outside the signal set")]


class Summary(NamedTuple):
    """The diagnostics of a batch as arrays, one row per item, computed once per model run (in
    the batcher's worker thread, off the event loop) and sliced by rows for each request.

    Token axes keep the run's padded length: padding has weight 0, sorts last in ``order`` and
    is never in ``signal``.
    """

    mean: NDArray[np.float32]  # (B, N) head-mean weights (0 on padding)
    n: NDArray[np.int64]  # (B,) real tokens
    entropy: NDArray[np.float64]  # (B,)
    normalized: NDArray[np.float64]  # (B,)
    order: NDArray[np.intp]  # (B, N) tokens by weight, largest first; padding last
    ranked: NDArray[np.float64]  # (B, N) the weights in that order
    signal: NDArray[np.bool_]  # (B, N) the estimated signal set
    snr: NDArray[np.float64]  # (B,)
    noise_mass: NDArray[np.float64]  # (B,)

    def rows(self, index: slice) -> Summary:
        return Summary._make(a[index] for a in self)


def summarise(
    weights: NDArray[np.floating], mask: NDArray[np.bool_], rule: SignalRule = DEFAULT_RULE
) -> Summary:
    """Diagnostics arrays of a batch, vectorised over it.

    Args:
        weights: (B, H, N) per-head or (B, N) head-mean pooling weights; each row's real tokens
            sum to 1.
        mask: (B, N) True on real tokens (every row has at least one).
        rule: the model's signal-set rule.
    """
    weights = np.asarray(weights)
    mean = weights.mean(axis=1) if weights.ndim == 3 else weights
    w = np.where(mask, mean.astype(np.float64), 0.0)
    n = mask.sum(axis=1)
    logs = np.log(np.where(w > 0, w, 1.0))  # 0 ln 0 = 0
    entropy = -(w * logs).sum(axis=1)
    # float32 weights can put the entropy a hair above ln n: keep the ratio in [0, 1].
    normalized = np.clip(entropy / np.log(np.maximum(n, 2)), 0.0, 1.0)
    # Masked tokens sort last; among equal weights the lower index comes first (stable sort).
    order = np.argsort(np.where(mask, -w, np.inf), axis=1, kind="stable")
    ranked = np.take_along_axis(w, order, axis=1)
    signal = rule.select(w, mask)
    noise_mass = np.where(signal, 0.0, w).sum(axis=1)
    snr = signal.sum(axis=1) / n
    return Summary(
        mean.astype(np.float32, copy=False),
        n,
        entropy,
        normalized,
        order,
        ranked,
        signal,
        snr,
        noise_mass,
    )


def describe(summary: Summary, top_k: int) -> list[ItemDiagnostics]:
    """Each item of ``summary`` (``top_k`` top tokens each, fewer if the item has fewer real
    tokens). Token indices are positions in the item (a token hidden by the mask is never
    listed), so they stay right when a mask has holes."""
    s = summary
    keep = max(1, top_k)  # the max token is always given
    orders, ranked = s.order[:, :keep].tolist(), s.ranked[:, :keep].tolist()
    out: list[ItemDiagnostics] = []
    for i, (count, ent, norm, snr, noise) in enumerate(
        zip(
            s.n.tolist(),
            s.entropy.tolist(),
            s.normalized.tolist(),
            s.snr.tolist(),
            s.noise_mass.tolist(),
            strict=True,
        )
    ):
        tokens, values = orders[i], ranked[i]
        shown = min(top_k, count)
        out.append(
            {
                "entropy": ent,
                "normalized_entropy": norm if count > 1 else None,
                "effective_tokens": math.exp(ent),
                "max_weight": values[0],
                "max_token": tokens[0],
                "top_tokens": [
                    {"token": t, "weight": v}
                    for t, v in zip(tokens[:shown], values[:shown], strict=True)
                ],
                "signal_tokens": np.flatnonzero(s.signal[i]).tolist(),
                "estimated_snr": snr,
                "noise_mass": noise,
            }
        )
    return out


def diagnose(
    weights: NDArray[np.floating], top_k: int, rule: SignalRule = DEFAULT_RULE
) -> ItemDiagnostics:
    """Diagnostics for one item.

    Args:
        weights: (n,) head-mean pooling weights over the item's real tokens, summing to 1.
        top_k: how many top tokens to list (fewer if n is smaller).
        rule: the model's signal-set rule.
    """
    w = np.asarray(weights, dtype=np.float64)[None, :]
    return describe(summarise(w, np.ones(w.shape, dtype=bool), rule), top_k)[0]
