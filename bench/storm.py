"""``make bench-storm``: a 429 storm, with admission at the request head and without.

    python -m bench.storm [--seconds 5] [--rounds 3] [--concurrency 64] [--queue 8]
                          [--shapes 8,256,16 1,8,16] [--out FILE]

hey keeps ``--concurrency`` raw float32 pool requests in flight for ``--seconds`` against one
model (``knn-adapool-ego``, as ``tests/reliability/test_overload.py``) whose queue holds
``--queue`` requests, far above what it can serve: most requests are refused with 429. Beside
it a polite client sends one request at a time (after a 429 it waits 50 ms). Each round starts
three servers in turn: the default one (``head``: admission at the request head,
``service/api/admission.py``), one with ``--head-admission false`` (``app``: the app admits
and refuses), and the default one again with hey at ``--queue`` in flight (``calm``: what the
server serves without a storm), in alternating order.

Per server: requests offered, accepted (200) and refused (429) per second, their p50 and p99
latency (hey's), the event loop's CPU per request (the server's main thread, from
``/proc``), the whole server's, the polite client's accepted requests per second and p50, and
from the server's stage metrics the queue wait per request, model runs per second and the
seconds of model runs per second. The summary gives the medians of the rounds, ``head``'s
ratios to ``app``, and the share of the calm server's accepted requests (hey's and the polite
client's) that each still serves in the storm. The load generator and the polite client share
the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench import hey, procstat
from bench.process import ROOT, running_server
from bench.serve import server_stats

REPOSITORY = ROOT / "model_repository"
MODEL = "knn-adapool-ego"
MODES = {"head": "true", "app": "false"}  # --head-admission
CALM = "calm"  # the head server with hey at --queue in flight: its capacity without a storm
POLITE_PAUSE = 0.05  # the polite client's wait after a 429


def cpu(pid: int, task: int | None = None) -> float:
    """CPU seconds of process ``pid`` (or of its thread ``task``)."""
    where = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    return procstat.parse_stat(Path(where).read_text())[1]


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1e3, 1) if values else None


class Polite:
    """One request at a time until stopped; after a 429 it waits ``POLITE_PAUSE``."""

    def __init__(self, url: str, body: bytes, shape: str) -> None:
        self.request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/octet-stream", "X-Shape": shape}
        )
        self.seconds: list[float] = []  # of its 200s
        self.refused = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(self.request, timeout=30) as answer:
                    answer.read()
                self.seconds.append(time.perf_counter() - started)
            except urllib.error.HTTPError as error:
                error.read()
                self.refused += 1
                self.stop.wait(POLITE_PAUSE)


def stats(url: str) -> dict[str, float]:
    return server_stats(url, MODEL)


def storm(
    mode: str, shape: tuple[int, ...], args: argparse.Namespace, body: Path
) -> dict[str, Any]:
    """One server of ``mode`` under one storm (``calm``: the head server, no storm)."""
    flags = ["--max-queue-requests", str(args.queue), "--retry-after-seconds", "2"]
    flags += ["--head-admission", MODES.get(mode, "true")]
    concurrency = args.queue if mode == CALM else args.concurrency
    text_shape = ",".join(map(str, shape))
    query = "diagnostics=false&return_weights=none"
    with running_server(REPOSITORY, flags) as (url, server):
        target = f"{url}/models/{MODEL}/pool?{query}"
        polite = Polite(target, body.read_bytes(), text_shape)
        for _ in range(5):  # warm-up, alone
            with urllib.request.urlopen(polite.request, timeout=30) as answer:
                answer.read()
        loop0, all0, stats0 = cpu(server.pid, server.pid), cpu(server.pid), stats(url)
        line = hey.command(
            target,
            body,
            "application/octet-stream",
            {"X-Shape": text_shape},
            concurrency,
            args.seconds,
            "-o",
            "csv",
        )
        polite.thread.start()
        done = subprocess.run(line, capture_output=True, check=True, timeout=args.seconds + 120)
        polite.stop.set()
        polite.thread.join()
        loop1, all1, stats1 = cpu(server.pid, server.pid), cpu(server.pid), stats(url)
    delta = {k: v - stats0.get(k, 0.0) for k, v in stats1.items()}
    queued = delta.get("queue_count", 0.0)
    seconds: dict[int, list[float]] = {}
    for row in csv.DictReader(io.StringIO(done.stdout.decode())):
        seconds.setdefault(int(row["status-code"]), []).append(float(row["response-time"]))
    requests = sum(len(v) for v in seconds.values())
    accepted, refused = seconds.get(200, []), seconds.get(429, [])
    served = requests + len(polite.seconds) + polite.refused
    return {
        "mode": mode,
        "statuses": {str(k): len(v) for k, v in sorted(seconds.items())},
        "offered_per_s": round(requests / args.seconds, 1),
        "accepted_per_s": round(len(accepted) / args.seconds, 1),
        "refused_per_s": round(len(refused) / args.seconds, 1),
        "accepted_p50_ms": percentile_ms(accepted, 50),
        "accepted_p99_ms": percentile_ms(accepted, 99),
        "refused_p50_ms": percentile_ms(refused, 50),
        "refused_p99_ms": percentile_ms(refused, 99),
        "loop_cpu_ms_per_request": round((loop1 - loop0) / served * 1e3, 3),
        "server_cpu_ms_per_request": round((all1 - all0) / served * 1e3, 3),
        "polite_accepted_per_s": round(len(polite.seconds) / args.seconds, 1),
        "polite_refused": polite.refused,
        "polite_p50_ms": percentile_ms(polite.seconds, 50),
        "queue_ms_per_request": round(delta["queue_sum"] / queued * 1e3, 1) if queued else None,
        "model_runs_per_s": round(delta.get("inference_count", 0.0) / args.seconds, 1),
        # seconds of model runs per second, summed over the instances
        "model_busy": round(delta.get("inference_sum", 0.0) / args.seconds, 3),
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode the median of each figure over the rounds, and head's ratio to app."""
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    medians: dict[str, dict[str, float]] = {}
    for mode in [*MODES, CALM]:
        mine = [r for r in runs if r["mode"] == mode]
        medians[mode] = {
            k: round(statistics.median(r[k] for r in mine if r[k] is not None), 3)
            for k in keys
            if any(r[k] is not None for r in mine)
        }
    ratios = {
        k: round(medians["head"][k] / medians["app"][k], 2)
        for k in (
            "accepted_per_s",
            "refused_per_s",
            "loop_cpu_ms_per_request",
            "polite_accepted_per_s",
        )
        if medians["app"].get(k)
    }
    calm = medians[CALM]["accepted_per_s"] + medians[CALM]["polite_accepted_per_s"]
    for mode in MODES:  # the share of the calm capacity still served in the storm
        served = medians[mode]["accepted_per_s"] + medians[mode]["polite_accepted_per_s"]
        ratios[f"{mode}_served_over_calm"] = round(served / calm, 2) if calm else 0.0
    return {"median": medians, "head_over_app": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.storm", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--shapes", nargs="+", default=["8,256,16", "1,8,16"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    problem = hey.missing()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {
        "command": "python -m bench.storm " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": MODEL,
        "queue": args.queue,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "shapes": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        for text in args.shapes:
            shape = tuple(int(x) for x in text.split(","))
            body = Path(folder) / "body.bin"
            data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            body.write_bytes(data.tobytes())
            runs = []
            for round_ in range(args.rounds):
                modes = [*MODES, CALM] if round_ % 2 == 0 else [CALM, *reversed(list(MODES))]
                for mode in modes:
                    run = storm(mode, shape, args, body)
                    print(f"[{text}] round {round_ + 1} {json.dumps(run)}", flush=True)
                    runs.append(run)
            results["shapes"][text] = {"runs": runs, **summary(runs)}
            print(f"[{text}] {json.dumps(results['shapes'][text]['head_over_app'])}", flush=True)
    print(
        json.dumps(
            {k: v["median"] | {"ratios": v["head_over_app"]} for k, v in results["shapes"].items()},
            indent=1,
        )
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
