"""Admission at the request head: a pool or infer request is admitted, or refused with 429,
from its request line and headers alone, before any ASGI task exists for it.

Under overload nearly every request is refused, and a refusal through the app (middleware,
routing, the endpoint, the exception handler, a Starlette response) cost the event loop about
as much as everything else together: at 64 requests in flight against a queue of 8, the loop
was saturated and served 26-33 accepted requests/s against 340 at 32 in flight (py-spy: 48% of
its samples were that path). And while admission waited for the app, every request whose head
came while the queue had room was admitted: a burst of them read their bodies each time a batch
emptied the queue, and all but the first few were refused once read.

So the connection layer (:class:`service.connections.GuardedProtocol`) asks
:class:`HeadAdmission` once a request head is complete. The answer is one of three:

- an :class:`Answer`, the 429 the app would give (the same body, headers, request id and
  counters): the connection writes it itself and drops the request's body as it arrives;
- a :class:`~service.core.batching.Place` in the version's queue: the request goes to the app
  as usual, the place in its ASGI scope (:mod:`service.api.scope`), and the core uses it instead of
  admitting the request again (:meth:`Runtime.hold <service.core.runtime.Runtime.hold>`);
- None: the app decides everything, as it always has. That is every request but a POST to a
  pool or infer route that is authorized, whose target (the route's own function,
  ``TARGETS`` in each front-end) parses and names a ready version: an unknown model, a version
  not ready, a bad query, a missing API key get the app's answer.

One difference in order: under a full queue a request whose body, options or ``Accept`` header
are bad gets 429, not the error it would get once admitted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.routing import Route

from service.api.context import request_id
from service.api.errors import render
from service.core.batching import Place
from service.core.runtime import Runtime
from service.errors import ServiceError

Headers = list[tuple[bytes, bytes]]
AUTHORIZATION = b"authorization"
# The model version a request of a pool or infer route is for (name, and version or None for
# the newest ready one), from its path and query alone; raises ServiceError for a bad one.
Target = tuple[str, int | None]


@dataclass(frozen=True)
class Answer:
    """A whole answer but for the server's default headers and ``Connection``."""

    status: int
    headers: Headers  # content-type, content-length, Retry-After, X-Request-Id
    body: bytes


class HeadAdmission:
    """``admission(path, query, headers)``: the 429 a request gets now, its place in the
    queue, or None (module docstring).

    ``targets`` maps route templates to the function that names a request's model version;
    only the app's routes with a target are considered, in the app's order."""

    def __init__(self, app: FastAPI, targets: Mapping[str, Callable[[Request], Target]]) -> None:
        self.app = app
        self.runtime: Runtime = app.state.runtime
        self.routes: list[tuple[Route, str, Callable[[Request], Target]]] = [
            (route, route.path, targets[route.path])
            for route in app.router.routes
            if isinstance(route, Route) and route.path in targets
        ]

    def _route(self, path: str) -> tuple[str, Callable[[Request], Target], dict[str, Any]] | None:
        """The route ``path`` is for (its template, target and path parameters), if any: the
        route's own compiled pattern and converters, as its ``matches`` uses them (the
        routes of a target all take POST)."""
        for route, template, target in self.routes:
            match = route.path_regex.match(path)
            if match is not None:
                convert = route.param_convertors
                params = {k: convert[k].convert(v) for k, v in match.groupdict().items()}
                return template, target, {"path_params": params, "route": route}
        return None

    def __call__(self, path: str, query: bytes, headers: Headers) -> Answer | Place | None:
        started = time.perf_counter()
        scope: dict[str, Any] = {
            "type": "http",
            "method": "POST",
            "path": path,
            "root_path": "",
            "query_string": query,
            "headers": headers,
            "app": self.app,
        }
        if query.count(b"&") >= self.runtime.settings.max_query_parameters:
            return None  # perhaps too many to parse: the app counts them and refuses with 400
        found = self._route(path)
        if found is None:
            return None
        template, target, child = found
        authorization = next((v.decode("latin-1") for k, v in headers if k == AUTHORIZATION), None)
        if not self.runtime.authorized(authorization):
            return None
        scope.update(child)
        try:
            model, version = target(Request(scope))
        except ServiceError:
            return None
        admitted = self.runtime.hold(model, version)
        if admitted is None or isinstance(admitted, Place):
            return admitted
        error = admitted
        rid = request_id(headers)
        response = render(scope, error, rid)
        answer = Answer(
            response.status_code,
            [*response.raw_headers, (b"x-request-id", rid.encode())],
            bytes(response.body),
        )
        self.runtime.metrics.request(model, template, answer.status, time.perf_counter() - started)
        return answer
