"""One real server (python -m service, uvicorn on loopback, the committed models) for the client
tests, and ONNX Runtime on the same model files as the reference."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tests.reliability.common import session
from tests.service.server import running_server

DEFAULT = "signature-adapool"  # the server's default model
D = 16


@pytest.fixture(scope="package")
def url() -> Iterator[str]:
    with running_server() as base:
        yield base


def reference(
    model: str, item: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime on one item (n, D) alone, with its mask (n,) if any: pooled (D_out,) and
    weights (H, n)."""
    mask = np.ones(len(item), dtype=bool) if mask is None else mask
    pooled, weights = session(model).run(
        None, {"embeddings": item[None].astype(np.float32), "attention_mask": mask[None]}
    )
    return pooled[0], weights[0]


def ragged(seed: int, lengths: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, D)).astype(np.float32) for n in lengths]
