"""The pool routes: ``POST /pool`` and ``POST /models/{name}/pool``, a thin front-end on the core.

Each request becomes one :meth:`Runtime.pool <service.core.runtime.Runtime.pool>` call: the
:class:`HttpCaller` here gives the core the request's model label, answer format, body
(:mod:`service.api.bodies`) and options; :mod:`service.api.answers` writes the answer.
Admission, checks, batching, diagnostics and the counting of refusals are the core's.

The two routes are :class:`PoolRoute`\\ s: documented by FastAPI like any route (OpenAPI, /docs)
but served as plain Starlette routes, whose handler is the endpoint itself, called with the
request: no dependency solving, parameter parsing or response validation on the hot path.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response

from service.api.admission import Target
from service.api.answers import encode
from service.api.bodies import Decoders, read_body
from service.api.errors import request_id_of
from service.api.negotiation import JSON, negotiate
from service.api.options import Options, parse_options
from service.api.schemas import POOL_NAMED_OPENAPI, POOL_OPENAPI, POOL_RESPONSES, PoolResponse
from service.api.scope import left_of, place_of
from service.core.batching import LeftFn
from service.core.calls import Work
from service.core.models import ServedVersion
from service.core.runtime import Runtime
from service.errors import invalid
from service.settings import Settings

MAX_TOP_K = 1024
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")


class PoolRoute(APIRoute):
    """An APIRoute served as a plain Starlette route: its endpoint takes the request and returns
    a response, and FastAPI's request handler (dependencies, parameters, response model) is not
    used. Errors go to the app's exception handlers, as for any route."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.app = request_response(endpoint)


router = APIRouter(route_class=PoolRoute, tags=["pool"])


def query_params(request: Request) -> dict[str, str]:
    """The query string, each parameter once (a repeated one is refused, not last-wins)."""
    params: dict[str, str] = {}
    if not request.scope.get("query_string"):
        return params
    for key, value in request.query_params.multi_items():
        if key in params:
            raise invalid(key, "is given more than once in the query string")
        params[key] = value
    return params


class HttpCaller:
    """The /pool API's side of one pool request (:class:`~service.core.calls.Caller`)."""

    def __init__(self, request: Request, settings: Settings, query: dict[str, str]) -> None:
        self.request = request
        self.settings = settings
        self.query = query
        self.media = JSON
        self.options = Options()
        # checked before the model run: from the connection layer at once, if it tells
        self.is_disconnected: LeftFn = left_of(request.scope) or request.is_disconnected
        self.place = place_of(request.scope)  # admitted by the connection layer, if it was

    def on_model(self, served: ServedVersion) -> None:
        self.request.state.model = served.name  # the request's model label in the metrics
        self.media = negotiate(self.request.headers.get("accept"))

    async def read(self, served: ServedVersion) -> Work:
        body = await read_body(self.request, self.settings.max_body_bytes)
        decoders: Decoders = self.request.app.state.decoders
        batch, body_options = await decoders.decode(body, self.request.headers, self.query)
        options = {k: v for k, v in self.query.items() if k not in ("lengths", "version")}
        self.options = parse_options(options, body_options, MAX_TOP_K, self.settings.top_k)
        assert served.manifest is not None
        if self.options.contributions and "contributions" not in served.manifest.output_names:
            raise invalid(
                "contributions",
                f"model {served.label} has no contributions output (only models whose pooled "
                "values are their input tokens, pooling.values = inputs, have them)",
            )
        wants = self.media == JSON and self.options.diagnostics
        return Work(batch, diagnostics=wants, top_k=self.options.top_k)


async def serve(
    request: Request, runtime: Runtime, name: str, version: int | None, query: dict[str, str]
) -> Response:
    """One pool request through the core, answered in the negotiated format."""
    caller = HttpCaller(request, runtime.settings, query)
    result = await runtime.pool(name, version, caller)
    started = time.perf_counter()
    response = encode(result, caller.media, caller.options, request_id_of(request))
    result.metrics.encode.observe(time.perf_counter() - started)
    return response


def _version(text: str | None) -> int | None:
    """?version=, an integer (parsed here: the pool routes leave FastAPI no parameters)."""
    if text is None:
        return None
    if not _INTEGER.fullmatch(text):
        raise invalid("version", f"must be an integer, got {text[:40]!r}")
    return int(text)


def _names_version(request: Request) -> bool:
    """Whether the query may name a version (only then is it parsed here: the endpoint parses
    it anyway, and a target is also asked at the request head, where every microsecond of a
    refusal counts)."""
    query: bytes = request.scope.get("query_string", b"")
    return b"version" in query and "version" in query_params(request)


def default_target(request: Request) -> Target:
    """``POST /pool``: the default model's newest ready version."""
    if _names_version(request):
        raise invalid("query", "unknown keys ['version']; POST /models/{name}/pool takes one")
    runtime: Runtime = request.app.state.runtime
    return runtime.settings.default_model, None


def named_target(request: Request) -> Target:
    """``POST /models/{name}/pool``: the named model, its newest ready version or ?version=."""
    name: str = request.path_params["name"]
    return name, _version(query_params(request)["version"]) if _names_version(request) else None


@router.post(
    "/pool",
    response_model=PoolResponse,
    responses=POOL_RESPONSES,
    openapi_extra=POOL_OPENAPI,
    summary="Pool with the default model",
)
async def pool_default(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    runtime.authorize(request.headers.get("authorization"))  # before anything else is read
    name, version = default_target(request)
    return await serve(request, runtime, name, version, query_params(request))


@router.post(
    "/models/{name}/pool",
    response_model=PoolResponse,
    responses=POOL_RESPONSES,
    openapi_extra=POOL_NAMED_OPENAPI,
    summary="Pool with a named model (latest or ?version=)",
)
async def pool_named(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    runtime.authorize(request.headers.get("authorization"))  # before anything else is read
    name, version = named_target(request)
    return await serve(request, runtime, name, version, query_params(request))


# Each pool route's target, by route template (the early refusal's, service.api.admission).
TARGETS = {"/pool": default_target, "/models/{name}/pool": named_target}
