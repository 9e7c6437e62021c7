"""The exceptions: the server's JSON error as a typed exception, and the transport's failures.

The server answers every error with one body,
``{"error": {"type", "message", "detail"}, "request_id"}``; ``detail`` names the ``field`` and,
when one item is at fault, its ``item`` index. :func:`from_response` turns any non-2xx answer
into the subclass of :class:`APIError` for its status, with those parts as attributes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx


class AdaPoolError(Exception):
    """Base of every exception this package raises (bad arguments raise ValueError/TypeError)."""


class APIConnectionError(AdaPoolError):
    """The server could not be reached, or the connection broke before an answer (after the
    retries, if any were allowed). ``__cause__`` is httpx's exception."""


class APITimeoutError(APIConnectionError):
    """No answer within the timeout. Not retried by default: a slow server is usually a loaded
    one, and sending the request again adds to its load."""


class APIError(AdaPoolError):
    """A non-2xx answer.

    Attributes:
        status: the HTTP status.
        type: the server's machine-readable type (``invalid_input``, ``overloaded``, ...), or
            ``http_error`` when the body is not the service's error format (a proxy's page).
        message: the server's message; it names the field and the item.
        field: the request field at fault (``body``, ``embeddings``, ``lengths``...), if named.
        item: the index of the item at fault, if one item is. In ``pool_many`` it is the index
            in the whole input (``request_item`` keeps the index within the failed request).
        detail: the server's ``detail`` object, as sent.
        request_id: the request's id (``X-Request-Id``), to find it in the server's log.
        retry_after: seconds from ``Retry-After``, if the server sent one.
        attempts: how many times the request was sent.
    """

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        detail: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        self.status = status
        self.type = type
        self.message = message
        self.detail: Mapping[str, Any] = dict(detail or {})
        field = self.detail.get("field")
        item = self.detail.get("item")
        self.field: str | None = field if isinstance(field, str) else None
        self.item: int | None = item if type_is_int(item) else None
        self.request_item: int | None = self.item
        self.request_id = request_id
        self.retry_after = retry_after
        self.attempts = attempts
        super().__init__(self._text())

    def _text(self) -> str:
        text = f"{self.status} {self.type}: {self.message}"
        if self.item is not None and self.item != self.request_item:
            text += f" (item {self.item} of the input)"
        if self.attempts > 1:
            text += f" (after {self.attempts} attempts)"
        if self.request_id:
            text += f" [request {self.request_id}]"
        return text

    def shifted(self, offset: int) -> APIError:
        """The same error with ``item`` counted from ``offset`` (pool_many's batches)."""
        copy = type(self)(
            self.status,
            self.type,
            self.message,
            detail=self.detail,
            request_id=self.request_id,
            retry_after=self.retry_after,
            attempts=self.attempts,
        )
        if copy.item is not None:
            copy.item += offset
            copy.args = (copy._text(),)
        return copy


def type_is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class BadRequestError(APIError):
    """400 ``bad_request``: the body is not JSON or not a .npy file."""


class AuthenticationError(APIError):
    """401 ``unauthorized``: the API key is missing or wrong."""


class NotFoundError(APIError):
    """404 ``not_found``: unknown route, model or version."""


class MethodNotAllowedError(APIError):
    """405 ``method_not_allowed``."""


class NotAcceptableError(APIError):
    """406 ``not_acceptable``: the server cannot answer in the format asked for."""


class PayloadTooLargeError(APIError):
    """413 ``payload_too_large``: the body, items or tokens exceed the server's limits
    (``detail["limit"]``; ``Client.info().limits`` lists them all)."""


class UnsupportedMediaTypeError(APIError):
    """415 ``unsupported_media_type``."""


class InvalidInputError(APIError):
    """422 ``invalid_input``: wrong token dim, NaN or Inf in a real token, lengths that do not
    match, an unknown option... ``field`` and ``item`` say where."""


class OverloadedError(APIError):
    """429 ``overloaded``: the model's queue is full (retried by default, after
    ``Retry-After``)."""


class ServerError(APIError):
    """5xx other than 503: ``inference_failed`` (the model run failed for that batch) or
    ``internal_error`` (a bug, logged by the server under ``request_id``). Not retried."""


class NotReadyError(APIError):
    """503 ``not_ready``: shutting down, or the model failed to load (retried by default)."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    406: NotAcceptableError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: InvalidInputError,
    429: OverloadedError,
    503: NotReadyError,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (the delay form; an HTTP date is ignored), or None."""
    text = response.headers.get("retry-after")
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def from_response(response: httpx.Response, attempts: int = 1) -> APIError:
    """The exception for a non-2xx ``response`` (its body already read)."""
    status = response.status_code
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    error_type, message = "http_error", ""
    detail: dict[str, Any] = {}
    request_id = response.headers.get("x-request-id")
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("type"), str):
        error_type = error["type"]
        message = str(error.get("message", ""))
        if isinstance(error.get("detail"), dict):
            detail = error["detail"]
        request_id = body.get("request_id") or request_id
    else:  # not the service's error body: a proxy's page, a plain-text error
        message = response.text[:200].strip() or response.reason_phrase
    return kind(
        status,
        error_type,
        message,
        detail=detail,
        request_id=request_id,
        retry_after=retry_after_seconds(response),
        attempts=attempts,
    )
