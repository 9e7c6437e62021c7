"""The synchronous client."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

import httpx
from numpy.typing import ArrayLike

from adapool_client._base import DEFAULT_URL, Base, http_limits, http_timeout, readiness
from adapool_client._errors import APIConnectionError, APIError
from adapool_client._inputs import UploadDtype
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


class Client(Base):
    """A client of one AdaPool Serve server; one pool of kept-alive connections, thread-safe.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000`` (``make run``).
        api_key: sent as ``Authorization: Bearer`` when the server has ``ADAPOOL_API_KEY`` set.
        timeout: seconds per request (connect, write, read), or an ``httpx.Timeout``.
        retries: retries after the first try, or a :class:`Retry` (429, 502, 503, 504 and
            failed connections are retried with exponential backoff and jitter; 429 waits
            ``Retry-After`` first; other errors never).
        upload_dtype: ``"float32"`` (default) or ``"float16"`` (half the bytes; values are
            rounded to float16 before the model sees them).
        headers: extra headers on every request.
        max_connections: the most connections open at once (and kept alive).
        transport: an httpx transport (tests, proxies, Unix sockets).

    Use it as a context manager, or call :meth:`close`.
    """

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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, retries, upload_dtype, headers)
        self._http = httpx.Client(
            base_url=self.url,
            headers=self.headers,
            timeout=http_timeout(timeout),
            limits=http_limits(max_connections),
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def request(
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
        """One HTTP request with the client's retries (``retry=False``: none). Returns a 2xx
        answer (or one whose status is in ``also_ok``); raises :class:`APIError` for other
        answers and :class:`APIConnectionError` when no answer came."""
        attempts = Attempts(self.retry if retry else NO_RETRY, f"{method} {path}", also_ok)
        while True:
            try:
                response = self._http.request(
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
            time.sleep(delay)

    def pool(
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
        """Pool a batch of token sets.

        Args:
            embeddings: a [B, N, D] array, a list of [N_i, D] arrays (ragged), or one [N, D]
                set (a batch of one). float32; other numeric dtypes are converted.
            lengths: (B,) real tokens per item of a [B, N, D] array (the first lengths[i]).
            attention_mask: (B, N) bool, True = a real token; instead of lengths.
            model: a served model's name (``models().names``); None: the server's default.
            version: that model's version; None: its latest.
            weights: ``"mean"`` (head-mean weights per token), ``"heads"`` (per head) or
                ``"none"``.
            diagnostics: also return each item's signal/noise diagnostics (the answer is then
                JSON, the only format that carries them; otherwise it is .npz or .npy).
            top_k: top tokens listed in the diagnostics (None: the server's default, 5).
            response_format: ``"auto"`` (.npz, .npy without weights, JSON with diagnostics)
                or one of ``"npz"``, ``"npy"``, ``"json"``.
            upload_dtype: this call's upload dtype (None: the client's).
            request_id: sent as ``X-Request-Id`` (letters, digits, ``._-``; up to 64).

        Returns:
            a :class:`PoolResult`: ``pooled`` (B, D_out), ``weights`` per item trimmed to its
            tokens, ``diagnostics``, ``model``, ``version``, ``provider``, ``request_id``.

        Raises:
            ValueError, TypeError: arguments that cannot make a request (nothing is sent).
            APIError: the server's answer (:class:`InvalidInputError` names field and item).
            APIConnectionError: the server could not be reached, after the retries.
        """
        options = PoolOptions(
            model, version, weights, diagnostics, top_k, response_format, upload_dtype
        )
        return self._pool(
            self._pool_request(embeddings, lengths, attention_mask, options, request_id)
        )

    def _pool_sets(self, sets: list[Any], options: PoolOptions) -> PoolResult:
        return self._pool(self._pool_request(sets, None, None, options))

    def _pool(self, request: Request) -> PoolResult:
        response = self.request(
            "POST",
            request.path,
            params=request.params,
            headers=request.headers,
            content=request.content,
        )
        return pool_result(request, response)

    def pool_many(
        self,
        items: Iterable[ArrayLike],
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
    ) -> Iterator[PooledItem]:
        """Pool a stream of [N_i, D] token sets, yielding one :class:`PooledItem` per set, in
        input order.

        Items are sent in requests of up to ``batch_size`` items, ``concurrency`` requests at a
        time from a pool of threads, each request within the server's limits (read once from
        ``/info`` unless ``max_batch_tokens`` is given; ``batch_size`` is capped at the
        server's ``max_items_per_request``). At most ``2 * concurrency`` requests' items are
        held at once. The other arguments are :meth:`pool`'s. An error stops the iteration;
        its ``item`` is the index in ``items``.

        Args:
            progress: show a progress bar (tqdm when installed, else a line on stderr).
        """
        options = PoolOptions(
            model, version, weights, diagnostics, top_k, response_format, upload_dtype
        )
        return self._many(items, Many(options, batch_size, concurrency, progress, max_batch_tokens))

    def _many(self, items: Iterable[ArrayLike], many: Many) -> Iterator[PooledItem]:
        limits = None if many.max_batch_tokens is not None else self._server_limits()
        planner = self._planner(many, limits)
        bar = progress_bar(many.progress, items)
        window: deque[tuple[int, Future[PoolResult]]] = deque()

        def send(batch: tuple[int, list[Any]] | None) -> None:
            if batch is not None:
                offset, sets = batch  # padded and encoded in the worker thread too
                window.append((offset, threads.submit(self._pool_sets, sets, many.options)))

        def done() -> Iterator[PooledItem]:
            offset, future = window.popleft()
            try:
                result = future.result()
            except APIError as exc:
                raise exc.shifted(offset) from exc
            bar.update(len(result))
            yield from result

        with ThreadPoolExecutor(many.concurrency, thread_name_prefix="adapool-client") as threads:
            try:
                for item in items:
                    send(planner.add(item))
                    if len(window) >= 2 * many.concurrency:
                        yield from done()
                send(planner.flush())
                while window:
                    yield from done()
            finally:
                for _, future in window:
                    future.cancel()
                bar.close()

    def _server_limits(self) -> Limits:
        if self._limits is None:
            self._limits = self.info().limits
        return self._limits

    def models(self) -> ModelList:
        """Every served model (``GET /models``)."""
        return ModelList.from_json(self.request("GET", "/models").json())

    def model(self, name: str) -> ModelVersions:
        """One model's versions (``GET /models/{name}``); :class:`NotFoundError` if unknown."""
        return ModelVersions.from_json(self.request("GET", model_path(name)).json())

    def info(self) -> ServiceInfo:
        """Versions, providers, limits and batching settings (``GET /info``)."""
        return ServiceInfo.from_json(self.request("GET", "/info").json())

    def live(self) -> bool:
        """True when the process answers ``GET /health/live`` (not retried)."""
        return self.request("GET", "/health/live", retry=False).status_code == 200

    def ready(self) -> Readiness:
        """``GET /health/ready`` now (not retried): truthy when ready, else with the problems."""
        return readiness(self.request("GET", "/health/ready", retry=False, also_ok=(503,)))

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.25) -> Readiness:
        """Poll readiness until it is ready (refused connections included) or ``timeout``
        seconds pass; returns the last readiness (falsy on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = self.ready()
            except APIConnectionError as exc:
                state = Readiness(False, (str(exc),))
            if state or time.monotonic() >= deadline:
                return state
            time.sleep(interval)
