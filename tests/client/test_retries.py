"""Retries against the real server: a full queue (429 with Retry-After) and a rolling restart
(503 for requests still queued past the shutdown grace period, then refused connections until
the next server listens on the same port)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import adapool_client as ac
import numpy as np
import pytest

from bench import process
from tests.client.conftest import ragged, reference
from tests.reliability.common import REPOSITORY

MODEL = "knn-avg"
ITEMS = ragged(11, [5, 9])

pytestmark = pytest.mark.slow


def assert_pooled(result: ac.PoolResult) -> None:
    for i, x in enumerate(ITEMS):
        np.testing.assert_allclose(result.pooled[i], reference(MODEL, x)[0], atol=1e-5)


def retried(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "adapool_client"]


def test_a_full_queue_is_retried_after_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    """A queue of one, and a request that holds it for 1.2 s (max_wait_ms): the next request is
    answered 429 with Retry-After: 1, waits at least that long, and is served."""
    flags = ["--max-queue-requests", "1", "--max-wait-ms", "1200", "--retry-after-seconds", "1"]
    with process.running_server(REPOSITORY, flags) as (url, _), ThreadPoolExecutor(1) as pool:
        with ac.Client(url, retries=0) as once:
            holder = pool.submit(once.pool, ITEMS, model=MODEL)
            time.sleep(0.4)
            with pytest.raises(ac.OverloadedError) as caught:
                once.pool(ITEMS, model=MODEL)
            holder.result()
        exc = caught.value
        assert (exc.status, exc.type, exc.retry_after, exc.attempts) == (429, "overloaded", 1.0, 1)
        assert "queue is full" in exc.message

        with ac.Client(url, retries=ac.Retry(attempts=3, backoff=0.05)) as patient:
            holder = pool.submit(patient.pool, ITEMS, model=MODEL)
            time.sleep(0.4)
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, "adapool_client"):
                result = patient.pool(ITEMS, model=MODEL)
            waited = time.monotonic() - started
            assert_pooled(holder.result())
    assert_pooled(result)
    assert any("answered 429; retry 1 of 3" in m for m in retried(caplog)), retried(caplog)
    assert waited >= 1.0  # Retry-After honoured


def test_a_rolling_restart_is_ridden_out_by_retries(caplog: pytest.LogCaptureFixture) -> None:
    """Server A queues the request (a 20 s batch wait) and is stopped with a 1 s grace period:
    the request is answered 503; the retries then find the port closed until server B, started
    on the same port, is up; the request is served by B."""
    port = process.free_port()
    slow = ["--max-wait-ms", "20000", "--shutdown-timeout-seconds", "1"]
    retry = ac.Retry(attempts=60, backoff=0.2, max_backoff=0.5)
    answered = threading.Event()
    with ThreadPoolExecutor(1) as pool, caplog.at_level(logging.WARNING, "adapool_client"):
        with process.running_server(REPOSITORY, slow, port=port) as (url, a):
            client = ac.Client(url, retries=retry)
            future = pool.submit(client.pool, ITEMS, model=MODEL)
            future.add_done_callback(lambda _: answered.set())
            time.sleep(0.5)
            a.send_signal(signal.SIGTERM)
            a.wait(timeout=15)
        assert not answered.is_set()  # A is gone, the request is still being retried
        with process.running_server(REPOSITORY, port=port):
            result = future.result(timeout=60)
        client.close()
    assert_pooled(result)
    messages = retried(caplog)
    assert any("answered 503" in m for m in messages), messages
    assert any("ConnectError" in m for m in messages), messages
