"""A Python client for AdaPool Serve: numpy in, typed results out, binary on the wire.

from adapool_client import Client

with Client("http://127.0.0.1:8000") as client:
    result = client.pool([tokens_a, tokens_b])  # [N_i, D] arrays
    result.pooled  # (2, D_out); result.weights: per item, over its own tokens
"""

from adapool_client._async_client import AsyncClient
from adapool_client._base import __version__
from adapool_client._client import Client
from adapool_client._errors import (
    AdaPoolError,
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidInputError,
    MethodNotAllowedError,
    NotAcceptableError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    ServerError,
    UnsupportedMediaTypeError,
)
from adapool_client._results import (
    Diagnostics,
    Limits,
    ModelList,
    ModelSummary,
    ModelVersion,
    ModelVersions,
    PooledItem,
    PoolResult,
    Readiness,
    ServiceInfo,
    Task,
    TopToken,
)
from adapool_client._retry import Retry

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AdaPoolError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "Diagnostics",
    "InvalidInputError",
    "Limits",
    "MethodNotAllowedError",
    "ModelList",
    "ModelSummary",
    "ModelVersion",
    "ModelVersions",
    "NotAcceptableError",
    "NotFoundError",
    "NotReadyError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PoolResult",
    "PooledItem",
    "Readiness",
    "Retry",
    "ServerError",
    "ServiceInfo",
    "Task",
    "TopToken",
    "UnsupportedMediaTypeError",
    "__version__",
]
