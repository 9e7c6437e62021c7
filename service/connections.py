"""The connection layer: uvicorn's httptools protocol with the limits a server that faces
clients needs, enforced before the app sees a request.

uvicorn bounds neither the size of a request head nor the time a client takes to send it, and
keeps any number of connections open: one unfinished 48 MB header held the event loop for
seconds, and 20,000 silent connections used up the process's file descriptors (issue 16). Per
connection, :class:`GuardedProtocol` adds:

- a head limit: the request line and headers of one request are at most ``max_header_bytes``,
  counted as they arrive; over it, 431 and the connection is closed;
- a head deadline: a complete head within ``header_timeout_seconds`` of connecting (or of its
  first byte after a keep-alive pause); else 408 and closed (closed without an answer if it
  has sent nothing at all);
- a body deadline: the body within ``body_timeout_seconds`` plus its size at
  ``body_min_bytes_per_second``; else 408 and closed;
- lifetime caps: ``Connection: close`` after ``max_requests_per_connection`` requests or on the
  first request after ``max_connection_seconds`` (both off by default);
- no protocol upgrade: a request with ``Connection: upgrade`` is served as plain HTTP and its
  connection closed after the answer (httptools hands every byte after such a head to the new
  protocol); one that carries a body gets 400, as that body would be lost.

Across connections, :class:`ConnectionGate` keeps at most ``max_connections`` open: a new one
beyond ``max_connections - reserved_connections`` replaces the oldest connection still waiting
for a request head; when none is waiting it is served for health and metrics only (the
reserve), and beyond ``max_connections`` it gets 503 at once. Every refusal carries the /pool
API's JSON error body and ``Connection: close``; but for the 503 at the cap, the close lingers
(the client's further bytes are dropped for up to a second and a MiB) so that the client
reads it.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any, cast

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from service.api.admission import Answer, HeadAdmission
from service.api.errors import error_body
from service.api.scope import LEFT, PLACE
from service.core.batching import Place
from service.errors import (
    BadRequest,
    HeadersTooLarge,
    RequestTimeout,
    ServiceError,
    TooManyConnections,
)
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("adapool.service")
# Paths still served on the reserved connections (probes and scrapes).
RESERVED_PATHS = ("/health/", "/metrics", "/v2/health/")
# How long a refused connection's further bytes are read and dropped before it is closed.
LINGER_SECONDS = 1.0
# ... and at most this many of them: reading on costs the other clients time.
LINGER_BYTES = 2**20
# Descriptors beyond the connections: the listener, models, logs and worker pipes.
OTHER_DESCRIPTORS = 256


@dataclass(frozen=True)
class Limits:
    """What one connection may send and for how long (0 for the caps: no cap)."""

    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    body_min_rate: float
    max_requests: int
    max_age: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            body_min_rate=settings.body_min_bytes_per_second,
            max_requests=settings.max_requests_per_connection,
            max_age=settings.max_connection_seconds,
        )


class ConnectionGate:
    """Admits connections up to ``max_connections``; the last ``reserved`` serve probes only.

    ``waiting`` holds the admitted connections that have no request in progress (a fresh one,
    one in the middle of its head, an idle keep-alive one), oldest first: the ones a new
    connection may replace. Connections that are being answered are never replaced.
    """

    def __init__(
        self,
        limits: Limits,
        max_connections: int,
        reserved: int,
        metrics: Metrics,
        admission: HeadAdmission | None = None,
    ) -> None:
        self.limits = limits
        self.admission = admission  # asked once a request head is complete
        self.max_connections = max_connections
        self.general = max(1, max_connections - reserved)
        self.open = 0
        self.waiting: dict[GuardedProtocol, None] = {}  # insertion order: oldest first
        self.metrics = metrics
        self._refused: dict[str, Any] = {}  # each reason's counter, resolved once

    def admit(self, connection: GuardedProtocol) -> bool | None:
        """Count ``connection`` in: True to serve it on the reserve only, None to refuse it."""
        if self.open >= self.general and self.waiting:
            oldest = next(iter(self.waiting))
            self.leave(oldest)
            oldest.transport.close()
            self.count("replaced")
        if self.open >= self.max_connections:
            return None
        reserve = self.open >= self.general
        self.open += 1
        self.metrics.connections.set(self.open)
        connection.admitted = True
        self.waiting[connection] = None
        return reserve

    def leave(self, connection: GuardedProtocol) -> None:
        """``connection`` closed (or is closing): it no longer counts."""
        if connection.admitted:
            connection.admitted = False
            self.open -= 1
            self.metrics.connections.set(self.open)
            self.waiting.pop(connection, None)

    def count(self, reason: str) -> None:
        """Count a connection refused or closed by a limit, under ``reason``."""
        child = self._refused.get(reason)
        if child is None:
            child = self._refused[reason] = self.metrics.refused_connections.labels(reason)
        child.inc()

    def busy(self, connection: GuardedProtocol) -> None:
        """A request of ``connection`` is in progress: it may not be replaced."""
        self.waiting.pop(connection, None)

    def idle(self, connection: GuardedProtocol) -> None:
        """``connection`` answered its requests and waits for the next one (newest last)."""
        if connection.admitted:
            self.waiting.pop(connection, None)
            self.waiting[connection] = None


class GuardedConfig(uvicorn.Config):
    """uvicorn's Config with every connection going through ``gate`` (:class:`GuardedProtocol`;
    no WebSocket protocol, so an Upgrade header is never acted on)."""

    def __init__(self, app: Any, gate: ConnectionGate, **kwargs: Any) -> None:
        super().__init__(app, http=GuardedProtocol, ws="none", **kwargs)
        self.gate = gate


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of ``config.gate`` (module docstring)."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        assert isinstance(config, GuardedConfig), "GuardedProtocol needs a GuardedConfig"
        self.gate = config.gate
        self.limits = config.gate.limits
        self.admitted = False
        self.reserve_only = False
        self.refused = False
        self.dropped_bytes = 0  # read and dropped after a refusal
        self.opened = time.monotonic()
        self.requests = 0  # request heads completed on this connection
        # Whether the bytes arriving now belong to a request head, and how many have so far.
        self.in_head = True
        self.head_bytes = 0
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.body_started = 0.0
        self.body_bytes = 0
        self.place: Place | None = None  # the current request's, admitted at its head

    # The connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        admitted = self.gate.admit(self)
        if admitted is None:  # closed at once: the descriptor is what is short
            error = TooManyConnections(f"the server holds {self.gate.open} connections")
            self.refuse(error, linger=0)
            return
        self.reserve_only = admitted
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.leave(self)
        self._release()
        for timer in (self.head_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the head counted: a chunk that leaves the head unfinished is all
        head (a head that ends inside a chunk is measured whole in ``on_headers_complete``)."""
        if self.refused:  # lingering after a refusal: dropped, up to LINGER_BYTES
            self.dropped_bytes += len(data)
            if self.dropped_bytes > LINGER_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        counting, requests = self.in_head, self.requests
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            return  # the head before it was served as plain HTTP (on_headers_complete)
        except httptools.HttpParserError:
            if not self.refused:  # else a callback refused the request and stopped the parser
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        if counting and self.in_head and self.requests == requests:
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.max_header_bytes:
                self.refuse(self._head_too_large(self.head_bytes, finished=False))

    def refuse(self, error: ServiceError, linger: float = LINGER_SECONDS) -> None:
        """Answer ``error`` (unless the app has started an answer) and close the connection.

        With ``linger``, the close is a lingering one: the answer goes out with an end of file,
        and what the client still sends is read and dropped for up to ``linger`` seconds and
        ``LINGER_BYTES`` (or until it closes), so that its unread bytes do not turn the close
        into a reset that could discard the answer before the client reads it."""
        if self.refused:
            return
        self.refused = True
        self.gate.leave(self)
        self.gate.count(error.type)
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            self.transport.write(refusal(error, self.server_state.default_headers))
        if self.cycle is not None and not self.cycle.response_complete:
            # The app's request is over now, as when the client leaves: it reads a disconnect
            # and anything it still sends is dropped (as uvicorn's connection_lost does).
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self._close(linger)

    def _close(self, linger: float) -> None:
        """Close the connection; with ``linger``, after an end of file and up to ``linger``
        seconds of the client's further bytes read and dropped (:meth:`refuse`)."""
        self.refused = True
        self.gate.leave(self)
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(linger, self.transport.close)
        else:
            self.transport.close()

    # Parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        self.in_head = False
        self.head_bytes = 0
        self.gate.busy(self)
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._stop(self._head_too_large(size, finished=True))
        upgrade = self.parser.should_upgrade()
        if upgrade and self._has_body():
            message = "Upgrade is not supported with a request body: send it without Upgrade"
            self._stop(BadRequest(message, {"header": "upgrade"}))
        if self.reserve_only and not self.url.decode("latin-1").startswith(RESERVED_PATHS):
            self._stop(TooManyConnections("only health and metrics are served near the cap"))
        self.requests += 1
        age = time.monotonic() - self.opened
        last = bool(
            upgrade
            or (self.limits.max_requests and self.requests >= self.limits.max_requests)
            or (self.limits.max_age and age >= self.limits.max_age)
        )
        admitted = None if upgrade else self._admit()
        if isinstance(admitted, Answer):
            self._answer(admitted, last)
        else:
            if admitted is not None:  # the request's place in the queue, for the core
                self.place = cast(dict[str, Any], self.scope)[PLACE] = admitted
            super().on_headers_complete()
            cycle, transport = self.cycle, self.transport
            scope = cast(dict[str, Any], self.scope)
            scope[LEFT] = lambda: cycle.disconnected or transport.is_closing()
            if last:
                self.cycle.keep_alive = False  # Connection: close on its answer
        self.body_started, self.body_bytes = time.monotonic(), 0
        self.body_timer = self.loop.call_later(self.limits.body_timeout, self._body_deadline)

    def _admit(self) -> Answer | Place | None:
        """The gate's admission at the head (service.api.admission) for a POST that is not
        queued behind a request in progress (its answer would have to wait for that one's)."""
        admission = self.gate.admission
        if admission is None or self.parser.get_method() != b"POST":
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None
        url = httptools.parse_url(self.url)
        path = url.path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        return admission(path, url.query or b"", self.headers)

    def _answer(self, answer: Answer, last: bool) -> None:
        """Write ``answer`` for the request whose head is complete, without the app: its
        cycle is complete from the start, so that its body is dropped as it arrives."""
        http10 = self.parser.get_http_version() == "1.0"
        keep_alive = not last and not http10 and self.parser.should_keep_alive()
        self.scope["method"] = "POST"
        self.cycle = RequestResponseCycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,  # the final answer goes out at once instead
            keep_alive=keep_alive,
            on_response=self.on_response_complete,
        )
        self.cycle.response_started = self.cycle.response_complete = True
        headers = [*self.server_state.default_headers, *answer.headers]
        if not keep_alive:
            headers.append((b"connection", b"close"))
        self.transport.write(http_answer(answer.status, headers, answer.body))
        if keep_alive:
            self.on_response_complete()
        else:
            self._close(LINGER_SECONDS)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        self.in_head = True  # the next bytes start the next request's head
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._release()
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self.gate.idle(self)

    def _release(self) -> None:
        """The request is answered (or its client gone): its place, if it still holds one
        (the core takes it when the request is queued), is free."""
        if self.place is not None:
            self.place.release()
            self.place = None

    # Limits
    def _stop(self, error: ServiceError) -> None:
        """Refuse the request from a parser callback: the parser stops at the exception."""
        self.refuse(error)
        raise _Refused(error.message)

    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"transfer-encoding":
                return True
            if name == b"content-length" and value.strip() != b"0":
                return True
        return False

    def _head_too_large(self, size: int, finished: bool) -> HeadersTooLarge:
        limit = self.limits.max_header_bytes
        what = "are" if finished else "are already"
        message = f"the request line and headers {what} {size} bytes, over the {limit}-byte limit"
        return HeadersTooLarge(message, {"limit": limit})

    def _arm_head_timer(self) -> None:
        self.head_timer = self.loop.call_later(self.limits.header_timeout, self._head_deadline)

    def _head_deadline(self) -> None:
        self.head_timer = None
        if not self.in_head or self.transport.is_closing():
            return
        if not self.head_bytes and not self.requests:  # silent from the start: no answer
            self.refused = True
            self.gate.leave(self)
            self.gate.count("silent")
            self.transport.close()
            return
        seconds = self.limits.header_timeout
        self.refuse(RequestTimeout(f"no complete request head within {seconds:g} s"))

    def _body_deadline(self) -> None:
        """The body so far must have come at ``body_min_rate`` after the grace period."""
        self.body_timer = None
        if self.cycle is None or not self.cycle.more_body or self.transport.is_closing():
            return
        now = time.monotonic()
        if self.flow.read_paused:  # the app is not reading: the client cannot be late
            self.body_started, self.body_bytes = now, 0
        due = self.body_started + self.limits.body_timeout
        due += self.body_bytes / self.limits.body_min_rate
        if now < due:
            self.body_timer = self.loop.call_later(due - now, self._body_deadline)
            return
        rate = self.limits.body_min_rate
        message = f"the request body came slower than {rate:g} bytes/s"
        self.refuse(RequestTimeout(message, {"received_bytes": self.body_bytes}))


class _Refused(Exception):
    """Raised in a parser callback after a refusal, so that httptools parses no further."""


def refusal(error: ServiceError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole HTTP answer for ``error``: the JSON error body, a new request id, and
    ``Connection: close``."""
    request_id = uuid.uuid4().hex
    body = error_body(error, request_id)
    headers = [
        *default_headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"x-request-id", request_id.encode()),
        *((name.encode(), value.encode()) for name, value in error.headers.items()),
    ]
    return http_answer(error.status, headers, body)


def http_answer(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """An HTTP/1.1 answer's bytes: status line, ``headers`` (all of them) and ``body``."""
    lines = [name + b": " + value + b"\r\n" for name, value in headers]
    return b"".join([STATUS_LINE[status], *lines, b"\r\n", body])


def fit_descriptors(max_connections: int, backlog: int, reserved: int) -> tuple[int, int]:
    """Raise the soft file-descriptor limit towards what ``max_connections`` needs (twice the
    connections: as many again may be lingering after a refusal; those accepted at once from a
    full ``backlog`` before they are refused; the process's other files); returns the cap and
    the backlog that fit under the limit reached.

    When the limit cannot be raised far enough (containers often start with 1,024, soft and
    hard), what it allows beyond the other files is shared in thirds: the connections, those
    lingering after a refusal, and the backlog (1,024 gives 256 connections and a backlog of
    256). The cap stays above the ``reserved`` connections, so that the pool routes are served.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * max_connections + backlog + OTHER_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return max_connections, backlog
    share = max(0, soft - OTHER_DESCRIPTORS) // 3
    fits = max(reserved + 1, min(max_connections, share))
    backlog = max(1, min(backlog, share))
    log.warning(
        "max_connections %d does not fit the file-descriptor limit %d: capped at %d, backlog %d",
        max_connections,
        soft,
        fits,
        backlog,
    )
    return fits, backlog
