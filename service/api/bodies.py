"""Reading and decoding a pool request's body: the size limit while it streams, then the
decoder its Content-Type names (JSON, ``.npy`` or raw bytes; :mod:`service.codecs`), run where
it holds the event loop least (:class:`Decoders`)."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request

from service import codecs
from service.api.negotiation import JSON, NPY
from service.codecs.json_body import decode_json_and_trim
from service.core.calls import Batch
from service.errors import ClientGone, NotReady, PayloadTooLarge, UnsupportedMediaType, invalid
from service.settings import Settings
from service.threads import named_executor

T = TypeVar("T")
RAW = "application/octet-stream"
OFFLOAD_BYTES = 256 * 1024  # bodies larger than this are decoded off the event loop
PROCESS_VALUES = 65_536  # JSON bodies with more values go to a worker process


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


class Decoders:
    """Where a body is decoded, by its size and kind, so that none holds the event loop long.

    Small bodies are decoded at once; large binary and base64 bodies in a thread (NumPy and
    ``base64`` release the GIL for most of their work); large JSON-list bodies in a worker
    process (``json_decode_processes``), because parsing millions of numbers into Python floats
    holds the GIL from start to end, and every other request would wait. A JSON body holds at
    most ``max_json_values`` values (counted by its commas before anything is parsed): parsing
    costs about 60 bytes per value, so this bounds the worst JSON body's memory.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = limits(settings)
        self._pool: ProcessPoolExecutor | None = None
        self._threads: ThreadPoolExecutor | None = None  # decode_0, ...: large binary bodies

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in one of the decoders' threads (started on first use)."""
        if self._threads is None:
            self._threads = named_executor(None, "decode")
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    async def decode(
        self, body: bytes, headers: Headers, query: dict[str, str]
    ) -> tuple[Batch, dict[str, Any]]:
        s = self.settings
        content_type = headers.get("content-type", JSON).split(";")[0].strip().lower()
        if content_type != JSON or len(body) <= OFFLOAD_BYTES:
            if len(body) <= OFFLOAD_BYTES:
                return decode_body(body, headers, query, self.limits)
            return await self.in_thread(decode_body, body, headers, query, self.limits)
        values = body.count(b",") + 1  # each value but the last of a list is followed by one
        if values > s.max_json_values:
            raise PayloadTooLarge(
                f"body: a JSON body of about {values} values exceeds the limit of "
                f"{s.max_json_values}; send .npy, raw bytes or base64 instead",
                {"field": "body", "limit": s.max_json_values},
            )
        if values <= PROCESS_VALUES or s.json_decode_processes == 0:
            return await self.in_thread(decode_body, body, headers, query, self.limits)
        check_no_lengths(headers, query)
        try:
            loop = asyncio.get_running_loop()
            worker = self._workers()
            return await loop.run_in_executor(worker, decode_json_and_trim, body, self.limits)
        except BrokenProcessPool:  # a worker died (killed for memory, say): start afresh
            self.close()
            raise NotReady("the JSON decoding worker stopped; retry the request") from None

    def _workers(self) -> ProcessPoolExecutor:
        if self._pool is None:  # started on first use: most deployments never send JSON lists
            self._pool = ProcessPoolExecutor(
                self.settings.json_decode_processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_leave_signals_to_the_server,
            )
        return self._pool

    def close(self) -> None:
        """Drop the workers without waiting (a broken pool's are gone already)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def stop(self) -> None:
        """Stop the workers and threads and wait for them to exit (at shutdown)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        threads, self._threads = self._threads, None
        if threads is not None:
            await asyncio.to_thread(threads.shutdown, wait=True, cancel_futures=True)


def _leave_signals_to_the_server() -> None:
    """In a worker: SIGINT and SIGTERM are the server's to act on (it stops the workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def limits(s: Settings) -> codecs.Limits:
    return codecs.Limits(s.max_items_per_request, s.max_tokens_per_item, s.max_tokens_per_request)


def check_no_lengths(headers: Headers, query: dict[str, str]) -> None:
    if (headers.get("x-lengths") or query.get("lengths")) is not None:
        raise invalid(
            "lengths",
            "X-Lengths and ?lengths= are for the binary formats; in JSON, give lengths "
            "(base64) or attention_mask (lists) in the body",
        )


def decode_body(
    body: bytes, headers: Headers, query: dict[str, str], limits: codecs.Limits
) -> tuple[Batch, dict[str, Any]]:
    """Pick the decoder by Content-Type; returns the batch and JSON body options."""
    content_type = headers.get("content-type", JSON).split(";")[0].strip().lower()
    if content_type == JSON:
        check_no_lengths(headers, query)
        return codecs.decode_json(body, limits)
    lengths = codecs.parse_lengths(headers.get("x-lengths") or query.get("lengths"))
    if content_type == NPY:
        return codecs.decode_npy(body, lengths, limits), {}
    if content_type == RAW:
        shape = codecs.parse_shape(headers.get("x-shape"))
        dtype = headers.get("x-dtype", "float32")
        return codecs.decode_raw(body, shape, dtype, lengths, limits), {}
    raise UnsupportedMediaType(
        f"unsupported Content-Type {content_type!r}", {"supported": [JSON, NPY, RAW]}
    )
