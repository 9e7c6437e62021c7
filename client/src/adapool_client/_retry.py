"""When to send a request again, and how long to wait first.

Retried: 429 (the queue is full: wait at least ``Retry-After``), 503 (shutting down during a
rolling restart, or not ready yet), 502 and 504 (a load balancer between us and a replica that
went away), and failures to connect or connections that broke before an answer. Pooling is a
pure function of its input, so sending a request again is always safe. Never retried: the other
4xx (the same request gets the same answer), 500 (a failed model run or a bug), and read
timeouts (a slow server is a loaded one; sending again adds to its load).

The wait before retry n (n = 1, 2, ...) is exponential with full jitter,
``uniform(0, min(max_backoff, backoff * 2 ** (n - 1)))``, so that clients refused together do
not come back together; with ``Retry-After`` it is that many seconds plus the jittered backoff.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import httpx

from adapool_client._errors import from_response, retry_after_seconds

log = logging.getLogger("adapool_client")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Transport failures after which the request can be sent again: nothing was answered.
RETRY_EXCEPTIONS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,  # the server closed the connection without answering
    httpx.ReadError,  # reset
    httpx.WriteError,
)


@dataclass(frozen=True)
class Retry:
    """The retry policy of a client.

    Attributes:
        attempts: retries after the first try (0: never retry).
        backoff: seconds; the first retry waits up to this, each later one up to twice as long.
        max_backoff: the cap on the jittered exponential part.
        max_retry_after: the longest ``Retry-After`` honoured; a longer one is not waited for
            (the error is raised at once).
        statuses: the HTTP statuses that are retried.
    """

    attempts: int = 3
    backoff: float = 0.2
    max_backoff: float = 10.0
    max_retry_after: float = 60.0
    statuses: frozenset[int] = RETRY_STATUSES
    uniform: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError(f"attempts must be >= 0, got {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("backoff, max_backoff and max_retry_after must be >= 0")

    def delay(self, retry: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait before retry number ``retry`` (1-based), or None to give up."""
        if retry > self.attempts:
            return None
        if retry_after is not None and retry_after > self.max_retry_after:
            return None
        cap = min(self.max_backoff, self.backoff * 2.0 ** (retry - 1))
        return (retry_after or 0.0) + cap * self.uniform()

    def retries_status(self, status: int) -> bool:
        return status in self.statuses


NO_RETRY = Retry(attempts=0)


def as_retry(retries: int | Retry) -> Retry:
    """``Client(retries=...)`` takes a count or a :class:`Retry`."""
    if isinstance(retries, Retry):
        return retries
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int or a Retry, got {retries!r}")
    return Retry(attempts=retries)


class Attempts:
    """The retry loop's state for one request, shared by the sync and async clients: after each
    try, :meth:`after_response` or :meth:`after_error` says how long to wait before the next
    one, or None to stop (then the caller raises)."""

    def __init__(self, policy: Retry, what: str, also_ok: Collection[int] = ()) -> None:
        self.policy = policy
        self.what = what  # "POST /pool", for the log
        self.also_ok = also_ok  # statuses answered to the caller as they are
        self.sent = 0

    def _wait(self, retry_after: float | None, reason: str) -> float | None:
        delay = self.policy.delay(self.sent, retry_after)
        if delay is not None:
            log.warning(
                "%s: %s; retry %d of %d in %.2f s",
                self.what,
                reason,
                self.sent,
                self.policy.attempts,
                delay,
            )
        return delay

    def after_response(self, response: httpx.Response) -> float | None:
        """None for an answer to keep (2xx) or raise; else the wait before sending again."""
        self.sent += 1
        status = response.status_code
        if response.is_success or status in self.also_ok or not self.policy.retries_status(status):
            return None
        retry_after = retry_after_seconds(response)
        return self._wait(retry_after, f"answered {response.status_code}")

    def answer(self, response: httpx.Response) -> httpx.Response:
        """The final answer: returned if 2xx or in ``also_ok``, else raised as an APIError."""
        if response.is_success or response.status_code in self.also_ok:
            return response
        raise from_response(response, self.sent)

    def after_error(self, exc: Exception) -> float | None:
        self.sent += 1
        if not isinstance(exc, RETRY_EXCEPTIONS):
            return None
        return self._wait(None, f"{type(exc).__name__}: {exc}")
