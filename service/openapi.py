"""What /docs shows for POST /pool: the three request formats and the response.

The handler reads the body itself (orjson or raw bytes: validating nested float lists with
pydantic costs seconds for a large batch), so the request schemas are declared here by hand.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class TopToken(BaseModel):
    token: int
    weight: float


class ItemDiagnostics(BaseModel):
    entropy: float = Field(description="-sum w ln w over the real tokens (nats)")
    normalized_entropy: float | None = Field(description="entropy / ln n; null for one token")
    effective_tokens: float = Field(description="exp(entropy)")
    max_weight: float
    max_token: int
    top_tokens: list[TopToken]
    signal_tokens: list[int] = Field(description="tokens whose weight exceeds 1/n")
    estimated_snr: float = Field(description="|signal_tokens| / n")
    noise_mass: float = Field(description="weight outside the signal set")


class PoolResponse(BaseModel):
    model: str
    version: int
    provider: str = Field(description="the ONNX Runtime execution provider that ran the model")
    pooled: list[list[float]] = Field(description="[B][D_out]")
    weights: list[Any] | None = Field(
        None, description="per item: [n] head-mean weights, or [H][n] with return_weights=heads"
    )
    diagnostics: list[ItemDiagnostics] | None = None
    request_id: str


_OPTIONS = (
    "Options (query parameters; a JSON body may carry the same keys): return_weights = none | "
    "mean | heads (default mean), diagnostics = true | false (default true), top_k (default 5)."
)

POOL_OPENAPI: dict[str, Any] = {
    "description": (
        "Pool token embeddings. Three request formats: JSON lists (ragged items allowed, or "
        "an explicit attention_mask), JSON with base64, and binary (.npy, or raw little-endian "
        "bytes with X-Shape / X-Dtype headers; lengths in X-Lengths or ?lengths=). "
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
                            "properties": {
                                "embeddings": {
                                    "type": "array",
                                    "description": "[B][N_i][D] floats; items may differ in N_i",
                                    "items": {
                                        "type": "array",
                                        "items": {"type": "array", "items": {"type": "number"}},
                                    },
                                },
                                "attention_mask": {
                                    "type": "array",
                                    "description": "[B][N_i] booleans, true = a real token",
                                    "items": {"type": "array", "items": {"type": "boolean"}},
                                },
                            },
                        },
                        {
                            "title": "JSON with base64",
                            "type": "object",
                            "required": ["embeddings_b64", "shape"],
                            "properties": {
                                "embeddings_b64": {"type": "string", "format": "byte"},
                                "shape": {
                                    "type": "array",
                                    "items": {"type": "integer"},
                                    "description": "[B, N, D] or [N, D]",
                                },
                                "dtype": {"type": "string", "enum": ["float32", "float16"]},
                                "lengths": {"type": "array", "items": {"type": "integer"}},
                            },
                        },
                    ]
                },
                "example": {"embeddings": [[[0.1, 0.2], [0.3, 0.4]], [[0.5, 0.6]]]},
            },
            "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [
        {
            "name": "return_weights",
            "in": "query",
            "schema": {"type": "string", "enum": ["none", "mean", "heads"]},
        },
        {"name": "diagnostics", "in": "query", "schema": {"type": "boolean"}},
        {"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {
            "name": "lengths",
            "in": "query",
            "schema": {"type": "string"},
            "description": "binary formats: '3,5,7'",
        },
        {
            "name": "X-Shape",
            "in": "header",
            "schema": {"type": "string"},
            "description": "raw bytes: 'B,N,D'",
        },
        {
            "name": "X-Dtype",
            "in": "header",
            "schema": {"type": "string", "enum": ["float32", "float16"]},
        },
        {"name": "X-Lengths", "in": "header", "schema": {"type": "string"}},
    ],
}
