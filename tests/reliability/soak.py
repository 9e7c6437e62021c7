"""Soak: many mixed requests at high concurrency against one server, every answer checked.

Requests mix every format (JSON lists, JSON lists with an explicit mask, JSON + base64, .npy,
raw float32 and raw float16), every model (named routes), 1-4 items of 1-256 tokens (1 in 20
items up to 1024), random options, and JSON, .npy and .npz answers. Each 200 answer is checked
against ONNX Runtime run directly on each item alone (pooled vectors and weights within 1e-5)
and must carry the request's own id: a result mixed up between requests cannot pass. Resident
memory of the server is read after a warm-up of the same mix and after the soak.

    python -m tests.reliability.soak --requests 20000            # starts its own server
    python -m tests.reliability.soak --url http://127.0.0.1:8000 --pid 1234 --requests 5000

CI runs ``tests/reliability/test_soak.py`` with ADAPOOL_SOAK_REQUESTS (default 2000).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson

from bench import process
from tests.reliability.common import MODELS, REPOSITORY, alone, manifest, rss_bytes

FORMATS = ("json", "json_mask", "base64", "npy", "raw", "raw_f16")
ACCEPTS = ("json", "json", "json", "npy", "npz")
TOLERANCE = 1e-5
MiB = 2**20


@dataclass
class Prepared:
    """One request and what its answer must be computed from."""

    rid: str
    model: str
    format: str
    accept: str
    weights: str
    items: list[np.ndarray]  # each (n_i, D) float32: the real tokens the server must pool
    path: str
    kwargs: dict[str, Any]


@dataclass
class SoakResult:
    requests: int = 0
    items: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    formats: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    max_abs_diff: float = 0.0
    problems: list[str] = field(default_factory=list)
    rss_warm: int = 0
    rss_after: int = 0
    rss_peak: int = 0

    def summary(self) -> str:
        return (
            f"{self.requests} requests ({self.items} items) in {self.seconds:.1f} s "
            f"({self.requests / max(self.seconds, 1e-9):.0f}/s); statuses "
            f"{dict(sorted(self.statuses.items()))}; formats {dict(sorted(self.formats.items()))}; "
            f"models {dict(sorted(self.models.items()))}; max |diff| vs ONNX Runtime "
            f"{self.max_abs_diff:.2e}; problems {len(self.problems)}; RSS after warm-up "
            f"{self.rss_warm / MiB:.1f} MiB, after soak {self.rss_after / MiB:.1f} MiB "
            f"({(self.rss_after - self.rss_warm) / MiB:+.1f} MiB), "
            f"peak {self.rss_peak / MiB:.1f} MiB"
        )


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def prepare(rng: np.random.Generator, index: int, tag: str) -> Prepared:
    """One random request of the mix."""
    model = MODELS[int(rng.integers(len(MODELS)))]
    D = int(manifest(model)["input_dim"])
    fmt = FORMATS[int(rng.integers(len(FORMATS)))]
    accept = ACCEPTS[int(rng.integers(len(ACCEPTS)))]
    weights = ("mean", "heads", "none")[int(rng.integers(3))] if accept == "json" else "mean"
    b = int(rng.integers(1, 5))
    lengths = [
        int(rng.integers(1, 1025)) if rng.random() < 0.05 else int(rng.integers(1, 257))
        for _ in range(b)
    ]
    n = max(lengths)
    dtype = np.float16 if fmt == "raw_f16" else np.float32
    padded = rng.standard_normal((b, n, D)).astype(dtype)  # padding holds junk on purpose
    items = [padded[i, :length].astype(np.float32) for i, length in enumerate(lengths)]
    rid = f"{tag}-{index}"
    headers = {"X-Request-Id": rid}
    if accept != "json":
        headers["Accept"] = f"application/x-{accept}"
    params: dict[str, str] = {}
    if accept == "json":
        params["return_weights"] = weights
        params["diagnostics"] = "true" if rng.random() < 0.5 else "false"
    csv = ",".join(map(str, lengths))
    kwargs: dict[str, Any]
    if fmt == "json":
        body = orjson.dumps({"embeddings": [item.tolist() for item in items]})
        kwargs = {"content": body, "headers": {**headers, "Content-Type": "application/json"}}
    elif fmt == "json_mask":
        mask = [[t < length for t in range(n)] for length in lengths]
        body = orjson.dumps({"embeddings": padded.tolist(), "attention_mask": mask})
        kwargs = {"content": body, "headers": {**headers, "Content-Type": "application/json"}}
    elif fmt == "base64":
        body = orjson.dumps(
            {
                "embeddings_b64": base64.b64encode(padded.tobytes()).decode(),
                "shape": [b, n, D],
                "lengths": lengths,
            }
        )
        kwargs = {"content": body, "headers": {**headers, "Content-Type": "application/json"}}
    elif fmt == "npy":
        headers |= {"Content-Type": "application/x-npy", "X-Lengths": csv}
        kwargs = {"content": _npy(padded), "headers": headers}
    else:
        headers |= {
            "Content-Type": "application/octet-stream",
            "X-Shape": f"{b},{n},{D}",
            "X-Dtype": "float16" if fmt == "raw_f16" else "float32",
        }
        params["lengths"] = csv
        kwargs = {"content": padded.tobytes(), "headers": headers}
    kwargs["params"] = params
    return Prepared(rid, model, fmt, accept, weights, items, f"/models/{model}/pool", kwargs)


def check(p: Prepared, response: httpx.Response) -> tuple[float, list[str]]:
    """Max abs difference against ONNX Runtime on each item alone, and what is wrong."""
    problems = []
    if response.headers.get("x-request-id") != p.rid:
        problems.append(f"{p.rid}: answered with request id {response.headers.get('x-request-id')}")
    expected = [alone(p.model, item) for item in p.items]
    diffs = [0.0]
    if p.accept == "json":
        body = orjson.loads(response.content)
        if (body["model"], body["request_id"]) != (p.model, p.rid):
            problems.append(f"{p.rid}: body names {body['model']} / {body['request_id']}")
        pooled = np.asarray(body["pooled"], dtype=np.float64)
        if p.weights == "none" and "weights" in body:
            problems.append(f"{p.rid}: weights returned with return_weights=none")
        for i, (ref_pooled, ref_weights) in enumerate(expected):
            diffs.append(float(np.abs(pooled[i] - ref_pooled).max()))
            if p.weights == "none":
                continue
            got = np.asarray(body["weights"][i], dtype=np.float64)
            n = len(p.items[i])
            want = ref_weights if p.weights == "heads" else ref_weights.mean(0)
            diffs.append(float(np.abs(got[..., :n] - want).max()))
            if got.shape[-1] > n:  # explicit mask: masked tokens weigh exactly 0
                diffs.append(float(np.abs(got[..., n:]).max()))
    elif p.accept == "npy":
        pooled = np.load(io.BytesIO(response.content))
        diffs += [float(np.abs(pooled[i] - ref[0]).max()) for i, ref in enumerate(expected)]
    else:
        z = np.load(io.BytesIO(response.content))
        # lengths as submitted: with an explicit mask, every item's full (padded) length
        submitted = [z["weights"].shape[-1]] * len(p.items) if p.format == "json_mask" else None
        if z["lengths"].tolist() != (submitted or [len(item) for item in p.items]):
            problems.append(f"{p.rid}: npz lengths {z['lengths'].tolist()}")
        for i, (ref_pooled, ref_weights) in enumerate(expected):
            n = len(p.items[i])
            diffs.append(float(np.abs(z["pooled"][i] - ref_pooled).max()))
            diffs.append(float(np.abs(z["weights"][i, :, :n] - ref_weights).max()))
            diffs.append(float(np.abs(z["weights"][i, :, n:]).max(initial=0.0)))
    worst = max(diffs)
    if not worst <= TOLERANCE:  # NaN fails too
        problems.append(f"{p.rid} ({p.model}, {p.format}, {p.accept}): max |diff| {worst:.2e}")
    return worst, problems


async def _drive(
    url: str, count: int, concurrency: int, seed: int, tag: str, result: SoakResult
) -> None:
    rng = np.random.default_rng(seed)
    queue: asyncio.Queue[Prepared | None] = asyncio.Queue(maxsize=4 * concurrency)
    # uvicorn closes a keep-alive connection idle for 5 s; reusing one at that moment is a
    # client-side ReadError (seen 2 in 13 warm-ups on the shared machine, 0 in 10 with this).
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0
    )

    async def produce() -> None:
        for index in range(count):
            await queue.put(prepare(rng, index, tag))
        for _ in range(concurrency):
            await queue.put(None)

    async def work(client: httpx.AsyncClient) -> None:
        while (p := await queue.get()) is not None:
            result.requests += 1
            result.items += len(p.items)
            result.formats[p.format] += 1
            result.models[p.model] += 1
            try:
                response = await client.post(p.path, **p.kwargs)
            except httpx.HTTPError as exc:
                result.statuses[0] += 1
                result.problems.append(f"{p.rid}: {type(exc).__name__}: {exc}")
                continue
            result.statuses[response.status_code] += 1
            if response.status_code != 200:
                result.problems.append(f"{p.rid}: {response.status_code} {response.text[:200]}")
                continue
            worst, problems = check(p, response)
            result.max_abs_diff = max(result.max_abs_diff, worst)
            result.problems += problems

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(produce(), *(work(client) for _ in range(concurrency)))


def run(
    url: str, count: int, concurrency: int = 64, seed: int = 0, tag: str = "soak"
) -> SoakResult:
    """Send ``count`` requests of the mix with ``concurrency`` in flight; check every answer."""
    result = SoakResult()
    started = time.monotonic()
    asyncio.run(_drive(url, count, concurrency, seed, tag, result))
    result.seconds = time.monotonic() - started
    return result


def largest_batches(url: str) -> None:
    """One request per model of the largest batch the mix can make: 32 items of 1,024 tokens
    (the 32,768 padded tokens of max_batch_tokens). ONNX Runtime's memory arena grows to the
    largest run it has seen and keeps that memory; after this, it has seen it."""
    for model in MODELS:
        D = int(manifest(model)["input_dim"])
        x = np.random.default_rng(1).standard_normal((32, 1024, D)).astype(np.float32)
        r = httpx.post(
            f"{url}/models/{model}/pool",
            content=x.tobytes(),
            headers={"Content-Type": "application/octet-stream", "X-Shape": f"32,1024,{D}"},
            params={"diagnostics": "false", "return_weights": "none"},
            timeout=120,
        )
        if r.status_code != 200:
            raise AssertionError(f"largest batch for {model}: {r.status_code} {r.text[:200]}")


def soak(
    url: str, pid: int, requests: int, warmup: int, concurrency: int = 64, seed: int = 0
) -> SoakResult:
    """A warm-up (the largest batches, then the mix), whose RSS is the baseline, then the
    soak, sampling RSS."""
    largest_batches(url)
    warm = run(url, warmup, concurrency, seed + 1, "warmup")
    if warm.problems:
        raise AssertionError(f"warm-up failed: {warm.problems[:5]}")
    rss_warm = rss_bytes(pid)
    peak = [rss_warm]
    done = threading.Event()

    def sample_rss() -> None:
        while not done.wait(0.25):
            peak[0] = max(peak[0], rss_bytes(pid))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    try:
        result = run(url, requests, concurrency, seed)
    finally:
        done.set()
        sampler.join()
    result.rss_warm, result.rss_after = rss_warm, rss_bytes(pid)
    result.rss_peak = max(peak[0], result.rss_after)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--pid", type=int, help="its process id, for its memory")
    parser.add_argument("--rss-bound-mib", type=float, default=64.0, help="allowed RSS growth")
    args = parser.parse_args(argv)
    if args.url:
        if args.pid is None:
            parser.error("--url needs --pid (the server's process, for its memory)")
        result = soak(args.url, args.pid, args.requests, args.warmup, args.concurrency, args.seed)
    else:
        with process.running_server(REPOSITORY) as (url, server):
            result = soak(url, server.pid, args.requests, args.warmup, args.concurrency, args.seed)
    print(result.summary())
    for problem in result.problems[:20]:
        print("  ", problem)
    growth = (result.rss_after - result.rss_warm) / MiB
    ok = not result.problems and result.statuses == Counter({200: args.requests})
    if growth > args.rss_bound_mib:
        print(f"RSS grew by {growth:.1f} MiB, over the bound of {args.rss_bound_mib} MiB")
        ok = False
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
