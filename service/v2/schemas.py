"""What /docs and /openapi.json show for the v2 routes: the infer request's formats and the
error body of every v2 failure (``{"error": "..."}``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

V2_DESCRIPTIONS: dict[int, str] = {
    400: "a malformed request: the message names the input or output at fault",
    401: "an API key is set and Authorization: Bearer is missing or wrong",
    404: "unknown model or version",
    413: "body, items, tokens or JSON values over their limits",
    429: "the model's queue is full; retry after Retry-After seconds",
    500: "the model run failed",
    503: "not ready: loading, shutting down, or this model is broken",
}


class V2Error(BaseModel):
    """Every v2 error: tritonclient reads ``error`` (and fails on any other shape)."""

    error: str


def v2_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": V2Error, "description": V2_DESCRIPTIONS[status]}
        if status == 429:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        out[status] = entry
    return out


V2_ERRORS = v2_errors(400, 401, 404, 503)

# Parameters are scalars (bool, number, string; the protocol's InferParameter); unknown ones
# are accepted and ignored, as tritonclient sends some of its own.
_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {
        "anyOf": [{"type": "boolean"}, {"type": "number"}, {"type": "string"}]
    },
}
_TENSOR: dict[str, Any] = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "enum": ["embeddings", "attention_mask"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["FP32", "FP16", "BOOL"]},
        "parameters": _PARAMETERS
        | {"properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
        "data": {
            "type": "array",
            "items": {"anyOf": [{"type": "number"}, {"type": "boolean"}]},
            "description": "row-major values (nested lists of them are read too)",
        },
    },
}
INFER_OPENAPI: dict[str, Any] = {
    "description": (
        "The KServe v2 infer request. Inputs, by name in any order: embeddings FP32 (or FP16) "
        "[B, N, D] and attention_mask BOOL [B, N] (optional: every token real). Outputs: "
        "pooled FP32 [B, D_out], weights FP32 [B, H, N], a task's logits or prediction, and "
        "the diagnostics entropy, effective_tokens, estimated_snr, noise_mass FP32 [B] and "
        "signal_mask BOOL [B, N]; no 'outputs' list: all of them. With the binary tensor "
        "extension, Inference-Header-Content-Length gives the JSON part's length and each "
        "binary input's parameters.binary_data_size its bytes after it; an output with "
        "parameters.binary_data (or the request's binary_data_output) is answered as raw "
        "bytes the same way. Content-Encoding gzip or deflate is read; Accept-Encoding gzip "
        "or deflate is honoured."
    ),
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "additionalProperties": False,
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": _PARAMETERS
                        | {"properties": {"binary_data_output": {"type": "boolean"}}},
                        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "parameters": _PARAMETERS
                                    | {"properties": {"binary_data": {"type": "boolean"}}},
                                },
                            },
                        },
                    },
                },
                "example": {
                    "inputs": [
                        {
                            "name": "embeddings",
                            "shape": [1, 2, 16],
                            "datatype": "FP32",
                            "data": [0.1] * 32,
                        }
                    ],
                    "outputs": [{"name": "pooled"}, {"name": "entropy"}],
                },
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "the JSON request, then the binary tensors "
                "(Inference-Header-Content-Length)",
            },
        },
    },
    "responses": {
        "200": {
            "description": "outputs as JSON data, or JSON then raw bytes "
            "(Inference-Header-Content-Length)",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
}


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
# The infer routes read their path themselves (no parameter solving on the hot path); these
# document the path parameters as FastAPI would have.
INFER_LATEST_OPENAPI: dict[str, Any] = INFER_OPENAPI | {"parameters": [_NAME]}
INFER_VERSION_OPENAPI: dict[str, Any] = INFER_OPENAPI | {"parameters": [_NAME, _VERSION]}
