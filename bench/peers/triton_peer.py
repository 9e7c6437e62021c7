"""Triton Inference Server through PyTriton (PyPI ``nvidia-pytriton``), dynamic batcher on.

    <pytriton venv>/bin/python -m bench.peers.triton_peer --http-port 9000 \\
        --model NAME=.../model.onnx [--model ...] [--max-batch-size 64] [--delay-us 0]

PyTriton ships the ``tritonserver`` binary and runs the Python function bound to each model in
its own process, fed by Triton's scheduler. Each model takes ``embeddings`` [B, N, D] float32
(the batch dimension is Triton's, so requests of several items batch) and answers ``pooled``
[B, D_out] and ``weights`` [B, N] (head-mean pooling weights), over the KServe v2 protocol:
JSON tensors, or the binary tensor extension (``Inference-Header-Content-Length``). The
dynamic batcher merges queued requests up to ``--max-batch-size`` items, waiting at most
``--delay-us`` microseconds (0: what queued while the model was busy, like our server).

PyTriton 0.7 pins numpy < 2, so this runs in a virtual environment of its own
(``bench.peers.envs``); it imports only numpy, onnxruntime, pytriton and the service's backend.
"""

from __future__ import annotations

import argparse
import os
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import (
    DEFAULT_PROTECTED_ENDPOINTS,
    Triton,
    TritonConfig,
    TritonSecurityConfig,
)

from service.core.backend import OnnxBackend


def use_own_libpython() -> None:
    """Make Triton's Python backend stub link this interpreter's libpython.

    The stub links ``libpython3.X.so.1.0``; the loader finds the system's first (Debian's
    3.11.2), which then runs this interpreter's standard library (3.11.7 under pyenv) and fails
    (``'_thread.RLock' object has no attribute '_recursion_count'``). Putting the
    interpreter's own LIBDIR first fixes it; ``tritonserver`` inherits the variable.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and Path(libdir, sysconfig.get_config_var("INSTSONAME") or "").exists():
        paths = [libdir, *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":"))]
        os.environ["LD_LIBRARY_PATH"] = ":".join(paths)


def infer_function(backend: OnnxBackend) -> Callable[..., dict[str, np.ndarray]]:
    @batch  # type: ignore[untyped-decorator]  # pytriton ships no type hints
    def infer(embeddings: np.ndarray, **_: Any) -> dict[str, np.ndarray]:
        mask = np.ones(embeddings.shape[:2], dtype=bool)
        out = backend.run(embeddings.astype(np.float32, copy=False), mask)
        return {"pooled": out["pooled"], "weights": out["weights"].mean(axis=1)}

    return infer  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.triton_peer", description=__doc__)
    parser.add_argument("--model", action="append", required=True, help="NAME=path/model.onnx")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=9000)
    parser.add_argument("--grpc-port", type=int, default=9001)
    parser.add_argument("--metrics-port", type=int, default=9002)
    parser.add_argument("--max-batch-size", type=int, default=64, help="items per model run")
    parser.add_argument("--delay-us", type=int, default=0, help="max_queue_delay_microseconds")
    args = parser.parse_args(argv)
    use_own_libpython()
    config = TritonConfig(
        http_address=args.host,
        http_port=args.http_port,
        grpc_address=args.host,
        grpc_port=args.grpc_port,
        metrics_address=args.host,
        metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
    )
    # PyTriton guards the statistics API with a random access token; perf_analyzer reads it
    # (Triton lists the extension), so it is open here, as in a plain tritonserver
    restricted = [e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"]
    security = TritonSecurityConfig(restricted_endpoints=restricted)
    with Triton(config=config, security_config=security) as triton:
        for spec in args.model:
            name, _, path = spec.partition("=")
            backend = OnnxBackend(Path(path), device="cpu")
            backend.warm_up()
            triton.bind(
                model_name=name,
                infer_func=infer_function(backend),
                inputs=[Tensor(name="embeddings", dtype=np.float32, shape=(-1, backend.input_dim))],
                outputs=[
                    Tensor(name="pooled", dtype=np.float32, shape=(-1,)),
                    Tensor(name="weights", dtype=np.float32, shape=(-1,)),
                ],
                config=ModelConfig(
                    max_batch_size=args.max_batch_size,
                    batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us),
                ),
                strict=False,
            )
        triton.serve()  # until SIGINT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
