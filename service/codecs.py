"""Request decoding and response encoding: JSON lists, JSON + base64, .npy and raw bytes.

Every decoder returns a :class:`Batch`: embeddings (B, N, D) float32 padded, attention_mask
(B, N) bool (True = real token) and each item's token count. Nothing here knows HTTP or models;
errors are :class:`~service.errors.ServiceError` naming the field and the item.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from numpy.typing import NDArray

from service.errors import BadRequest, PayloadTooLarge, invalid

DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
WeightsMode = Literal["none", "mean", "heads"]


@dataclass(frozen=True)
class Limits:
    max_items: int
    max_tokens_per_item: int
    max_tokens_per_request: int


@dataclass(frozen=True)
class Batch:
    """A decoded request.

    Attributes:
        embeddings: (B, N, D) float32, padded with zeros.
        attention_mask: (B, N) bool, True = a real token.
        lengths: (B,) each item's token count as submitted (weights are returned over these).
    """

    embeddings: NDArray[np.float32]
    attention_mask: NDArray[np.bool_]
    lengths: NDArray[np.int64]


@dataclass(frozen=True)
class Options:
    return_weights: WeightsMode = "mean"
    diagnostics: bool = True
    top_k: int = 5


def _check_shape(shape: tuple[int, ...], limits: Limits, field: str) -> tuple[int, int, int]:
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
    _check_tokens(field, n, b * n, limits)
    return b, n, d


def _check_tokens(field: str, longest: int, total: int, limits: Limits) -> None:
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


def _mask_from_lengths(lengths: list[int] | None, b: int, n: int) -> NDArray[np.bool_]:
    if lengths is None:
        return np.ones((b, n), dtype=bool)
    if len(lengths) != b:
        raise invalid("lengths", f"has {len(lengths)} entries for {b} items")
    for i, length in enumerate(lengths):
        if not 1 <= length <= n:
            raise invalid("lengths", f"must be in [1, {n}], got {length}", item=i)
    mask: NDArray[np.bool_] = np.arange(n)[None, :] < np.asarray(lengths)[:, None]
    return mask


def _from_bytes(
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


def _finish(
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


# The header numpy.save writes: {'descr': '<f4', 'fortran_order': False, 'shape': (8, 128, 16), }
_NPY_HEADER = re.compile(
    r"\{'descr': '([<>|=]?[a-z]\d{1,2})', 'fortran_order': (True|False), "
    r"'shape': \(((?:\d{1,12}, ?)*\d{0,12})\), \} *\n?"
)


def _npy_header(body: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """Shape, Fortran order, dtype and data offset of a .npy body.

    numpy's own reader parses the header with ``ast.literal_eval`` (a tenth of a small request's
    decode time); the canonical header ``numpy.save`` writes is matched directly, and anything
    else goes to numpy's reader.
    """
    if body[:8] == b"\x93NUMPY\x01\x00" and len(body) >= 10:
        end = 10 + int.from_bytes(body[8:10], "little")  # past the body: numpy's reader says so
        found = _NPY_HEADER.fullmatch(body[10:end].decode("latin-1")) if end <= len(body) else None
        if found is not None:
            descr, fortran, dims = found.groups()
            shape = tuple(int(x) for x in dims.split(",") if x.strip())
            return shape, fortran == "True", np.dtype(descr), end
    stream = io.BytesIO(body)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    return tuple(shape), bool(fortran), dtype, stream.tell()


def decode_npy(body: bytes, lengths: list[int] | None, limits: Limits) -> Batch:
    """A .npy file of [B, N, D] or [N, D] float32/float16. The header is read first, so no
    object array (pickle) is ever loaded and the limits apply before the data is touched."""
    try:
        shape, fortran, dtype, offset = _npy_header(body)
    except Exception as exc:  # numpy's reader lets tokenizer errors of a broken header through
        raise BadRequest(f"body is not a valid .npy file: {exc}", {"field": "body"}) from None
    if dtype.kind != "f" or dtype.itemsize not in (2, 4):
        raise invalid("body", f"unsupported dtype {dtype.str}; use float32 or float16")
    b, n, d = _check_shape(shape, limits, "body")
    data = memoryview(body)[offset:]
    embeddings = _from_bytes(data, tuple(shape), dtype, "body", fortran).reshape(b, n, d)
    mask = _mask_from_lengths(lengths, b, n)
    return _finish(embeddings, mask, mask.sum(axis=1), "body")


def decode_raw(
    body: bytes, shape: tuple[int, ...], dtype_name: str, lengths: list[int] | None, limits: Limits
) -> Batch:
    """Raw little-endian bytes with the shape and dtype from headers."""
    if dtype_name not in DTYPES:
        raise invalid("X-Dtype", f"unsupported dtype {dtype_name!r}; use float32 or float16")
    b, n, d = _check_shape(shape, limits, "X-Shape")
    embeddings = _from_bytes(body, shape, DTYPES[dtype_name], "body").reshape(b, n, d)
    mask = _mask_from_lengths(lengths, b, n)
    return _finish(embeddings, mask, mask.sum(axis=1), "body")


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


def _rest(data: dict[str, Any], used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in used}


def _decode_b64(data: dict[str, Any], limits: Limits) -> Batch:
    shape = data.get("shape")
    if not isinstance(shape, list) or not all(type(s) is int for s in shape):
        raise invalid("shape", "must be a list of integers, [B, N, D] or [N, D]")
    dtype_name = data.get("dtype", "float32")
    if dtype_name not in DTYPES:
        raise invalid("dtype", f"unsupported dtype {dtype_name!r}; use float32 or float16")
    b, n, d = _check_shape(tuple(shape), limits, "shape")
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
    embeddings = _from_bytes(raw, tuple(shape), DTYPES[dtype_name], "embeddings_b64")
    lengths = data.get("lengths")
    if lengths is not None and (
        not isinstance(lengths, list) or not all(type(x) is int for x in lengths)
    ):
        raise invalid("lengths", "must be a list of integers")
    mask = _mask_from_lengths(lengths, b, n)
    return _finish(embeddings.reshape(b, n, d), mask, mask.sum(axis=1), "embeddings_b64")


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
    _check_tokens("embeddings", longest, longest * len(items), limits)
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
    return _finish(embeddings, mask, lengths, "embeddings")


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


OPTIONS = ("return_weights", "diagnostics", "top_k")


def parse_options(
    query: dict[str, str], body: dict[str, Any], max_top_k: int, default_top_k: int
) -> Options:
    """Options from the query string (text), overridden by the same keys in a JSON body (typed:
    ``"diagnostics": "false"`` in a body is refused, as ``?diagnostics=false`` is not)."""
    for where, given in (("query", query), ("body", body)):
        unknown = sorted(set(given) - set(OPTIONS))
        if unknown:
            raise invalid(where, f"unknown keys {unknown}; options are {list(OPTIONS)}")
    weights = body.get("return_weights", query.get("return_weights", "mean"))
    if weights not in ("none", "mean", "heads"):
        raise invalid("return_weights", f"must be none, mean or heads, got {weights!r}")
    if "diagnostics" in body:
        diagnostics = body["diagnostics"]
        if not isinstance(diagnostics, bool):
            raise invalid("diagnostics", f"must be true or false, got {diagnostics!r}")
    else:
        text = query.get("diagnostics", "true")
        if text.lower() not in ("true", "false"):
            raise invalid("diagnostics", f"must be true or false, got {text[:20]!r}")
        diagnostics = text.lower() == "true"
    if "top_k" in body:
        top_k = body["top_k"]
        if type(top_k) is not int:  # bool is an int subclass: true is not a number of tokens
            raise invalid("top_k", f"must be an integer, got {top_k!r}")
    else:
        text = query.get("top_k", str(default_top_k))
        try:
            top_k = int(text)
        except ValueError:
            raise invalid("top_k", f"must be an integer, got {text[:20]!r}") from None
    if not 0 <= top_k <= max_top_k:
        raise invalid("top_k", f"must be in [0, {max_top_k}], got {top_k}")
    return Options(return_weights=weights, diagnostics=diagnostics, top_k=top_k)


def encode_npy(array: NDArray[Any]) -> bytes:
    """``array`` as a version 1.0 .npy file, byte for byte what ``numpy.save`` writes.

    ``numpy.save`` goes through a file object and formats its header in several steps; an
    answer is small enough for that to be most of its cost.
    """
    array = np.asarray(array, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
    header = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (  # noqa: UP031
        np.lib.format.dtype_to_descr(array.dtype),
        array.shape,
    )
    padding = -(10 + len(header) + 1) % 64  # numpy aligns the data to 64 bytes
    text = (header + " " * padding + "\n").encode("latin-1")
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + array.tobytes()


_ZIP_DATE = 0x21  # 1980-01-01, the earliest date ZIP can hold (members carry no real time)


def encode_npz(arrays: dict[str, NDArray[Any]]) -> bytes:
    """An uncompressed .npz (a ZIP of .npy files, as ``numpy.savez`` writes), built in one pass.

    ``numpy.savez`` writes through ``zipfile`` with ZIP64 records for every member: a quarter
    of the app's time for single-item requests answered in .npz, in ``python -m bench.inproc
    --accept application/x-npz --profile 25``. Answers stay
    far below the 4 GiB that plain ZIP records can address (the body limit is smaller still).
    """
    members = [(f"{key}.npy".encode(), encode_npy(array)) for key, array in arrays.items()]
    if sum(len(data) + 2 * len(name) + 76 for name, data in members) + 22 >= 2**32:
        buffer = io.BytesIO()  # beyond what plain ZIP records address: numpy writes ZIP64
        np.savez(buffer, allow_pickle=False, **arrays)
        return buffer.getvalue()
    files, central, offset = [], [], 0
    for name, data in members:
        crc, size = zlib.crc32(data), len(data)
        local = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, _ZIP_DATE, crc, size, size, len(name), 0
        )
        central.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                *(0x02014B50, 20, 20, 0, 0, 0, _ZIP_DATE, crc, size, size, len(name)),
                *(0, 0, 0, 0, 0, offset),
            )
            + name
        )
        files += [local, name, data]
        offset += len(local) + len(name) + size
    directory = b"".join(central)
    count = len(central)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory), offset, 0)
    return b"".join(files) + directory + end


__all__ = [
    "Batch",
    "Limits",
    "Options",
    "decode_json",
    "decode_npy",
    "decode_raw",
    "encode_npy",
    "encode_npz",
    "parse_lengths",
    "parse_options",
    "parse_shape",
]
