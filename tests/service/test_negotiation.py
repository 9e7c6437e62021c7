"""Content negotiation: q-values and exact media types; and query parameters given twice."""

from __future__ import annotations

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.api.negotiation import JSON, NPY, NPZ, negotiate
from service.app import create_app
from service.errors import NotAcceptable
from service.settings import Settings
from tests.service.server import REPOSITORY, STARTUP_SECONDS


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        (None, JSON),
        ("", JSON),
        ("*/*", JSON),
        ("application/*", JSON),
        ("application/json", JSON),
        ("application/x-npz", NPZ),
        ("application/x-npy", NPY),
        ("application/x-npz;q=0, application/json", JSON),
        ("application/x-npz, application/json", NPZ),  # equal q: the client's order
        ("application/json, application/x-npz", JSON),
        ("application/json;q=0.5, application/x-npy;q=0.9", NPY),
        ("application/x-npz;q=0, */*", JSON),  # the exact range decides npz's q
        ("*/*;q=0.1, application/x-npy", NPY),
        ("APPLICATION/X-NPY", NPY),
        ("text/html, */*;q=0.8", JSON),
        ("application/x-npz; q=0.7 ,application/json;q=0.3", NPZ),
    ],
)
def test_negotiate(accept: str | None, media: str) -> None:
    assert negotiate(accept) == media


@pytest.mark.parametrize(
    "accept",
    [
        "application/x-npy-nope",
        "text/html",
        "application/json;q=0",
        "*/*;q=0",
        "application/*;q=0, text/plain",
        "application/json;q=abc",
    ],
)
def test_nothing_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        negotiate(accept)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_repeated_query_parameter_is_refused(anyio_backend: str) -> None:
    app = create_app(Settings(model_repository=REPOSITORY))
    body = {"embeddings": [[[0.1] * 16] * 3]}
    async with (
        LifespanManager(app, startup_timeout=STARTUP_SECONDS),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        for url in ("/pool?top_k=1&top_k=2", "/models/knn-avg/pool?version=1&version=2"):
            r = await c.post(url, json=body)
            assert r.status_code == 422, r.text
            assert "more than once" in r.json()["error"]["message"]
        ok = await c.post("/pool?top_k=1", json=body, headers={"Accept": "application/x-npz;q=0"})
        assert ok.status_code == 406 and ok.json()["error"]["type"] == "not_acceptable"
