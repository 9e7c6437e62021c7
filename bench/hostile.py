"""``make hostile``: hostile clients against the real server on loopback, and what the
connection limits (``service/connections.py``) cost.

    python -m bench.hostile [--megabytes 48] [--silent 20000] [--slowloris 200]
                            [--seconds 4] [--rounds 5]

Against ``python -m service`` with its default settings, on the committed repository:

1. an unfinished huge header (a request line, then ``X-Big:`` and ``--megabytes`` of bytes,
   never finished) while a normal client sends one ``/pool`` request after another, each on a
   new connection: its p50, p99 and worst latency (target: worst <= 100 ms), and what the
   attacker got back (431);
2. ``--silent`` connection attempts that never send a byte, from several processes (one
   process cannot hold 20,000 descriptors here), with the same normal client: how long it took
   to connect and be served (target: <= 1 s), and when the server closed the silent ones;
3. slowloris: ``--slowloris`` connections each sending one header line every 2 s: when each
   was closed (the header deadline, 10 s by default);
4. the cost: hey on ``/pool`` against the service and against the same app on uvicorn's own
   httptools protocol without the limits (``python -m bench.plain_server``), both up at once
   and measured in turn ``--rounds`` times: requests/s, each pair's ratio and their median.

Every figure comes from this run. The clients share the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench import hey
from bench.process import ROOT, running_server

REPOSITORY = ROOT / "model_repository"
MODEL = "knn-avg"  # small and fast: the figures are the server's, not the model's
Address = tuple[str, int]


def address(url: str) -> Address:
    parts = urlparse(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


def pool_body(model: str = MODEL, tokens: int = 4) -> bytes:
    """A valid JSON-lists body for ``model``: one item of ``tokens`` tokens."""
    manifest = json.loads((REPOSITORY / model / "1" / "manifest.json").read_text())
    return json.dumps({"embeddings": [[[0.25] * manifest["input_dim"]] * tokens]}).encode()


def request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """One HTTP/1.1 request, whole, with ``Connection: close`` unless ``headers`` say otherwise."""
    fields = {"Host": "localhost", "Connection": "close"} | (headers or {})
    if body or method == "POST":
        fields.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode() + b"\r\n" + body


def pool_request(model: str = MODEL) -> bytes:
    return request(
        "POST", f"/models/{model}/pool", pool_body(model), {"Content-Type": "application/json"}
    )


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes (or ``timeout`` passes, or a reset)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:  # a timeout, or a reset after an answer or instead of one
        pass
    return b"".join(chunks)


def exchange(where: Address, data: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """Connect, send ``data``, read the answer to the close: (answer, seconds from connecting)."""
    answer, seconds, _ = timed_exchange(where, data, timeout)
    return answer, seconds


def timed_exchange(where: Address, data: bytes, timeout: float) -> tuple[bytes, float, float]:
    """As :func:`exchange`, with the seconds the connection itself took."""
    started = time.perf_counter()
    with socket.create_connection(where, timeout=timeout) as sock:
        connected = time.perf_counter()
        sock.sendall(data)
        answer = read_answer(sock, timeout)
    return answer, time.perf_counter() - started, connected - started


def status_of(answer: bytes) -> int:
    """The status code of an answer (0: no answer)."""
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 2 and parts[0].startswith(b"HTTP/") else 0


@dataclass
class Latencies:
    """What the normal client saw: seconds from connecting to the answer, and the failures."""

    seconds: list[float] = field(default_factory=list)
    connect_seconds: list[float] = field(default_factory=list)  # of those, connecting
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.seconds) or [float("nan")]
        return {
            "requests": len(self.seconds),
            "failures": len(self.failures),
            "p50_ms": 1e3 * statistics.median(ordered),
            "p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "max_ms": 1e3 * ordered[-1],
            "max_connect_ms": 1e3 * max(self.connect_seconds, default=float("nan")),
        }


@contextmanager
def normal_client(where: Address, data: bytes, pause: float = 0.005) -> Iterator[Latencies]:
    """A thread that sends ``data`` on a new connection after each answer (and ``pause``) for
    as long as the block runs; a failure is any answer but 200, or none within 5 s."""
    seen = Latencies()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                answer, seconds, connecting = timed_exchange(where, data, timeout=5.0)
            except OSError as exc:
                seen.failures.append(repr(exc))
            else:
                if status_of(answer) == 200:
                    seen.seconds.append(seconds)
                    seen.connect_seconds.append(connecting)
                else:
                    seen.failures.append(answer[:200].decode("latin-1"))
            stop.wait(pause)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=10)


@dataclass(frozen=True)
class HeaderAttack:
    sent_bytes: int
    seconds: float
    answer: bytes


def unfinished_header(where: Address, total_bytes: int, chunk: int = 2**20) -> HeaderAttack:
    """A request line, then ``X-Big:`` and up to ``total_bytes`` of ``a``, never finished: sent
    until the server refuses it (or all is sent), then whatever it answered."""
    started = time.perf_counter()
    sent = 0
    with socket.create_connection(where, timeout=10) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
        block = b"a" * chunk
        try:
            while sent < total_bytes:
                sent += sock.send(block[: total_bytes - sent])
        except OSError:
            pass  # refused: the connection was closed under the sender
        answer = read_answer(sock, timeout=2.0)
    return HeaderAttack(sent, time.perf_counter() - started, answer)


@dataclass(frozen=True)
class Silent:
    """Silent connections of one process: opened, failed to open, closed by the server, and
    seconds from the first attempt to the last close."""

    opened: int
    failed: int
    closed: int
    last_close_seconds: float


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has answered or closed ``sock`` (non-blocking)."""
    try:
        sock.recv(65536)  # an answer (the refusal), an end of file
    except BlockingIOError:
        return False
    except OSError:
        pass  # a reset
    return True


def hold_silent(where: Address, count: int, hold: float) -> Silent:
    """Open ``count`` connections that send nothing; wait until the server has closed them all
    (or ``hold`` seconds have passed)."""
    started = time.monotonic()
    selector = selectors.DefaultSelector()
    opened, failed = 0, 0
    for _ in range(count):
        try:
            sock = socket.create_connection(where, timeout=3)
        except OSError:
            failed += 1
            continue
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        opened += 1
    closed, last = 0, 0.0
    while closed < opened and time.monotonic() - started < hold:
        for key, _ in selector.select(timeout=0.1):
            peer = key.fileobj
            assert isinstance(peer, socket.socket)
            if not _closed_by_server(peer):
                continue
            selector.unregister(peer)
            peer.close()
            closed, last = closed + 1, time.monotonic() - started
    for key in list(selector.get_map().values()):
        left = key.fileobj
        assert isinstance(left, socket.socket)
        left.close()
    return Silent(opened, failed, closed, last)


def _hold_silent_child(where: Address, count: int, hold: float, out: Any) -> None:
    out.put(hold_silent(where, count, hold))


def silent_flood(where: Address, count: int, processes: int, hold: float) -> list[Silent]:
    """``hold_silent`` from ``processes`` processes at once, ``count`` attempts in all."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    children = [
        context.Process(target=_hold_silent_child, args=(where, count // processes, hold, out))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    results: list[Silent] = []
    deadline = time.monotonic() + hold + 120
    while len(results) < len(children):
        try:
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            if any(c.exitcode not in (None, 0) for c in children) or time.monotonic() > deadline:
                raise RuntimeError("a process holding silent connections failed") from None
    for child in children:
        child.join(timeout=10)
    return results


def slowloris(where: Address, count: int, interval: float, hold: float) -> list[float | None]:
    """``count`` connections, each sending a request line and then one header line every
    ``interval`` seconds: when each was closed by the server (None: open after ``hold``)."""
    started = time.monotonic()
    socks = []
    for _ in range(count):
        sock = socket.create_connection(where, timeout=3)
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n")
        sock.setblocking(False)
        socks.append(sock)
    closed: list[float | None] = [None] * count
    next_line, line = started + interval, 0
    while None in closed and time.monotonic() - started < hold:
        now = time.monotonic()
        send = now >= next_line
        if send:
            next_line, line = next_line + interval, line + 1
        for i, sock in enumerate(socks):
            if closed[i] is not None:
                continue
            if _closed_by_server(sock):
                closed[i] = now - started
                continue
            if send:
                try:
                    sock.send(f"X-Line-{line}: a\r\n".encode())
                except OSError:
                    closed[i] = now - started
        time.sleep(0.05)
    for sock in socks:
        sock.close()
    return closed


# The run
def huge_header_run(where: Address, megabytes: int) -> dict[str, Any]:
    with normal_client(where, pool_request()) as seen:
        time.sleep(0.5)  # the normal client's own figures first
        attack = unfinished_header(where, megabytes * 2**20)
        time.sleep(0.5)
    return {
        "normal_client": seen.summary(),
        "attacker_status": status_of(attack.answer),
        "attacker_sent_bytes": attack.sent_bytes,
        "attacker_seconds": attack.seconds,
    }


def silent_run(where: Address, count: int, processes: int, hold: float) -> dict[str, Any]:
    with normal_client(where, pool_request()) as seen:
        flood = silent_flood(where, count, processes, hold)
    return {
        "normal_client": seen.summary(),
        "normal_failures_sample": seen.failures[:3],
        "attempts": count,
        "opened": sum(f.opened for f in flood),
        "failed_to_open": sum(f.failed for f in flood),
        "closed_by_server": sum(f.closed for f in flood),
        "last_close_seconds": max(f.last_close_seconds for f in flood),
    }


def slowloris_run(where: Address, count: int, hold: float) -> dict[str, Any]:
    with normal_client(where, pool_request()) as seen:
        closed = slowloris(where, count, interval=2.0, hold=hold)
    times = sorted(t for t in closed if t is not None)
    return {
        "normal_client": seen.summary(),
        "connections": count,
        "still_open": closed.count(None),
        "closed_first_seconds": times[0] if times else None,
        "closed_last_seconds": times[-1] if times else None,
    }


def cost_run(flags: list[str], seconds: float, concurrency: int, rounds: int) -> dict[str, Any]:
    """hey on /pool against the service and the same app without the limits, both servers up
    at once and measured in turn, ``rounds`` times: each pair's ratio, and their median."""
    rates: dict[str, list[float]] = {"limits": [], "no_limits": []}
    with (
        tempfile.TemporaryDirectory() as folder,
        running_server(REPOSITORY, flags) as (limited, _),
        running_server(REPOSITORY, flags, module="bench.plain_server") as (plain, _),
    ):
        body = Path(folder) / "body.json"
        body.write_bytes(pool_body())
        endpoints = {"limits": limited, "no_limits": plain}
        for url in endpoints.values():  # warm-up
            hey.run(f"{url}/models/{MODEL}/pool", body, "application/json", {}, concurrency, 1.0)
        for _ in range(rounds):
            for name, url in endpoints.items():
                endpoint = f"{url}/models/{MODEL}/pool"
                result = hey.run(endpoint, body, "application/json", {}, concurrency, seconds)
                assert result.failed == 0, result
                rates[name].append(result.requests_per_second)
    ratios = [on / off for on, off in zip(rates["limits"], rates["no_limits"], strict=True)]
    return {
        "requests_per_second": rates,
        "ratios": ratios,
        "median_ratio_limits_to_none": statistics.median(ratios),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hostile", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--megabytes", type=int, default=48, help="the unfinished header's size")
    parser.add_argument("--silent", type=int, default=20_000, help="silent connection attempts")
    parser.add_argument("--processes", type=int, default=4, help="processes sending them")
    parser.add_argument("--slowloris", type=int, default=200, help="slowloris connections")
    parser.add_argument("--seconds", type=float, default=4.0, help="each hey run of the cost")
    parser.add_argument("--concurrency", type=int, default=16, help="hey's connections")
    parser.add_argument("--rounds", type=int, default=5, help="pairs of hey runs for the cost")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "hostile.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if (problem := hey.missing()) is not None:
        print(f"error: {problem}")
        return 2
    flags = ["--models", MODEL, "--default-model", MODEL]
    given = sys.argv[1:] if argv is None else argv
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench.hostile", *given]),
        "load_average_before": os.getloadavg(),
    }
    with running_server(REPOSITORY, flags) as (url, _):
        where = address(url)
        results["huge_header"] = huge_header_run(where, a.megabytes)
        print("huge header:", json.dumps(results["huge_header"]))
        results["silent"] = silent_run(where, a.silent, a.processes, hold=30.0)
        print("silent:", json.dumps(results["silent"]))
        results["slowloris"] = slowloris_run(where, a.slowloris, hold=30.0)
        print("slowloris:", json.dumps(results["slowloris"]))
    results["cost"] = cost_run(flags, a.seconds, a.concurrency, a.rounds)
    print("cost:", json.dumps(results["cost"]))
    worst_header = results["huge_header"]["normal_client"]["max_ms"]
    worst_silent = results["silent"]["normal_client"]["max_ms"]
    print(f"target: worst normal request during the huge header <= 100 ms: {worst_header:.1f} ms")
    print(
        f"target: worst connect-and-serve during the silent flood <= 1000 ms: {worst_silent:.1f} ms"
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
