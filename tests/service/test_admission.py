"""HeadAdmission (service/api/admission.py) on the real app and core, called as the connection
layer calls it: what it leaves to the app (None), when it holds a place, and its 429."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from service.api.admission import Answer, HeadAdmission
from service.app import create_app
from service.core.batching import Place
from service.settings import Settings
from tests.service.server import REPOSITORY

pytestmark = pytest.mark.anyio
MODEL = "knn-avg"
POOL = f"/models/{MODEL}/pool"
HEADERS = [(b"host", b"localhost"), (b"content-type", b"application/json")]
KEY = [(b"authorization", b"Bearer sesame")]


@pytest.fixture
async def app() -> AsyncIterator[FastAPI]:
    settings = Settings(
        model_repository=REPOSITORY, models=[MODEL], default_model=MODEL, batch_policy="off",
        max_queue_requests=2, api_key="sesame", max_query_parameters=3,
    )  # fmt: skip
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


def admission(app: FastAPI) -> HeadAdmission:
    found = app.state.head_admission
    assert isinstance(found, HeadAdmission)
    return found


async def test_the_app_answers_all_but_authorized_pool_requests_for_a_ready_version(
    app: FastAPI,
) -> None:
    admit = admission(app)
    leave = [
        (POOL, b"", HEADERS),  # no API key: the app's 401
        (POOL, b"", [*HEADERS, (b"authorization", b"Bearer wrong")]),
        ("/models/no-such-model/pool", b"", HEADERS + KEY),  # the app's 404
        (POOL, b"version=7", HEADERS + KEY),  # no such version
        (POOL, b"version=x", HEADERS + KEY),  # the app's 422 naming the version
        ("/pool", b"version=1", HEADERS + KEY),  # /pool takes no version
        (POOL, b"a=1&b=2&c=3&d=4", HEADERS + KEY),  # perhaps too many parameters: 400
        ("/info", b"", HEADERS + KEY),  # not a pool route
        (f"/v2/models/{MODEL}/infer", b"x=1", HEADERS + KEY),  # v2 takes no query
    ]
    for path, query, headers in leave:
        assert admit(path, query, headers) is None, (path, query)
    held = [
        admit(POOL, b"version=1&top_k=3", HEADERS + KEY),
        admit(f"/v2/models/{MODEL}/versions/1/infer", b"", HEADERS + KEY),
    ]
    assert all(isinstance(place, Place) and place.counting for place in held)
    refused = admit("/pool", b"", [*HEADERS, *KEY, (b"x-request-id", b"r-7")])
    assert isinstance(refused, Answer) and refused.status == 429
    headers = dict(refused.headers)
    assert headers[b"retry-after"] == b"1" and headers[b"x-request-id"] == b"r-7"
    assert headers[b"content-length"] == str(len(refused.body)).encode()
    assert json.loads(refused.body)["error"]["type"] == "overloaded"
    v2 = admit(f"/v2/models/{MODEL}/infer", b"", HEADERS + KEY)
    assert isinstance(v2, Answer) and set(json.loads(v2.body)) == {"error"}
    for place in held:
        assert isinstance(place, Place)
        place.release()
    assert isinstance(admit(POOL, b"", HEADERS + KEY), Place)  # the places were freed


async def test_without_head_admission_the_app_admits(app: FastAPI) -> None:
    settings = Settings(model_repository=REPOSITORY, models=[MODEL], head_admission=False)
    assert create_app(settings).state.head_admission is None
