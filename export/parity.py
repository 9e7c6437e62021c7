"""Parity cases: ONNX Runtime against PyTorch on the shapes where export goes wrong.

Shapes other than the export example's (tokens 1 and 300, batch 1 and 64), ragged padded
batches, and padding filled with huge, infinite and NaN values. Every case also checks that the
weights of each head sum to 1 over the real tokens and are exactly 0 on padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FP32_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Case:
    name: str
    embeddings: NDArray[np.float32]  # (B, N, D)
    attention_mask: NDArray[np.bool_]  # (B, N)


@dataclass(frozen=True)
class CaseResult:
    name: str
    shape: tuple[int, ...]
    max_abs_diff_pooled: float
    max_abs_diff_weights: float
    max_weight_sum_error: float
    max_weight_on_padding: float

    def ok(self, tolerance: float = FP32_TOLERANCE) -> bool:
        return (
            self.max_abs_diff_pooled <= tolerance
            and self.max_abs_diff_weights <= tolerance
            and self.max_weight_sum_error <= 1e-5
            and self.max_weight_on_padding == 0.0
        )


def _ragged(rng: np.random.Generator, batch: int, tokens: int, min_real: int) -> NDArray[np.bool_]:
    lengths = rng.integers(min_real, tokens + 1, size=batch)
    lengths[0] = tokens  # one full row
    lengths[-1] = min_real  # and one as short as allowed
    mask: NDArray[np.bool_] = np.arange(tokens)[None, :] < lengths[:, None]
    return mask


def make_cases(input_dim: int, min_real: int = 1, seed: int = 0) -> list[Case]:
    """The standard parity cases for a model with ``input_dim`` features.

    ``min_real``: the fewest real tokens a row may have (a token-query model needs its query
    token; rows are padded at the end, so min_real = query index + 1).
    """
    rng = np.random.default_rng(seed)

    def x(batch: int, tokens: int) -> NDArray[np.float32]:
        return rng.standard_normal((batch, tokens, input_dim)).astype(np.float32)

    def full(batch: int, tokens: int) -> NDArray[np.bool_]:
        return np.ones((batch, tokens), dtype=bool)

    ragged = max(40, min_real + 1)
    cases = [
        Case("batch 2, tokens 1", x(2, 1), full(2, 1)) if min_real <= 1 else None,
        Case("batch 2, tokens 300", x(2, 300), full(2, 300)),
        Case("batch 1, tokens 128", x(1, 128), full(1, 128)),
        Case("batch 64, tokens 128", x(64, 128), full(64, 128)),
        Case("ragged batch 8, tokens 40+", x(8, ragged), _ragged(rng, 8, ragged, min_real)),
    ]
    for fill in (1e6, np.inf, np.nan):
        emb, mask = x(6, ragged + 10), _ragged(rng, 6, ragged + 10, min_real)
        emb[~mask] = fill
        cases.append(Case(f"padding filled with {fill}", emb, mask))
    return [c for c in cases if c is not None]


def weight_checks(
    weights: NDArray[np.float32], attention_mask: NDArray[np.bool_]
) -> tuple[float, float]:
    """(max |row sum - 1| over heads, max |weight| on padding) for weights (B, H, N)."""
    w = weights.astype(np.float64)
    mask = attention_mask[:, None, :]
    sums = np.where(mask, w, 0.0).sum(axis=-1)
    on_padding = np.abs(np.where(mask, 0.0, w))
    return float(np.abs(sums - 1.0).max()), float(on_padding.max()) if on_padding.size else 0.0


def compare(
    case: Case,
    onnx_out: tuple[NDArray[np.float32], NDArray[np.float32]],
    torch_out: tuple[NDArray[np.float32], NDArray[np.float32]],
) -> CaseResult:
    """Score one case's ONNX Runtime outputs against PyTorch's."""
    (pooled, weights), (ref_pooled, ref_weights) = onnx_out, torch_out
    if pooled.shape != ref_pooled.shape or weights.shape != ref_weights.shape:
        return CaseResult(case.name, case.embeddings.shape, np.inf, np.inf, np.inf, np.inf)
    sum_error, on_padding = weight_checks(weights, case.attention_mask)
    return CaseResult(
        name=case.name,
        shape=case.embeddings.shape,
        max_abs_diff_pooled=float(np.nan_to_num(np.abs(pooled - ref_pooled).max(), nan=np.inf)),
        max_abs_diff_weights=float(np.nan_to_num(np.abs(weights - ref_weights).max(), nan=np.inf)),
        max_weight_sum_error=sum_error,
        max_weight_on_padding=on_padding,
    )
