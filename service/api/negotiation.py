"""Content negotiation for pool answers: ``Accept`` with q-values and exact media types.

Each supported type takes the q of the most specific range that matches it (``type/subtype``
over ``type/*`` over ``*/*``, RFC 9110 12.5.1); the type with the highest q above 0 wins, ties
going to the one the client named first, then to JSON. Nothing acceptable left: 406.
"""

from __future__ import annotations

import functools

from service.errors import NotAcceptable

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
SUPPORTED = (JSON, NPZ, NPY)  # the server's order for ties the client left open


def _ranges(accept: str) -> list[tuple[str, float]]:
    """``Accept`` as (media range, q), in the client's order; malformed q reads as 0."""
    out = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                q = q if 0.0 <= q <= 1.0 else 0.0
        out.append((media.lower(), q))
    return out


def _specificity(media_range: str, media: str) -> int:
    """3 for an exact match, 2 for type/*, 1 for */*, 0 for no match."""
    if media_range == media:
        return 3
    kind = media.split("/")[0]
    if media_range == f"{kind}/*":
        return 2
    return 1 if media_range == "*/*" else 0


def negotiate(accept: str | None) -> str:
    """The answer's media type for an ``Accept`` header (absent or empty: JSON)."""
    if accept is None or not accept.strip():
        return JSON
    return _negotiate(accept)


@functools.lru_cache(maxsize=512)  # clients send the same few headers: parse each once
def _negotiate(accept: str) -> str:
    ranges = _ranges(accept)
    best: tuple[float, int, int, str] | None = None
    for preference, media in enumerate(SUPPORTED):
        matches = [
            (_specificity(r, media), -position, q)
            for position, (r, q) in enumerate(ranges)
            if _specificity(r, media)
        ]
        if not matches:
            continue
        specificity, position, q = max(matches)  # the most specific range decides q
        named = -position if specificity == 3 else len(ranges)
        candidate = (q, -named, -preference, media)
        if q > 0 and (best is None or candidate > best):
            best = candidate
    if best is None:
        raise NotAcceptable(f"cannot answer with {accept[:200]!r}", {"supported": list(SUPPORTED)})
    return best[3]
