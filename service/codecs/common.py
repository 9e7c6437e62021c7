"""What every request decoder shares: the limits, the shape and token checks, masks from
lengths, bytes to arrays, and the final checks of a decoded batch.

Every decoder returns a :class:`~service.core.calls.Batch`: embeddings (B, N, D) float32 padded,
attention_mask (B, N) bool (True = real token) and each item's token count. Nothing here knows
HTTP or models; errors are :class:`~service.errors.ServiceError` naming the field and the item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.core.calls import Batch
from service.errors import PayloadTooLarge, invalid

DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


@dataclass(frozen=True)
class Limits:
    max_items: int
    max_tokens_per_item: int
    max_tokens_per_request: int


def check_shape(shape: tuple[int, ...], limits: Limits, field: str) -> tuple[int, int, int]:
    """Accept (B, N, D) or (N, D); enforce the request limits before any data is read."""
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise invalid(field, f"shape must be [B, N, D] or [N, D], got {list(shape)}")
    b, n, d = shape
    if min(shape) < 0:
        raise invalid(field, f"shape must not be negative, got {list(shape)}")
    if b == 0:
        raise invalid(field, "the batch is empty")
    if n == 0:
        raise invalid(field, "items have no tokens")
    if b > limits.max_items:
        raise PayloadTooLarge(
            f"{field}: {b} items exceed the limit of {limits.max_items}",
            {"field": field, "limit": limits.max_items},
        )
    check_tokens(field, n, b * n, limits)
    return b, n, d


def check_tokens(field: str, longest: int, total: int, limits: Limits) -> None:
    if longest > limits.max_tokens_per_item:
        raise PayloadTooLarge(
            f"{field}: an item has {longest} tokens, over the limit of "
            f"{limits.max_tokens_per_item}",
            {"field": field, "limit": limits.max_tokens_per_item},
        )
    if total > limits.max_tokens_per_request:
        raise PayloadTooLarge(
            f"{field}: {total} padded tokens exceed the limit of {limits.max_tokens_per_request}",
            {"field": field, "limit": limits.max_tokens_per_request},
        )


def parse_lengths(text: str | None, field: str = "lengths") -> list[int] | None:
    """'3,5,7' -> [3, 5, 7] (from a header or query parameter)."""
    if text is None or text == "":
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise invalid(field, f"must be comma-separated integers, got {text[:50]!r}") from None


def parse_shape(text: str | None, field: str = "X-Shape") -> tuple[int, ...]:
    if not text:
        raise invalid(field, "header required for application/octet-stream, e.g. '8,128,384'")
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise invalid(field, f"must be comma-separated integers, got {text[:50]!r}") from None


def mask_from_lengths(lengths: list[int] | None, b: int, n: int) -> NDArray[np.bool_]:
    if lengths is None:
        return np.ones((b, n), dtype=bool)
    if len(lengths) != b:
        raise invalid("lengths", f"has {len(lengths)} entries for {b} items")
    for i, length in enumerate(lengths):
        if not 1 <= length <= n:
            raise invalid("lengths", f"must be in [1, {n}], got {length}", item=i)
    mask: NDArray[np.bool_] = np.arange(n)[None, :] < np.asarray(lengths)[:, None]
    return mask


def from_bytes(
    data: bytes | memoryview,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    field: str,
    fortran: bool = False,
) -> NDArray[np.float32]:
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise invalid(
            field, f"has {len(data)} bytes; shape {list(shape)} of {dtype.name} needs {expected}"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(array, dtype=np.float32)


def finish(
    embeddings: NDArray[np.float32], mask: NDArray[np.bool_], lengths: NDArray[np.int64], field: str
) -> Batch:
    """Common checks: every item has a real token, and real tokens are finite."""
    empty = np.flatnonzero(~mask.any(axis=1))
    if len(empty):
        raise invalid(field, "item has no real token", item=int(empty[0]))
    finite = np.isfinite(embeddings).all(axis=2) | ~mask  # padding may hold anything
    bad = np.flatnonzero(~finite.all(axis=1))
    if len(bad):
        raise invalid(field, "contains NaN or Inf", item=int(bad[0]))
    return Batch(embeddings, mask, lengths)
