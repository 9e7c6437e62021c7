"""The profile's stages, on real stacks: every call the service makes while it answers real
requests (the ASGI app in process, the committed models), written as py-spy's raw format, is
sorted into stages by the same rules as a ``make compare`` profile."""

from __future__ import annotations

import io
import sys
import threading
from collections import Counter
from types import FrameType
from typing import Any

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from bench import pyspy
from service.app import create_app
from service.settings import Settings
from tests.service.server import REPOSITORY, STARTUP_SECONDS

pytestmark = pytest.mark.anyio
ROOTS = sorted({p.rstrip("/") for p in sys.path if p}, key=len, reverse=True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def short(path: str) -> str:
    """A file as py-spy names it: relative to the sys.path entry that holds it."""
    for root in ROOTS:
        if path.startswith(root + "/"):
            return path[len(root) + 1 :]
    return path


class Stacks:
    """A profile hook that records the whole stack at every Python call, in every thread."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        names = []
        current: FrameType | None = frame
        while current is not None:
            code = current.f_code
            names.append(f"{code.co_qualname} ({short(code.co_filename)}:{current.f_lineno})")
            current = current.f_back
        self.counts[";".join(reversed(names))] += 1

    def raw(self) -> str:
        return "".join(f"{stack} {n}\n" for stack, n in self.counts.items())


def npy(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x)
    return buffer.getvalue()


async def test_real_stacks_fall_into_every_stage() -> None:
    app = create_app(Settings(model_repository=REPOSITORY))
    x = np.random.default_rng(0).standard_normal((8, 32, 16)).astype(np.float32)
    stacks = Stacks()
    async with (
        LifespanManager(app, startup_timeout=STARTUP_SECONDS),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        threading.setprofile(stacks)  # the batcher's worker thread starts on its first run
        sys.setprofile(stacks)
        try:
            json_answer = await c.post("/pool", json={"embeddings": x[:2].tolist()})
            npz_answer = await c.post(
                "/pool",
                content=npy(x),
                headers={"Content-Type": "application/x-npy", "Accept": "application/x-npz"},
            )
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
    assert json_answer.status_code == 200 and npz_answer.status_code == 200
    parsed = pyspy.parse_raw(stacks.raw())
    stages = pyspy.stages(parsed)
    print("\nstages of every call while two requests were answered:", stages)
    for stage in (
        "inference (ONNX Runtime)",
        "metrics (prometheus_client)",
        "request context + metrics middleware",
        "diagnostics",
        "encode (response)",
        "decode (body -> arrays)",
        "batching (queue, merge, split)",
        "core (runtime: admission, checks)",
        "handler (service/api, the rest)",
        "HTTP (uvicorn, starlette, FastAPI)",
    ):
        assert stages.get(stage, 0) > 0, (stage, stages)
    functions = dict(pyspy.service_functions(parsed, top=200))
    assert any(name.startswith("Runtime.pool (service/core/runtime.py") for name in functions)


def test_a_stack_is_claimed_from_the_leaf_up() -> None:
    """numpy called by a decoder counts as decode; a metric observed by the core as metrics;
    a thread-pool worker waiting for work as idle."""
    stacks = pyspy.parse_raw(
        "serve (service/api/pool.py:90);decode_npy (service/codecs/npy.py:60);"
        "read_array_header (numpy/lib/format.py:600) 4\n"
        "Runtime._diagnose (service/core/runtime.py:300);observe "
        "(prometheus_client/metrics.py:600) 1\n"
        "_bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81) 7\n"
    )
    assert pyspy.stages(stacks) == {
        pyspy.IDLE: 7,
        "decode (body -> arrays)": 4,
        "metrics (prometheus_client)": 1,
    }
    assert pyspy.leaf_functions(stacks, 1) == [("_worker (concurrent/futures/thread.py)", 7)]
