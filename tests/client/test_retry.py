"""The retry policy and loop, against httpx's MockTransport (the real server: test_retries.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import adapool_client as ac
import httpx
import numpy as np
import pytest
from adapool_client import _client

from service.codecs import encode_npy, encode_npz

X = np.ones((1, 3, 4), np.float32)
OK_HEADERS = {"content-type": "application/x-npz", "x-model": "m", "x-model-version": "1"}
OK_BODY = encode_npz(
    {
        "pooled": np.ones((1, 2), np.float32),
        "weights": np.full((1, 1, 3), 1 / 3, np.float32),
        "lengths": np.array([3]),
        "attention_mask": np.ones((1, 3), bool),
    }
)


def error(status: int, kind: str, **headers: str) -> httpx.Response:
    body = {"error": {"type": kind, "message": kind, "detail": {}}, "request_id": "r"}
    return httpx.Response(status, json=body, headers=headers)


Step = httpx.Response | Exception


def scripted(
    steps: list[Step],
) -> tuple[list[httpx.Request], Callable[[httpx.Request], httpx.Response]]:
    """A handler that answers (or fails) with ``steps`` in turn, then 200 .npz."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = steps.pop(0) if steps else httpx.Response(200, headers=OK_HEADERS, content=OK_BODY)
        if isinstance(step, Exception):
            raise step
        return step

    return seen, handle


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr(_client.time, "sleep", waited.append)
    return waited


def client(handle: Callable[[httpx.Request], httpx.Response], retry: ac.Retry) -> ac.Client:
    return ac.Client("http://test", retries=retry, transport=httpx.MockTransport(handle))


def test_delays_grow_exponentially_to_the_cap_with_full_jitter() -> None:
    top = ac.Retry(attempts=6, backoff=0.5, max_backoff=3.0, uniform=lambda: 1.0)
    assert [top.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert top.delay(7) is None  # out of attempts
    assert top.delay(1, retry_after=2.0) == 2.5  # Retry-After first, then the jittered part
    assert top.delay(1, retry_after=61.0) is None  # longer than max_retry_after: give up now
    jittered = ac.Retry(attempts=50, backoff=1.0, max_backoff=1.0)
    delays = [jittered.delay(1) for _ in range(50)]
    assert all(d is not None and 0 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 40  # clients refused together do not come back together


def test_429_503_and_broken_connections_are_retried_until_an_answer(sleeps: list[float]) -> None:
    seen, handle = scripted(
        [
            error(429, "overloaded", **{"retry-after": "2"}),
            error(503, "not_ready"),
            httpx.ConnectError("refused"),
            httpx.RemoteProtocolError("closed without answering"),
            error(502, "http_error"),
        ]
    )
    retry = ac.Retry(attempts=5, backoff=0.1, uniform=lambda: 1.0)
    result = client(handle, retry).pool(X)
    assert result.pooled.shape == (1, 2) and len(seen) == 6
    assert sleeps == pytest.approx([2.1, 0.2, 0.4, 0.8, 1.6])  # Retry-After honoured first
    assert len({r.content for r in seen}) == 1  # the same request each time


@pytest.mark.parametrize(
    "step",
    [
        error(400, "bad_request"),
        error(401, "unauthorized"),
        error(404, "not_found"),
        error(413, "payload_too_large"),
        error(422, "invalid_input"),
        error(500, "inference_failed"),
        httpx.ReadTimeout("slow"),
    ],
    ids=lambda s: str(getattr(s, "status_code", type(s).__name__)),
)
def test_answers_that_would_not_change_are_not_retried(step: Step, sleeps: list[float]) -> None:
    seen, handle = scripted([step])
    with pytest.raises(ac.AdaPoolError) as caught:
        client(handle, ac.Retry(attempts=3)).pool(X)
    assert len(seen) == 1 and sleeps == []
    if isinstance(step, httpx.Response):
        assert isinstance(caught.value, ac.APIError) and caught.value.status == step.status_code
    else:
        assert isinstance(caught.value, ac.APITimeoutError)
        assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


def test_when_retries_run_out_the_last_answer_is_raised_with_the_attempts(
    sleeps: list[float],
) -> None:
    seen, handle = scripted([error(503, "not_ready")] * 10)
    with pytest.raises(ac.NotReadyError) as caught:
        client(handle, ac.Retry(attempts=2, backoff=0)).pool(X)
    assert len(seen) == 3 and caught.value.attempts == 3 and "after 3 attempts" in str(caught.value)
    seen, handle = scripted([httpx.ConnectError("refused")] * 10)
    with pytest.raises(ac.APIConnectionError, match="after 3 attempts"):
        client(handle, ac.Retry(attempts=2, backoff=0)).pool(X)
    seen, handle = scripted([error(429, "overloaded", **{"retry-after": "120"})])
    with pytest.raises(ac.OverloadedError) as overloaded:
        client(handle, ac.Retry(attempts=2)).pool(X)  # 120 s > max_retry_after: not waited
    assert len(seen) == 1 and overloaded.value.retry_after == 120.0


def test_health_routes_are_not_retried_and_readiness_carries_the_problems(
    sleeps: list[float],
) -> None:
    problems = {"status": "not_ready", "problems": ["m/1: model.onnx is missing"]}
    seen, handle = scripted([httpx.Response(503, json=problems)])
    state = client(handle, ac.Retry(attempts=3)).ready()
    assert not state and state.problems == ("m/1: model.onnx is missing",) and len(seen) == 1


def test_the_async_client_retries_the_same_way() -> None:
    seen, handle = scripted([error(429, "overloaded", **{"retry-after": "0"}), error(503, "x")])

    async def run() -> ac.PoolResult:
        transport = httpx.MockTransport(handle)
        retry = ac.Retry(attempts=2, backoff=0)
        async with ac.AsyncClient("http://test", retries=retry, transport=transport) as c:
            return await c.pool(X)

    assert asyncio.run(run()).pooled.shape == (1, 2) and len(seen) == 3


def test_every_request_reuses_one_client_and_sends_the_key() -> None:
    seen, handle = scripted([])
    c = ac.Client("http://test/", api_key="k", transport=httpx.MockTransport(handle))
    c.pool(X)
    assert seen[0].headers["authorization"] == "Bearer k"
    assert seen[0].headers["user-agent"].startswith("adapool-client/")
    assert str(seen[0].url) == "http://test/pool"
    npy = encode_npy(np.ones((1, 2), np.float32))
    seen, handle = scripted(
        [httpx.Response(200, headers={"content-type": "application/x-npy"}, content=npy)]
    )
    c = ac.Client("http://test", transport=httpx.MockTransport(handle))
    c.pool(X, model="a b", version=2, weights="none")
    assert seen[0].url.raw_path == b"/models/a%20b/pool?version=2"
