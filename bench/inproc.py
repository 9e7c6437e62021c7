"""The service's own cost per request, without HTTP: the ASGI app driven in process.

``python -m bench.inproc`` starts the app's lifespan (the real models, the real batcher and ONNX
Runtime), then sends ``--requests`` POSTs to ``/models/{model}/pool`` through the ASGI interface,
``--concurrency`` at a time, and prints requests/s, items/s and the process's CPU time per
request (the event loop and ONNX Runtime's threads together), and the garbage collector's
pauses meanwhile. No socket, no load generator
sharing the cores: what is left is routing, middleware, decoding, batching, the model run,
diagnostics, encoding and metrics, which is what a change to ``service/`` moves. ``--profile``
adds the top of a cProfile of the event loop's thread.

It imports only ``service``, so it can measure another commit's: ``--baseline DIR`` (a checkout,
e.g. ``git worktree add /tmp/before COMMIT``) runs this same script against DIR's ``service`` and
against this checkout's, alternating, ``--rounds`` times each, and prints both medians and their
ratio: a before/after figure measured side by side in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.app import create_app
from service.settings import Settings

NPY = "application/x-npy"


def npy_body(items: int, tokens: int, dim: int) -> bytes:
    x = np.random.default_rng(0).standard_normal((items, tokens, dim)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, x)
    return buffer.getvalue()


def input_dim(repository: Path, model: str) -> int:
    """The model's token dim, from the newest version's manifest (read as JSON, so that any
    checkout's repository works)."""
    versions = sorted(
        (p for p in (repository / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    return int(json.loads((versions[-1] / "manifest.json").read_text())["input_dim"])


async def post(app: Any, path: str, body: bytes, accept: str) -> int:
    """One request through the ASGI interface; returns the status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", NPY.encode()),
            (b"accept", accept.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    delivered = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status


class CollectorPauses:
    """Times the garbage collector's runs (a ``gc.callbacks`` entry): a collection stops the
    event loop, and every request in flight waits for it."""

    def __init__(self) -> None:
        self.started = 0.0
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self.started)

    def summary(self) -> dict[str, Any]:
        every = [p for pauses in self.pauses.values() for p in pauses]
        return {
            "gc_collections": [len(self.pauses[g]) for g in (0, 1, 2)],
            "gc_ms": sum(every) * 1000,
            "gc_max_pause_ms": max(every, default=0.0) * 1000,
        }


async def measure(a: argparse.Namespace) -> dict[str, Any]:
    given: dict[str, Any] = {"model_repository": a.repository, "models": [a.model]}
    app = create_app(Settings(**given, default_model=a.model))
    path = f"/models/{a.model}/pool"
    async with app.router.lifespan_context(app):
        # As python -m service's server does once the models are loaded (an app that froze
        # them itself, as older checkouts did, is not changed by freezing again).
        gc.collect()
        gc.freeze()
        dim = input_dim(a.repository, a.model)
        body = npy_body(a.items, a.tokens, dim)
        for _ in range(a.warmup):
            if (status := await post(app, path, body, a.accept)) != 200:
                raise RuntimeError(f"warm-up request answered {status}")
        gate = asyncio.Semaphore(a.concurrency)
        statuses: list[int] = []

        async def one() -> None:
            async with gate:
                statuses.append(await post(app, path, body, a.accept))

        profile = cProfile.Profile() if a.profile else None
        collector = CollectorPauses()
        gc.callbacks.append(collector)
        wall, cpu = time.perf_counter(), time.process_time()
        if profile:
            profile.enable()
        await asyncio.gather(*(one() for _ in range(a.requests)))
        if profile:
            profile.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        gc.callbacks.remove(collector)
    gc.unfreeze()
    failed = sum(s != 200 for s in statuses)
    result = {
        "model": a.model,
        "items": a.items,
        "concurrency": a.concurrency,
        "accept": a.accept,
        "requests": a.requests,
        "failed": failed,
        "requests_per_second": a.requests / wall,
        "items_per_second": a.requests * a.items / wall,
        "cpu_ms_per_request": cpu / a.requests * 1000,
        "service": str(Path(sys.modules["service"].__file__ or "").parent),  # which one ran
    } | collector.summary()
    if profile:
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(a.profile)
        result["profile"] = text.getvalue()
    return result


def measure_in(checkout: Path, argv: list[str]) -> dict[str, Any]:
    """This script, run against ``checkout``'s ``service`` package in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *argv],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{checkout}: exit {done.returncode}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[0])
    return result


def side_by_side(a: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Median figures of the baseline checkout and of this one, rounds alternating."""
    here = Path(__file__).resolve().parents[1]
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "current": []}
    for _ in range(a.rounds):
        runs["baseline"].append(measure_in(a.baseline.resolve(), argv))
        runs["current"].append(measure_in(here, argv))
    out: dict[str, Any] = {
        "baseline": runs["baseline"][0]["service"],
        "current": runs["current"][0]["service"],
        "rounds": a.rounds,
    }
    for name in ("requests_per_second", "cpu_ms_per_request", "gc_ms", "gc_max_pause_ms"):
        before = statistics.median(r[name] for r in runs["baseline"])
        after = statistics.median(r[name] for r in runs["current"])
        out[name] = {
            "baseline": before,
            "current": after,
            "ratio": after / before if before else None,  # none when the baseline had none
            "baseline_rounds": [r[name] for r in runs["baseline"]],
            "current_rounds": [r[name] for r in runs["current"]],
        }
    out["failed"] = sum(r["failed"] for side in runs.values() for r in side)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    root = Path(__file__).parents[1]
    p = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__)
    p.add_argument("--repository", type=Path, default=root / "model_repository")
    p.add_argument("--model", default="signature-adapool")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--items", type=int, default=1, help="items per request")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--accept", default="application/json", help="the answer's media type")
    p.add_argument("--warmup", type=int, default=200, help="requests before the measurement")
    p.add_argument("--profile", type=int, default=0, help="print the top N of a cProfile")
    p.add_argument("--baseline", type=Path, help="a checkout to measure against, side by side")
    p.add_argument("--rounds", type=int, default=3, help="with --baseline: rounds per side")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.baseline is not None:
        inner = [*argv_without(argv, "--baseline", "--rounds", "--profile")]
        inner += ["--repository", str(a.repository.resolve())]  # both sides serve these models
        print(json.dumps(side_by_side(a, inner)))
        return 0
    result = asyncio.run(measure(a))
    profile = result.pop("profile", None)
    print(json.dumps(result))
    if profile:
        print(profile)
    return 1 if result["failed"] else 0


def argv_without(argv: list[str], *options: str) -> list[str]:
    """``argv`` less the given options and their values (``--x v`` or ``--x=v``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not any(arg.startswith(option + "=") for option in options):
            out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())
