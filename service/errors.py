"""One error type, the statuses it maps to, and the rejection reason each one counts as.

The core raises these and never sees HTTP; a front-end renders them (``service.api.errors`` for
the /pool API: ``{"error": {"type", "message", "detail"}, "request_id"}``). ``status`` is the
HTTP status of each type; ``REJECTION_REASONS`` says under which ``reason`` label of
``adapool_rejected_requests_total`` the core counts it (``None``: not a rejection).
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

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled whole (a worker process raises these for the server to render)."""
        return _rebuild, (type(self), self.message, self.detail, self.headers)


def _rebuild(
    kind: type[ServiceError], message: str, detail: dict[str, Any], headers: dict[str, str]
) -> ServiceError:
    error = kind.__new__(kind)
    ServiceError.__init__(error, message, detail, headers)
    return error


class InvalidInput(ServiceError):
    """The body parsed but its content cannot be pooled (names the field and the item)."""

    status, type = 422, "invalid_input"


class BadRequest(ServiceError):
    """The body or a header cannot be parsed at all."""

    status, type = 400, "bad_request"


class Unauthorized(ServiceError):
    status, type = 401, "unauthorized"

    def __init__(self, message: str = "missing or wrong API key") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ServiceError):
    status, type = 404, "not_found"


class MethodNotAllowed(ServiceError):
    status, type = 405, "method_not_allowed"


class NotAcceptable(ServiceError):
    status, type = 406, "not_acceptable"


class PayloadTooLarge(ServiceError):
    status, type = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, type = 415, "unsupported_media_type"


class RequestTimeout(ServiceError):
    """The request head or body did not arrive in time (the connection is closed after it)."""

    status, type = 408, "request_timeout"


class HeadersTooLarge(ServiceError):
    """The request line and headers exceed ``max_header_bytes`` (the connection is closed)."""

    status, type = 431, "headers_too_large"


class Overloaded(ServiceError):
    """The model's queue is full: the one refusal under load, with its retry hint."""

    status, type = 429, "overloaded"

    def __init__(self, queue: int, retry_after_seconds: int) -> None:
        super().__init__(
            f"the queue is full ({queue} requests); retry later",
            {"queue": queue},
            headers={"Retry-After": str(retry_after_seconds)},
        )


class ClientGone(ServiceError):
    """The client disconnected before its answer was ready: nothing is sent (logged as 499)."""

    status, type = 499, "client_gone"

    def __init__(self, message: str = "the client disconnected") -> None:
        super().__init__(message)


class NotReady(ServiceError):
    status, type = 503, "not_ready"


class TooManyConnections(ServiceError):
    """The server holds ``max_connections`` (or only its reserve for health and metrics is
    left): refused before the request is read, and the connection closed."""

    status, type = 503, "too_many_connections"


class InferenceFailed(ServiceError):
    """The model run failed; every request of that batch gets this error."""

    status, type = 500, "inference_failed"


REJECTION_REASONS: dict[type[ServiceError], str | None] = {
    Overloaded: "queue_full",
    ClientGone: "client_gone",
    PayloadTooLarge: "too_large",
    InvalidInput: "invalid",
    BadRequest: "invalid",
    UnsupportedMediaType: "invalid",
    NotAcceptable: "invalid",
    Unauthorized: "unauthorized",
    NotReady: "not_ready",
    # Refused by the connection layer (service.connections), before the app: not counted there.
    RequestTimeout: None,
    HeadersTooLarge: None,
    TooManyConnections: None,
    NotFound: None,  # a name the client made up: no model label to count it under
    InferenceFailed: None,  # a failure, not a refusal (adapool_requests_total has its 500)
}


def rejection_reason(error: ServiceError) -> str | None:
    """The ``reason`` label ``error`` is counted under, or None."""
    for kind in type(error).__mro__:
        if kind in REJECTION_REASONS:
            return REJECTION_REASONS[kind]
    return None


def invalid(field: str, message: str, item: int | None = None, **detail: Any) -> InvalidInput:
    """A 422 naming the field (and the item index, when one item is at fault)."""
    where = f"{field}" if item is None else f"{field}[{item}]"
    extra = {"field": field} | ({"item": item} if item is not None else {}) | detail
    return InvalidInput(f"{where}: {message}", extra)
