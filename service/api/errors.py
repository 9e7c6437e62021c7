"""Every error answer, rendered in one place for handlers and middleware alike.

:func:`render` picks the body by the front-end the path belongs to: the /pool API's
``{"error": {"type", "message", "detail"}, "request_id"}`` (:func:`error_response`), or, for
paths of a front-end registered with :func:`install_handlers` (the KServe v2 routes under
``/v2``), that front-end's own renderer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from service.errors import InvalidInput, MethodNotAllowed, NotFound, ServiceError

log = logging.getLogger("adapool.service")
JSON = "application/json"


class InternalError(ServiceError):
    """A bug: the trace is in the server log under the request id."""

    def __init__(self) -> None:
        super().__init__("internal error; see the server log for this request id")


def error_body(error: ServiceError, request_id: str) -> bytes:
    return orjson.dumps(
        {
            "error": {"type": error.type, "message": error.message, "detail": error.detail},
            "request_id": request_id,
        }
    )


def error_response(error: ServiceError, request_id: str) -> Response:
    """The JSON error answer, with the error's status and headers (Retry-After, ...)."""
    if error.status >= 500:
        log.error("request %s failed: %s %s", request_id, error.type, error.message)
    return Response(
        error_body(error, request_id),
        status_code=error.status,
        media_type=JSON,
        headers=error.headers,
    )


Renderer = Callable[[ServiceError, str], Response]  # (error, request id) -> answer


def render(scope: Scope, error: ServiceError, request_id: str) -> Response:
    """The error answer for the request of ``scope``, in its front-end's body."""
    path: str = scope.get("path", "")
    app = scope.get("app")
    renderers: list[tuple[str, Renderer]] = getattr(app.state, "error_renderers", []) if app else []
    for prefix, renderer in renderers:
        if path == prefix or path.startswith(prefix + "/"):
            return renderer(error, request_id)
    return error_response(error, request_id)


def request_id_of(request: Request) -> str:
    rid: str = request.scope.get("request_id", "")
    return rid


async def service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return render(request.scope, exc, request_id_of(request))


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no route, wrong method, ...) in the same body."""
    assert isinstance(exc, StarletteHTTPException)
    mapped: ServiceError
    if exc.status_code == 404:
        mapped = NotFound(f"no route {request.method} {request.url.path}")
    elif exc.status_code == 405:
        mapped = MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path}",
            headers=dict(exc.headers or {}),
        )
    else:
        mapped = ServiceError(str(exc.detail))
        mapped.status, mapped.type = exc.status_code, "http_error"
    return render(request.scope, mapped, request_id_of(request))


async def validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's parameter validation (routes other than the pool routes) in the same body."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
    where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "request"
    message = f"{where}: {errors[0]['msg'] if errors else 'invalid'}"
    error = InvalidInput(message, {"errors": errors})
    return render(request.scope, error, request_id_of(request))


def install_handlers(app: FastAPI, renderers: dict[str, Renderer] | None = None) -> None:
    """The app's exception handlers; ``renderers``: a path prefix's own error body."""
    app.state.error_renderers = sorted((renderers or {}).items(), key=lambda item: -len(item[0]))
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
