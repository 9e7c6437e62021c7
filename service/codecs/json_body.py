"""JSON request bodies: nested lists (ragged items allowed, or an explicit attention_mask), or
one base64 array with its shape, dtype and lengths."""

from __future__ import annotations

import base64
import binascii
import ctypes
import math
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from service.codecs.common import (
    DTYPES,
    Limits,
    check_shape,
    check_tokens,
    finish,
    from_bytes,
    mask_from_lengths,
)
from service.core.calls import Batch
from service.errors import BadRequest, PayloadTooLarge, invalid


def decode_json(body: bytes, limits: Limits) -> tuple[Batch, dict[str, Any]]:
    """JSON with ``embeddings`` (nested lists, ragged allowed) or ``embeddings_b64``.

    Returns the batch and the body's other keys (options such as ``top_k``).
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", {"field": "body"}) from None
    if not isinstance(data, dict):
        raise invalid("body", "must be a JSON object")
    if ("embeddings" in data) == ("embeddings_b64" in data):
        raise invalid("body", "give exactly one of 'embeddings' and 'embeddings_b64'")
    if "embeddings_b64" in data:
        return _decode_b64(data, limits), _rest(
            data, {"embeddings_b64", "shape", "dtype", "lengths"}
        )
    return _decode_lists(data, limits), _rest(data, {"embeddings", "attention_mask"})


def decode_json_and_trim(body: bytes, limits: Limits) -> tuple[Batch, dict[str, Any]]:
    """:func:`decode_json`, then hand the memory the parse used back to the system (run in the
    server's JSON worker process: its floats and lists are gone once it returns)."""
    try:
        return decode_json(body, limits)
    finally:
        del body
        trim_heap()


def trim_heap() -> None:
    """glibc's ``malloc_trim(0)``: release the heap's free pages (a no-op elsewhere)."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


def _rest(data: dict[str, Any], used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in used}


def _decode_b64(data: dict[str, Any], limits: Limits) -> Batch:
    shape = data.get("shape")
    if not isinstance(shape, list) or not all(type(s) is int for s in shape):
        raise invalid("shape", "must be a list of integers, [B, N, D] or [N, D]")
    dtype_name = data.get("dtype", "float32")
    if dtype_name not in DTYPES:
        raise invalid("dtype", f"unsupported dtype {dtype_name!r}; use float32 or float16")
    b, n, d = check_shape(tuple(shape), limits, "shape")
    text = data["embeddings_b64"]
    if not isinstance(text, str):
        raise invalid("embeddings_b64", "must be a base64 string")
    expected = math.prod(shape) * DTYPES[dtype_name].itemsize
    if len(text) != 4 * math.ceil(expected / 3):
        raise invalid("embeddings_b64", f"length {len(text)} does not fit {expected} bytes")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid("embeddings_b64", f"is not valid base64: {exc}") from None
    embeddings = from_bytes(raw, tuple(shape), DTYPES[dtype_name], "embeddings_b64")
    lengths = data.get("lengths")
    if lengths is not None and (
        not isinstance(lengths, list) or not all(type(x) is int for x in lengths)
    ):
        raise invalid("lengths", "must be a list of integers")
    mask = mask_from_lengths(lengths, b, n)
    return finish(embeddings.reshape(b, n, d), mask, mask.sum(axis=1), "embeddings_b64")


def _decode_lists(data: dict[str, Any], limits: Limits) -> Batch:
    items = data["embeddings"]
    if not isinstance(items, list) or not items:
        raise invalid("embeddings", "must be a non-empty list of items (lists of token vectors)")
    if len(items) > limits.max_items:
        raise PayloadTooLarge(
            f"embeddings: {len(items)} items exceed the limit of {limits.max_items}",
            {"field": "embeddings", "limit": limits.max_items},
        )
    counts = []
    for i, item in enumerate(items):
        if not isinstance(item, list):
            raise invalid("embeddings", "must be a list of token vectors", item=i)
        if not item:
            raise invalid("embeddings", "item has no tokens", item=i)
        counts.append(len(item))
    longest = max(counts)
    check_tokens("embeddings", longest, longest * len(items), limits)
    arrays = []
    for i, item in enumerate(items):
        try:
            parsed = np.asarray(item)  # float64 or int64 for numbers; strings, null: refused
        except (ValueError, TypeError):
            raise invalid(
                "embeddings", "tokens must be lists of numbers of one length", item=i
            ) from None
        if parsed.ndim != 2 or parsed.dtype.kind not in "fiu":
            raise invalid("embeddings", "tokens must be lists of numbers", item=i)
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
            arrays.append(parsed.astype(np.float32))
    dims = {a.shape[1] for a in arrays}
    if len(dims) != 1:
        raise invalid("embeddings", f"items have different dims {sorted(dims)}")
    (d,) = dims
    embeddings = np.zeros((len(arrays), longest, d), dtype=np.float32)
    for i, array in enumerate(arrays):
        embeddings[i, : len(array)] = array
    lengths = np.asarray(counts, dtype=np.int64)
    mask = np.arange(longest)[None, :] < lengths[:, None]
    if "attention_mask" in data:
        mask = _explicit_mask(data["attention_mask"], lengths, longest)
    return finish(embeddings, mask, lengths, "embeddings")


def _explicit_mask(value: Any, lengths: NDArray[np.int64], longest: int) -> NDArray[np.bool_]:
    if not isinstance(value, list) or len(value) != len(lengths):
        raise invalid("attention_mask", f"must be a list of {len(lengths)} lists")
    mask = np.zeros((len(lengths), longest), dtype=bool)
    for i, row in enumerate(value):
        if not isinstance(row, list) or len(row) != lengths[i]:
            raise invalid("attention_mask", f"must have {lengths[i]} entries", item=i)
        if not all(v in (0, 1) for v in row):  # also admits true/false
            raise invalid("attention_mask", "entries must be true/false or 0/1", item=i)
        mask[i, : len(row)] = np.asarray(row, dtype=bool)
    return mask
