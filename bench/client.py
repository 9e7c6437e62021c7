"""``make bench``'s client rows: the Python client (adapool_client) beside hey on the same requests.

Workload: [8, 128, D] requests to one model, sent as the client sends them by default (the
``.npy`` body with ``X-Lengths``, ``Accept: application/x-npz``); hey gets the very bytes and
headers the client's encoder made. At concurrency 1 and ``high``:

- hey (Go, a separate process);
- httpx posting the same bytes in a loop, nothing else (concurrency 1 only): httpx's share;
- ``Client.pool`` called in a loop (concurrency 1 only): the plain use;
- ``Client.pool_many`` (threads) and ``AsyncClient.pool_many`` (one event loop) over a stream of
  [128, D] sets, ``batch_size=8``, ``concurrency=c``: the same requests.

For each: requests/s and the CPU time of the sender per request (hey's: RUSAGE_CHILDREN around
its run; the client's: this process's RUSAGE_SELF, in which only the client runs meanwhile). The
client's overhead per request is its CPU per request, and at concurrency 1 also the extra wall
time per request over hey's. Beside them, the client's encode and decode cost per request in
process, without HTTP (``timeit`` on a recorded answer). The client shares the two cores with the
server, as hey does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import resource
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from adapool_client import AsyncClient, Client, PooledItem
from adapool_client._inputs import prepare
from adapool_client._wire import PoolOptions, Request, pool_request, pool_result

from bench import hey

ITEMS = 8


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass(frozen=True)
class Cell:
    runner: str
    concurrency: int
    requests: int
    wall_seconds: float
    cpu_seconds: float  # of the sender

    def row(self) -> dict[str, Any]:
        rps = self.requests / self.wall_seconds
        return {
            "runner": self.runner,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "requests_per_second": rps,
            "items_per_second": rps * ITEMS,
            "ms_per_request": 1000 * self.wall_seconds / self.requests,
            "sender_cpu_ms_per_request": 1000 * self.cpu_seconds / self.requests,
        }


def _sets(x: np.ndarray, deadline: float) -> Iterator[np.ndarray]:
    """[128, D] sets from ``x`` in turn until ``deadline`` (whole requests of ITEMS)."""
    i = 0
    while time.perf_counter() < deadline or i % ITEMS:
        yield x[i % len(x)]
        i += 1


def _timed(runner: str, c: int, go: Callable[[], int]) -> Cell:
    cpu, started = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
    requests = go()
    wall = time.perf_counter() - started
    return Cell(runner, c, requests, wall, cpu_seconds(resource.RUSAGE_SELF) - cpu)


def pool_loop(client: Client, x: np.ndarray, model: str, seconds: float) -> Cell:
    def go() -> int:
        n, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            client.pool(x[:ITEMS], model=model)
            n += 1
        return n

    return _timed("Client.pool loop", 1, go)


def httpx_loop(url: str, request: Request, seconds: float) -> Cell:
    """The client's request bytes posted with httpx alone (no encode, no decode): what httpx
    costs, so that the client's own share is the difference."""

    def go() -> int:
        n, deadline = 0, time.perf_counter() + seconds
        with httpx.Client(base_url=url) as plain:
            while time.perf_counter() < deadline:
                plain.post(request.path, content=request.content, headers=request.headers)
                n += 1
        return n

    return _timed("httpx.Client.post loop", 1, go)


def pool_many(client: Client, x: np.ndarray, model: str, c: int, seconds: float) -> Cell:
    def go() -> int:
        sets = _sets(x, time.perf_counter() + seconds)
        items = client.pool_many(sets, batch_size=ITEMS, concurrency=c, model=model)
        return _count(items) // ITEMS

    return _timed("Client.pool_many", c, go)


def async_pool_many(url: str, x: np.ndarray, model: str, c: int, seconds: float) -> Cell:
    async def count() -> int:
        async with AsyncClient(url, max_connections=max(c, 1)) as client:
            await client.info()  # connect and read the limits before the clock starts
            sets = _sets(x, time.perf_counter() + seconds)
            n = 0
            async for _ in client.pool_many(sets, batch_size=ITEMS, concurrency=c, model=model):
                n += 1
            return n // ITEMS

    return _timed("AsyncClient.pool_many", c, lambda: asyncio.run(count()))


def _count(items: Iterator[PooledItem]) -> int:
    return sum(1 for _ in items)


def hey_cell(
    url: str, model: str, body: Path, headers: dict[str, str], c: int, seconds: float
) -> Cell:
    content_type = headers["Content-Type"]
    rest = {k: v for k, v in headers.items() if k != "Content-Type"}
    cpu = cpu_seconds(resource.RUSAGE_CHILDREN)
    result = hey.run(f"{url}/models/{model}/pool", body, content_type, rest, c, seconds)
    if result.failed:
        raise RuntimeError(f"hey: {result.failed} requests failed: {result.statuses}")
    used = cpu_seconds(resource.RUSAGE_CHILDREN) - cpu
    return Cell("hey", c, result.ok, result.wall_seconds, used)


def in_process_us(url: str, x: np.ndarray, model: str) -> dict[str, float]:
    """The client's own encode (input checks, padding, .npy) and decode (.npz, trimming, head
    mean) per request, in microseconds, on one recorded answer."""
    options = PoolOptions(model=model)
    request = pool_request(prepare(x[:ITEMS]), options, None)
    with Client(url) as client:
        answer = client.request(
            "POST", request.path, headers=request.headers, content=request.content
        )
    n = 2000
    encode = timeit.timeit(lambda: pool_request(prepare(x[:ITEMS]), options, None), number=n)
    decode = timeit.timeit(lambda: pool_result(request, answer), number=n)
    return {"encode_us": 1e6 * encode / n, "decode_us": 1e6 * decode / n}


def measure(
    url: str,
    model: str,
    x: np.ndarray,
    seconds: float,
    warmup: float,
    high: int = 32,
    repeats: int = 1,
) -> dict[str, Any]:
    """Every cell, ``repeats`` rounds of hey and the client alternating per concurrency, each
    cell's median round (by requests/s) kept; ``x`` is [S, 128, D] float32."""
    request = pool_request(prepare(x[:ITEMS]), PoolOptions(model=model), None)
    rounds: dict[tuple[str, int], list[Cell]] = {}
    with tempfile.TemporaryDirectory() as tmp, Client(url, max_connections=high) as client:
        body = Path(tmp) / "client.npy"
        body.write_bytes(request.content)
        for c in (1, high):
            if warmup > 0:
                hey_cell(url, model, body, request.headers, c, warmup)
                pool_many(client, x, model, c, warmup)
            for _ in range(repeats):
                cells = [hey_cell(url, model, body, request.headers, c, seconds)]
                if c == 1:
                    cells.append(httpx_loop(url, request, seconds))
                    cells.append(pool_loop(client, x, model, seconds))
                cells.append(pool_many(client, x, model, c, seconds))
                cells.append(async_pool_many(url, x, model, c, seconds))
                for cell in cells:
                    rounds.setdefault((cell.runner, c), []).append(cell)
    rows = []
    for measured in rounds.values():
        measured.sort(key=lambda cell: cell.requests / cell.wall_seconds)
        row = measured[len(measured) // 2].row()
        row["rounds_requests_per_second"] = [
            round(m.requests / m.wall_seconds, 1) for m in measured
        ]
        rows.append(row)
    for row in rows:
        (base,) = [
            r for r in rows if r["runner"] == "hey" and r["concurrency"] == row["concurrency"]
        ]
        row["vs_hey_requests_per_second"] = row["requests_per_second"] / base["requests_per_second"]
        row["extra_ms_per_request"] = row["ms_per_request"] - base["ms_per_request"]
    return {
        "model": model,
        "request": {
            "shape": [ITEMS, *x.shape[1:]],
            "body_bytes": len(request.content),
            "headers": request.headers,
        },
        "rows": rows,
        "in_process": in_process_us(url, x, model),
    }


def markdown(result: dict[str, Any]) -> list[str]:
    r = result["request"]
    lines = [
        "",
        f"The Python client beside hey, {result['model']}, {r['shape']} requests as the client "
        f"sends them by default (.npy body of {r['body_bytes']:,} bytes with X-Lengths, .npz "
        "answer), the sender's CPU per request (hey: its process; the client: the bench's):",
        "",
        "| sender | concurrency | requests/s | vs hey | ms per request | extra ms vs hey | "
        "sender CPU ms per request | rounds, requests/s |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        extra = f"{row['extra_ms_per_request']:+.2f}" if row["concurrency"] == 1 else ""
        lines.append(
            f"| {row['runner']} | {row['concurrency']} | {row['requests_per_second']:,.1f} | "
            f"{row['vs_hey_requests_per_second']:.2f}x | {row['ms_per_request']:.2f} | {extra} | "
            f"{row['sender_cpu_ms_per_request']:.2f} | "
            f"{', '.join(map(str, row['rounds_requests_per_second']))} |"
        )
    p = result["in_process"]
    lines += [
        "",
        f"The client in process, no HTTP, per [{ITEMS}, 128, D] request: encode "
        f"{p['encode_us']:.0f} us (checks, .npy body), decode {p['decode_us']:.0f} us (.npz, "
        "per-item weights and their head mean).",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.client``: only these rows, on the benchmark repository's default model
    (``make bench`` measures them too, within its full run)."""
    import argparse
    import json
    import sys

    from bench import serve
    from bench.process import ROOT, running_server

    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per cell")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the median is kept")
    parser.add_argument("--concurrency", type=int, default=32, help="the high concurrency")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench")
    args = parser.parse_args(argv)
    if (problem := hey.missing()) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    repository = serve.prepare_repository(args.work, wide=False)
    model = serve.DEFAULT_MODEL
    x = np.random.default_rng(0).normal(size=(64, 128, serve.input_dim(repository, model)))
    results: dict[str, Any] = {"machine": serve.machine()}
    results["machine"]["command"] = "python -m bench.client " + " ".join(sys.argv[1:])
    with running_server(repository, ["--models", model, "--default-model", model]) as (url, _):
        results["client"] = measure(
            url, model, x.astype(np.float32), args.seconds, args.warmup, args.concurrency,
            args.repeats,
        )  # fmt: skip
    m = results["machine"]
    text = "\n".join(
        [
            f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores), commit {m['commit']}, "
            f"hey {m['hey']}, load average before {m['load_average_before']}. "
            f"Command: `{m['command']}`.",
            *markdown(results["client"]),
        ]
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "client.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "client.md").write_text(text + "\n")
    print(f"wrote {args.out / 'client'}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
