"""Admission at the request head (service/api/admission.py) against the real server on
loopback, over raw sockets: a full queue's 429 written by the connection layer is the app's own
answer, byte for byte but for the date; the refused request's body is dropped and its
keep-alive connection serves the next request; a request holds its place while its body is
read, a slow upload only for HOLD_SECONDS, and a client that leaves frees it at once.

Two servers run side by side with a queue of one request: the default one, and one started with
``--head-admission false``, where the app admits and refuses as it did before.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from bench.hostile import Address, address, request, status_of
from service.core.batching import HOLD_SECONDS
from tests.reliability.common import manifest, sample, scrape
from tests.reliability.test_connections import headers_of, json_error, read_one
from tests.service.server import running_server

MODEL = "knn-avg"
DIM = manifest(MODEL)["input_dim"]
FLAGS = ("--models", MODEL, "--default-model", MODEL, "--batch-policy", "off")
QUEUE = ("--max-queue-requests", "1", "--retry-after-seconds", "3")
ROUTE = "/models/{name}/pool"


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Address]]:
    with (
        running_server(*FLAGS, *QUEUE) as head,
        running_server(*FLAGS, *QUEUE, "--head-admission", "false") as app,
    ):
        yield {"head": address(head), "app": address(app)}


def pool_json(tokens: int = 4) -> bytes:
    return json.dumps({"embeddings": [[[0.25] * DIM] * tokens]}).encode()


def keep_alive(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    fields = {"Content-Type": "application/json", "Connection": "keep-alive"} | (headers or {})
    return request("POST", path, body, fields)


class Holder:
    """A client whose request head (and part of its body) is in: it holds the queue's place."""

    def __init__(self, where: Address) -> None:
        self.whole = keep_alive(f"/models/{MODEL}/pool", pool_json(tokens=2000))
        self.sent = len(self.whole) - 1000  # all but the last 1,000 bytes of the body
        self.sock = socket.create_connection(where, timeout=10)
        self.sock.sendall(self.whole[: self.sent])
        self.since = time.monotonic()

    def finish(self) -> bytes:
        self.sock.sendall(self.whole[self.sent :])
        return read_one(self.sock)

    def close(self) -> None:
        self.sock.close()


def refused_while_held(where: Address, data: bytes) -> tuple[bytes, bytes, int]:
    """Hold the place, send ``data`` on a keep-alive connection, read its answer; then let the
    holder finish and send one more pool request on the same connection: (the answer, the next
    answer, the holder's status)."""
    time.sleep(0.05)  # a place of an earlier test is surely released
    holder = Holder(where)
    try:
        with socket.create_connection(where, timeout=10) as sock:
            time.sleep(0.1)  # the holder's head is in
            sock.sendall(data)
            answer = read_one(sock)
            assert time.monotonic() - holder.since < HOLD_SECONDS, "too slow to test"
            held = status_of(holder.finish())
            sock.sendall(keep_alive(f"/models/{MODEL}/pool", pool_json()))
            return answer, read_one(sock), held
    finally:
        holder.close()


def comparable(answer: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """An answer's status line, headers but the date, and body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    headers = {k: v for k, v in headers_of(answer).items() if k != "date"}
    return head.split(b"\r\n", 1)[0], headers, body


@pytest.mark.parametrize(
    "path",
    [
        f"/models/{MODEL}/pool",
        "/pool",
        f"/v2/models/{MODEL}/infer",
        f"/v2/models/{MODEL}/versions/1/infer",
    ],
)
def test_a_full_queue_is_refused_at_the_head_with_the_apps_own_answer(
    servers: dict[str, Address], path: str
) -> None:
    body = pool_json()
    if path.startswith("/v2"):
        x = {
            "name": "embeddings",
            "shape": [1, 4, DIM],
            "datatype": "FP32",
            "data": [0.25] * 4 * DIM,
        }
        body = json.dumps({"inputs": [x]}).encode()
    data = keep_alive(path, body, {"X-Request-Id": "storm-1"})
    answers = {}
    for kind, where in servers.items():
        url = f"http://{where[0]}:{where[1]}"
        before = scrape(url)
        answer, following, held = refused_while_held(where, data)
        after = scrape(url)
        assert status_of(answer) == 429, (kind, answer[:300])
        assert headers_of(answer)["retry-after"] == "3"
        assert status_of(following) == 200 and held == 200, (kind, following[:300])
        rejected = "adapool_rejected_requests_total"
        labels = {"model": MODEL, "reason": "queue_full"}
        assert sample(after, rejected, **labels) == sample(before, rejected, **labels) + 1
        answers[kind] = comparable(answer)
    assert answers["head"] == answers["app"]
    if path.startswith("/v2"):
        assert set(json.loads(answers["head"][2])) == {"error"}  # the v2 body
    else:
        assert json_error(answer, 429, "overloaded")["request_id"] == "storm-1"


def test_the_refusal_is_counted_under_its_route(servers: dict[str, Address]) -> None:
    where = servers["head"]
    url = f"http://{where[0]}:{where[1]}"
    labels = {"model": MODEL, "route": ROUTE, "status": "429"}
    before = sample(scrape(url), "adapool_requests_total", **labels)
    answer, _, _ = refused_while_held(where, keep_alive(f"/models/{MODEL}/pool", pool_json()))
    assert status_of(answer) == 429
    assert sample(scrape(url), "adapool_requests_total", **labels) == before + 1


def test_http_1_0_refusals_close_the_connection(servers: dict[str, Address]) -> None:
    data = request("POST", f"/models/{MODEL}/pool", pool_json(), {"Connection": "close"})
    data = data.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    holder = Holder(servers["head"])
    try:
        with socket.create_connection(servers["head"], timeout=10) as sock:
            time.sleep(0.1)
            sock.sendall(data)
            answer = read_one(sock)
            assert status_of(answer) == 429 and headers_of(answer)["connection"] == "close"
            sock.settimeout(5)
            assert sock.recv(100) == b""  # closed by the server
        assert status_of(holder.finish()) == 200
    finally:
        holder.close()


@pytest.mark.parametrize("kind", ["head", "app"])
def test_a_slow_upload_holds_its_place_only_for_hold_seconds(
    servers: dict[str, Address], kind: str
) -> None:
    where = servers[kind]
    time.sleep(0.05)
    holder = Holder(where)
    try:
        statuses = []
        while time.monotonic() - holder.since < HOLD_SECONDS + 2:
            with socket.create_connection(where, timeout=10) as sock:
                sock.sendall(keep_alive(f"/models/{MODEL}/pool", pool_json()))
                statuses.append((time.monotonic() - holder.since, status_of(read_one(sock))))
            if statuses[-1][1] == 200:
                break
            time.sleep(0.05)
        early = [status for at, status in statuses if at < HOLD_SECONDS * 0.8]
        assert early and set(early) == {429}, statuses
        assert statuses[-1][1] == 200, statuses  # once the place no longer counts
        assert status_of(holder.finish()) == 200  # checked again at submit: room by then
    finally:
        holder.close()


@pytest.mark.parametrize("kind", ["head", "app"])
def test_a_client_that_leaves_mid_body_frees_its_place_at_once(
    servers: dict[str, Address], kind: str
) -> None:
    where = servers[kind]
    time.sleep(0.05)
    holder = Holder(where)
    time.sleep(0.1)
    holder.close()
    served_at = None
    while served_at is None and time.monotonic() - holder.since < HOLD_SECONDS:
        with socket.create_connection(where, timeout=10) as sock:
            sock.sendall(keep_alive(f"/models/{MODEL}/pool", pool_json()))
            if status_of(read_one(sock)) == 200:
                served_at = time.monotonic() - holder.since
        time.sleep(0.02)
    assert served_at is not None and served_at < HOLD_SECONDS * 0.8, served_at
