"""What :class:`~adapool_client.Client` and :class:`~adapool_client.AsyncClient` share: their
settings, the headers, a pool call as a request, readiness, the httpx settings."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata
from typing import Any

import httpx
from numpy.typing import ArrayLike

from adapool_client._errors import APIConnectionError, APITimeoutError, from_response
from adapool_client._inputs import UPLOAD_DTYPES, UploadDtype, prepare
from adapool_client._many import Many, Planner
from adapool_client._results import Limits, Readiness
from adapool_client._retry import Retry, as_retry
from adapool_client._wire import PoolOptions, Request, pool_request

try:
    __version__ = metadata.version("adapool-client")
except metadata.PackageNotFoundError:  # imported from a source tree
    __version__ = "0+unknown"

DEFAULT_URL = "http://127.0.0.1:8000"


class Base:
    """Settings and the I/O-free half of every method."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        retries: int | Retry,
        upload_dtype: UploadDtype,
        headers: Mapping[str, str] | None,
    ) -> None:
        if upload_dtype not in UPLOAD_DTYPES:
            raise ValueError(f"upload_dtype: must be float32 or float16, got {upload_dtype!r}")
        self.url = url.rstrip("/")
        self.retry = as_retry(retries)
        self.upload_dtype: UploadDtype = upload_dtype
        self.headers = {"User-Agent": f"adapool-client/{__version__}", **(headers or {})}
        if api_key is not None:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._limits: Limits | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _pool_request(
        self,
        embeddings: ArrayLike,
        lengths: ArrayLike | None,
        attention_mask: ArrayLike | None,
        options: PoolOptions,
        request_id: str | None = None,
    ) -> Request:
        dtype = options.upload_dtype or self.upload_dtype
        return pool_request(
            prepare(embeddings, lengths, attention_mask, dtype), options, request_id
        )

    def _planner(self, many: Many, limits: Limits | None) -> Planner:
        itemsize = UPLOAD_DTYPES[many.options.upload_dtype or self.upload_dtype].itemsize
        return Planner(many.batch_size, limits, many.max_batch_tokens, itemsize)

    def _connection_error(self, exc: Exception, attempts: int) -> APIConnectionError:
        kind = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return kind(f"{self.url}: {type(exc).__name__}: {exc}{tries}")


def readiness(response: httpx.Response) -> Readiness:
    """200 -> ready; 503 with the server's problems -> not ready; anything else raises."""
    if response.status_code == 200:
        return Readiness(True)
    if response.status_code == 503:
        try:
            body: Any = response.json()
            problems = tuple(str(p) for p in body.get("problems", ()))
        except (ValueError, AttributeError):
            problems = (response.text[:200],)
        return Readiness(False, problems)
    raise from_response(response)


def http_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    """Per-request timeouts; waiting for a free connection of the pool never times out
    (pool_many bounds how many requests wait)."""
    if isinstance(timeout, httpx.Timeout):
        return timeout
    return httpx.Timeout(timeout, pool=None)


def http_limits(max_connections: int) -> httpx.Limits:
    """Every connection kept alive: pool_many reuses them instead of connecting per request."""
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
