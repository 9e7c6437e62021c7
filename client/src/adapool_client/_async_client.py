"""The asyncio client: :class:`~adapool_client.Client`'s methods as coroutines."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Mapping,
)
from functools import partial
from types import TracebackType
from typing import Any

import httpx
from numpy.typing import ArrayLike

from adapool_client._base import DEFAULT_URL, Base, http_limits, http_timeout, readiness
from adapool_client._errors import APIConnectionError, APIError
from adapool_client._inputs import UploadDtype, nbytes
from adapool_client._many import Many, progress_bar
from adapool_client._results import (
    Limits,
    ModelList,
    ModelVersions,
    PooledItem,
    PoolResult,
    Readiness,
    ServiceInfo,
)
from adapool_client._retry import NO_RETRY, Attempts, Retry
from adapool_client._wire import (
    PoolOptions,
    Request,
    ResponseFormat,
    WeightsMode,
    model_path,
    pool_result,
)

# Bodies above this are encoded and answers decoded in a worker thread, off the event loop.
OFFLOAD_BYTES = 1 << 20


class AsyncClient(Base):
    """The asyncio twin of :class:`~adapool_client.Client`: the same arguments and methods,
    as coroutines (``pool_many`` is an async iterator). ``async with AsyncClient(url) as c``
    or ``await c.close()``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = 60.0,
        retries: int | Retry = 3,
        upload_dtype: UploadDtype = "float32",
        headers: Mapping[str, str] | None = None,
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, retries, upload_dtype, headers)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=self.headers,
            timeout=http_timeout(timeout),
            limits=http_limits(max_connections),
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        retry: bool = True,
        also_ok: Collection[int] = (),
    ) -> httpx.Response:
        """See :meth:`Client.request`."""
        attempts = Attempts(self.retry if retry else NO_RETRY, f"{method} {path}", also_ok)
        while True:
            try:
                response = await self._http.request(
                    method, path, params=params, headers=headers, content=content
                )
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc)
                if delay is None:
                    raise self._connection_error(exc, attempts.sent) from exc
            else:
                delay = attempts.after_response(response)
                if delay is None:
                    return attempts.answer(response)
            await asyncio.sleep(delay)

    async def pool(
        self,
        embeddings: ArrayLike,
        lengths: ArrayLike | None = None,
        attention_mask: ArrayLike | None = None,
        *,
        model: str | None = None,
        version: int | None = None,
        weights: WeightsMode = "mean",
        diagnostics: bool = False,
        top_k: int | None = None,
        response_format: ResponseFormat = "auto",
        upload_dtype: UploadDtype | None = None,
        request_id: str | None = None,
    ) -> PoolResult:
        """See :meth:`Client.pool`."""
        options = PoolOptions(
            model, version, weights, diagnostics, top_k, response_format, upload_dtype
        )
        build = partial(
            self._pool_request, embeddings, lengths, attention_mask, options, request_id
        )
        return await self._pool(build, nbytes(embeddings))

    async def _pool(self, build: Callable[[], Request], size: int) -> PoolResult:
        """Encoding and decoding a large batch would stall every other task on the loop: past
        OFFLOAD_BYTES they run in a worker thread."""
        request = await asyncio.to_thread(build) if size > OFFLOAD_BYTES else build()
        response = await self.request(
            "POST",
            request.path,
            params=request.params,
            headers=request.headers,
            content=request.content,
        )
        if len(response.content) > OFFLOAD_BYTES:
            return await asyncio.to_thread(pool_result, request, response)
        return pool_result(request, response)

    def pool_many(
        self,
        items: Iterable[ArrayLike] | AsyncIterable[ArrayLike],
        *,
        batch_size: int = 32,
        concurrency: int = 4,
        progress: bool = False,
        max_batch_tokens: int | None = None,
        model: str | None = None,
        version: int | None = None,
        weights: WeightsMode = "mean",
        diagnostics: bool = False,
        top_k: int | None = None,
        response_format: ResponseFormat = "auto",
        upload_dtype: UploadDtype | None = None,
    ) -> AsyncIterator[PooledItem]:
        """See :meth:`Client.pool_many`; ``items`` may also be an async iterable, and the
        requests run as tasks on the event loop: ``async for item in c.pool_many(sets)``."""
        options = PoolOptions(
            model, version, weights, diagnostics, top_k, response_format, upload_dtype
        )
        return self._many(items, Many(options, batch_size, concurrency, progress, max_batch_tokens))

    async def _many(
        self, items: Iterable[ArrayLike] | AsyncIterable[ArrayLike], many: Many
    ) -> AsyncIterator[PooledItem]:
        limits = None if many.max_batch_tokens is not None else await self._server_limits()
        planner = self._planner(many, limits)
        bar = progress_bar(many.progress, items)
        gate = asyncio.Semaphore(many.concurrency)
        window: deque[tuple[int, asyncio.Task[PoolResult]]] = deque()

        async def pool(sets: list[Any]) -> PoolResult:
            async with gate:
                build = partial(self._pool_request, sets, None, None, many.options)
                return await self._pool(build, nbytes(sets))

        def send(batch: tuple[int, list[Any]] | None) -> None:
            if batch is not None:
                window.append((batch[0], asyncio.ensure_future(pool(batch[1]))))

        async def done() -> PoolResult:
            offset, task = window.popleft()
            try:
                result = await task
            except APIError as exc:
                raise exc.shifted(offset) from exc
            bar.update(len(result))
            return result

        try:
            async for item in _aiter(items):
                send(planner.add(item))
                if len(window) >= 2 * many.concurrency:
                    for pooled in await done():
                        yield pooled
            send(planner.flush())
            while window:
                for pooled in await done():
                    yield pooled
        finally:
            for _, task in window:
                task.cancel()
            await asyncio.gather(*(task for _, task in window), return_exceptions=True)
            bar.close()

    async def _server_limits(self) -> Limits:
        if self._limits is None:
            self._limits = (await self.info()).limits
        return self._limits

    async def models(self) -> ModelList:
        return ModelList.from_json((await self.request("GET", "/models")).json())

    async def model(self, name: str) -> ModelVersions:
        return ModelVersions.from_json((await self.request("GET", model_path(name))).json())

    async def info(self) -> ServiceInfo:
        return ServiceInfo.from_json((await self.request("GET", "/info")).json())

    async def live(self) -> bool:
        return (await self.request("GET", "/health/live", retry=False)).status_code == 200

    async def ready(self) -> Readiness:
        response = await self.request("GET", "/health/ready", retry=False, also_ok=(503,))
        return readiness(response)

    async def wait_ready(self, timeout: float = 60.0, interval: float = 0.25) -> Readiness:
        """See :meth:`Client.wait_ready`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                state = await self.ready()
            except APIConnectionError as exc:
                state = Readiness(False, (str(exc),))
            if state or loop.time() >= deadline:
                return state
            await asyncio.sleep(interval)


async def _aiter(items: Iterable[ArrayLike] | AsyncIterable[ArrayLike]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
