"""The naive server: what most teams write first.

    python -m bench.peers.naive --model runs/bench/model_repository/NAME/1/model.onnx --port 9000

FastAPI with a pydantic request body of nested float lists (``{"embeddings": [B][N][D]}``), a
plain ``def`` route (FastAPI runs it in its thread pool), one ONNX Runtime run per request and
no batching; the response is a pydantic model of lists: ``{"pooled": [B][D_out],
"weights": [B][N]}`` (head-mean pooling weights). The session is the service's own backend on
CPU, so the model run costs what it costs in our server.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from service.core.backend import OnnxBackend


class PoolRequest(BaseModel):
    embeddings: list[list[list[float]]]


class PoolResponse(BaseModel):
    pooled: list[list[float]]
    weights: list[list[float]]


def create_app(model_file: Path) -> FastAPI:
    backends: dict[str, OnnxBackend] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backends["model"] = OnnxBackend(model_file, device="cpu")
        backends["model"].warm_up()
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/pool", response_model=PoolResponse)
    def pool(request: PoolRequest) -> PoolResponse:
        x = np.asarray(request.embeddings, dtype=np.float32)  # (B, N, D)
        out = backends["model"].run(x, np.ones(x.shape[:2], dtype=bool))
        pooled, weights = out["pooled"], out["weights"]
        return PoolResponse(pooled=pooled.tolist(), weights=weights.mean(axis=1).tolist())

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.naive", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="a model.onnx")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.model), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
