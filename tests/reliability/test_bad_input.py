"""The bad-input catalogue: every format (JSON lists, JSON + base64, .npy, raw bytes), each bad
request with its documented status and the one JSON error body, and the server still serving a
valid request correctly right after. Also the unusual-but-valid inputs that must be answered
exactly (int JSON numbers, float16, big-endian and Fortran-order .npy, NaN in padding), and
the body limits enforced on the wire (Content-Length, chunked, truncated uploads).

The server runs with a 1 MiB body limit and 8 items per request, so the limits are cheap to hit.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

from bench import process
from tests.reliability.common import (
    REPOSITORY,
    alone,
    assert_error,
    sample,
    scrape,
    serves,
)

MODEL = "knn-adapool-ego"  # token query on token 0
POOL = f"/models/{MODEL}/pool"
D = 16
LIMIT = 2**20
MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / f"adapool-unpickled-{os.getpid()}"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    flags = ["--max-body-bytes", str(LIMIT), "--max-items-per-request", "8"]
    with process.running_server(REPOSITORY, flags) as (url, proc):
        yield url, proc.pid


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A well-formed .npy header claiming ``shape`` (the data need not follow)."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)  # magic included
    return buffer.getvalue()


BROKEN_HEADER = (
    b"\x93NUMPY\x01\x00\x76\x00"
    + b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 16, }".ljust(117)
    + b"\n"
    + b"\x00" * 128
)


def b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode()


class Unpickled:
    """Unpickling this creates MARKER: the object-dtype .npy below must never be unpickled."""

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(MARKER), "w"))


def x(*shape: int, dtype: Any = np.float32, fill: float = 0.5) -> np.ndarray:
    return np.full(shape, fill, dtype=dtype)


def js(body: Any) -> dict[str, Any]:
    return {"json": body}


def raw(content: bytes, content_type: str | None, **headers: str) -> dict[str, Any]:
    if content_type is not None:
        headers["Content-Type"] = content_type
    return {"content": content, "headers": headers}


TOKEN = [0.5] * D
ITEM = [TOKEN] * 3
GOOD_B64: dict[str, Any] = {"embeddings_b64": b64(x(1, 2, D)), "shape": [1, 2, D]}
NAN = x(1, 2, D)
NAN[0, 1, 3] = np.nan
INF = x(1, 2, D)
INF[0, 0, 0] = np.inf
STRUCTURED = np.zeros((1, 2), dtype=[("a", "<f4"), ("b", "<f4")])

# (id, path, request, status, error type)
CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    # --- JSON lists ---------------------------------------------------------------------
    ("json malformed", POOL, raw(b"{", "application/json"), 400, "bad_request"),
    (
        "json truncated",
        POOL,
        raw(b'{"embeddings": [[[0.5, 0.5', "application/json"),
        400,
        "bad_request",
    ),
    ("json empty body", POOL, raw(b"", "application/json"), 400, "bad_request"),
    ("json not an object", POOL, js([ITEM]), 422, "invalid_input"),
    ("json no embeddings", POOL, js({"top_k": 2}), 422, "invalid_input"),
    ("json both formats", POOL, js({"embeddings": [ITEM], **GOOD_B64}), 422, "invalid_input"),
    ("json empty batch", POOL, js({"embeddings": []}), 422, "invalid_input"),
    ("json empty item", POOL, js({"embeddings": [ITEM, []]}), 422, "invalid_input"),
    ("json empty token", POOL, js({"embeddings": [[[]]]}), 422, "invalid_input"),
    ("json wrong dim", POOL, js({"embeddings": [[[0.5] * 15]]}), 422, "invalid_input"),
    ("json dims differ", POOL, js({"embeddings": [ITEM, [[0.5] * 15]]}), 422, "invalid_input"),
    ("json ragged token", POOL, js({"embeddings": [[TOKEN, [0.5] * 8]]}), 422, "invalid_input"),
    ("json strings", POOL, js({"embeddings": [[["0.5"] * D]]}), 422, "invalid_input"),
    ("json booleans", POOL, js({"embeddings": [[[True] * D]]}), 422, "invalid_input"),
    ("json nulls", POOL, js({"embeddings": [[[None] * D]]}), 422, "invalid_input"),
    ("json objects", POOL, js({"embeddings": [[[{"v": 1}] * D]]}), 422, "invalid_input"),
    ("json 4 levels", POOL, js({"embeddings": [[[TOKEN]]]}), 422, "invalid_input"),
    (
        "json nested 100000 deep",
        POOL,
        raw(b'{"embeddings": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json"),
        400,
        "bad_request",
    ),
    (
        "json number 1e999",
        POOL,
        raw(b'{"embeddings": [[[1e999' + b", 0.5" * 15 + b"]]]}", "application/json"),
        400,
        "bad_request",
    ),
    (
        "json integer of 400 digits",
        POOL,
        raw(b'{"embeddings": [[[1' + b"0" * 400 + b", 0.5" * 15 + b"]]]}", "application/json"),
        400,
        "bad_request",
    ),
    (
        "json number beyond float32",
        POOL,
        js({"embeddings": [[[1e39] + [0.5] * 15]]}),
        422,
        "invalid_input",
    ),
    ("json too many items", POOL, js({"embeddings": [ITEM] * 9}), 413, "payload_too_large"),
    (
        "json too many tokens",
        POOL,
        js({"embeddings": [[[0.0] * D] * 2049]}),
        413,
        "payload_too_large",
    ),
    (
        "json mask wrong length",
        POOL,
        js({"embeddings": [ITEM], "attention_mask": [[True, True]]}),
        422,
        "invalid_input",
    ),
    (
        "json mask all false",
        "/models/knn-avg/pool",
        js({"embeddings": [ITEM], "attention_mask": [[False] * 3]}),
        422,
        "invalid_input",
    ),
    (
        "json mask not boolean",
        POOL,
        js({"embeddings": [ITEM], "attention_mask": [[1, 2, 1]]}),
        422,
        "invalid_input",
    ),
    (
        "json masked query token",
        POOL,
        js({"embeddings": [ITEM], "attention_mask": [[False, True, True]]}),
        422,
        "invalid_input",
    ),
    ("json unknown key", POOL, js({"embeddings": [ITEM], "topk": 2}), 422, "invalid_input"),
    (
        "json option as string",
        POOL,
        js({"embeddings": [ITEM], "diagnostics": "false"}),
        422,
        "invalid_input",
    ),
    ("json top_k true", POOL, js({"embeddings": [ITEM], "top_k": True}), 422, "invalid_input"),
    ("json top_k 2.5", POOL, js({"embeddings": [ITEM], "top_k": 2.5}), 422, "invalid_input"),
    (
        "json with X-Lengths",
        POOL,
        {"json": {"embeddings": [ITEM]}, "headers": {"X-Lengths": "2"}},
        422,
        "invalid_input",
    ),
    # --- JSON with base64 ---------------------------------------------------------------
    (
        "b64 padding stripped",
        POOL,
        js({**GOOD_B64, "embeddings_b64": GOOD_B64["embeddings_b64"].rstrip("=")}),
        422,
        "invalid_input",
    ),
    (
        "b64 padding inside",
        POOL,
        js({**GOOD_B64, "embeddings_b64": "AA==" + GOOD_B64["embeddings_b64"][4:]}),
        422,
        "invalid_input",
    ),
    (
        "b64 not base64",
        POOL,
        js({"embeddings_b64": "!!!!", "shape": [1, 1, 3]}),
        422,
        "invalid_input",
    ),
    ("b64 not a string", POOL, js({**GOOD_B64, "embeddings_b64": 12}), 422, "invalid_input"),
    (
        "b64 no shape",
        POOL,
        js({"embeddings_b64": GOOD_B64["embeddings_b64"]}),
        422,
        "invalid_input",
    ),
    ("b64 shape mismatch", POOL, js({**GOOD_B64, "shape": [1, 3, D]}), 422, "invalid_input"),
    ("b64 shape 4-d", POOL, js({**GOOD_B64, "shape": [1, 1, 2, D]}), 422, "invalid_input"),
    ("b64 shape negative", POOL, js({**GOOD_B64, "shape": [-1, D]}), 422, "invalid_input"),
    ("b64 shape booleans", POOL, js({**GOOD_B64, "shape": [True, 2, D]}), 422, "invalid_input"),
    ("b64 empty batch", POOL, js({"embeddings_b64": "", "shape": [0, 2, D]}), 422, "invalid_input"),
    (
        "b64 shape over limits",
        POOL,
        js({"embeddings_b64": "", "shape": [1, 10**9, D]}),
        413,
        "payload_too_large",
    ),
    (
        "b64 float64",
        POOL,
        js(
            {
                "embeddings_b64": b64(x(1, 2, D, dtype=np.float64)),
                "shape": [1, 2, D],
                "dtype": "float64",
            }
        ),
        422,
        "invalid_input",
    ),
    (
        "b64 int32",
        POOL,
        js(
            {
                "embeddings_b64": b64(x(1, 2, D, dtype=np.int32)),
                "shape": [1, 2, D],
                "dtype": "int32",
            }
        ),
        422,
        "invalid_input",
    ),
    ("b64 lengths 0", POOL, js({**GOOD_B64, "lengths": [0]}), 422, "invalid_input"),
    ("b64 lengths over N", POOL, js({**GOOD_B64, "lengths": [3]}), 422, "invalid_input"),
    ("b64 lengths count", POOL, js({**GOOD_B64, "lengths": [1, 2]}), 422, "invalid_input"),
    ("b64 lengths strings", POOL, js({**GOOD_B64, "lengths": ["2"]}), 422, "invalid_input"),
    ("b64 NaN", POOL, js({"embeddings_b64": b64(NAN), "shape": [1, 2, D]}), 422, "invalid_input"),
    ("b64 Inf", POOL, js({"embeddings_b64": b64(INF), "shape": [1, 2, D]}), 422, "invalid_input"),
    # --- .npy ---------------------------------------------------------------------------
    (
        "npy object dtype (pickle)",
        POOL,
        raw(npy(np.array([Unpickled()], dtype=object), allow_pickle=True), "application/x-npy"),
        422,
        "invalid_input",
    ),
    (
        "npy float64",
        POOL,
        raw(npy(x(1, 2, D, dtype=np.float64)), "application/x-npy"),
        422,
        "invalid_input",
    ),
    (
        "npy int32",
        POOL,
        raw(npy(x(1, 2, D, dtype=np.int32)), "application/x-npy"),
        422,
        "invalid_input",
    ),
    ("npy bool", POOL, raw(npy(x(1, 2, D, dtype=bool)), "application/x-npy"), 422, "invalid_input"),
    (
        "npy complex64",
        POOL,
        raw(npy(x(1, 2, D, dtype=np.complex64)), "application/x-npy"),
        422,
        "invalid_input",
    ),
    ("npy structured", POOL, raw(npy(STRUCTURED), "application/x-npy"), 422, "invalid_input"),
    ("npy 1-d", POOL, raw(npy(x(D)), "application/x-npy"), 422, "invalid_input"),
    ("npy no items", POOL, raw(npy(x(0, 2, D)), "application/x-npy"), 422, "invalid_input"),
    ("npy no tokens", POOL, raw(npy(x(1, 0, D)), "application/x-npy"), 422, "invalid_input"),
    ("npy wrong dim", POOL, raw(npy(x(1, 2, 8)), "application/x-npy"), 422, "invalid_input"),
    ("npy NaN", POOL, raw(npy(NAN), "application/x-npy"), 422, "invalid_input"),
    (
        "npy data truncated",
        POOL,
        raw(npy(x(1, 2, D))[:-10], "application/x-npy"),
        422,
        "invalid_input",
    ),
    (
        "npy header truncated",
        POOL,
        raw(npy(x(1, 2, D))[:20], "application/x-npy"),
        400,
        "bad_request",
    ),
    ("npy not npy", POOL, raw(b"\x00" * 200, "application/x-npy"), 400, "bad_request"),
    (
        "npy header unbalanced (numpy's reader raises a tokenizer error)",
        POOL,
        raw(BROKEN_HEADER, "application/x-npy"),
        400,
        "bad_request",
    ),
    (
        "npy header over limits",
        POOL,
        raw(npy_header((1, 9_999_999, D)) + b"\x00" * 64, "application/x-npy"),
        413,
        "payload_too_large",
    ),
    (
        "npy lengths over N",
        POOL,
        raw(npy(x(1, 2, D)), "application/x-npy", **{"X-Lengths": "3"}),
        422,
        "invalid_input",
    ),
    (
        "npy lengths not integers",
        POOL + "?lengths=1,x",
        raw(npy(x(1, 2, D)), "application/x-npy"),
        422,
        "invalid_input",
    ),
    # --- raw bytes ----------------------------------------------------------------------
    (
        "raw no X-Shape",
        POOL,
        raw(x(1, 2, D).tobytes(), "application/octet-stream"),
        422,
        "invalid_input",
    ),
    (
        "raw X-Shape not integers",
        POOL,
        raw(x(1, 2, D).tobytes(), "application/octet-stream", **{"X-Shape": "a,b,c"}),
        422,
        "invalid_input",
    ),
    (
        "raw X-Shape 4-d",
        POOL,
        raw(x(1, 2, D).tobytes(), "application/octet-stream", **{"X-Shape": "1,1,2,16"}),
        422,
        "invalid_input",
    ),
    (
        "raw float64",
        POOL,
        raw(
            x(1, 2, D, dtype=np.float64).tobytes(),
            "application/octet-stream",
            **{"X-Shape": "1,2,16", "X-Dtype": "float64"},
        ),
        422,
        "invalid_input",
    ),
    (
        "raw int8",
        POOL,
        raw(b"\x01" * 32, "application/octet-stream", **{"X-Shape": "1,2,16", "X-Dtype": "int8"}),
        422,
        "invalid_input",
    ),
    (
        "raw bytes do not match",
        POOL,
        raw(b"\x00" * 60, "application/octet-stream", **{"X-Shape": "1,1,16"}),
        422,
        "invalid_input",
    ),
    (
        "raw empty body",
        POOL,
        raw(b"", "application/octet-stream", **{"X-Shape": "1,1,16"}),
        422,
        "invalid_input",
    ),
    (
        "raw too many tokens",
        POOL,
        raw(b"", "application/octet-stream", **{"X-Shape": "1,5000,16"}),
        413,
        "payload_too_large",
    ),
    (
        "raw too many items",
        POOL,
        raw(b"", "application/octet-stream", **{"X-Shape": "9,1,16"}),
        413,
        "payload_too_large",
    ),
    (
        "raw Inf",
        POOL,
        raw(INF.tobytes(), "application/octet-stream", **{"X-Shape": "1,2,16"}),
        422,
        "invalid_input",
    ),
    # --- content types, negotiation -----------------------------------------------------
    ("type text/csv", POOL, raw(b"0.5,0.5", "text/csv"), 415, "unsupported_media_type"),
    (
        "type form",
        POOL,
        raw(b"a=1", "application/x-www-form-urlencoded"),
        415,
        "unsupported_media_type",
    ),
    ("type missing, npy body", POOL, raw(npy(x(1, 2, D)), None), 400, "bad_request"),
    ("type json, npy body", POOL, raw(npy(x(1, 2, D)), "application/json"), 400, "bad_request"),
    (
        "type npy, json body",
        POOL,
        raw(b'{"embeddings": []}', "application/x-npy"),
        400,
        "bad_request",
    ),
    (
        "accept text/html",
        POOL,
        {"json": {"embeddings": [ITEM]}, "headers": {"Accept": "text/html"}},
        406,
        "not_acceptable",
    ),
    # --- models, versions, options ------------------------------------------------------
    ("unknown model", "/models/no-such-model/pool", js({"embeddings": [ITEM]}), 404, "not_found"),
    ("traversal %2F", "/models/..%2F..%2Fetc/pool", js({"embeddings": [ITEM]}), 404, "not_found"),
    ("traversal %2e%2e", "/models/%2e%2e/pool", js({"embeddings": [ITEM]}), 404, "not_found"),
    ("traversal %5C", "/models/..%5C..%5Cetc/pool", js({"embeddings": [ITEM]}), 404, "not_found"),
    (
        "traversal sibling",
        "/models/..%2Fmodel_repository%2Fknn-avg/pool",
        js({"embeddings": [ITEM]}),
        404,
        "not_found",
    ),
    ("NUL in name", "/models/knn-avg%00/pool", js({"embeddings": [ITEM]}), 404, "not_found"),
    ("unknown version", POOL + "?version=7", js({"embeddings": [ITEM]}), 404, "not_found"),
    ("version not integer", POOL + "?version=..", js({"embeddings": [ITEM]}), 422, "invalid_input"),
    ("unknown query option", POOL + "?topk=3", js({"embeddings": [ITEM]}), 422, "invalid_input"),
    (
        "diagnostics=maybe",
        POOL + "?diagnostics=maybe",
        js({"embeddings": [ITEM]}),
        422,
        "invalid_input",
    ),
    ("diagnostics=1", POOL + "?diagnostics=1", js({"embeddings": [ITEM]}), 422, "invalid_input"),
    (
        "return_weights=all",
        POOL + "?return_weights=all",
        js({"embeddings": [ITEM]}),
        422,
        "invalid_input",
    ),
    ("top_k=-1", POOL + "?top_k=-1", js({"embeddings": [ITEM]}), 422, "invalid_input"),
    ("top_k=1025", POOL + "?top_k=1025", js({"embeddings": [ITEM]}), 422, "invalid_input"),
    ("top_k=x", POOL + "?top_k=x", js({"embeddings": [ITEM]}), 422, "invalid_input"),
]


def test_the_catalogue_covers_every_format() -> None:
    prefixes = {case[0].split()[0] for case in CASES}
    assert {"json", "b64", "npy", "raw", "type"} <= prefixes
    assert len(CASES) >= 30 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("path", "request_kwargs", "status", "kind"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_gets_its_status_and_the_server_keeps_serving(
    server: tuple[str, int], path: str, request_kwargs: dict[str, Any], status: int, kind: str
) -> None:
    url, _ = server
    r = httpx.post(url + path, timeout=30, **request_kwargs)
    assert_error(r, status, kind)
    assert not MARKER.exists(), "an object .npy was unpickled"
    serves(url)


def test_refusals_are_counted_by_reason(server: tuple[str, int]) -> None:
    url, _ = server
    before = scrape(url)
    httpx.post(url + POOL, content=b"{", headers={"Content-Type": "application/json"})
    httpx.post(url + POOL, json={"embeddings": [[[0.5] * 15]]})
    httpx.post(
        url + POOL,
        content=b"",
        headers={"Content-Type": "application/octet-stream", "X-Shape": "9,1,16"},
    )
    after = scrape(url)

    def delta(reason: str) -> float:
        name = "adapool_rejected_requests_total"
        return sample(after, name, model=MODEL, reason=reason) - sample(
            before, name, model=MODEL, reason=reason
        )

    assert (delta("invalid"), delta("too_large")) == (2, 1)


# --- unusual but valid: answered exactly ---------------------------------------------------
def reference(items: list[np.ndarray], model: str = MODEL) -> np.ndarray:
    return np.stack([alone(model, item)[0] for item in items])


ITEMS = [np.random.default_rng(7).standard_normal((n, D)).astype(np.float32) for n in (5, 3)]
PADDED = np.zeros((2, 5, D), dtype=np.float32)
PADDED[0], PADDED[1, :3] = ITEMS[0], ITEMS[1]
NAN_PADDING = PADDED.copy()
NAN_PADDING[1, 3:] = np.nan
HALF = PADDED.astype(np.float16)

VALID: list[tuple[str, dict[str, Any], list[np.ndarray]]] = [
    (
        "json integers",
        js({"embeddings": [[[1] * D, [-2] * D]]}),
        [np.array([[1] * D, [-2] * D], np.float32)],
    ),
    (
        "json no content type",
        raw(b'{"embeddings": [[' + b",".join([b"[0.5" + b", 0.5" * 15 + b"]"] * 2) + b"]]}", None),
        [x(2, D)],
    ),
    (
        "npy big-endian",
        raw(npy(PADDED.astype(">f4")), "application/x-npy", **{"X-Lengths": "5,3"}),
        ITEMS,
    ),
    (
        "npy Fortran order",
        raw(npy(np.asfortranarray(PADDED)), "application/x-npy", **{"X-Lengths": "5,3"}),
        ITEMS,
    ),
    ("npy [N, D]", raw(npy(ITEMS[0]), "application/x-npy"), ITEMS[:1]),
    (
        "npy NaN in padding",
        raw(npy(NAN_PADDING), "application/x-npy", **{"X-Lengths": "5,3"}),
        ITEMS,
    ),
    (
        "raw float16",
        raw(
            HALF.tobytes(),
            "application/octet-stream",
            **{"X-Shape": "2,5,16", "X-Dtype": "float16", "X-Lengths": "5,3"},
        ),
        [HALF[0].astype(np.float32), HALF[1, :3].astype(np.float32)],
    ),
    (
        "b64 NaN in padding",
        js({"embeddings_b64": b64(NAN_PADDING), "shape": [2, 5, D], "lengths": [5, 3]}),
        ITEMS,
    ),
]


@pytest.mark.parametrize(
    ("request_kwargs", "items"), [v[1:] for v in VALID], ids=[v[0] for v in VALID]
)
def test_unusual_but_valid_input_is_answered_exactly(
    server: tuple[str, int], request_kwargs: dict[str, Any], items: list[np.ndarray]
) -> None:
    url, _ = server
    r = httpx.post(url + POOL, timeout=30, **request_kwargs)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.asarray(r.json()["pooled"]), reference(items), atol=1e-5)


# --- limits on the wire ----------------------------------------------------------------------
def connect(url: str) -> socket.socket:
    parsed = urlparse(url)
    return socket.create_connection((parsed.hostname, parsed.port), timeout=10)


def read_reply(s: socket.socket, until: bytes = b"}") -> bytes:
    reply = b""
    while not reply.rstrip().endswith(until):
        chunk = s.recv(65536)
        if not chunk:
            break
        reply += chunk
    return reply


def test_oversized_body_is_refused_from_content_length_before_it_is_sent(
    server: tuple[str, int],
) -> None:
    """Content-Length over the limit: 413 arrives while 15/16 of the body is still unsent."""
    url, _ = server
    size = 16 * LIMIT
    with connect(url) as s:
        started = time.monotonic()
        s.sendall(
            f"POST {POOL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
            f"Content-Length: {size}\r\n\r\n".encode()
        )
        s.sendall(b"\x00" * LIMIT)  # a sixteenth of it
        reply = read_reply(s)
        seconds = time.monotonic() - started
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b'"payload_too_large"' in body and b'"request_id"' in body
    assert seconds < 5, seconds
    serves(url)


def test_chunked_body_is_cut_at_the_limit(server: tuple[str, int]) -> None:
    """No Content-Length (chunked): the server stops reading just past the limit and answers
    413 without waiting for the rest (the client has sent 1/4 of its 4 MiB body)."""
    url, _ = server
    chunk = b"\x00" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    with connect(url) as s:
        s.sendall(
            f"POST {POOL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            "X-Shape: 1,1,16\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        for _ in range(LIMIT // len(chunk) + 1):  # just over the limit, then no more
            s.sendall(framed)
        reply = read_reply(s)
    assert reply.startswith(b"HTTP/1.1 413") and b'"payload_too_large"' in reply, reply[:300]
    serves(url)


def test_truncated_upload_is_dropped_and_counted(server: tuple[str, int]) -> None:
    """Content-Length 4096, 100 bytes sent, then the client closes: no answer is possible; the
    request is counted as client_gone and the server keeps serving."""
    url, _ = server
    before = scrape(url)
    with connect(url) as s:
        s.sendall(
            f"POST {POOL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            "X-Shape: 1,64,16\r\nContent-Length: 4096\r\n\r\n".encode()
            + b"\x00" * 100
        )
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    name = "adapool_rejected_requests_total"
    while time.monotonic() < deadline:
        after = scrape(url)
        if sample(after, name, model=MODEL, reason="client_gone") > sample(
            before, name, model=MODEL, reason="client_gone"
        ):
            break
        time.sleep(0.1)
    gone = sample(after, name, model=MODEL, reason="client_gone") - sample(
        before, name, model=MODEL, reason="client_gone"
    )
    assert gone == 1
    statuses = "adapool_requests_total"
    assert sample(after, statuses, model=MODEL, route="/models/{name}/pool", status="499") > sample(
        before, statuses, model=MODEL, route="/models/{name}/pool", status="499"
    )
    serves(url)


@pytest.mark.parametrize(
    "raw_request",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        b"POST /pool HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /pool HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
    ],
    ids=["not HTTP", "NUL in a header", "bad Content-Length", "Content-Length and chunked"],
)
def test_malformed_http_is_refused_before_the_app(
    server: tuple[str, int], raw_request: bytes
) -> None:
    """Bytes that are not HTTP/1.1 never reach the app: uvicorn answers its own plain-text 400
    (the one exception to the JSON error body) and closes the connection."""
    url, _ = server
    with connect(url) as s:
        s.sendall(raw_request)
        reply = b""
        while chunk := s.recv(65536):  # until uvicorn closes the connection
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b"connection: close" in reply.lower()
    serves(url)
