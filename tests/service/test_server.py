"""Integration: the real server (uvicorn on loopback) against ONNX Runtime called directly."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from tests.service.server import REPOSITORY, running_server

MODEL = Settings.model_fields["default_model"].default  # what POST /pool serves
MODEL_FILE = REPOSITORY / MODEL / "1" / "model.onnx"
HEADS = json.loads((REPOSITORY / MODEL / "1" / "manifest.json").read_text())["heads"]
D = 16


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    # A generous wait so that concurrent requests really are merged into batches.
    with running_server("--max-wait-ms", "20", "--max-tokens-per-item", "4096") as url:
        yield url


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL_FILE), providers=["CPUExecutionProvider"])


def alone(session: ort.InferenceSession, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime on one item, unpadded: the reference for every format."""
    pooled, weights = session.run(
        None, {"embeddings": item[None], "attention_mask": np.ones((1, len(item)), dtype=bool)}
    )
    return pooled[0], weights[0]


def items(seed: int, lengths: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, D)).astype(np.float32) for n in lengths]


def padded(xs: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    n = max(len(x) for x in xs)
    out = np.zeros((len(xs), n, D), dtype=np.float32)
    for i, x in enumerate(xs):
        out[i, : len(x)] = x
    return out, [len(x) for x in xs]


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def check(body: dict, xs: list[np.ndarray], session: ort.InferenceSession) -> None:
    assert body["model"] == MODEL and body["version"] == 1
    assert body["provider"] == "CPUExecutionProvider"
    for i, x in enumerate(xs):
        pooled, weights = alone(session, x)
        np.testing.assert_allclose(body["pooled"][i], pooled, atol=1e-5)
        np.testing.assert_allclose(body["weights"][i], weights.mean(0), atol=1e-5)
        assert len(body["weights"][i]) == len(x)


def test_every_format_matches_onnxruntime(server: str, session: ort.InferenceSession) -> None:
    xs = items(0, [128, 40, 1, 77])
    x, lengths = padded(xs)
    csv = ",".join(map(str, lengths))
    responses = {
        "json": httpx.post(f"{server}/pool", json={"embeddings": [v.tolist() for v in xs]}),
        "base64": httpx.post(
            f"{server}/pool",
            json={
                "embeddings_b64": base64.b64encode(x.tobytes()).decode(),
                "shape": list(x.shape),
                "lengths": lengths,
            },
        ),
        "npy": httpx.post(
            f"{server}/pool?lengths={csv}",
            content=npy(x),
            headers={"Content-Type": "application/x-npy"},
        ),
        "raw": httpx.post(
            f"{server}/models/{MODEL}/pool",
            content=x.tobytes(),
            headers={
                "Content-Type": "application/octet-stream",
                "X-Shape": "4,128,16",
                "X-Lengths": csv,
            },
        ),
    }
    for name, r in responses.items():
        assert r.status_code == 200, (name, r.text)
        assert r.headers["x-request-id"] and r.headers["x-provider"] == "CPUExecutionProvider"
        check(r.json(), xs, session)


def test_binary_responses(server: str, session: ort.InferenceSession) -> None:
    xs = items(1, [10, 20])
    x, _ = padded(xs)
    r = httpx.post(
        f"{server}/pool?lengths=10,20",
        content=npy(x),
        headers={"Content-Type": "application/x-npy", "Accept": "application/x-npz"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npz"
    z = np.load(io.BytesIO(r.content))
    assert z["lengths"].tolist() == [10, 20] and z["weights"].shape == (2, HEADS, 20)
    np.testing.assert_allclose(z["pooled"][0], alone(session, xs[0])[0], atol=1e-5)
    np.testing.assert_allclose(z["weights"][0, :, :10], alone(session, xs[0])[1], atol=1e-5)
    assert (z["weights"][0, :, 10:] == 0).all()
    r = httpx.post(
        f"{server}/pool",
        json={"embeddings": [xs[0].tolist()]},
        headers={"Accept": "application/x-npy"},
    )
    np.testing.assert_allclose(
        np.load(io.BytesIO(r.content))[0], alone(session, xs[0])[0], atol=1e-5
    )


def test_options_and_diagnostics(server: str) -> None:
    x = items(2, [30])[0]
    r = httpx.post(f"{server}/pool?return_weights=heads&top_k=3", json={"embeddings": [x.tolist()]})
    body = r.json()
    assert np.asarray(body["weights"][0]).shape == (HEADS, 30)
    d = body["diagnostics"][0]
    assert len(d["top_tokens"]) == 3 and d["top_tokens"][0]["token"] == d["max_token"]
    w = np.asarray(body["weights"][0]).mean(0)
    assert d["entropy"] == pytest.approx(float(-(w * np.log(w)).sum()), rel=1e-4)
    assert d["signal_tokens"] == np.flatnonzero(w >= w.max() / 4).tolist()  # SIGNAL_RULE
    r = httpx.post(
        f"{server}/pool",
        json={"embeddings": [x.tolist()], "return_weights": "none", "diagnostics": False},
    )
    assert set(r.json()) == {"model", "version", "provider", "pooled", "request_id"}


def test_batched_results_equal_results_alone(server: str, session: ort.InferenceSession) -> None:
    """60 concurrent requests of mixed lengths (1-200 tokens, 1-3 items): every response equals
    ONNX Runtime on each item alone within 1e-5, and the server really merged them."""
    rng = np.random.default_rng(3)
    requests = [
        items(100 + i, rng.integers(1, 201, size=rng.integers(1, 4)).tolist()) for i in range(60)
    ]

    def batches_run() -> float:
        text = httpx.get(f"{server}/metrics").text
        m = re.search(rf'adapool_batch_size_count{{model="{MODEL}"}} (\S+)', text)
        return float(m.group(1)) if m else 0.0

    before = batches_run()

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post("/pool", json={"embeddings": [x.tolist() for x in xs]})
                    for xs in requests
                )
            )

    responses = asyncio.run(send_all())
    for xs, r in zip(requests, responses, strict=True):
        assert r.status_code == 200, r.text
        check(r.json(), xs, session)
    runs = batches_run() - before
    assert 0 < runs < 60, f"{runs} model runs for 60 requests: nothing was batched"


def test_heads_for_ragged_items(server: str, session: ort.InferenceSession) -> None:
    xs = items(5, [3, 5])
    r = httpx.post(
        f"{server}/pool?return_weights=heads", json={"embeddings": [x.tolist() for x in xs]}
    )
    assert r.status_code == 200, r.text
    for x, w in zip(xs, r.json()["weights"], strict=True):
        np.testing.assert_allclose(np.asarray(w), alone(session, x)[1], atol=1e-5)


BAD = [
    (
        "masked query token",  # the ego model needs its query token (token 0) real
        dict(
            path="/models/knn-adapool-ego/pool",
            json={"embeddings": [[[0.0] * 16] * 3], "attention_mask": [[False, True, True]]},
        ),
        422,
        "invalid_input",
    ),
    # (description, request kwargs, status, error type)
    ("wrong dim", dict(json={"embeddings": [[[0.0] * 15]]}), 422, "invalid_input"),
    ("empty item", dict(json={"embeddings": [[[0.0] * 16], []]}), 422, "invalid_input"),
    ("no items", dict(json={"embeddings": []}), 422, "invalid_input"),
    (
        "huge number",
        dict(
            content=b'{"embeddings": [[[1e999' + b", 0.0" * 15 + b"]]]}",
            headers={"Content-Type": "application/json"},
        ),
        400,
        "bad_request",
    ),
    (
        "malformed json",
        dict(content=b"{", headers={"Content-Type": "application/json"}),
        400,
        "bad_request",
    ),
    ("bad base64", dict(json={"embeddings_b64": "!!!!", "shape": [1, 1, 3]}), 422, "invalid_input"),
    (
        "bytes do not match shape",
        dict(
            content=b"\x00" * 60,
            headers={"Content-Type": "application/octet-stream", "X-Shape": "1,1,16"},
        ),
        422,
        "invalid_input",
    ),
    (
        "float64 npy",
        dict(content=npy(np.zeros((1, 2, 16))), headers={"Content-Type": "application/x-npy"}),
        422,
        "invalid_input",
    ),
    (
        "lengths out of range",
        dict(
            content=npy(np.zeros((1, 2, 16), np.float32)),
            headers={"Content-Type": "application/x-npy", "X-Lengths": "3"},
        ),
        422,
        "invalid_input",
    ),
    (
        "unknown content type",
        dict(content=b"x", headers={"Content-Type": "text/csv"}),
        415,
        "unsupported_media_type",
    ),
    ("unknown option", dict(json={"embeddings": [[[0.0] * 16]], "topk": 2}), 422, "invalid_input"),
    (
        "bad top_k",
        dict(json={"embeddings": [[[0.0] * 16]]}, params={"top_k": "-1"}),
        422,
        "invalid_input",
    ),
    (
        "too many tokens",
        dict(
            content=b"",
            headers={"Content-Type": "application/octet-stream", "X-Shape": "1,5000,16"},
        ),
        413,
        "payload_too_large",
    ),
    (
        "not acceptable",
        dict(json={"embeddings": [[[0.0] * 16]]}, headers={"Accept": "text/html"}),
        406,
        "not_acceptable",
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "status", "kind"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_its_status_and_the_server_keeps_serving(
    server: str, name: str, kwargs: dict, status: int, kind: str
) -> None:
    kwargs = dict(kwargs)
    r = httpx.post(server + kwargs.pop("path", "/pool"), **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["type"] == kind and body["error"]["message"]
    assert body["request_id"] == r.headers["x-request-id"]
    ok = httpx.post(f"{server}/pool", json={"embeddings": [[[0.5] * 16] * 3]})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("POST", "/models/no-such-model/pool", 404, "not_found"),
        ("POST", "/models/..%2F..%2Fetc/pool", 404, "not_found"),
        ("POST", f"/models/{MODEL}/pool?version=7", 404, "not_found"),
        ("GET", "/nothing-here", 404, "not_found"),
        ("GET", "/pool", 405, "method_not_allowed"),
        ("POST", f"/models/{MODEL}/pool?version=x", 422, "invalid_input"),
    ],
)
def test_routing_errors_use_the_same_body(
    server: str, method: str, path: str, status: int, kind: str
) -> None:
    r = httpx.request(method, f"{server}{path}", json={"embeddings": [[[0.0] * 16]]})
    assert r.status_code == status and r.json()["error"]["type"] == kind


def test_oversized_body_is_refused_before_it_is_read(server: str) -> None:
    """Content-Length over the limit: 413 at once, without the server waiting for the body."""
    host, port = urlparse(server).hostname, urlparse(server).port
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(
            b"POST /pool HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
            b"Content-Length: 999999999999\r\n\r\n"
        )
        reply = ""
        while "payload_too_large" not in reply:  # headers and body may come in two packets
            chunk = s.recv(4096).decode()
            if not chunk:
                break
            reply += chunk
    assert reply.startswith("HTTP/1.1 413") and '"payload_too_large"' in reply


def test_metadata_endpoints(server: str) -> None:
    models = httpx.get(f"{server}/models").json()
    assert models["default"] == MODEL and MODEL in [m["name"] for m in models["models"]]
    one = httpx.get(f"{server}/models/{MODEL}").json()["versions"][0]
    assert (one["input_dim"], one["heads"], one["provider"]) == (16, HEADS, "CPUExecutionProvider")
    assert one["pooling"]["query"] == "mean"  # the Signature default model
    info = httpx.get(f"{server}/info").json()
    assert info["providers_in_use"][f"{MODEL}/1"] == ["CPUExecutionProvider"]
    assert (
        info["batching"]["max_wait_ms"] == 20 and info["onnxruntime"]["version"] == ort.__version__
    )
    # two runs at once by default, the process's cores divided among them
    cores = len(os.sched_getaffinity(0))
    assert info["batching"]["model_instances"] == 2
    assert info["batching"]["intra_op_threads"] == max(1, cores // 2)
    spec = httpx.get(f"{server}/openapi.json").json()
    content = spec["paths"]["/pool"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "application/x-npy", "application/octet-stream"}
    assert httpx.get(f"{server}/health/live").json() == {"status": "alive"}


def scrape(server: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics by (name, labels), parsed with prometheus_client's parser."""
    text = httpx.get(f"{server}/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_move_with_traffic(server: str) -> None:
    def get(samples: dict, name: str, **labels: str) -> float:
        return float(samples.get((name, frozenset(labels.items())), 0.0))

    before = scrape(server)
    for _ in range(3):
        httpx.post(f"{server}/pool", json={"embeddings": [[[0.1] * 16] * 8]})
    after = scrape(server)
    ok = dict(model=MODEL, route="/pool", status="200")
    assert (
        get(after, "adapool_requests_total", **ok) - get(before, "adapool_requests_total", **ok)
        == 3
    )
    for stage in ("decode", "queue", "inference", "diagnostics", "encode"):
        name = "adapool_stage_duration_seconds_count"
        assert (
            get(after, name, model=MODEL, stage=stage) - get(before, name, model=MODEL, stage=stage)
            == 3
        )
    count = "adapool_diagnostic_effective_tokens_count"
    assert get(after, count, model=MODEL) - get(before, count, model=MODEL) == 3
    info = dict(model=MODEL, version="1", provider="CPUExecutionProvider")
    assert get(after, "adapool_model_info", **info) == 1
    assert get(after, "adapool_model_ready", model=MODEL, version="1") == 1
    assert get(after, "adapool_batch_size_count", model=MODEL) > get(
        before, "adapool_batch_size_count", model=MODEL
    )
