"""The Signature task: signal tokens are recognisable one by one, and the signal share varies.

kNN-Centroid (the paper's benchmark) defines signal relative to the query token, and at CPU scale
an AdaPool model answers it through the query token's own output: its pooling weights say
nothing about which tokens were signal (see README, Results). Here a token is signal by a
property it carries itself, so a pool that finds the signal must say so in its weights; and one
data set spans the paper's whole SNR range with varying token counts, so a single model must be
robust to the signal share changing from request to request, as a deployed model is.

Recipe, per sample (seeded, vectorised):

1. n real tokens, n uniform in [min_vectors, num_vectors]; the rest of the row is padding
   (zeros, masked out).
2. The signal share: log2(snr) uniform in [log2(1/n), 0]; k = clip(round(snr * n), 1, n).
   SNR = k / n therefore runs from 1/128 (n = 128, k = 1) to 1.
3. Every feature of every real token ~ N(0, 1). The k signal tokens (at random positions) have
   their first ``signature_dims`` features replaced by SIGNATURE + signature_noise * N(0, 1):
   a fixed pattern, the same for the whole task, which the model has to learn. Noise tokens
   match it only by chance (with 4 dims and noise 0.25, about 1% of noise tokens fall as close
   to the pattern as 99% of signal tokens).
4. Target y = the mean of the signal tokens (all features). No single token answers it unless
   k = 1, and the query token (token 0) is signal only as often as any other token.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from models.data.knn_centroid import Dataset

SIGNATURE_VALUES = (1.0, -1.0)  # the pattern alternates +1, -1 over the signature features
_CHUNK = 8192


def signature(dims: int) -> NDArray[np.float64]:
    return np.resize(np.array(SIGNATURE_VALUES), dims)


def _chunk(
    rng: np.random.Generator,
    num_samples: int,
    num_vectors: int,
    min_vectors: int,
    dim: int,
    signature_dims: int,
    signature_noise: float,
    signal_tokens: int | None,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_], NDArray[np.bool_]]:
    S, N = num_samples, num_vectors
    n = rng.integers(min_vectors, N + 1, size=S)
    log_snr = rng.uniform(-np.log2(n), 0.0)
    k = np.clip(np.rint(2.0**log_snr * n), 1, n).astype(np.int64)
    if signal_tokens is not None:
        k = np.minimum(n, signal_tokens)
    positions = np.arange(N)[None, :]
    mask = positions < n[:, None]
    # k signal positions among the n real ones: rank real positions by a random key.
    keys = np.where(mask, rng.random((S, N)), np.inf)
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    signal = rank < k[:, None]

    x = rng.standard_normal((S, N, dim))
    pattern = signature(signature_dims)
    marked = pattern + signature_noise * rng.standard_normal((S, N, signature_dims))
    x[..., :signature_dims] = np.where(signal[..., None], marked, x[..., :signature_dims])
    x[~mask] = 0.0
    y = (x * signal[..., None]).sum(axis=1) / k[:, None]
    return x.astype(np.float32), y.astype(np.float32), signal, mask


def generate(
    num_samples: int,
    seed: int,
    num_vectors: int = 128,
    min_vectors: int = 32,
    dim: int = 16,
    signature_dims: int = 4,
    signature_noise: float = 0.25,
    signal_tokens: int | None = None,
) -> Dataset:
    """Generate ``num_samples`` Signature samples (padded to ``num_vectors`` tokens).

    ``signal_tokens`` fixes k instead of drawing the SNR (for examples and tests; with
    ``min_vectors = num_vectors`` it fixes n too). Returns a Dataset whose ``attention_mask``
    marks each row's real tokens.
    """
    if not 1 <= min_vectors <= num_vectors:
        raise ValueError(f"min_vectors must be in [1, {num_vectors}], got {min_vectors}")
    if not 1 <= signature_dims <= dim:
        raise ValueError(f"signature_dims must be in [1, {dim}], got {signature_dims}")
    rng = np.random.default_rng(seed)
    parts = [
        _chunk(
            rng,
            min(_CHUNK, num_samples - start),
            num_vectors,
            min_vectors,
            dim,
            signature_dims,
            signature_noise,
            signal_tokens,
        )
        for start in range(0, num_samples, _CHUNK)
    ]
    x, y, signal, mask = (np.concatenate(p) for p in zip(*parts, strict=True))
    return Dataset(x=x, y=y, signal_mask=signal, attention_mask=mask)


def snr(data: Dataset) -> NDArray[np.float64]:
    """Each sample's signal share k / n."""
    result: NDArray[np.float64] = data.signal_mask.sum(axis=1) / data.mask().sum(axis=1)
    return result
