"""Per-item signal/noise diagnostics from the pooling weights (NumPy only).

All figures come from the head-mean weights w_1..w_n over an item's n real tokens (sum 1):

- ``entropy`` = -sum w_i ln w_i (nats). 0 when one token takes everything, ln n when uniform.
- ``normalized_entropy`` = entropy / ln n in [0, 1] (null for n = 1).
- ``effective_tokens`` = exp(entropy): how many tokens the pool effectively averages over
  (1 for a single token, n for AvgPool). For a signal-optimal pool it equals k, the signal count.
- ``max_weight`` and ``max_token``: the largest weight and its token index.
- ``top_tokens``: the ``top_k`` tokens by weight, largest first.
- ``signal_tokens``: the estimated signal set, by the training metrics' rule
  (``SIGNAL_RULE``: head-mean weight > 1/n, the uniform share).
- ``estimated_snr`` = |signal_tokens| / n, the paper's SNR k/N as the weights see it.
- ``noise_mass`` = the weight on tokens outside the signal set (0 for a signal-optimal pool).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

# The same rule as models.metrics.SIGNAL_RULE (a test proves the two agree).
SIGNAL_RULE = "head-mean weight > 1/n_real"


def signal_set(weights: NDArray[np.floating]) -> NDArray[np.bool_]:
    """weights (n,) over one item's real tokens -> (n,) bool estimated signal set."""
    estimated: NDArray[np.bool_] = weights > 1.0 / len(weights)
    return estimated


@dataclass(frozen=True)
class Diagnostics:
    entropy: float
    normalized_entropy: float | None
    effective_tokens: float
    max_weight: float
    max_token: int
    top_tokens: list[tuple[int, float]]
    signal_tokens: list[int]
    estimated_snr: float
    noise_mass: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "entropy": self.entropy,
            "normalized_entropy": self.normalized_entropy,
            "effective_tokens": self.effective_tokens,
            "max_weight": self.max_weight,
            "max_token": self.max_token,
            "top_tokens": [{"token": t, "weight": w} for t, w in self.top_tokens],
            "signal_tokens": self.signal_tokens,
            "estimated_snr": self.estimated_snr,
            "noise_mass": self.noise_mass,
        }


def diagnose(weights: NDArray[np.floating], top_k: int) -> Diagnostics:
    """Diagnostics for one item.

    Args:
        weights: (n,) head-mean pooling weights over the item's real tokens, summing to 1.
        top_k: how many top tokens to list (fewer if n is smaller).
    """
    w = np.asarray(weights, dtype=np.float64)
    n = len(w)
    positive = w[w > 0]
    entropy = float(-(positive * np.log(positive)).sum())
    signal = signal_set(w)
    order = np.argsort(-w, kind="stable")[: min(top_k, n)]
    top = int(order[0]) if len(order) else int(np.argmax(w))
    return Diagnostics(
        entropy=entropy,
        normalized_entropy=entropy / float(np.log(n)) if n > 1 else None,
        effective_tokens=float(np.exp(entropy)),
        max_weight=float(w[top]),
        max_token=top,
        top_tokens=[(int(i), float(w[i])) for i in order],
        signal_tokens=np.flatnonzero(signal).tolist(),
        estimated_snr=float(signal.sum() / n),
        noise_mass=float(w[~signal].sum()),
    )
