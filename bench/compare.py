"""Our server against the alternatives a user would deploy, on this machine, in one run.

    python -m bench.compare [--seconds 1.5] [--repeats 3] [--out results/bench] [--quick]

Every server serves the same ``model.onnx`` files through the same ONNX Runtime backend on CPU
and answers the same content (pooled vectors and head-mean pooling weights per item; ours adds
its diagnostics, or not with ``diagnostics=false``); each is started here on loopback, checked
against ONNX Runtime in process, then driven by hey in a separate process:

- ours: ``python -m service`` (``bench.process.running_server``), default settings, on its
  /pool routes and on the KServe v2 infer route (``ours-v2-binary``, ``ours-v2-json``: the very
  bytes Triton gets, so the two compare on one protocol and one client, issue #17);
- naive: ``bench.peers.naive`` (FastAPI, pydantic lists, one model run per request);
- LitServe: ``bench.peers.litserve_peer``, batching on (64 items per run, ``--litserve-batch-
  timeout``);
- Triton: ``bench.peers.triton_peer`` through PyTriton in ``<work>/pytriton-venv``, dynamic
  batcher on (64 items per run, ``--triton-delay-us``).

Workloads: the default model (D = 16) and ``knn-wide384`` (D = 384), 128 tokens per item, 1- and
8-item requests, concurrency 1, 8, 32 and 128, every format a server offers (``bench.bodies``).
Per cell: requests/s, items/s, p50/p99/max latency, errors (non-200 answers and transport errors),
the server's CPU seconds and peak RSS (its whole process tree, ``bench.procstat``). The run is
``--repeats`` rounds; each round measures raw ONNX Runtime in process (the ceiling) and then
starts every server in turn (the order rotating per round), so drift on this shared machine
spreads over all of them; cells report the median and the spread of the rounds. Then py-spy
profiles our server under load (``bench.pyspy``). Writes ``compare.json``, ``compare.md``,
``compare.png`` and the profiles into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bench import compare_render, compare_report, hey, pyspy
from bench.bodies import BY_NAME, SERIES, Series, body_for, check
from bench.peers import envs, launch
from bench.process import free_port, running_server
from bench.procstat import TreeUsage
from bench.serve import (
    DEFAULT_MODEL,
    TOKENS,
    WIDE_MODEL,
    Body,
    input_dim,
    machine,
    prepare_repository,
    raw_onnxruntime,
    server_stats,
)
from service.core.backend import OnnxBackend
from service.settings import Settings

SERVERS = ("ours", "naive", "litserve", "triton")
BATCH_ITEMS = 64  # items per model run: our default max_batch_size, given to every peer
RAW_BATCHES = (1, 8, 64)
QUEUE_BOUND = Settings.model_fields["max_queue_requests"].default
Start = Callable[[], AbstractContextManager[tuple[str, int]]]


@dataclass(frozen=True)
class Deployment:
    """One server process and the (model, items) workloads measured on it."""

    server: str
    label: str
    workloads: tuple[tuple[str, int], ...]
    start: Start
    endpoint: Callable[[str, str, Series], str]


@dataclass
class Run:
    args: argparse.Namespace
    repository: Path
    folder: Path
    batches: dict[str, np.ndarray]
    expected: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]
    cells: dict[tuple[str, str, int, int], list[dict[str, Any]]] = field(default_factory=dict)
    skipped: dict[tuple[str, str, int, int], str] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    bodies: dict[tuple[str, str, int], Body] = field(default_factory=dict)

    def body(self, series: Series, model: str, items: int) -> Body:
        key = (series.fmt + series.accept, model, items)
        if key not in self.bodies:
            self.bodies[key] = body_for(self.folder, series, self.batches[model][:items])
        return self.bodies[key]


# --- the servers -------------------------------------------------------------------------------


def model_file(repository: Path, model: str) -> Path:
    return repository / model / "1" / "model.onnx"


def v2_infer(url: str, model: str) -> str:
    return f"{url}/v2/models/{model}/infer"


def ours_endpoint(url: str, model: str, series: Series) -> str:
    """Our /pool route, or the v2 infer route for the v2 series."""
    if series.fmt.startswith("v2"):
        return v2_infer(url, model)
    return f"{url}/models/{model}/pool{series.query}"


def triton_command(
    python: Path, repository: Path, models: list[str], delay_us: int, http: int, grpc: int = 0
) -> list[str]:
    """The Triton peer's command line: HTTP on ``http``, gRPC on ``grpc`` (0: a free port)."""
    command = [str(python), "-m", "bench.peers.triton_peer"]
    command += [f"--model={m}={model_file(repository, m)}" for m in models]
    command += ["--http-port", str(http), "--grpc-port", str(grpc or free_port())]
    command += ["--metrics-port", str(free_port()), "--max-batch-size", str(BATCH_ITEMS)]
    return [*command, "--delay-us", str(delay_us)]


def triton_ready_paths(models: list[str]) -> list[str]:
    return ["/v2/health/ready"] + [f"/v2/models/{m}/ready" for m in models]


def deployments(run: Run, server: str, triton_python: Path | None) -> list[Deployment]:
    a, repo = run.args, run.repository
    logs = a.work / "logs"
    both = tuple((m, i) for m in a.models for i in a.items)

    if server == "ours":

        @contextmanager
        def ours() -> Iterator[tuple[str, int]]:
            flags = ["--models", ",".join(a.models), "--default-model", a.models[0]]
            with running_server(repo, flags + a.ours_flags) as (url, process):
                yield url, process.pid

        label = " ".join(["python -m service", *a.ours_flags])
        return [Deployment("ours", label, both, ours, ours_endpoint)]

    def peer(command: list[str], port: int, ready: list[str], name: str, **kw: Any) -> Start:
        @contextmanager
        def start() -> Iterator[tuple[str, int]]:
            url = f"http://127.0.0.1:{port}"
            urls = [url + path for path in ready]
            with launch.running(command, urls, logs / f"{name}.log", **kw) as process:
                yield url, process.pid

        return start

    python = sys.executable
    out = []
    for model in a.models:
        onnx = str(model_file(repo, model))
        if server == "naive":
            port = free_port()
            command = [python, "-m", "bench.peers.naive", "--model", onnx, "--port", str(port)]
            start = peer(command, port, ["/health"], f"naive-{model}")
            workloads = tuple((model, i) for i in a.items)
            out.append(Deployment(server, "naive", workloads, start, lambda u, m, s: f"{u}/pool"))
        if server == "litserve":
            for items in a.items:
                port = free_port()
                per_batch = max(1, BATCH_ITEMS // items)  # LitServe counts requests
                command = [python, "-m", "bench.peers.litserve_peer", "--model", onnx]
                command += ["--port", str(port), "--max-batch-size", str(per_batch)]
                command += ["--batch-timeout", str(a.litserve_batch_timeout)]
                start = peer(command, port, ["/health"], f"litserve-{model}-{items}")
                label = f"max_batch_size={per_batch}, batch_timeout={a.litserve_batch_timeout}, "
                label += "fast_queue"
                out.append(
                    Deployment(
                        server, label, ((model, items),), start, lambda u, m, s: f"{u}/predict"
                    )
                )
    if server == "triton" and triton_python is not None:
        http = free_port()
        command = triton_command(triton_python, repo, a.models, a.triton_delay_us, http)
        ready = triton_ready_paths(a.models)
        start = peer(command, http, ready, "triton", stop_signal=signal.SIGINT, ready_timeout=240)
        label = f"max_batch_size={BATCH_ITEMS}, max_queue_delay_microseconds={a.triton_delay_us}"
        out.append(Deployment(server, label, both, start, lambda u, m, s: v2_infer(u, m)))
    return out


# --- measuring ---------------------------------------------------------------------------------


def measure(
    run: Run,
    url: str,
    pid: int,
    endpoint: str,
    body: Body,
    items: int,
    c: int,
    ours: bool,
    model: str,
) -> dict[str, Any]:
    """One hey run against ``endpoint`` at concurrency ``c``, with the server tree's usage."""
    a = run.args
    before = server_stats(url, model) if ours else {}
    usage = TreeUsage(pid)
    usage.start()
    r = hey.run_summary(
        endpoint, body.path, body.content_type, body.headers, c, a.seconds, a.timeout
    )
    used = usage.stop()
    cell: dict[str, Any] = {
        "requests": r.requests,
        "ok": r.ok,
        "failed": r.failed,
        "statuses": {str(k): v for k, v in r.statuses.items()},
        "errors": r.errors,
        "wall_seconds": r.wall_seconds,
        "requests_per_second": r.requests_per_second,
        "items_per_second": r.requests_per_second * items,
        "p50_ms": 1000 * r.p50_seconds,
        "p99_ms": 1000 * r.p99_seconds,
        "max_ms": 1000 * r.max_seconds,
        "cpu_seconds": used["cpu_seconds"],
        "client_cpu_seconds": r.client_cpu_seconds,  # hey, on the same cores
        "cpu_ms_per_item": 1000 * float(used["cpu_seconds"]) / max(1, r.ok * items),
        "peak_rss_mib": int(used["peak_rss_bytes"]) / 2**20,
        "processes": used["processes"],
        "peak_rss_since_cell_start": used["peak_since_start"],
    }
    if ours:
        after = server_stats(url, model)
        count = after.get("batch_count", 0.0) - before.get("batch_count", 0.0)
        total = after.get("batch_sum", 0.0) - before.get("batch_sum", 0.0)
        cell["mean_batch_items"] = total / count if count else 0.0
    return cell


def run_deployment(run: Run, deployment: Deployment, round_: int) -> None:
    a = run.args
    series = [s for s in SERIES if s.server == deployment.server and s.name in a.series]
    print(f"round {round_ + 1}: {deployment.server} ({deployment.label})", flush=True)
    with ExitStack() as stack:
        try:
            url, pid = stack.enter_context(deployment.start())
        except Exception as exc:  # recorded for the report; the other servers still run
            failure = {"server": deployment.server, "round": round_ + 1, "stage": "start"}
            run.failures.append(failure | {"error": str(exc)})
            print(f"  {deployment.server} did not start: {str(exc)[:400]}", flush=True)
            return
        for model, items in deployment.workloads:
            for s in series:
                body = run.body(s, model, items)
                endpoint = deployment.endpoint(url, model, s)
                try:
                    check(endpoint, s, body, run.expected[(model, items)])
                except Exception as exc:
                    run.failures.append(
                        {"series": s.name, "model": model, "items": items, "round": round_ + 1}
                        | {"stage": "check", "error": f"{type(exc).__name__}: {exc}"}
                    )
                    print(f"  {s.name} {model} [{items}] check failed: {exc}", flush=True)
                    continue
                if a.warmup > 0:
                    hey.run_summary(
                        endpoint, body.path, body.content_type, body.headers, 8, a.warmup
                    )
                for c in a.concurrency:
                    key = (s.name, model, items, c)
                    inflight = c * body.path.stat().st_size
                    if inflight > a.max_inflight_mib * 2**20:
                        run.skipped[key] = (
                            f"{c} x {body.path.stat().st_size / 2**20:.1f} MiB bodies in flight "
                            f"(over --max-inflight-mib {a.max_inflight_mib})"
                        )
                        continue
                    cell = measure(
                        run, url, pid, endpoint, body, items, c, s.server == "ours", model
                    )
                    cell["round"] = round_ + 1
                    run.cells.setdefault(key, []).append(cell)
                    print(
                        f"  {s.name} {model} [{items}] c={c}: "
                        f"{cell['items_per_second']:,.0f} items/s, p50 {cell['p50_ms']:.1f} ms, "
                        f"p99 {cell['p99_ms']:.1f} ms, failed {cell['failed']}, "
                        f"cpu {cell['cpu_seconds']:.2f} s",
                        flush=True,
                    )


def raw_round(run: Run, raw: dict[str, dict[str, list[dict[str, float]]]]) -> None:
    for model in run.args.models:
        for b in RAW_BATCHES:
            x = run.batches[model][:b]
            r = raw_onnxruntime(model_file(run.repository, model), x, run.args.seconds)
            raw.setdefault(model, {}).setdefault(str(b), []).append(r)
            print(
                f"raw onnxruntime {model} [{b}]: {r['items_per_second']:,.0f} items/s", flush=True
            )


# --- profiling ---------------------------------------------------------------------------------


def profile(run: Run, out: Path) -> dict[str, Any]:
    """py-spy on our server under load: raw stacks per workload, one flame graph."""
    a = run.args
    workloads = [(a.models[0], 8), (a.models[0], 1)] + [(m, 8) for m in a.models[1:]]
    series = BY_NAME[a.profile_series]
    result: dict[str, Any] = {"series": series.name, "concurrency": 32, "workloads": []}
    flags = ["--models", ",".join(a.models), "--default-model", a.models[0], *a.ours_flags]
    with running_server(run.repository, flags) as (url, process):
        for i, (model, items) in enumerate(workloads):
            body = run.body(series, model, items)
            endpoint = ours_endpoint(url, model, series)
            hey.run_summary(endpoint, body.path, body.content_type, body.headers, 32, 1.0)
            before = server_stats(url, model)
            command = hey.command(
                endpoint, body.path, body.content_type, body.headers, 32, a.profile_seconds + 2
            )
            load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            name = f"compare-profile-{model}-{items}{'-v2' if series.fmt.startswith('v2') else ''}"
            report = pyspy.record(process.pid, a.profile_seconds, out / f"{name}.txt")
            svg = ""
            if i == 0:
                svg = f"{name}.svg"
                pyspy.record(process.pid, a.profile_seconds / 2, out / svg, fmt="flamegraph")
            summary = hey.parse_summary(load.communicate()[0].decode())
            after = server_stats(url, model)
            profile_summary = pyspy.summarise((out / f"{name}.txt").read_text())
            stage_ms = {}
            for stage in ("decode", "queue", "inference", "diagnostics", "encode"):
                n = after.get(f"{stage}_count", 0.0) - before.get(f"{stage}_count", 0.0)
                total = after.get(f"{stage}_sum", 0.0) - before.get(f"{stage}_sum", 0.0)
                stage_ms[stage] = 1000 * total / n if n else 0.0
            batches = after.get("batch_count", 0.0) - before.get("batch_count", 0.0)
            items_run = after.get("batch_sum", 0.0) - before.get("batch_sum", 0.0)
            result["workloads"].append(
                {
                    "model": model,
                    "items": items,
                    "raw_stacks": f"{name}.txt",
                    "flamegraph": svg,
                    "py_spy": report,
                    **profile_summary,
                    "server_stage_ms": stage_ms,
                    "mean_batch_items": items_run / batches if batches else 0.0,
                    "requests_per_second": summary.requests_per_second,
                    "p50_ms": 1000 * summary.p50_seconds,
                }
            )
            print(f"profiled {model} [{items}]: {profile_summary['stages']}", flush=True)
    return result


def peer_status(a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Which servers can run here, their versions and settings; why not, where not."""
    out: dict[str, dict[str, Any]] = {}
    defaults = {k: Settings.model_fields[k].default for k in ("max_batch_size", "max_wait_ms")}
    if "ours" in a.servers:
        version = metadata.version("adapool-serve")
        flags = {"flags": " ".join(a.ours_flags)} if a.ours_flags else {}
        out["ours"] = {"status": "ok", "version": version, "settings": defaults | flags}
    if "naive" in a.servers:
        versions = {d: metadata.version(d) for d in ("fastapi", "pydantic", "uvicorn")}
        out["naive"] = {
            "status": "ok",
            "version": ", ".join(f"{k} {v}" for k, v in versions.items()),
        }
    if "litserve" in a.servers:
        try:
            out["litserve"] = {"status": "ok", "version": envs.litserve_version()}
        except envs.PeerUnavailable as exc:
            out["litserve"] = {"status": "unavailable", "reason": str(exc)}
    if "triton" in a.servers:
        try:
            python = envs.triton_python(a.work / "pytriton-venv")
            versions = {d: envs.version_in(python, d) for d in ("nvidia-pytriton", "numpy")}
            out["triton"] = {
                "status": "ok",
                "python": str(python),
                "version": ", ".join(f"{k} {v}" for k, v in versions.items()),
            }
        except envs.PeerUnavailable as exc:
            out["triton"] = {"status": "unavailable", "reason": str(exc)}
    for name, status in out.items():
        print(f"{name}: {status.get('version') or status.get('reason')}", flush=True)
    return out


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    root = Path(__file__).parents[1]
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    p.add_argument("--seconds", type=float, default=1.2, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=0.3, help="unmeasured seconds per workload")
    p.add_argument("--repeats", type=int, default=3, help="rounds over every server")
    p.add_argument("--concurrency", default="1,8,32,128")
    p.add_argument("--items", default="1,8", help="items per request")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--series", default=",".join(s.name for s in SERIES))
    p.add_argument("--timeout", type=int, default=20, help="hey's per-request timeout (s)")
    p.add_argument("--max-inflight-mib", type=float, default=256)
    p.add_argument("--litserve-batch-timeout", type=float, default=0.002)
    p.add_argument("--triton-delay-us", type=int, default=0)
    p.add_argument("--profile-seconds", type=float, default=6.0, help="0: no profile")
    p.add_argument(
        "--profile-series",
        default="ours-npy",
        choices=[s.name for s in SERIES if s.server == "ours"],
        help="the series py-spy profiles",
    )
    p.add_argument(
        "--ours-flags",
        default="",
        help="more flags for our server, space-separated: --ours-flags='--batch-policy off'",
    )
    p.add_argument("--out", type=Path, default=root / "results" / "bench")
    p.add_argument("--work", type=Path, default=root / "runs" / "bench")
    p.add_argument("--quick", action="store_true", help="a smoke run: default model, 1 round")
    a = p.parse_args(argv)
    a.models = [DEFAULT_MODEL] if a.quick else [DEFAULT_MODEL, WIDE_MODEL]
    if a.quick:
        a.repeats = 1
    a.concurrency = [int(c) for c in str(a.concurrency).split(",")]
    a.items = [int(i) for i in str(a.items).split(",")]
    a.servers = [s for s in str(a.servers).split(",") if s]
    a.series = [s for s in str(a.series).split(",") if s]
    a.ours_flags = str(a.ours_flags).split()
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        hey.version()
    except hey.LoadGeneratorMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    repository = prepare_repository(a.work)
    rng = np.random.default_rng(0)
    batches = {
        m: rng.normal(size=(64, TOKENS, input_dim(repository, m))).astype(np.float32)
        for m in a.models
    }
    expected = {}
    for m in a.models:
        backend = OnnxBackend(model_file(repository, m), device="cpu")
        for i in a.items:
            out = backend.run(batches[m][:i], np.ones((i, TOKENS), dtype=bool))
            expected[(m, i)] = (out["pooled"], out["weights"])
    command = " ".join(["python -m bench.compare", *sys.argv[1:]])
    info = machine() | {"command": command}
    peers = peer_status(a)
    triton = peers.get("triton", {}).get("python")
    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(a, repository, Path(tmp), batches, expected)
        plan = {
            s: deployments(run, s, Path(triton) if triton else None)
            for s in a.servers
            if peers.get(s, {}).get("status") == "ok"
        }
        for r in range(a.repeats):
            raw_round(run, raw)
            order = list(plan)[r % len(plan) :] + list(plan)[: r % len(plan)] if plan else []
            for server in order:
                for deployment in plan[server]:
                    run_deployment(run, deployment, r)
        a.out.mkdir(parents=True, exist_ok=True)
        profiled = profile(run, a.out) if a.profile_seconds > 0 and "ours" in plan else {}
        body_bytes = {
            f"{fmt}/{m}/{i}": b.path.stat().st_size for (fmt, m, i), b in run.bodies.items()
        }
    info["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    settings |= {"batch_items": BATCH_ITEMS, "queue_bound": QUEUE_BOUND}
    results = compare_report.build(
        info, settings, peers, raw, run.cells, run.skipped, run.failures, profiled, body_bytes
    )
    name = "compare-quick" if a.quick else "compare"
    compare_render.write(results, a.out, name)
    print(f"wrote {a.out / name}.json, .md and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
