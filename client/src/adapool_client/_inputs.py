"""From what a user has (numpy arrays, padded or ragged) to one padded batch for the wire.

Three input forms, fixed by the issue's API and told apart by their shape, not by guessing:

- a sequence (list, tuple) of [N_i, D] arrays: a ragged batch, padded here; lengths are N_i;
- a [B, N, D] array: a padded batch, with ``lengths`` (B,) or ``attention_mask`` (B, N);
- a [N, D] array: one item (a batch of 1).

Client-side checks are those needed to build the body (shapes, dims, numeric dtypes, a mask
with a real token per row); the server checks the rest (NaN and Inf in real tokens, lengths in
range, its limits) and its 422 names the field and the item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

UploadDtype = Literal["float32", "float16"]
UPLOAD_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
}
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class Prepared:
    """One request's batch, ready to encode.

    Attributes:
        embeddings: (B, N, D) float32 or float16, C-contiguous; padding is 0 where this module
            padded, and left as given otherwise (the server never reads it).
        lengths: (B,) int64, each item's token count (up to its last real token with ``mask``).
        mask: (B, N) bool, only for an attention_mask that is not a prefix of each row (holes,
            left padding): only the server's JSON format takes such a mask; else None.
    """

    embeddings: NDArray[Any]
    lengths: NDArray[np.int64]
    mask: NDArray[np.bool_] | None = None

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])


def nbytes(embeddings: ArrayLike | Sequence[ArrayLike]) -> int:
    """The input's size in bytes, without converting it (0 for what is not an array yet)."""
    if isinstance(embeddings, (list, tuple)):
        return sum(getattr(item, "nbytes", 0) for item in embeddings)
    return int(getattr(embeddings, "nbytes", 0))


def _as_float(array: ArrayLike, where: str) -> NDArray[Any]:
    out = np.asarray(array)
    if out.dtype.kind not in "fiub":
        raise TypeError(f"{where}: needs numbers, got an array of dtype {out.dtype}")
    return out


def _items(embeddings: Sequence[ArrayLike]) -> list[NDArray[Any]]:
    if len(embeddings) == 0:
        raise ValueError("embeddings: no items")
    items = [_as_float(item, f"embeddings[{i}]") for i, item in enumerate(embeddings)]
    for i, item in enumerate(items):
        if item.ndim != 2:
            raise ValueError(f"embeddings[{i}]: an item must be [N, D], got shape {item.shape}")
        if item.shape[0] == 0:
            raise ValueError(f"embeddings[{i}]: the item has no tokens")
    dims = sorted({item.shape[1] for item in items})
    if len(dims) > 1:
        first = next(i for i, item in enumerate(items) if item.shape[1] != items[0].shape[1])
        raise ValueError(
            f"embeddings[{first}]: token dim {items[first].shape[1]} differs from item 0's "
            f"{items[0].shape[1]}"
        )
    return items


def _pad(items: list[NDArray[Any]], dtype: np.dtype[Any]) -> Prepared:
    lengths = np.fromiter((len(item) for item in items), dtype=np.int64, count=len(items))
    out = np.zeros((len(items), int(lengths.max()), items[0].shape[1]), dtype=dtype)
    for i, item in enumerate(items):
        out[i, : len(item)] = item
    return Prepared(out, lengths)


def _lengths(lengths: ArrayLike, b: int) -> NDArray[np.int64]:
    array = np.asarray(lengths)
    if array.ndim != 1 or len(array) != b or (array.size and array.dtype.kind not in "iu"):
        raise ValueError(f"lengths: must be {b} integers (one per item), got {array.tolist()!r}")
    return array.astype(np.int64)


def _from_mask(
    mask_like: ArrayLike, embeddings: NDArray[Any]
) -> tuple[NDArray[np.int64], NDArray[np.bool_] | None, NDArray[Any]]:
    """(lengths, mask if it is not a prefix mask, embeddings to send)."""
    b, n = embeddings.shape[:2]
    mask = np.asarray(mask_like)
    if mask.shape != (b, n):
        raise ValueError(f"attention_mask: must be [B, N] = [{b}, {n}], got {list(mask.shape)}")
    if mask.dtype != np.bool_:
        if mask.dtype.kind not in "iub" or not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask: entries must be True/False or 0/1")
        mask = mask.astype(bool)
    real = mask.any(axis=1)
    if not real.all():
        raise ValueError(f"attention_mask[{int(np.argmin(real))}]: the item has no real token")
    counts = mask.sum(axis=1)
    prefix = np.arange(n)[None, :] < counts[:, None]
    if np.array_equal(mask, prefix):
        return counts.astype(np.int64), None, embeddings
    # Holes or left padding: each item runs up to its last real token, and the hidden tokens
    # are zeroed (they go as JSON numbers; NaN has no JSON form).
    last = n - np.argmax(mask[:, ::-1], axis=1)
    longest = int(last.max())
    kept = np.where(mask[:, :longest, None], embeddings[:, :longest], 0)
    return last.astype(np.int64), mask[:, :longest], kept.astype(embeddings.dtype)


def prepare(
    embeddings: ArrayLike | Sequence[ArrayLike],
    lengths: ArrayLike | None = None,
    attention_mask: ArrayLike | None = None,
    dtype: UploadDtype = "float32",
) -> Prepared:
    """The batch to send; raises ValueError or TypeError naming the argument and the item."""
    wire = UPLOAD_DTYPES.get(dtype)
    if wire is None:
        raise ValueError(f"upload_dtype: must be float32 or float16, got {dtype!r}")
    if lengths is not None and attention_mask is not None:
        raise ValueError("give lengths or attention_mask, not both")
    with np.errstate(over="ignore"):  # float16 overflow is reported by _check_float16
        prepared = _prepared(embeddings, lengths, attention_mask, wire)
    if wire == UPLOAD_DTYPES["float16"]:
        _check_float16(prepared)
    return prepared


def _prepared(
    embeddings: ArrayLike | Sequence[ArrayLike],
    lengths: ArrayLike | None,
    attention_mask: ArrayLike | None,
    wire: np.dtype[Any],
) -> Prepared:
    if isinstance(embeddings, (list, tuple)):
        if lengths is not None or attention_mask is not None:
            raise ValueError(
                "lengths and attention_mask are for a padded [B, N, D] array; a list of "
                "[N_i, D] items has its lengths already"
            )
        return _pad(_items(embeddings), wire)
    array = _as_float(cast(ArrayLike, embeddings), "embeddings")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(
            f"embeddings: must be [B, N, D], [N, D] or a list of [N_i, D] arrays, "
            f"got shape {array.shape}"
        )
    b, n, _ = array.shape
    if b == 0 or n == 0:
        raise ValueError(f"embeddings: empty batch of shape {array.shape}")
    mask = None
    if attention_mask is not None:
        counts, mask, array = _from_mask(attention_mask, array)
    elif lengths is not None:
        counts = _lengths(lengths, b)
    else:
        counts = np.full(b, n, dtype=np.int64)
    return Prepared(np.ascontiguousarray(array, dtype=wire), counts, mask)


def _check_float16(prepared: Prepared) -> None:
    """A finite value beyond float16's range would reach the server as Inf: refuse it here,
    where the cause is known."""
    x = prepared.embeddings
    over = ~np.isfinite(x).all(axis=2)
    if prepared.mask is not None:
        over &= prepared.mask
    else:
        over &= np.arange(x.shape[1])[None, :] < prepared.lengths[:, None]
    if over.any():
        i = int(np.flatnonzero(over.any(axis=1))[0])
        raise ValueError(
            f"embeddings[{i}]: a value is NaN, Inf or beyond float16's range "
            f"(+-{FLOAT16_MAX:g}); upload as float32"
        )
