"""Triton's perf_analyzer against our server and Triton (PyTriton), on the same workload.

    python -m bench.perf_analyzer [--servers ours,triton] [--protocols http,grpc] \\
        [--concurrency 1,32] [--items 1,8] [--interval-ms 2000] [--out results/bench]
    python -m bench.perf_analyzer --url 127.0.0.1:8000 [--grpc-url 127.0.0.1:8001] \\
        [--model signature-adapool --dim 16] [...]

perf_analyzer is Triton's own load generator (C++): it reads the model's metadata and ``/config``,
then sends binary-tensor requests (HTTP) or raw contents (gRPC) from ``-c`` concurrent workers,
asking for every output of the model's config (its default), and measures in time windows until
three in a row agree (``--stability-percentage``; 50 here by default: the machine is shared).
PyPI's ``perf-analyzer`` 2.60 needs glibc 2.38 and installs here as a stub without the binary; the
``tritonclient`` 2.41.0 wheel still ships ``perf_analyzer`` (built for glibc 2.34, GLIBCXX 3.4.30),
which runs on Debian 12 with ``libb64.so.0d`` (Debian: ``apt-get install libb64-0d``) and
``libcudart.so.12`` (PyPI: ``nvidia-cuda-runtime-cu12``; loaded, no GPU used). :func:`install` puts
both wheels' files in ``<work>/perf-analyzer``.

Every request is one ``[items, 128, D]`` FP32 ``embeddings`` tensor: one item of seeded normal
values (``--input-data``, base64), repeated ``-b`` times by perf_analyzer; no ``attention_mask``
(our ``/config`` marks it optional, so perf_analyzer leaves it out, as for Triton's model, which
has no such input). Without ``--url``, it starts our server (HTTP and gRPC) and the Triton peer
itself, one after the other, on the default model and ``knn-wide384``, and writes
``perf_analyzer.json`` and ``perf_analyzer.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from bench.compare import triton_command, triton_ready_paths
from bench.peers import envs, launch
from bench.process import free_port, running_server
from bench.serve import DEFAULT_MODEL, TOKENS, WIDE_MODEL, input_dim, machine, prepare_repository

TRITONCLIENT = "tritonclient==2.41.0"  # the last wheels with perf_analyzer inside
CUDART = "nvidia-cuda-runtime-cu12==12.9.79"
ROOT = Path(__file__).parents[1]


class Unavailable(RuntimeError):
    """perf_analyzer cannot run here; the message says why and what to install."""


@dataclass(frozen=True)
class Measurement:
    """One perf_analyzer run: its stable window's figures (latencies at the client)."""

    server: str
    protocol: str
    model: str
    items: int
    concurrency: int
    items_per_second: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    avg_ms: float
    requests: int  # in the stable windows
    errors: int


def install(folder: Path) -> Path:
    """The perf_analyzer binary in ``folder/bin`` (with ``libcudart.so.12`` in ``folder/lib``),
    from the two wheels; Unavailable if it cannot start here."""
    binary, lib = folder / "bin" / "perf_analyzer", folder / "lib"
    if not binary.exists():
        wheels = folder / "wheels"
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        pip += ["--only-binary=:all:", "--dest", str(wheels), TRITONCLIENT, CUDART]
        done = subprocess.run(pip, capture_output=True, text=True)
        if done.returncode != 0:
            raise Unavailable(f"pip download failed:\n{done.stderr[-1500:]}")
        lib.mkdir(parents=True, exist_ok=True)
        binary.parent.mkdir(parents=True, exist_ok=True)
        for wheel in wheels.glob("*.whl"):
            with zipfile.ZipFile(wheel) as z:
                for name in z.namelist():
                    if name.endswith("/bin/perf_analyzer"):
                        binary.write_bytes(z.read(name))
                    elif name.endswith("/libcudart.so.12"):
                        (lib / "libcudart.so.12").write_bytes(z.read(name))
        binary.chmod(0o755)
        shutil.rmtree(wheels)
    missing = [
        line.split()[0]
        for line in subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, env=_env(folder)
        ).stdout.splitlines()
        if "not found" in line
    ]
    if missing:
        hint = " (apt-get install libb64-0d)" if any("b64" in m for m in missing) else ""
        raise Unavailable(f"perf_analyzer needs {', '.join(missing)}{hint}")
    return binary


def _env(folder: Path) -> dict[str, str]:
    paths = [str(folder / "lib"), *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":"))]
    return {**os.environ, "LD_LIBRARY_PATH": ":".join(paths)}


def write_input_data(path: Path, x: np.ndarray) -> Path:
    """perf_analyzer's ``--input-data`` file: one item of ``x`` ([N, D]: the batch axis is
    ``-b``'s), base64 little-endian FP32."""
    content = base64.b64encode(x.astype("<f4").tobytes()).decode()
    entry = {"embeddings": {"content": {"b64": content}, "shape": list(x.shape)}}
    path.write_text(json.dumps({"data": [entry]}))
    return path


def parse_csv(text: str) -> dict[str, float]:
    """Items/s and p50/p99 (ms) from perf_analyzer's ``-f`` CSV (latencies in microseconds)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ValueError("perf_analyzer wrote no measurement")
    row = rows[-1]
    return {
        "items_per_second": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }


_COUNT = re.compile(r"Request count: (\d+)")
_AVERAGE = re.compile(r"Avg latency: (\d+) usec")  # printed, not in the CSV


def measure(
    binary: Path,
    server: str,
    protocol: str,
    url: str,
    model: str,
    items: int,
    concurrency: int,
    data: Path,
    interval_ms: int,
    work: Path,
    stability: int = 50,
) -> Measurement:
    """One perf_analyzer run at one concurrency: windows of ``interval_ms`` until three in a
    row agree within ``stability`` percent (at most 10); RuntimeError with its output if it
    failed or never agreed (perf_analyzer then writes no figures)."""
    report = work / f"pa-{server}-{protocol}-{model}-{items}-{concurrency}.csv"
    command = [str(binary), "-m", model, "-u", url, "-i", protocol, "-b", str(items)]
    command += [f"--concurrency-range={concurrency}:{concurrency}", "--input-data", str(data)]
    command += ["--measurement-mode=time_windows", f"--measurement-interval={interval_ms}"]
    command += ["--max-trials=10", f"--stability-percentage={stability}"]
    command += ["-f", str(report)]
    done = subprocess.run(
        command, capture_output=True, text=True, env=_env(binary.parents[1]), timeout=300
    )
    out = done.stdout + done.stderr
    if done.returncode != 0 or not report.exists():
        raise RuntimeError(f"perf_analyzer exited {done.returncode}:\n{out[-2000:]}")
    figures = parse_csv(report.read_text())
    counts = [int(n) for n in _COUNT.findall(out)]
    averages = [int(n) / 1000 for n in _AVERAGE.findall(out)]
    return Measurement(
        server,
        protocol,
        model,
        items,
        concurrency,
        requests_per_second=figures["items_per_second"] / items,
        avg_ms=averages[-1] if averages else float("nan"),
        requests=counts[-1] if counts else 0,
        errors=0,  # a failed request stops perf_analyzer (exit 99): no figures then
        **figures,
    )


def print_measurement(m: Measurement) -> None:
    print(
        f"{m.server} {m.protocol} {m.model} [{m.items}] c={m.concurrency}: "
        f"{m.items_per_second:,.1f} items/s, {m.requests_per_second:,.1f} requests/s, "
        f"p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, errors {m.errors}",
        flush=True,
    )


# --- both servers, side by side ----------------------------------------------------------------


@contextmanager
def ours(repository: Path, models: list[str]) -> Iterator[dict[str, str]]:
    grpc = free_port()
    flags = ["--models", ",".join(models), "--default-model", models[0], "--grpc-port", str(grpc)]
    with running_server(repository, flags) as (url, _):
        yield {"http": url.removeprefix("http://"), "grpc": f"127.0.0.1:{grpc}"}


@contextmanager
def triton(repository: Path, models: list[str], work: Path) -> Iterator[dict[str, str]]:
    python = envs.triton_python(work / "pytriton-venv")
    http, grpc = free_port(), free_port()
    command = triton_command(python, repository, models, 0, http, grpc)
    urls = [f"http://127.0.0.1:{http}{p}" for p in triton_ready_paths(models)]
    log = work / "logs" / "triton-perf-analyzer.log"
    with launch.running(command, urls, log, stop_signal=signal.SIGINT, ready_timeout=240):
        yield {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}"}


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, shared), commit {m['commit']}, "
        f"perf_analyzer from {TRITONCLIENT}. Command: `{m['command']}`.",
        "",
        "| model | items | c | protocol | ours items/s | Triton items/s | ratio | ours p50 ms | "
        "Triton p50 ms | ours p99 ms | Triton p99 ms | p99 Triton/ours | errors ours/Triton |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    by = {
        (r["server"], r["protocol"], r["model"], r["items"], r["concurrency"]): r
        for r in results["runs"]
    }
    for (server, protocol, model, items, c), mine in by.items():
        if server != "ours":
            continue
        theirs = by.get(("triton", protocol, model, items, c))
        if theirs is None:
            lines.append(
                f"| {model} | {items} | {c} | {protocol} | {mine['items_per_second']:,.0f} | | | "
                f"{mine['p50_ms']:.2f} | | {mine['p99_ms']:.2f} | | | {mine['errors']}/ |"
            )
            continue
        lines.append(
            f"| {model} | {items} | {c} | {protocol} | {mine['items_per_second']:,.0f} | "
            f"{theirs['items_per_second']:,.0f} | "
            f"{mine['items_per_second'] / theirs['items_per_second']:.2f}x | "
            f"{mine['p50_ms']:.2f} | {theirs['p50_ms']:.2f} | {mine['p99_ms']:.2f} | "
            f"{theirs['p99_ms']:.2f} | {theirs['p99_ms'] / mine['p99_ms']:.2f}x | "
            f"{mine['errors']}/{theirs['errors']} |"
        )
    if results["failures"]:
        lines += ["", "Failures:", ""] + [f"- {f}" for f in results["failures"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf_analyzer", description=__doc__)
    p.add_argument(
        "--url", help="HTTP host:port of a running server (default: start ours and Triton)"
    )
    p.add_argument("--grpc-url", help="with --url: its gRPC host:port (none: HTTP only)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="with --url: the model")
    p.add_argument("--dim", type=int, default=16, help="with --url: the model's input dim D")
    p.add_argument("--servers", default="ours,triton")
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--items", default="1,8")
    p.add_argument("--interval-ms", type=int, default=2000, help="perf_analyzer's time window")
    p.add_argument(
        "--stability", type=int, default=50, help="percent three windows in a row must agree within"
    )
    p.add_argument("--quick", action="store_true", help="the default model only")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench")
    a = p.parse_args(argv)
    protocols = [s for s in a.protocols.split(",") if s]
    concurrency = [int(c) for c in a.concurrency.split(",")]
    items = [int(i) for i in a.items.split(",")]
    try:
        binary = install(a.work / "perf-analyzer")
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    work = a.work / "perf-analyzer" / "runs"
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def data(model: str, dim: int) -> Path:
        x = rng.normal(size=(TOKENS, dim)).astype(np.float32)
        return write_input_data(work / f"input-{model}.json", x)

    if a.url:  # one running server, one model
        path = data(a.model, a.dim)
        given = {"http": a.url, "grpc": a.grpc_url}
        for protocol, i, c in product([p for p in protocols if given[p]], items, concurrency):
            where = (protocol, given[protocol], a.model, i, c, path)
            print_measurement(measure(binary, "server", *where, a.interval_ms, work, a.stability))
        return 0
    repository = prepare_repository(a.work, wide=not a.quick)
    models = [DEFAULT_MODEL] if a.quick else [DEFAULT_MODEL, WIDE_MODEL]
    inputs = {m: data(m, input_dim(repository, m)) for m in models}
    runs: list[Measurement] = []
    failures: list[str] = []
    for server in [s for s in a.servers.split(",") if s]:
        try:
            start = (
                ours(repository, models) if server == "ours" else triton(repository, models, a.work)
            )
            with start as urls:
                for model, protocol, i, c in product(models, protocols, items, concurrency):
                    where = (protocol, urls[protocol], model, i, c, inputs[model])
                    try:
                        runs.append(
                            measure(binary, server, *where, a.interval_ms, work, a.stability)
                        )
                    except (RuntimeError, ValueError) as exc:
                        failures.append(f"{server} {protocol} {model} [{i}] c={c}: {exc}"[:600])
                        print(failures[-1], flush=True)
                        continue
                    print_measurement(runs[-1])
        except (envs.PeerUnavailable, RuntimeError, TimeoutError) as exc:
            failures.append(f"{server} did not start: {str(exc)[:400]}")
            print(failures[-1], flush=True)
    info = machine() | {"command": " ".join(["python -m bench.perf_analyzer", *sys.argv[1:]])}
    results = {"machine": info, "runs": [asdict(m) for m in runs], "failures": failures}
    name = "perf_analyzer-quick" if a.quick else "perf_analyzer"
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    (a.out / f"{name}.md").write_text(text)
    print("\n" + text)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
