"""Finite in, finite out, on the committed models in every answer format: a finite input that
overflows inside a model (3e38 in one token; 1e19 everywhere for the ego-query model) is a 422
naming the item, never a 200 with NaN or null; float16's extremes are served finite."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from service.app import create_app
from service.settings import Settings
from tests.reliability.common import REPOSITORY
from tests.service.server import STARTUP_SECONDS

pytestmark = pytest.mark.anyio
D = 16
FORMATS = ("json", "base64", "npy", "raw", "v2")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def client(model: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(model_repository=REPOSITORY, models=[model], default_model=model)
    app = create_app(settings)
    async with (
        LifespanManager(app, startup_timeout=STARTUP_SECONDS),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        yield c


async def post(c: httpx.AsyncClient, model: str, fmt: str, x: np.ndarray) -> httpx.Response:
    """``x`` (B, N, D) in one of the request formats (float16 when ``x`` is)."""
    dtype = "float16" if x.dtype == np.float16 else "float32"
    path = f"/models/{model}/pool"
    if fmt == "json":
        return await c.post(path, json={"embeddings": x.astype(np.float64).tolist()})
    if fmt == "base64":
        body = {"embeddings_b64": base64.b64encode(x.tobytes()).decode(), "shape": list(x.shape)}
        return await c.post(path, json=body | {"dtype": dtype})
    if fmt == "npy":
        buffer = io.BytesIO()
        np.save(buffer, x)
        headers = {"Content-Type": "application/x-npy", "Accept": "application/x-npz"}
        return await c.post(path, content=buffer.getvalue(), headers=headers)
    if fmt == "raw":
        shape = ",".join(map(str, x.shape))
        headers = {"Content-Type": "application/octet-stream", "X-Shape": shape, "X-Dtype": dtype}
        return await c.post(path, content=x.tobytes(), headers=headers)
    datatype = "FP16" if dtype == "float16" else "FP32"
    header = {
        "inputs": [
            {
                "name": "embeddings",
                "shape": list(x.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": x.nbytes},
            }
        ]
    }
    text = json.dumps(header).encode()
    return await c.post(
        f"/v2/models/{model}/infer",
        content=text + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(text))},
    )


def overflowing(model: str) -> np.ndarray:
    """Two items; item 1 overflows the model, item 0 is ordinary."""
    x = np.full((2, 4, D), 0.1, dtype=np.float32)
    if model == "knn-adapool-ego":
        x[1] = 1e19  # its query token's own products overflow
    else:
        x[1, 2, 5] = 3e38  # one value of one token
    return x


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", ["signature-adapool", "knn-adapool-mean", "knn-adapool-ego"])
async def test_an_input_that_overflows_the_model_is_refused_naming_the_item(
    model: str, fmt: str
) -> None:
    async with client(model) as c:
        r = await post(c, model, fmt, overflowing(model))
        fine = await post(c, model, fmt, overflowing(model)[:1])
    if fmt == "v2":
        assert r.status_code == 400 and "embeddings[1]" in r.json()["error"], r.text
    else:
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["detail"] == {"field": "embeddings", "item": 1, "items": [1]}
        assert "not finite" in error["message"] and "too large" in error["message"]
    assert fine.status_code == 200  # the ordinary item alone is served


@pytest.mark.parametrize("fmt", FORMATS)
async def test_float16_extremes_are_served_finite(fmt: str) -> None:
    x = np.full((2, 4, D), 65504.0, dtype=np.float16)  # float16's largest
    x[1] = -65504.0
    x[1, 0] = np.finfo(np.float16).tiny
    async with client("signature-adapool") as c:
        r = await post(c, "signature-adapool", fmt, x)
    assert r.status_code == 200, r.text
    if fmt == "npy":
        pooled = np.load(io.BytesIO(r.content))["pooled"]
    elif fmt == "v2":
        length = int(r.headers.get("inference-header-content-length", len(r.content)))
        header = json.loads(r.content[:length])
        assert all("data" in o or "parameters" in o for o in header["outputs"])
        pooled = np.asarray(
            next(o for o in header["outputs"] if o["name"] == "pooled")["data"], np.float32
        )
    else:
        answer = r.json()
        pooled = np.asarray(answer["pooled"], np.float32)
        for item in answer["diagnostics"]:
            assert all(np.isfinite(v) for v in (item["entropy"], item["noise_mass"]))
    assert np.isfinite(pooled).all()
