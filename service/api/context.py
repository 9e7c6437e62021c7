"""The request context, plain ASGI middleware: a request id on every response, request metrics,
and the JSON 500 for a bug."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import InternalError, render
from service.errors import BadRequest
from service.metrics import Metrics

REQUEST_ID_HEADER = "x-request-id"
log = logging.getLogger("adapool.service")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ID_HEADER = REQUEST_ID_HEADER.encode()


def request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request's id: the client's X-Request-Id if it is safe to echo, else a new one."""
    given = next((value for name, value in headers if name == _ID_HEADER), b"")
    text = given.decode("latin-1")
    return text if _SAFE_ID.match(text) else uuid.uuid4().hex


class RequestContext:
    """Assigns a request id (the client's X-Request-Id if it is safe, else a new one), echoes it
    in the response, counts requests by model, route template and status, and refuses a query
    string of more than ``max_query_parameters`` parameters (400, before any route parses it)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_query_parameters: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_query_parameters = max_query_parameters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope.get("headers") or [])
        scope["request_id"] = rid
        started = time.perf_counter()
        status = 500
        first = True

        async def send_with_id(message: Message) -> None:
            nonlocal status, first
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
                if first:
                    first = False
                    self._observe(scope, status, time.perf_counter() - started)
            await send(message)

        self.metrics.in_flight.inc()
        try:
            too_many = self._too_many_parameters(scope.get("query_string", b""))
            if too_many is not None:
                await render(scope, too_many, rid)(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            pass  # the client left mid-upload: nothing to answer; counted as 499 below
        except Exception:
            # A bug: answer with the one JSON error body (and the request id), log the trace.
            log.exception("request %s: internal error", rid)
            if not first:
                raise
            await render(scope, InternalError(), rid)(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            if first:  # no response was started (the client left): still count it
                self._observe(scope, 499, time.perf_counter() - started)

    def _too_many_parameters(self, query: bytes) -> BadRequest | None:
        if query.count(b"&") < self.max_query_parameters:  # at most that many parameters
            return None
        count = sum(1 for part in query.split(b"&") if part)
        if count <= self.max_query_parameters:
            return None
        limit = self.max_query_parameters
        message = f"query: {count} parameters, over the limit of {limit}"
        return BadRequest(message, {"field": "query", "count": count, "limit": limit})

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = _route_template(scope)
        state: dict[str, Any] = scope.get("state") or {}
        model = str(state.get("model", ""))
        self.metrics.request(model, route, status, seconds)


def _route_template(scope: Scope) -> str:
    matched = scope.get("route")  # set by the router on a match (an API route has methods)
    methods = getattr(matched, "methods", None)
    if matched is not None and methods and scope.get("method") in methods:
        return str(matched.path)
    app = scope.get("app")  # a partial match (405), or a route without methods: search
    router = getattr(app, "router", None)
    for route in getattr(router, "routes", []):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "other"))
    return "other"
