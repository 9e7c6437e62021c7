"""Parity cases: ONNX Runtime against PyTorch on the shapes where export goes wrong.

Shapes other than the export example's (tokens 1, 128, 300 and 2,048, the service's longest
item; batch 1 and 64), ragged padded batches up to 2,048 tokens, masks with holes and long runs
of padding (the encoder's attention kernel works on tiles of keys: a tile may hold only
padding), and padding filled with huge, infinite and NaN values. Every case also checks that
the weights of each head sum to 1 over the real tokens and are exactly 0 on padding; for a model
with a task head, its ``logits`` or ``prediction`` against PyTorch's, and, when it exports
``contributions``, those against PyTorch's, exactly 0 on padding, and adding up (with the
model's constant bias) to ONNX Runtime's own head output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

FP32_TOLERANCE = 1e-4
# fp16 graphs (export.precision): float16 keeps 11 significant bits (relative rounding 4.9e-4)
# through every projection, so outputs of order 1 differ from float32 PyTorch by about 1e-3
# (the committed models converted: pooled 3.9e-3, weights 1.4e-3, head outputs 5.4e-3 at
# worst over every case; BENCHMARKS.md "fp16"). 1e-2 leaves room for other trained models.
FP16_TOLERANCE = 1e-2
# Weights sum to 1 per head within this: a softmax's, kept float32, within 1e-5; AvgPool's
# (mask / count), computed in float16 in an fp16 graph, within 3.1e-4 on the committed model.
WEIGHT_SUM_TOLERANCE = {"fp32": 1e-5, "fp16": 2e-3}
TOLERANCE = {"fp32": FP32_TOLERANCE, "fp16": FP16_TOLERANCE}


@dataclass(frozen=True)
class Case:
    name: str
    embeddings: NDArray[np.float32]  # (B, N, D)
    attention_mask: NDArray[np.bool_]  # (B, N)


Outputs = dict[str, NDArray[np.float32]]  # by graph output name


@dataclass(frozen=True)
class CaseResult:
    """One case's figures. ``max_abs_diff_head``: per task-head output (``logits`` or
    ``prediction``, ``contributions``); ``contribution_sum_error``: max |bias + sum over tokens of
    contributions - head output| on ONNX Runtime's outputs; ``max_contribution_on_padding``."""

    name: str
    shape: tuple[int, ...]
    max_abs_diff_pooled: float
    max_abs_diff_weights: float
    max_weight_sum_error: float
    max_weight_on_padding: float
    max_abs_diff_head: dict[str, float] = field(default_factory=dict)
    contribution_sum_error: float = 0.0
    max_contribution_on_padding: float = 0.0

    def ok(self, precision: str = "fp32") -> bool:
        """Within the tolerances of a graph of ``precision`` (fp32 or fp16)."""
        tolerance = TOLERANCE[precision]
        return (
            self.max_abs_diff_pooled <= tolerance
            and self.max_abs_diff_weights <= tolerance
            and self.max_weight_sum_error <= WEIGHT_SUM_TOLERANCE[precision]
            and self.max_weight_on_padding == 0.0
            and all(d <= tolerance for d in self.max_abs_diff_head.values())
            and self.contribution_sum_error <= tolerance
            and self.max_contribution_on_padding == 0.0
        )

    @classmethod
    def failed(cls, case: Case, outputs: Sequence[str]) -> CaseResult:
        """A case whose outputs could not be compared at all."""
        head = {name: np.inf for name in outputs if name not in ("pooled", "weights")}
        inf = float(np.inf)
        return cls(case.name, case.embeddings.shape, inf, inf, inf, inf, head, inf, inf)


LONGEST = 2048  # the service's default max_tokens_per_item


def _holes(tokens: int, leading: int) -> NDArray[np.bool_]:
    """Three rows: every third token padding; a run of padding in the middle; the first two
    thirds padding. The first ``leading`` tokens stay real."""
    mask = np.ones((3, tokens), dtype=bool)
    mask[0, 1::3] = False
    mask[1, tokens // 8 : tokens - tokens // 8] = False
    mask[2, : 2 * tokens // 3] = False
    mask[:, :leading] = True
    return mask


def _ragged(rng: np.random.Generator, batch: int, tokens: int, min_real: int) -> NDArray[np.bool_]:
    lengths = rng.integers(min_real, tokens + 1, size=batch)
    lengths[0] = tokens  # one full row
    lengths[-1] = min_real  # and one as short as allowed
    mask: NDArray[np.bool_] = np.arange(tokens)[None, :] < lengths[:, None]
    return mask


def make_cases(
    input_dim: int, min_real: int = 1, seed: int = 0, leading: int | None = None
) -> list[Case]:
    """The standard parity cases for a model with ``input_dim`` features.

    ``min_real``: the fewest real tokens a row may have (a token-query model needs its query
    token; rows are padded at the end, so min_real = query index + 1). ``leading``: how many
    first tokens must be real where padding is not only at the end (default ``min_real``; 0
    for a model that needs no particular token).
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
        Case(f"batch 1, tokens {LONGEST}", x(1, LONGEST), full(1, LONGEST)),
        Case(
            f"ragged batch 3, tokens up to {LONGEST}",
            x(3, LONGEST),
            _ragged(rng, 3, LONGEST, min_real),
        ),
        Case(
            f"mask with holes, tokens {LONGEST}",
            x(3, LONGEST),
            _holes(LONGEST, min_real if leading is None else leading),
        ),
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


def _max_abs_diff(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    return float(np.nan_to_num(np.abs(a - b).max(), nan=np.inf)) if a.size else 0.0


def compare(
    case: Case, onnx_out: Outputs, torch_out: Outputs, bias: NDArray[np.float32] | None = None
) -> CaseResult:
    """Score one case's ONNX Runtime outputs against PyTorch's (both by output name).

    ``bias``: (K,) the model's constant output bias, needed to check ``contributions``.
    """
    if onnx_out.keys() != torch_out.keys() or any(
        onnx_out[k].shape != torch_out[k].shape for k in onnx_out
    ):
        return CaseResult.failed(case, list(torch_out))
    sum_error, on_padding = weight_checks(onnx_out["weights"], case.attention_mask)
    head = {
        name: _max_abs_diff(onnx_out[name], torch_out[name])
        for name in onnx_out
        if name not in ("pooled", "weights")
    }
    contribution_sum_error = contribution_on_padding = 0.0
    if "contributions" in onnx_out:
        assert bias is not None, "checking contributions needs the model's output bias"
        terms = onnx_out["contributions"].astype(np.float64)
        output = next(onnx_out[k] for k in ("logits", "prediction") if k in onnx_out)
        contribution_sum_error = _max_abs_diff(terms.sum(axis=1) + bias, output)
        padding = np.abs(np.where(case.attention_mask[..., None], 0.0, terms))
        contribution_on_padding = float(padding.max()) if padding.size else 0.0
    return CaseResult(
        name=case.name,
        shape=case.embeddings.shape,
        max_abs_diff_pooled=_max_abs_diff(onnx_out["pooled"], torch_out["pooled"]),
        max_abs_diff_weights=_max_abs_diff(onnx_out["weights"], torch_out["weights"]),
        max_weight_sum_error=sum_error,
        max_weight_on_padding=on_padding,
        max_abs_diff_head=head,
        contribution_sum_error=contribution_sum_error,
        max_contribution_on_padding=contribution_on_padding,
    )
