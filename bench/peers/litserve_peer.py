"""LitServe (PyPI ``litserve``) serving one model with its batching on.

    python -m bench.peers.litserve_peer --model .../model.onnx --port 9000 \\
        --max-batch-size 8 --batch-timeout 0.002

``POST /predict`` with a JSON body: ``{"embeddings": [B][N][D]}`` (lists) or, its binary path,
``{"embeddings_b64": "<base64 of little-endian float32>", "shape": [B, N, D]}`` (LitServe parses
every request as JSON, so base64 inside JSON is the binary format it offers without a custom
spec). LitServe batches *requests*: up to ``--max-batch-size`` requests, waiting at most
``--batch-timeout`` seconds to fill a batch; their items are concatenated into one model run
and split back. The answer is JSON: ``{"pooled": [B][D_out], "weights": [B][N]}`` (head-mean
pooling weights). One inference worker on the CPU (``accelerator="cpu"``), whose ONNX Runtime
session is the service's own backend, so it uses both cores for the model as ours does, and
``fast_queue`` (ZeroMQ between the API server and the worker) on.
"""

from __future__ import annotations

import argparse
from base64 import b64decode
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
from numpy.typing import NDArray

from service.core.backend import OnnxBackend

Outputs = tuple[NDArray[np.float32], NDArray[np.float32]]


def decode(request: dict[str, Any]) -> NDArray[np.float32]:
    """A request body -> embeddings (B, N, D) float32."""
    if "embeddings_b64" in request:
        shape = tuple(int(s) for s in request["shape"])
        return np.frombuffer(b64decode(request["embeddings_b64"]), dtype="<f4").reshape(shape)
    return np.asarray(request["embeddings"], dtype=np.float32)


class PoolAPI(ls.LitAPI):  # type: ignore[misc]  # litserve ships no type hints
    def __init__(self, model_file: Path, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model_file = model_file

    def setup(self, device: str) -> None:
        self.backend = OnnxBackend(self.model_file, device="cpu")
        self.backend.warm_up()

    # No annotation on `request`, deliberately: LitServe builds its route from it, and none means
    # its default (the body parsed by `await request.json()`); `dict[str, Any]` here would be a
    # string under `from __future__ import annotations` and answer every request with 422.
    def decode_request(self, request, **kwargs: Any) -> NDArray[np.float32]:  # type: ignore[no-untyped-def]
        return decode(request)

    def batch(self, inputs: list[NDArray[np.float32]]) -> list[NDArray[np.float32]]:
        return inputs  # merged in predict, where the item counts are known

    def predict(
        self, x: list[NDArray[np.float32]] | NDArray[np.float32], **kwargs: Any
    ) -> list[Outputs] | Outputs:
        single = isinstance(x, np.ndarray)  # max_batch_size = 1: LitServe does not batch
        parts = [x] if isinstance(x, np.ndarray) else x
        merged = np.concatenate(parts) if len(parts) > 1 else parts[0]
        run = self.backend.run(merged, np.ones(merged.shape[:2], dtype=bool))
        pooled, weights = run["pooled"], run["weights"]
        out, start = [], 0
        for part in parts:
            end = start + part.shape[0]
            out.append((pooled[start:end], weights[start:end]))
            start = end
        return out[0] if single else out

    def unbatch(self, output: list[Outputs]) -> list[Outputs]:
        return output

    def encode_response(self, output: Outputs, **kwargs: Any) -> dict[str, Any]:
        pooled, weights = output
        return {"pooled": pooled.tolist(), "weights": weights.mean(axis=1).tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers.litserve_peer", description=__doc__
    )
    parser.add_argument("--model", type=Path, required=True, help="a model.onnx")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests per batch")
    parser.add_argument("--batch-timeout", type=float, default=0.002, help="seconds")
    parser.add_argument(
        "--fast-queue",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="LitServe's ZeroMQ queues between its API and inference processes (its advice for "
        "throughput)",
    )
    args = parser.parse_args(argv)
    api = PoolAPI(args.model, args.max_batch_size, args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=args.fast_queue)
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
