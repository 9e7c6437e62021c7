"""Graceful shutdown of the real server (python -m service) on SIGTERM, under load.

1. With a drain: readiness turns 503 at once while requests are still served; a client that
   behaves like a load balancer (stops routing at the first 503) sees every request answered
   200 and no connection error; after the drain the listener is closed; the process exits
   within drain + timeout.
2. Without a drain: requests in flight (queued for their batch) when SIGTERM arrives all
   complete with 200; new connections are refused at once; the process exits as soon as they
   are done.
3. Past the grace period: requests still queued get 503 not_ready (the JSON error body), not a
   reset connection, and the process exits within timeout + 1 s.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from typing import Any

import httpx
import pytest

from bench import process
from tests.reliability.common import REPOSITORY, assert_error

MODEL = "knn-avg"
BODY = {"embeddings": [[[0.25] * 16] * 64] * 4}
EXIT_CODES = (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a graceful shutdown

pytestmark = pytest.mark.slow


async def exit_seconds(server: subprocess.Popen[bytes], since: float, limit: float = 30) -> float:
    await asyncio.to_thread(server.wait, limit)
    return time.monotonic() - since


async def pool(client: httpx.AsyncClient) -> tuple[float, Any]:
    """(time sent, status or the exception's class name)."""
    sent = time.monotonic()
    try:
        r = await client.post(f"/models/{MODEL}/pool", json=BODY, params={"diagnostics": "false"})
    except httpx.HTTPError as exc:
        return sent, type(exc).__name__
    return sent, r.status_code


def test_sigterm_with_drain_turns_readiness_503_first_and_loses_nothing() -> None:
    drain, timeout = 1.5, 5.0
    flags = ["--shutdown-drain-seconds", str(drain), "--shutdown-timeout-seconds", str(timeout)]
    with process.running_server(REPOSITORY, flags) as (url, server):

        async def scenario() -> dict[str, Any]:
            routing = asyncio.Event()
            routing.set()
            probes: list[tuple[float, Any]] = []
            results: list[tuple[float, Any]] = []

            async def balancer() -> None:  # polls readiness every 100 ms, like a load balancer
                async with httpx.AsyncClient(base_url=url, timeout=5) as client:
                    while True:
                        sent = time.monotonic()
                        try:
                            status: Any = (await client.get("/health/ready")).status_code
                        except httpx.HTTPError as exc:
                            status = type(exc).__name__
                        probes.append((sent, status))
                        if status != 200:
                            routing.clear()
                        if not isinstance(status, int):
                            return
                        await asyncio.sleep(0.1)

            async def client_loop(client: httpx.AsyncClient) -> None:
                while routing.is_set():
                    results.append(await pool(client))

            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                watcher = asyncio.create_task(balancer())
                load = [asyncio.create_task(client_loop(client)) for _ in range(16)]
                await asyncio.sleep(1.0)
                sigterm = time.monotonic()
                server.send_signal(signal.SIGTERM)
                await asyncio.gather(*load)
                await asyncio.sleep(max(0.0, sigterm + 0.8 * drain - time.monotonic()))
                late = await pool(client)  # within the drain, after the balancer left
                await asyncio.sleep(max(0.0, sigterm + drain + 0.5 - time.monotonic()))
                async with httpx.AsyncClient(base_url=url, timeout=5) as fresh:
                    closed = await pool(fresh)  # after the drain: the listener is closed
                exited = await exit_seconds(server, sigterm)
                await watcher
            return dict(
                sigterm=sigterm,
                probes=probes,
                results=results,
                late=late,
                closed=closed,
                exited=exited,
            )

        out = asyncio.run(scenario())
    sigterm = out["sigterm"]
    after = [status for t, status in out["probes"] if t > sigterm]
    first_503 = next(t for t, status in out["probes"] if status == 503) - sigterm
    statuses = [status for _, status in out["results"]]
    during_drain = [s for t, s in out["results"] if t > sigterm]
    print(
        f"\nshutdown with drain {drain} s: {len(statuses)} requests, "
        f"{len(during_drain)} sent after SIGTERM; readiness after SIGTERM {after}; first 503 "
        f"{first_503 * 1e3:.0f} ms after SIGTERM; request at {0.8 * drain:.1f} s: "
        f"{out['late'][1]}; at {drain + 0.5:.1f} s: {out['closed'][1]}; exit "
        f"{out['exited']:.2f} s after SIGTERM (code {server.returncode})"
    )
    assert after[0] == 503 and after[-1] == "ConnectError", after  # 503 first, then closed
    assert first_503 < 0.5
    assert set(statuses) == {200}, statuses  # nothing lost, no reset
    assert during_drain, "no request was sent during the drain"
    assert out["late"][1] == 200  # still serving during the drain
    assert out["closed"][1] == "ConnectError"  # refused after it, never reset
    assert drain <= out["exited"] <= drain + timeout + 1.5
    assert server.returncode in EXIT_CODES


def test_sigterm_lets_in_flight_requests_finish() -> None:
    """Requests wait 1.5 s in the queue for their batch (max_wait_ms): SIGTERM at 0.5 s."""
    flags = ["--max-wait-ms", "1500", "--shutdown-timeout-seconds", "5"]
    with process.running_server(REPOSITORY, flags) as (url, server):

        async def scenario() -> tuple[list[Any], Any, float, float]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                started = time.monotonic()
                in_flight = [asyncio.create_task(pool(client)) for _ in range(8)]
                await asyncio.sleep(0.5)
                sigterm = time.monotonic()
                server.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                async with httpx.AsyncClient(base_url=url, timeout=5) as fresh:
                    refused = await pool(fresh)
                results = await asyncio.gather(*in_flight)
                answered = time.monotonic() - started
                return results, refused, answered, await exit_seconds(server, sigterm)

        results, refused, answered, exited = asyncio.run(scenario())
    print(
        f"\nshutdown with 8 requests in flight: statuses {[s for _, s in results]} after "
        f"{answered:.2f} s; new connection 0.3 s after SIGTERM: {refused[1]}; exit "
        f"{exited:.2f} s after SIGTERM (code {server.returncode})"
    )
    assert [status for _, status in results] == [200] * 8
    assert refused[1] == "ConnectError"
    assert answered >= 1.4  # they really were in flight across the SIGTERM
    assert exited <= 5 + 1.5
    assert server.returncode in EXIT_CODES


def test_requests_still_queued_after_the_grace_period_get_503() -> None:
    """A 20 s batch wait against a 1 s grace period: the queued requests are answered 503."""
    flags = ["--max-wait-ms", "20000", "--shutdown-timeout-seconds", "1"]
    with process.running_server(REPOSITORY, flags) as (url, server):

        async def scenario() -> tuple[list[httpx.Response], float]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                queued = [
                    asyncio.create_task(client.post(f"/models/{MODEL}/pool", json=BODY))
                    for _ in range(4)
                ]
                await asyncio.sleep(0.5)
                sigterm = time.monotonic()
                server.send_signal(signal.SIGTERM)
                responses = await asyncio.gather(*queued)
                return responses, await exit_seconds(server, sigterm)

        responses, exited = asyncio.run(scenario())
    print(
        f"\nshutdown past a 1 s grace period: statuses {[r.status_code for r in responses]}, "
        f"exit {exited:.2f} s after SIGTERM (code {server.returncode})"
    )
    for r in responses:
        body = assert_error(r, 503, "not_ready")
        assert "shutting down" in body["error"]["message"]
    assert exited <= 1 + 1 + 1.5
    assert server.returncode in EXIT_CODES
