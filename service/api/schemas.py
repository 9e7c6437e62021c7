"""What /docs and /openapi.json show, and what the routes other than pool answer with.

The pool routes read the body themselves (orjson or raw bytes: validating nested float lists
with pydantic costs seconds for a large batch) and write their answers with orjson from the
core's own types (``ItemDiagnostics``), so their request schemas are declared here by hand and
``PoolResponse`` only documents them. The other routes return the models below, and FastAPI
validates what they send against them. ``tests/reliability/test_fuzz.py`` holds the real
server to the whole document (schemathesis).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from service.core.diagnostics import ItemDiagnostics
from service.core.models import BatchPolicyInfo, ModelVersionInfo


class PoolResponse(BaseModel):
    """A JSON pool answer (documentation: the route writes it with orjson from the same types)."""

    model: str
    version: int
    provider: str = Field(description="the ONNX Runtime execution provider that ran the model")
    pooled: list[list[float]] = Field(description="[B][D_out]")
    weights: list[Any] | None = Field(
        None, description="per item: [n] head-mean weights, or [H][n] with return_weights=heads"
    )
    label: list[str] | None = Field(None, description="classification: each item's class")
    probabilities: list[list[float]] | None = Field(
        None, description="classification: [B][C] softmax of the logits"
    )
    prediction: list[list[float]] | None = Field(None, description="regression: [B][T]")
    contributions: list[list[list[float]]] | None = Field(
        None,
        description="with contributions=true: per item [n][C or T], each token's exact signed "
        "share of each logit or prediction (models with pooling.values = inputs)",
    )
    diagnostics: list[ItemDiagnostics] | None = None
    request_id: str


class ErrorInfo(BaseModel):
    type: str = Field(description="stable and machine-readable: bad_request, not_found, ...")
    message: str = Field(description="names the field and, when one item is at fault, its index")
    detail: dict[str, Any]


class ErrorBody(BaseModel):
    """The one body of every error the service answers."""

    error: ErrorInfo
    request_id: str


class Live(BaseModel):
    status: Literal["alive"]


class Ready(BaseModel):
    status: Literal["ready"]


class NotReadyBody(BaseModel):
    status: Literal["not_ready"]
    problems: list[str] = Field(description="one line per model version that is not ready")


class ModelSummary(BaseModel):
    name: str
    versions: list[int]
    latest: ModelVersionInfo


class ModelList(BaseModel):
    default: str
    models: list[ModelSummary]


class ModelVersions(BaseModel):
    name: str
    versions: list[ModelVersionInfo]


class Info(BaseModel):
    service: dict[str, str]
    onnxruntime: dict[str, Any]
    device: str
    providers_in_use: dict[str, list[str]]
    default_model: str
    signal_rule: str = Field(description="the default rule, for models that chose none")
    limits: dict[str, int]
    batching: dict[str, float]
    batch_policies: dict[str, BatchPolicyInfo] = Field(
        description="per model version: the run size its batcher aims for, and why"
    )
    auth: bool
    uptime_seconds: float


ERRORS: dict[int, str] = {
    400: "bad_request: the body is not JSON or not a .npy file at all",
    401: "unauthorized: an API key is set and Authorization: Bearer is missing or wrong",
    404: "not_found: unknown model or version",
    406: "not_acceptable: Accept leaves none of JSON, .npy and .npz (q-values count)",
    413: "payload_too_large: body, items or tokens over their limits",
    415: "unsupported_media_type: a Content-Type other than JSON, .npy and octet-stream",
    422: "invalid_input: the content cannot be pooled (or the model's outputs for it are not "
    "finite), an unknown option, or a repeated query parameter",
    429: "overloaded: the model's queue is full; retry after Retry-After seconds",
    500: "inference_failed or internal_error: a failed model run or a bug (logged)",
    503: "not_ready: shutting down, or the model failed to load",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with the one error body."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorBody, "description": ERRORS[status]}
        if status == 429:
            entry["headers"] = {
                "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}
            }
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        out[status] = entry
    return out


BINARY = {"schema": {"type": "string", "format": "binary"}}
POOL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON by default; .npy (pooled only) or .npz (pooled, weights, lengths, "
        "attention_mask) when Accept asks for them",
        "content": {"application/x-npy": BINARY, "application/x-npz": BINARY},
    },
    **errors(400, 401, 404, 406, 413, 415, 422, 429, 500, 503),
}


_OPTIONS = (
    "Options (query parameters; a JSON body may carry the same keys): return_weights = none | "
    "mean | heads (default mean), diagnostics = true | false (default true), top_k (default 5), "
    "contributions = true | false (default false; models with faithful values). "
    "Any other option is refused with 422."
)
_BODY_OPTIONS: dict[str, Any] = {
    "return_weights": {"type": "string", "enum": ["none", "mean", "heads"]},
    "diagnostics": {"type": "boolean"},
    "top_k": {"type": "integer", "minimum": 0, "maximum": 1024},
    "contributions": {"type": "boolean"},
}
_CSV = "^[0-9]+(,[0-9]+)*$"

POOL_OPENAPI: dict[str, Any] = {
    "description": (
        "Pool token embeddings. Three request formats: JSON lists (ragged items allowed, or "
        "an explicit attention_mask), JSON with base64, and binary (.npy, or raw little-endian "
        "bytes with X-Shape / X-Dtype headers; lengths in X-Lengths or ?lengths=). A request "
        "without Content-Type is read as JSON. "
        + _OPTIONS
        + " Responses are JSON unless Accept asks for application/x-npy (pooled only) or "
        "application/x-npz (pooled, weights, lengths, attention_mask)."
    ),
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {
                            "title": "JSON lists",
                            "type": "object",
                            "required": ["embeddings"],
                            "additionalProperties": False,
                            "properties": {
                                "embeddings": {
                                    "type": "array",
                                    "description": "[B][N_i][D] numbers; items may differ in N_i",
                                    "minItems": 1,
                                    "items": {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": {
                                            "type": "array",
                                            "minItems": 1,
                                            "items": {"type": "number"},
                                        },
                                    },
                                },
                                "attention_mask": {
                                    "type": "array",
                                    "description": "[B][N_i] true/false (or 1/0), true = a real "
                                    "token; each item needs a real token",
                                    "items": {
                                        "type": "array",
                                        "items": {"anyOf": [{"type": "boolean"}, {"enum": [0, 1]}]},
                                    },
                                },
                                **_BODY_OPTIONS,
                            },
                        },
                        {
                            "title": "JSON with base64",
                            "type": "object",
                            "required": ["embeddings_b64", "shape"],
                            "additionalProperties": False,
                            "properties": {
                                "embeddings_b64": {
                                    "type": "string",
                                    "format": "byte",
                                    "description": "the [B, N, D] array's little-endian bytes",
                                },
                                "shape": {
                                    "type": "array",
                                    "items": {"type": "integer", "minimum": 1},
                                    "minItems": 2,
                                    "maxItems": 3,
                                    "description": "[B, N, D] or [N, D]",
                                },
                                "dtype": {"type": "string", "enum": ["float32", "float16"]},
                                "lengths": {
                                    "type": "array",
                                    "items": {"type": "integer", "minimum": 1},
                                    "description": "each item's real tokens (the first n)",
                                },
                                **_BODY_OPTIONS,
                            },
                        },
                    ]
                },
                "example": {
                    "embeddings": [
                        [[0.1 * ((i + t) % 7) - 0.3 for i in range(16)] for t in range(3)],
                        [[0.05 * ((i * t) % 5) for i in range(16)] for t in range(1, 3)],
                    ]
                },
            },
            "application/x-npy": {
                "schema": {"type": "string", "format": "binary"},
                "description": ".npy of [B, N, D] or [N, D], float32 or float16",
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "raw little-endian bytes; shape in X-Shape, dtype in X-Dtype",
            },
        },
    },
    "parameters": [
        {
            "name": "return_weights",
            "in": "query",
            "schema": {"type": "string", "enum": ["none", "mean", "heads"]},
        },
        {"name": "diagnostics", "in": "query", "schema": {"type": "boolean"}},
        {"name": "contributions", "in": "query", "schema": {"type": "boolean"}},
        {
            "name": "top_k",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0, "maximum": 1024},
        },
        {
            "name": "lengths",
            "in": "query",
            "schema": {"type": "string", "pattern": _CSV},
            "description": "binary formats only: each item's real tokens, '3,5,7'",
        },
        {
            "name": "X-Shape",
            "in": "header",
            "schema": {"type": "string", "pattern": "^[0-9]+(,[0-9]+){1,2}$"},
            "description": "raw bytes: 'B,N,D' or 'N,D'",
        },
        {
            "name": "X-Dtype",
            "in": "header",
            "schema": {"type": "string", "enum": ["float32", "float16"]},
        },
        {
            "name": "X-Lengths",
            "in": "header",
            "schema": {"type": "string", "pattern": _CSV},
            "description": "binary formats only: as ?lengths=",
        },
    ],
}

# The named route reads its path and version itself (no parameter solving on the hot path);
# these document them as FastAPI would have.
POOL_NAMED_OPENAPI: dict[str, Any] = POOL_OPENAPI | {
    "parameters": [
        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
        {
            "name": "version",
            "in": "query",
            "required": False,
            "schema": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "description": "the model version (default: the newest that loaded)",
        },
        *POOL_OPENAPI["parameters"],
    ]
}
