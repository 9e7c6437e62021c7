"""Hostile clients against the real server over raw sockets (issue 16): an unfinished huge
header, silent connections, slowloris, slow bodies, Upgrade, the header and query limits, a
trailing slash, the connection reserve, and the connection lifetime caps (issue 19); and bodies
cut on the wire any way, pipelined, behind ``Expect: 100-continue``, or left halfway. Each test
asserts the documented answer and, where an attack runs, that a normal client was served
promptly meanwhile.

``limited`` runs with short deadlines (1 s for a head, 2 s for a body), a cap of 300
connections (8 reserved) and lifetime caps (3 requests, 2 s) so that the module takes seconds;
``defaults`` runs with the default limits. ``python -m bench.hostile`` runs the same attacks at
full size against the defaults, for the figures of RELIABILITY.md and the 100 ms target.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from bench.hostile import (
    Address,
    Silent,
    address,
    exchange,
    hold_silent,
    normal_client,
    pool_body,
    pool_request,
    read_answer,
    request,
    slowloris,
    status_of,
    unfinished_header,
)
from service.connections import LINGER_SECONDS
from tests.reliability.common import manifest, sample, scrape
from tests.service.server import running_server

MODEL = "knn-avg"
DIM = manifest(MODEL)["input_dim"]
FAST = ("--models", MODEL, "--default-model", MODEL, "--batch-policy", "off")
LIMITED = (
    *FAST,
    *("--header-timeout-seconds", "1", "--body-timeout-seconds", "2"),
    *("--max-connections", "300", "--reserved-connections", "8"),
    *("--max-requests-per-connection", "3", "--max-connection-seconds", "2"),
    # room in the queue for the reserve test's 292 requests: beyond it they would be refused
    # at their heads and their connections become idle ones, which a new connection replaces
    *("--max-queue-requests", "512"),
)
# A normal request's worst latency during an attack, with room for this shared 2-core machine
# (the attacker runs on it too); the 100 ms target is bench.hostile's.
PROMPT_SECONDS = 0.5
WEBSOCKET = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


@pytest.fixture(scope="module")
def limited() -> Iterator[Address]:
    with running_server(*LIMITED) as url:
        yield address(url)


@pytest.fixture(scope="module")
def defaults() -> Iterator[Address]:
    with running_server(*FAST) as url:
        yield address(url)


def headers_of(answer: bytes) -> dict[str, str]:
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1")
    return {k.lower(): v for k, v in (line.split(": ", 1) for line in head.split("\r\n")[1:])}


def json_error(answer: bytes, status: int, kind: str) -> dict[str, Any]:
    """The one JSON error body of a raw answer, its type, and its request id in the header."""
    assert status_of(answer) == status, answer[:300]
    headers = headers_of(answer)
    assert headers["content-type"].startswith("application/json"), headers
    body: dict[str, Any] = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert set(body) == {"error", "request_id"}, body
    assert body["error"]["type"] == kind, body
    assert body["request_id"] == headers["x-request-id"], body
    return body


def assert_prompt(seen: Any, at_least: int = 10) -> None:
    summary = seen.summary()
    print("normal client:", summary)
    assert not seen.failures, seen.failures[:3]
    assert summary["requests"] >= at_least, summary
    assert summary["max_ms"] <= 1e3 * PROMPT_SECONDS, summary


def test_an_unfinished_huge_header_is_refused_and_others_stay_prompt(defaults: Address) -> None:
    with normal_client(defaults, pool_request()) as seen:
        time.sleep(0.3)
        attack = unfinished_header(defaults, 48 * 2**20)
        time.sleep(0.3)
    print(f"attacker: sent {attack.sent_bytes} bytes in {attack.seconds:.3f} s")
    # The 431 reaches the attacker: after it the server drops what still comes (for up to
    # LINGER_SECONDS) instead of resetting the connection, which would discard the answer.
    json_error(attack.answer, 431, "headers_too_large")
    assert attack.seconds <= 1.0 + LINGER_SECONDS, attack.seconds
    assert_prompt(seen)


def test_heads_over_the_limit_get_431_and_under_it_are_served(defaults: Address) -> None:
    unfinished = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000
    body = json_error(exchange(defaults, unfinished)[0], 431, "headers_too_large")
    assert body["error"]["detail"] == {"limit": 65536}
    many = {f"X-Header-{i}": "a" * 30 for i in range(2_000)}  # 2,000 headers, 90 KB: complete
    answer = exchange(defaults, request("GET", "/health/live", headers=many))[0]
    json_error(answer, 431, "headers_too_large")
    assert headers_of(answer)["connection"] == "close"
    under = {"X-Big": "a" * 60_000}
    assert status_of(exchange(defaults, request("GET", "/health/live", headers=under))[0]) == 200


def test_query_parameters_over_the_cap_get_a_json_error(limited: Address) -> None:
    def query(n: int) -> str:
        return "/health/live?" + "&".join(f"p{i}=1" for i in range(n))

    assert status_of(exchange(limited, request("GET", query(100)))[0]) == 200
    body = json_error(exchange(limited, request("GET", query(101)))[0], 400, "bad_request")
    assert body["error"]["detail"] == {"field": "query", "count": 101, "limit": 100}
    # 50,000 parameters: the request line alone is over the head limit.
    json_error(exchange(limited, request("GET", query(50_000)))[0], 431, "headers_too_large")


def test_an_unfinished_head_gets_408_at_the_header_deadline(limited: Address) -> None:
    answer, seconds = exchange(limited, b"GET /health/live HTTP/1.1\r\nHost: x\r\n", timeout=5)
    json_error(answer, 408, "request_timeout")
    assert 1.0 <= seconds <= 2.0, seconds
    answer, seconds = exchange(limited, b"", timeout=5)  # silent: closed without an answer
    assert answer == b"" and 1.0 <= seconds <= 2.0, (answer, seconds)


def closed_by_reason(where: Address) -> dict[str, float]:
    samples = scrape("http://{}:{}".format(*where))
    reasons = ("silent", "replaced", "request_timeout")
    return {r: sample(samples, "adapool_refused_connections_total", reason=r) for r in reasons}


def test_many_silent_connections_are_closed_and_new_clients_served(limited: Address) -> None:
    before = closed_by_reason(limited)
    results: list[Silent] = []
    with normal_client(limited, pool_request()) as seen:
        attacker = threading.Thread(target=lambda: results.append(hold_silent(limited, 1000, 8)))
        attacker.start()
        attacker.join()
    (flood,) = results
    print(flood)
    assert flood.opened == 1000 and flood.closed == flood.opened, flood
    # Beyond the cap the oldest are replaced at once; the rest meet the 1 s deadline.
    assert flood.last_close_seconds <= 4.0, flood
    assert_prompt(seen)
    after = closed_by_reason(limited)
    print("closed by reason:", {r: after[r] - before[r] for r in after})
    assert after["replaced"] > before["replaced"] and after["silent"] > before["silent"]
    assert sum(after.values()) - sum(before.values()) >= 1000
    samples = scrape("http://{}:{}".format(*limited))
    assert sample(samples, "adapool_connections") <= 8  # the scrape's own, and little else


def test_slowloris_is_closed_at_the_header_deadline(limited: Address) -> None:
    with normal_client(limited, pool_request()) as seen:
        closed = slowloris(limited, 50, interval=0.3, hold=6.0)
    print("slowloris closed after (s):", min(t or 99 for t in closed), max(t or 99 for t in closed))
    assert None not in closed
    assert all(1.0 <= t <= 2.5 for t in closed if t is not None), closed
    assert_prompt(seen)


def send_slowly(sock: socket.socket, data: bytes, chunk: int, pause: float) -> None:
    for start in range(0, len(data), chunk):
        sock.sendall(data[start : start + chunk])
        time.sleep(pause)


def test_a_slow_body_gets_408_and_a_steady_one_is_served(limited: Address) -> None:
    head = request("POST", f"/models/{MODEL}/pool", headers={"Content-Length": "100000"})
    started = time.perf_counter()
    with socket.create_connection(limited) as sock:
        sock.sendall(head)
        with contextlib.suppress(OSError):  # closed under the sender
            send_slowly(sock, b" " * 5_000, 500, 0.1)  # 5 KB/s, under 16 KiB/s
        answer = read_answer(sock, timeout=5)
    seconds = time.perf_counter() - started
    json_error(answer, 408, "request_timeout")
    assert 2.0 <= seconds <= 3.5, seconds
    # 300 KB at about 100 KB/s: longer than the 2 s grace, but at the rate the rule asks for.
    body = pool_body(MODEL) + b" " * 300_000
    fields = {"Content-Type": "application/json"}
    whole = request("POST", f"/models/{MODEL}/pool", body, fields)
    started = time.perf_counter()
    with socket.create_connection(limited) as sock:
        send_slowly(sock, whole, 10_000, 0.1)
        answer = read_answer(sock, timeout=5)
    assert status_of(answer) == 200, answer[:300]
    assert time.perf_counter() - started > 2.0


@pytest.mark.parametrize("upgrade", ["websocket", "h2c", "foo"])
def test_upgrade_with_a_body_is_refused_with_json_never_a_hang(
    limited: Address, upgrade: str
) -> None:
    fields = {"Connection": "Upgrade", "Upgrade": upgrade, "Content-Type": "application/json"}
    answer, seconds = exchange(limited, request("POST", "/pool", pool_body(MODEL), fields))
    body = json_error(answer, 400, "bad_request")
    assert body["error"]["detail"] == {"header": "upgrade"}
    assert seconds < 1.0


def test_upgrade_without_connection_upgrade_is_served(limited: Address) -> None:
    fields = {"Upgrade": "websocket", "Content-Type": "application/json"}
    answer = exchange(limited, request("POST", "/pool", pool_body(MODEL), fields))[0]
    assert status_of(answer) == 200, answer[:300]


def test_websocket_handshakes_get_plain_http_answers(limited: Address) -> None:
    answer = exchange(limited, request("GET", "/pool", headers=WEBSOCKET))[0]
    json_error(answer, 405, "method_not_allowed")  # not an empty 403
    assert headers_of(answer)["connection"] == "close"
    answer = exchange(limited, request("GET", "/health/live", headers=WEBSOCKET))[0]
    assert status_of(answer) == 200 and b'"alive"' in answer


@pytest.mark.parametrize("path", ["/pool/", f"/models/{MODEL}/pool/"])
def test_a_trailing_slash_is_a_json_404_not_a_redirect(limited: Address, path: str) -> None:
    fields = {"Host": "evil.example", "Content-Type": "application/json"}
    answer = exchange(limited, request("POST", path, pool_body(MODEL), fields))[0]
    json_error(answer, 404, "not_found")
    assert "location" not in headers_of(answer)


def test_the_reserve_serves_probes_near_the_cap(limited: Address) -> None:
    """292 connections busy with a request (a head, its body never sent) fill the general
    share: a new connection is served for health and metrics only."""
    head = request("POST", f"/models/{MODEL}/pool", headers={"Content-Length": "1000"})
    busy = [socket.create_connection(limited) for _ in range(292)]
    try:
        for sock in busy:
            sock.sendall(head)
        time.sleep(0.2)
        refused = exchange(limited, request("GET", "/models"))[0]
        json_error(refused, 503, "too_many_connections")
        for path in ("/health/live", "/health/ready", "/metrics"):
            assert status_of(exchange(limited, request("GET", path))[0]) == 200, path
    finally:
        for sock in busy:
            sock.close()
    time.sleep(0.2)
    assert status_of(exchange(limited, request("GET", "/models"))[0]) == 200


def keep_alive_answers(where: Address, pauses: list[float]) -> list[str | None]:
    """GET /health/live on one keep-alive connection after each pause: each answer's
    Connection header; stops when the server closes the connection."""
    connection = http.client.HTTPConnection(*where, timeout=5)
    seen: list[str | None] = []
    try:
        for pause in pauses:
            time.sleep(pause)
            connection.request("GET", "/health/live")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            seen.append(response.getheader("connection"))
            if response.will_close:
                break
    finally:
        connection.close()
    return seen


def test_connections_are_closed_after_the_request_cap_or_the_age_cap(limited: Address) -> None:
    assert keep_alive_answers(limited, [0.0] * 5) == [None, None, "close"]
    assert keep_alive_answers(limited, [0.0, 2.1, 0.0]) == [None, "close"]


def test_without_caps_a_connection_stays_open(defaults: Address) -> None:
    assert keep_alive_answers(defaults, [0.0] * 10) == [None] * 10


def npy_request(x: Any, headers: dict[str, str] | None = None) -> tuple[bytes, bytes]:
    """A keep-alive .npy pool request for ``x``: (the head, the body)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(x, dtype=np.float32))
    body = buffer.getvalue()
    fields = {"Content-Type": "application/x-npy", "Connection": "keep-alive"} | (headers or {})
    whole = request("POST", f"/models/{MODEL}/pool", body, fields)
    return whole[: len(whole) - len(body)], body


def pooled_of(answers: bytes) -> list[list[list[float]]]:
    """The pooled vectors of each answer in a stream of keep-alive JSON answers."""
    out = []
    while answers:
        head, _, rest = answers.partition(b"\r\n\r\n")
        size = int(headers_of(head + b"\r\n\r\n")["content-length"])
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        out.append(json.loads(rest[:size])["pooled"])
        answers = rest[size:]
    return out


def test_bodies_of_declared_length_are_read_whole_however_they_arrive(defaults: Address) -> None:
    """A body reaches the app whole however it is cut on the wire (through the head and body
    limits of GuardedProtocol): in one piece with its head, in small slices with pauses, and
    pipelined after another request on the same connection. Each answer is the one a request
    on a fresh connection gets."""
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(3, 700, DIM)).astype(np.float32) for _ in range(3)]  # 135 KB+ each
    requests = [npy_request(x) for x in xs]
    with socket.create_connection(defaults, timeout=10) as sock:
        for head, body in requests:  # one at a time, each in one send
            sock.sendall(head + body)
            assert len(pooled_of(read_one(sock))[0]) == 3
        expected = [pooled_of(exchange_one(defaults, h + b))[0] for h, b in requests]
        head, body = requests[0]
        sock.sendall(head)  # the head alone, then the body in slices of 10 KB
        send_slowly(sock, body, 10_000, 0.002)
        assert pooled_of(read_one(sock)) == [expected[0]]
        sock.sendall(b"".join(h + b for h, b in requests[1:]))  # two pipelined
        got = pooled_of(read_one(sock) + read_one(sock))
    assert got == expected[1:]


def test_expect_100_continue_is_answered_before_the_body(defaults: Address) -> None:
    x = np.ones((1, 4, DIM), np.float32)
    head, body = npy_request(x, {"Expect": "100-continue"})
    with socket.create_connection(defaults, timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(5)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        assert len(pooled_of(read_one(sock))[0]) == 1


def test_a_client_that_leaves_mid_body_is_counted_and_others_are_served(
    defaults: Address,
) -> None:
    url = f"http://{defaults[0]}:{defaults[1]}"
    labels = {"model": MODEL, "reason": "client_gone"}
    before = sample(scrape(url), "adapool_rejected_requests_total", **labels)
    x = np.ones((2, 900, DIM), np.float32)
    head, body = npy_request(x)
    with socket.create_connection(defaults, timeout=10) as sock:
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.2)  # the app is reading the body now
    deadline, after = time.monotonic() + 5, before
    while after == before and time.monotonic() < deadline:
        time.sleep(0.05)
        after = sample(scrape(url), "adapool_rejected_requests_total", **labels)
    assert after == before + 1
    assert status_of(exchange(defaults, pool_request())[0]) == 200


def read_one(sock: socket.socket) -> bytes:
    """One keep-alive answer, whole (head and Content-Length bytes of body)."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    size = int(headers_of(head + b"\r\n\r\n")["content-length"])
    while len(rest) < size:
        rest += sock.recv(65536)
    assert len(rest) == size, "more than one answer arrived"
    return head + b"\r\n\r\n" + rest


def exchange_one(where: Address, data: bytes) -> bytes:
    with socket.create_connection(where, timeout=10) as sock:
        sock.sendall(data)
        return read_one(sock)
