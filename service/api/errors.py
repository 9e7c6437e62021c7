"""The one error body of the /pool API, rendered in one place for handlers and middleware alike.

{"error": {"type": "...", "message": "...", "detail": {...}}, "request_id": "..."}
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def request_id_of(request: Request) -> str:
    rid: str = request.scope.get("request_id", "")
    return rid


async def service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc, request_id_of(request))


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
    return error_response(mapped, request_id_of(request))


async def validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's parameter validation (routes other than the pool routes) in the same body."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
    where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "request"
    message = f"{where}: {errors[0]['msg'] if errors else 'invalid'}"
    return error_response(InvalidInput(message, {"errors": errors}), request_id_of(request))


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
