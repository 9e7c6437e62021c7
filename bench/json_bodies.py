"""The worst JSON bodies against the real server: their memory, and what they do to the others.

    python -m bench.json_bodies [--seconds 8] [--attackers 3]

For each way of decoding large JSON-list bodies (``--json-decode-processes 1``, the default: a
worker process; ``0``: a thread of the server, as before), one server (``python -m service``,
the committed models) is measured in one run:

- a normal client's latency, one small ``.npy`` request (1 x 32 tokens) after another, first
  alone, then while ``--attackers`` clients each send the worst JSON body the limits let be
  parsed (``max_json_values`` values, 1,048,576 by default) again and again;
- the server's peak RSS over that time (its process and any worker, ``VmHWM`` after a reset),
  and its RSS a second after the attack.

A body of that many values is parsed in full and then refused (413: its items are longer than
``max_tokens_per_item``); the worst body the default model accepts, 16 x 2,048 tokens, holds half
as many. Results go to ``results/bench/json.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from bench import process, procstat
from bench.serve import machine
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "model_repository"
MODEL = Settings.model_fields["default_model"].default
D = 16


def worst_json(values: int) -> bytes:
    """A JSON-list body of ``values`` numbers: 16 items of tokens of 16 dims."""
    tokens = values // (16 * D)
    x = np.random.default_rng(0).standard_normal((16, tokens, D)).astype(np.float32)
    return orjson.dumps({"embeddings": x.tolist()})


def small_npy() -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(1).standard_normal((1, 32, D)).astype(np.float32))
    return buffer.getvalue()


def latencies(url: str, body: bytes, seconds: float) -> list[float]:
    """Sequential small requests for ``seconds``: each one's latency in ms (all must be 200)."""
    out = []
    headers = {"Content-Type": "application/x-npy"}
    with httpx.Client(base_url=url, timeout=60) as c:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            r = c.post("/pool", content=body, headers=headers)
            out.append((time.perf_counter() - started) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"a normal request answered {r.status_code}: {r.text[:200]}")
    return out


def summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "requests": len(ms),
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max_ms": ordered[-1],
    }


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += 1024 * procstat.parse_status_kib(text, "VmRSS")
    return total


def measure(mode: str, processes: int, a: argparse.Namespace, attack: bytes) -> dict[str, Any]:
    small = small_npy()
    flags = ["--json-decode-processes", str(processes)]
    with process.running_server(REPOSITORY, flags) as (url, server):
        latencies(url, small, 1.0)  # warm-up
        alone = latencies(url, small, a.seconds / 2)
        usage = procstat.TreeUsage(server.pid)
        usage.start()
        stop = threading.Event()
        statuses: list[int] = []

        def attacker() -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                while not stop.is_set():
                    statuses.append(c.post("/pool", content=attack).status_code)

        threads = [threading.Thread(target=attacker) for _ in range(a.attackers)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the attack is under way
        under_attack = latencies(url, small, a.seconds)
        stop.set()
        for t in threads:
            t.join()
        used = usage.stop()
        time.sleep(1.0)
        after = rss_bytes(procstat.tree(server.pid))
        after_server = rss_bytes([server.pid])
    codes = {str(code): statuses.count(code) for code in sorted(set(statuses))}
    return {
        "mode": mode,
        "json_decode_processes": processes,
        "alone": summary(alone),
        "under_attack": summary(under_attack),
        "attack_requests": codes,
        "peak_rss_bytes": used["peak_rss_bytes"],
        "peak_since_start": used["peak_since_start"],
        "rss_after_bytes": after,
        "rss_after_server_bytes": after_server,
        "processes": used["processes"],
    }


def markdown(results: dict[str, Any]) -> str:
    mib = 2**20
    lines = [
        "# The worst JSON bodies against the real server",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']['cores']} cores, load average before "
        f"{results['machine']['load_average_before']}, commit {results['machine']['commit']}  ",
        f"Attack: {results['attackers']} clients, each sending a "
        f"{results['attack_bytes'] / mib:.1f} MiB JSON-list body of {results['values']:,} values "
        "again and again; a normal client sends 1 x 32-token `.npy` requests one after another.",
        "",
        "| JSON lists decoded in | normal p50 / p99 / max alone (ms) | under attack (ms) | "
        "attack answers | peak RSS (MiB) | RSS after: all, server process (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        alone, hit = r["alone"], r["under_attack"]
        lines.append(
            f"| {r['mode']} | {alone['p50_ms']:.1f} / {alone['p99_ms']:.1f} / "
            f"{alone['max_ms']:.1f} | {hit['p50_ms']:.1f} / {hit['p99_ms']:.1f} / "
            f"{hit['max_ms']:.1f} | {r['attack_requests']} | {r['peak_rss_bytes'] / mib:.0f} | "
            f"{r['rss_after_bytes'] / mib:.0f}, {r['rss_after_server_bytes'] / mib:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.json_bodies", description=__doc__)
    p.add_argument(
        "--seconds", type=float, default=8.0, help="the normal client's time under attack"
    )
    p.add_argument("--attackers", type=int, default=3)
    p.add_argument("--values", type=int, default=Settings.model_fields["max_json_values"].default)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "json")
    a = p.parse_args(argv)
    attack = worst_json(a.values)
    results: dict[str, Any] = {
        "command": " ".join(
            ["python -m bench.json_bodies", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": machine(),
        "attackers": a.attackers,
        "values": a.values,
        "attack_bytes": len(attack),
        "runs": [
            measure("a worker process (default)", 1, a, attack),
            measure("a thread of the server", 0, a, attack),
        ],
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    a.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
