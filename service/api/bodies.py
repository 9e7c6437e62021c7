"""Reading and decoding a pool request's body: the size limit while it streams, then the
decoder its Content-Type names (JSON, ``.npy`` or raw bytes; :mod:`service.codecs`)."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request

from service import codecs
from service.api.negotiation import JSON, NPY
from service.core.calls import Batch
from service.errors import ClientGone, PayloadTooLarge, UnsupportedMediaType, invalid
from service.settings import Settings

RAW = "application/octet-stream"


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"body of {declared} bytes exceeds the limit of {limit}", {"limit": limit}
        )
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", {"limit": limit})
            chunks.append(chunk)
    except ClientDisconnect:  # the client left during the upload: nothing to answer
        raise ClientGone("the client left during the upload") from None
    return b"".join(chunks)


def decode_body(
    body: bytes, headers: Headers, query: dict[str, str], s: Settings
) -> tuple[Batch, dict[str, Any]]:
    """Pick the decoder by Content-Type; returns the batch and JSON body options."""
    limits = codecs.Limits(s.max_items_per_request, s.max_tokens_per_item, s.max_tokens_per_request)
    content_type = headers.get("content-type", JSON).split(";")[0].strip().lower()
    lengths_text = headers.get("x-lengths") or query.get("lengths")
    if content_type == JSON:
        if lengths_text is not None:
            raise invalid(
                "lengths",
                "X-Lengths and ?lengths= are for the binary formats; in JSON, give lengths "
                "(base64) or attention_mask (lists) in the body",
            )
        return codecs.decode_json(body, limits)
    lengths = codecs.parse_lengths(lengths_text)
    if content_type == NPY:
        return codecs.decode_npy(body, lengths, limits), {}
    if content_type == RAW:
        shape = codecs.parse_shape(headers.get("x-shape"))
        dtype = headers.get("x-dtype", "float32")
        return codecs.decode_raw(body, shape, dtype, lengths, limits), {}
    raise UnsupportedMediaType(
        f"unsupported Content-Type {content_type!r}", {"supported": [JSON, NPY, RAW]}
    )
