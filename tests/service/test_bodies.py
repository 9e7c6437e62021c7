"""Where bodies are decoded: large JSON-list bodies in a worker process, and the cap on JSON
values that bounds the memory of parsing one (counted before it is parsed)."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from asgi_lifespan import LifespanManager

from service.app import create_app
from service.settings import Settings
from tests.service.server import REPOSITORY, STARTUP_SECONDS

pytestmark = pytest.mark.anyio
D = 16


@asynccontextmanager
async def client(**settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(Settings(model_repository=REPOSITORY, **settings))
    async with (
        LifespanManager(app, startup_timeout=STARTUP_SECONDS),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        yield c, app


def lists_body(items: int, tokens: int) -> tuple[bytes, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((items, tokens, D)).astype(np.float32)
    return orjson.dumps({"embeddings": x.tolist(), "diagnostics": False}), x


async def test_a_large_json_list_body_is_parsed_in_a_worker_process() -> None:
    body, _ = lists_body(8, 1024)  # 131,072 values: over the 65,536 that go to a worker
    async with client(json_decode_processes=1) as (c, app):
        in_worker = await c.post("/pool", content=body)
        workers = app.state.decoders._pool
        assert workers is not None and len(workers._processes) == 1
        pids = list(workers._processes)
    async with client(json_decode_processes=0) as (c, app):
        in_thread = await c.post("/pool", content=body)
        assert app.state.decoders._pool is None
    assert in_worker.status_code == 200 and in_thread.status_code == 200
    assert in_worker.json()["pooled"] == in_thread.json()["pooled"]
    assert all(not _alive(pid) for pid in pids)  # stopped with the app


async def test_a_worker_that_dies_is_replaced() -> None:
    body, _ = lists_body(8, 1024)
    async with client() as (c, app):
        assert (await c.post("/pool", content=body)).status_code == 200
        (pid,) = list(app.state.decoders._pool._processes)
        os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
        answers = [await c.post("/pool", content=body) for _ in range(2)]
        codes = [a.status_code for a in answers]
        assert codes in ([503, 200], [200, 200]), codes  # at most one request is refused
        if codes[0] == 503:
            assert answers[0].json()["error"]["type"] == "not_ready"


async def test_json_values_are_capped_before_parsing() -> None:
    body, _ = lists_body(4, 1024)  # 65,536 values
    async with client(max_json_values=50_000) as (c, _):
        r = await c.post("/pool", content=body)
        assert r.status_code == 413 and r.json()["error"]["detail"]["limit"] == 50_000
        assert "base64" in r.json()["error"]["message"]
        # base64 bodies hold a handful of values whatever their size: never capped
        x = np.zeros((4, 1024, D), dtype=np.float32).tobytes()
        import base64

        b64 = {"embeddings_b64": base64.b64encode(x).decode(), "shape": [4, 1024, D]}
        assert (await c.post("/pool", json=b64)).status_code == 200


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie the pool has not reaped yet counts as gone
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except FileNotFoundError:
        return False
