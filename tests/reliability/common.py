"""Shared by the reliability tests: tools, the error body, reference results, process memory."""

from __future__ import annotations

import json
import os
import shutil
import sys
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.process import ROOT

REPOSITORY = ROOT / "model_repository"
# Every model the tests name explicitly (never through the default model behind /pool).
MODELS = ("knn-adapool-ego", "knn-adapool-mean", "knn-avg", "knn-max", "knn-cls")
SEARCH_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def missing(name: str, how: str) -> None:
    """Skip (locally) or fail (with ``CI`` set) a test whose tool is not installed."""
    message = f"{name} not found; install it: {how}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}. CI must not skip this check.", pytrace=False)
    pytest.skip(message)


def tool(name: str, how: str) -> str:
    found = shutil.which(name, path=SEARCH_PATH)
    if found is None:
        missing(name, how)
    assert found is not None
    return found


def assert_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    """The one JSON error body, its type, and the request id echoed in the header."""
    assert response.status_code == status, (status, response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "request_id"}, body
    assert set(body["error"]) == {"type", "message", "detail"}, body
    assert body["error"]["type"] == kind, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert isinstance(body["error"]["detail"], dict), body
    assert body["request_id"] == response.headers["x-request-id"], body
    return body


def manifest(model: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REPOSITORY / model / "1" / "manifest.json").read_text())
    return data


@cache
def session(model: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(REPOSITORY / model / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


def alone(model: str, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime directly on one unpadded item (N, D): pooled (D_out,), weights (H, N)."""
    pooled, weights = session(model).run(
        None, {"embeddings": item[None], "attention_mask": np.ones((1, len(item)), dtype=bool)}
    )
    return pooled[0], weights[0]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics by (name, labels)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return float(samples.get((name, frozenset(labels.items())), 0.0))


def valid_body(model: str = "knn-adapool-ego", tokens: int = 3) -> dict[str, Any]:
    return {"embeddings": [[[0.25] * manifest(model)["input_dim"]] * tokens]}


def serves(url: str, model: str = "knn-adapool-ego") -> None:
    """The server still answers a valid request correctly."""
    r = httpx.post(f"{url}/models/{model}/pool", json=valid_body(model), timeout=30)
    assert r.status_code == 200, r.text
    x = np.asarray(valid_body(model)["embeddings"][0], dtype=np.float32)
    np.testing.assert_allclose(r.json()["pooled"][0], alone(model, x)[0], atol=1e-5)
