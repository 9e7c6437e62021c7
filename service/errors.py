"""One error type, one status mapping, one JSON body for every error the service returns.

{"error": {"type": "...", "message": "...", "detail": {...}}, "request_id": "..."}
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error with its HTTP status, a stable machine-readable type and optional detail."""

    status: int = 500
    type: str = "internal_error"

    def __init__(
        self,
        message: str,
        detail: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or {}
        self.headers = headers or {}

    def body(self, request_id: str) -> dict[str, Any]:
        return {
            "error": {"type": self.type, "message": self.message, "detail": self.detail},
            "request_id": request_id,
        }


class InvalidInput(ServiceError):
    """The body parsed but its content cannot be pooled (names the field and the item)."""

    status, type = 422, "invalid_input"


class BadRequest(ServiceError):
    """The body or a header cannot be parsed at all."""

    status, type = 400, "bad_request"


class Unauthorized(ServiceError):
    status, type = 401, "unauthorized"


class NotFound(ServiceError):
    status, type = 404, "not_found"


class MethodNotAllowed(ServiceError):
    status, type = 405, "method_not_allowed"


class PayloadTooLarge(ServiceError):
    status, type = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, type = 415, "unsupported_media_type"


class NotAcceptable(ServiceError):
    status, type = 406, "not_acceptable"


class Overloaded(ServiceError):
    status, type = 429, "overloaded"


class NotReady(ServiceError):
    status, type = 503, "not_ready"


class InferenceFailed(ServiceError):
    """The model run failed; every request of that batch gets this error."""

    status, type = 500, "inference_failed"


def invalid(field: str, message: str, item: int | None = None, **detail: Any) -> InvalidInput:
    """A 422 naming the field (and the item index, when one item is at fault)."""
    where = f"{field}" if item is None else f"{field}[{item}]"
    extra = {"field": field} | ({"item": item} if item is not None else {}) | detail
    return InvalidInput(f"{where}: {message}", extra)
