"""The binary request formats: ``.npy`` bodies and raw little-endian bytes.

A ``.npy`` header is read first, so no object array (pickle) is ever loaded and the limits apply
before the data is touched.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np

from service.codecs.common import (
    DTYPES,
    Limits,
    check_shape,
    finish,
    from_bytes,
    mask_from_lengths,
)
from service.core.calls import Batch
from service.errors import BadRequest, invalid

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
    b, n, d = check_shape(shape, limits, "body")
    data = memoryview(body)[offset:]
    embeddings = from_bytes(data, tuple(shape), dtype, "body", fortran).reshape(b, n, d)
    mask = mask_from_lengths(lengths, b, n)
    return finish(embeddings, mask, mask.sum(axis=1), "body")


def decode_raw(
    body: bytes, shape: tuple[int, ...], dtype_name: str, lengths: list[int] | None, limits: Limits
) -> Batch:
    """Raw little-endian bytes with the shape and dtype from headers."""
    if dtype_name not in DTYPES:
        raise invalid("X-Dtype", f"unsupported dtype {dtype_name!r}; use float32 or float16")
    b, n, d = check_shape(shape, limits, "X-Shape")
    embeddings = from_bytes(body, shape, DTYPES[dtype_name], "body").reshape(b, n, d)
    mask = mask_from_lengths(lengths, b, n)
    return finish(embeddings, mask, mask.sum(axis=1), "body")
