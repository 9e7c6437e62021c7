"""Every documented error status of the real server becomes its exception, with the server's
type, message, field, item and request id; only 503 is retried."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import adapool_client as ac
import numpy as np
import pytest

from bench import process
from tests.client.conftest import D, ragged
from tests.reliability.common import REPOSITORY
from tests.reliability.test_faults import POISON, faulty_model

KEY = "client-test-key"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A keyed server on knn-avg, a model whose run fails on a poisoned value (500), and one
    whose model.onnx is missing (503)."""
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPOSITORY / "knn-avg", repo / "knn-avg")
    manifest = json.loads((REPOSITORY / "knn-avg" / "1" / "manifest.json").read_text())
    faulty_model(repo / "faulty" / "1" / "model.onnx")
    (repo / "faulty" / "1" / "manifest.json").write_text(json.dumps({**manifest, "name": "faulty"}))
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "manifest.json").write_text(json.dumps({**manifest, "name": "broken"}))
    flags = ["--default-model", "knn-avg"]
    env = {"ADAPOOL_API_KEY": KEY}
    with process.running_server(repo, flags, env=env, wait_for="/health/live") as (base, _):
        yield base


@pytest.fixture
def client(url: str) -> Iterator[ac.Client]:
    with ac.Client(url, api_key=KEY, retries=ac.Retry(attempts=2, backoff=0.01)) as c:
        yield c


NPY = {"Content-Type": "application/x-npy"}
ITEMS = ragged(0, [3, 4])


def nan_in_item_1(c: ac.Client) -> Any:
    bad = [x.copy() for x in ITEMS]
    bad[1][2, 0] = np.nan
    return c.pool(bad)


def poisoned(c: ac.Client) -> Any:
    x = ITEMS[0].copy()
    x[1, 1] = POISON
    return c.pool(x, model="faulty")


class Case(NamedTuple):
    call: Callable[[ac.Client], Any]
    kind: type[ac.APIError]
    status: int
    type: str
    field: str | None = None
    item: int | None = None


def post(content: bytes = b"", **headers: str) -> Callable[[ac.Client], Any]:
    return lambda c: c.request("POST", "/pool", content=content, headers=headers)


CASES = {
    "not .npy": Case(post(b"nope", **NPY), ac.BadRequestError, 400, "bad_request", "body"),
    "unknown model": Case(
        lambda c: c.pool(ITEMS, model="nope"), ac.NotFoundError, 404, "not_found"
    ),
    "unknown version": Case(
        lambda c: c.pool(ITEMS, model="knn-avg", version=9), ac.NotFoundError, 404, "not_found"
    ),
    "model()": Case(lambda c: c.model("nope"), ac.NotFoundError, 404, "not_found"),
    "GET /pool": Case(
        lambda c: c.request("GET", "/pool"), ac.MethodNotAllowedError, 405, "method_not_allowed"
    ),
    "Accept": Case(post(Accept="text/html"), ac.NotAcceptableError, 406, "not_acceptable"),
    "65 items": Case(
        lambda c: c.pool(np.ones((65, 2, D))),
        ac.PayloadTooLargeError,
        413,
        "payload_too_large",
        "body",
    ),
    "text/plain": Case(
        post(b"x", **{"Content-Type": "text/plain"}),
        ac.UnsupportedMediaTypeError,
        415,
        "unsupported_media_type",
    ),
    "NaN": Case(nan_in_item_1, ac.InvalidInputError, 422, "invalid_input", "body", 1),
    "token dim": Case(
        lambda c: c.pool(np.ones((2, 3, 8))),
        ac.InvalidInputError,
        422,
        "invalid_input",
        "embeddings",
    ),
    "lengths": Case(
        lambda c: c.pool(np.ones((2, 3, D)), lengths=[3, 4]),
        ac.InvalidInputError,
        422,
        "invalid_input",
        "lengths",
        1,
    ),
    "failed run": Case(poisoned, ac.ServerError, 500, "inference_failed"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_error_status_becomes_its_exception_and_is_not_retried(
    client: ac.Client, case: Case
) -> None:
    with pytest.raises(case.kind) as caught:
        case.call(client)
    exc = caught.value
    assert (exc.status, exc.type, exc.field, exc.item) == case[2:], exc
    assert exc.attempts == 1  # the same request would get the same answer
    assert exc.message and exc.request_id and exc.request_id in str(exc)
    assert exc.message in str(exc)


def test_a_wrong_or_missing_key_is_401_and_the_right_one_serves(url: str) -> None:
    for key in (None, "wrong"):
        with ac.Client(url, api_key=key) as c:
            with pytest.raises(ac.AuthenticationError) as caught:
                c.pool(ITEMS)
            assert (caught.value.status, caught.value.type) == (401, "unauthorized")
            with pytest.raises(ac.AuthenticationError):
                c.models()
            assert c.live()  # health stays open (open_health_and_metrics)
    with ac.Client(url, api_key=KEY) as c:
        assert c.pool(ITEMS).model == "knn-avg"


def test_a_model_that_failed_to_load_is_503_retried_then_raised(client: ac.Client) -> None:
    with pytest.raises(ac.NotReadyError) as caught:
        client.pool(ITEMS, model="broken")
    exc = caught.value
    assert (exc.status, exc.type, exc.attempts) == (503, "not_ready", 3)
    assert "broken/1" in exc.message and "model.onnx" in exc.message, exc.message
    state = client.ready()
    assert not state
    assert any("broken/1" in p and "model.onnx" in p for p in state.problems), state.problems


def test_an_unreachable_server_is_a_connection_error_after_the_retries() -> None:
    port = process.free_port()
    with ac.Client(f"http://127.0.0.1:{port}", retries=ac.Retry(attempts=2, backoff=0.01)) as c:
        with pytest.raises(ac.APIConnectionError, match=r"ConnectError.*after 3 attempts"):
            c.pool(ITEMS)
        with pytest.raises(ac.APIConnectionError):
            c.live()  # not retried
        assert not c.wait_ready(timeout=0.3, interval=0.1)


def test_a_read_timeout_is_not_retried(tmp_path: Path) -> None:
    flags = ["--max-wait-ms", "3000"]  # every request waits 3 s for its batch to fill
    with (
        process.running_server(REPOSITORY, flags) as (base, _),
        ac.Client(base, timeout=0.5, retries=3) as c,
        pytest.raises(ac.APITimeoutError, match="ReadTimeout") as caught,
    ):
        c.pool(ITEMS, model="knn-avg")
    assert "attempts" not in str(caught.value)
