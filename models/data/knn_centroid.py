"""The kNN-Centroid task, the paper's synthetic noise-robustness benchmark.

Recipe (after the paper's public generator, github.com/agbrothers/pooling), per sample:

1. N vectors of dimension d. Draw per-feature distribution parameters shared by the sample's N
   vectors, 6 columns from each of three families:
   - normal: mean ~ U(-3, 3), std ~ U(1, 3);
   - uniform: low ~ U(-3, 3), high = low + U(0.2, 3);
   - signed shifted exponential: scale ~ U(0.1, 2), sign in {+1, -1}, shift = -sign * U(0, 3),
     value = sign * Exp(scale) + shift (``scale`` is the exponential's mean).
2. Divide the 18 columns by sqrt(d), shuffle their order (per sample), keep the first d.
3. The query ("ego") vector is x_0. Signal = its k nearest neighbours by Euclidean distance,
   x_0 excluded; noise = the rest. Target y = the mean of the signal vectors. As in the paper,
   k = N stands for "all N - 1 others" (SNR 1).

SNR = k / N. Generation is vectorised and done in chunks, so memory stays bounded.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

COLUMNS_PER_FAMILY = 6
NUM_FAMILIES = 3
_CHUNK = 4096


class Dataset(NamedTuple):
    """A generated data set (kNN-Centroid, or Signature with its padding).

    Attributes:
        x: (S, N, D) float32 token sets; for kNN-Centroid token 0 is the ego/query vector.
        y: (S, D) float32 targets, the centroid of each sample's signal tokens.
        signal_mask: (S, N) bool, True on the signal tokens (kNN-Centroid: exactly the k
            neighbours of token 0, never token 0).
        attention_mask: (S, N) bool, True on real tokens; None when every token is real.
    """

    x: NDArray[np.float32]
    y: NDArray[np.float32]
    signal_mask: NDArray[np.bool_]
    attention_mask: NDArray[np.bool_] | None = None

    def mask(self) -> NDArray[np.bool_]:
        """The attention mask, all True when the set has no padding."""
        if self.attention_mask is None:
            return np.ones(self.signal_mask.shape, dtype=bool)
        return self.attention_mask


def _sample_tokens(
    rng: np.random.Generator, num_samples: int, num_vectors: int, dim: int
) -> NDArray[np.float64]:
    """(S, N, dim) tokens drawn from per-sample, per-feature distributions."""
    S, N, C = num_samples, num_vectors, COLUMNS_PER_FAMILY

    mean = rng.uniform(-3.0, 3.0, (S, 1, C))
    std = rng.uniform(1.0, 3.0, (S, 1, C))
    normal = mean + std * rng.standard_normal((S, N, C))

    low = rng.uniform(-3.0, 3.0, (S, 1, C))
    width = rng.uniform(0.2, 3.0, (S, 1, C))
    uniform = low + width * rng.random((S, N, C))

    scale = rng.uniform(0.1, 2.0, (S, 1, C))
    sign = rng.choice(np.array([-1.0, 1.0]), size=(S, 1, C))
    shift = -sign * rng.uniform(0.0, 3.0, (S, 1, C))
    exponential = sign * rng.exponential(1.0, (S, N, C)) * scale + shift

    columns = np.concatenate([normal, uniform, exponential], axis=2) / np.sqrt(dim)
    # Per-sample column shuffle, then keep the first `dim` columns.
    order = np.argsort(rng.random((S, NUM_FAMILIES * C)), axis=1)[:, :dim]
    return np.take_along_axis(columns, order[:, None, :], axis=2)


def nearest_neighbour_mask(x: NDArray[np.floating], k: int) -> NDArray[np.bool_]:
    """(S, N, D) -> (S, N) bool marking the k nearest neighbours of token 0, token 0 excluded."""
    distances = np.linalg.norm(x[:, 1:] - x[:, :1], axis=-1)  # (S, N - 1)
    mask = np.zeros(x.shape[:2], dtype=bool)
    if k >= distances.shape[1]:
        mask[:, 1:] = True
        return mask
    nearest = np.argpartition(distances, k - 1, axis=1)[:, :k] + 1
    np.put_along_axis(mask, nearest, True, axis=1)
    return mask


def generate(num_samples: int, k: int, seed: int, num_vectors: int = 128, dim: int = 16) -> Dataset:
    """Generate ``num_samples`` kNN-Centroid samples with ``k`` signal tokens each.

    Args:
        num_samples: S, number of token sets.
        k: signal tokens per set, 1 <= k <= num_vectors; k = num_vectors means all
            num_vectors - 1 tokens other than the ego (the paper's SNR = 1 point).
        seed: seed of the generator; the same arguments always give the same data.
        num_vectors: N, tokens per set (the ego token included).
        dim: D, token dimension (at most 18, the number of generated columns).

    Returns:
        A :class:`Dataset` with x (S, N, D), y (S, D) and signal_mask (S, N).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_vectors < 2:
        raise ValueError(f"num_vectors must be >= 2, got {num_vectors}")
    if not 1 <= k <= num_vectors:
        raise ValueError(f"k must be in [1, {num_vectors}], got {k}")
    if not 1 <= dim <= NUM_FAMILIES * COLUMNS_PER_FAMILY:
        raise ValueError(f"dim must be in [1, {NUM_FAMILIES * COLUMNS_PER_FAMILY}], got {dim}")

    rng = np.random.default_rng(seed)
    x = np.empty((num_samples, num_vectors, dim), dtype=np.float32)
    y = np.empty((num_samples, dim), dtype=np.float32)
    signal_mask = np.empty((num_samples, num_vectors), dtype=bool)
    for start in range(0, num_samples, _CHUNK):
        stop = min(start + _CHUNK, num_samples)
        tokens = _sample_tokens(rng, stop - start, num_vectors, dim)
        mask = nearest_neighbour_mask(tokens, k)
        x[start:stop] = tokens
        signal_mask[start:stop] = mask
        y[start:stop] = (tokens * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
    return Dataset(x, y, signal_mask)
