"""Plain ASGI middleware: the request context (a request id on every response, request metrics)
and the direct routes (the pool routes without the framework's routing layers)."""

from __future__ import annotations

import inspect
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

REQUEST_ID_HEADER = "x-request-id"
log = logging.getLogger("adapool.service")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def request_id_of(request: Request) -> str:
    rid: str = request.scope.get("request_id", "")
    return rid


class RequestContext:
    """Assigns a request id (the client's X-Request-Id if it is safe, else a new one), echoes it
    in the response, and counts requests by model, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        rid = given if _SAFE_ID.match(given) else uuid.uuid4().hex
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
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            pass  # the client left mid-upload: nothing to answer; counted as 499 below
        except Exception:
            # A bug: answer with the one JSON error body (and the request id), log the trace.
            log.exception("request %s: internal error", rid)
            if not first:
                raise
            body = orjson.dumps(
                {
                    "error": {
                        "type": "internal_error",
                        "detail": {},
                        "message": "internal error; see the server log for this request id",
                    },
                    "request_id": rid,
                }
            )
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send_with_id({"type": "http.response.body", "body": body})
        finally:
            self.metrics.in_flight.dec()
            if first:  # no response was started (the client left): still count it
                self._observe(scope, 499, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = _route_template(scope)
        state: dict[str, Any] = scope.get("state") or {}
        model = str(state.get("model", ""))
        self.metrics.requests.labels(model, route, str(status)).inc()
        self.metrics.request_duration.labels(model, route).observe(seconds)


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


ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class DirectRoutes:
    """Serves a few hot routes without the framework's routing layers.

    FastAPI reaches a route through an exception middleware, the router (a regex per route),
    the route's handler, two request/response wrappers and dependency solving: much of the HTTP
    stage that took 38% of the server's busy samples for single-item requests in the first
    py-spy profile of ``make compare`` (BENCHMARKS.md; 23% with this middleware). This
    middleware sits inside :class:`RequestContext` (request ids, metrics and the JSON 500 stay
    as they are) and, for a request that one of ``paths``' routes matches fully, calls that
    route's own endpoint with a :class:`Request`, its ``dependencies`` first, and renders a
    ``handled`` exception with ``on_error``, as the app's exception handler would. Everything
    else, wrong methods included, goes on to the app, and so does every request while the app
    has ``dependency_overrides`` (tests), which only FastAPI's own solving applies.

    What it can call is checked by :func:`direct_routes`, which the app's lifespan also calls so
    that a mismatch stops the server at start-up: each route of ``paths`` must exist once, and
    its endpoint and dependencies must be coroutine functions of the request alone (no
    ``yield``, no parameters for FastAPI to fill in).
    """

    def __init__(
        self,
        app: ASGIApp,
        paths: tuple[str, ...],
        handled: type[Exception],
        on_error: ErrorHandler,
    ) -> None:
        self.app = app
        self.paths = paths
        self.handled = handled
        self.on_error = on_error
        self._routes: list[Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not getattr(scope.get("app"), "dependency_overrides", {}):
            if self._routes is None:
                self._routes = direct_routes(scope.get("app"), self.paths)
            for route in self._routes:
                match, child = route.matches(scope)
                if match == Match.FULL:
                    scope.update(child)  # endpoint, path_params and route, as the router sets
                    await self._serve(route, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, route: Any, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            for dependency in route.dependencies:
                await dependency.dependency(request)
            response: Response = await route.endpoint(request)
        except self.handled as exc:
            response = await self.on_error(request, exc)
        await response(scope, receive, send)


def direct_routes(app: Any, paths: tuple[str, ...]) -> list[Any]:
    """The app's routes of ``paths``, checked for what :class:`DirectRoutes` can call."""
    routes = [r for r in getattr(app, "router", app).routes if getattr(r, "path", "") in paths]
    if sorted(r.path for r in routes) != sorted(paths):
        raise RuntimeError(f"DirectRoutes: routes {paths} not all found once: {routes}")
    for route in routes:
        for call in (route.endpoint, *(d.dependency for d in route.dependencies)):
            if not _takes_only_the_request(call):
                raise RuntimeError(
                    f"DirectRoutes: {route.path}: {getattr(call, '__name__', call)} must be a "
                    "coroutine function of the request alone"
                )
    return routes


def _takes_only_the_request(call: Any) -> bool:
    if not inspect.iscoroutinefunction(call):
        return False
    parameters = list(inspect.signature(call).parameters.values())
    return len(parameters) == 1 and parameters[0].default is inspect.Parameter.empty
