"""``make bench``: the service under load, beside raw ONNX Runtime on the same batches.

    python -m bench.serve [--seconds 5] [--out results/bench] [--quick]

In one run, on this machine:

1. Builds a benchmark repository (``runs/bench/model_repository``): the committed default model
   and a wider model (384-dimensional input, ``configs/bench/wide384.toml``) exported through
   the export pipeline (``export.cli.export_run``: ONNX, parity check, manifest).
2. Raw ONNX Runtime: an in-process session per model (the service's session options) running
   the benchmark's batches back to back: the ceiling for items/s.
3. Starts the real server (``python -m service``, uvicorn) and drives it with hey, a load
   generator in a separate process: requests/s, items/s, p50 and p99 latency per request format
   (JSON lists, JSON base64, .npy, raw bytes) at concurrency 1 and 32, [8, 128, D] requests.
4. Dynamic batching: single-item requests at concurrency 32 against the default server and
   against one started with ``--max-batch-size 1``.
5. The Python client (``bench/client.py``): its ``pool`` and ``pool_many`` beside hey on the same
   [8, 128, 16] requests to the default model, as the client sends them (``.npy`` in, ``.npz``
   out), and the client's CPU time per request: its own overhead.
6. Prints the figures and the issue's target ratios, and writes ``serve.json`` and ``serve.md``.

Every figure comes from this run; nothing is compared across runs. The load generator shares the
machine's cores with the server, as a client on the same host would.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench import client as client_bench
from bench import cores as cores_split
from bench import hey
from bench.process import ROOT, running_server
from service.core.backend import OnnxBackend
from service.core.runtime import threads_per_run
from service.settings import Settings

DEFAULT_MODEL = Settings.model_fields["default_model"].default  # the service's default
WIDE_MODEL = "knn-wide384"
WIDE_CONFIG = ROOT / "configs" / "bench" / "wide384.toml"
FORMATS = ("json", "base64", "npy", "raw")
TOKENS = 128
ITEMS = 8
RAW_BATCHES = (1, 2, 4, 8, 16, 32, 64)  # raw ONNX Runtime's curve; its best is the ceiling
PINNED_BATCHES = (8, 16, 32, 64)  # the wide model's server with its run size pinned
INSTANCES = Settings.model_fields["model_instances"].default  # the service's runs at once


# --- the benchmark repository ------------------------------------------------------------------


def prepare_repository(root: Path, wide: bool = True) -> Path:
    """``root/model_repository`` with the default model and the wide model (exported once,
    unless ``wide`` is false)."""
    repository = root / "model_repository"
    repository.mkdir(parents=True, exist_ok=True)
    default_dir = repository / DEFAULT_MODEL
    if default_dir.exists():
        shutil.rmtree(default_dir)
    shutil.copytree(ROOT / "model_repository" / DEFAULT_MODEL, default_dir)
    manifest = repository / WIDE_MODEL / "1" / "manifest.json"
    # A wide model exported before the export wrote MultiHeadAttention (issue 15), or in the
    # older manifest format, is stale.
    stale = not manifest.exists() or "attention" not in json.loads(manifest.read_text())["export"]
    if wide and (stale or json.loads(manifest.read_text()).get("format") != 2):
        shutil.rmtree(repository / WIDE_MODEL, ignore_errors=True)
        export_wide_model(root / "runs" / WIDE_MODEL, repository)
    return repository


def wide_run(run_dir: Path) -> Path:
    """Write the wide model's run (its seeded initialisation) to ``run_dir``; returns it."""
    import torch  # training extra: only needed the first time

    from models import build_model
    from models.checkpoint import BEST_FILE, save_config, save_model
    from models.config import load_run_config

    config = load_run_config(WIDE_CONFIG)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    torch.manual_seed(config.train.seed)
    save_config(run_dir, config)
    save_model(build_model(config.model), run_dir / BEST_FILE)
    return run_dir


def export_wide_model(run_dir: Path, repository: Path) -> None:
    """Write the wide model's run and export it as version 1."""
    from export.cli import export_run

    wide_run(run_dir)
    print(f"exporting {WIDE_MODEL} ({WIDE_CONFIG.relative_to(ROOT)}) ...", flush=True)
    export_run(run_dir, WIDE_MODEL, 1, repository, command="python -m bench.serve")


def input_dim(repository: Path, name: str) -> int:
    manifest = json.loads((repository / name / "1" / "manifest.json").read_text())
    return int(manifest["input_dim"])


# --- request bodies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    path: Path
    content_type: str
    headers: dict[str, str]


def write_body(folder: Path, fmt: str, x: np.ndarray) -> Body:
    """The request body for ``x`` [B, N, D] float32 in one of the four formats."""
    shape = ",".join(str(s) for s in x.shape)
    path = folder / f"{fmt}-{shape.replace(',', 'x')}.body"
    if fmt == "json":
        path.write_bytes(orjson.dumps({"embeddings": x.tolist()}))
        return Body(path, "application/json", {})
    if fmt == "base64":
        payload = {"embeddings_b64": b64encode(x.tobytes()).decode(), "shape": list(x.shape)}
        path.write_bytes(orjson.dumps(payload | {"dtype": "float32"}))
        return Body(path, "application/json", {})
    if fmt == "npy":
        buffer = io.BytesIO()
        np.save(buffer, x)
        path.write_bytes(buffer.getvalue())
        return Body(path, "application/x-npy", {})
    if fmt == "raw":
        path.write_bytes(x.astype("<f4").tobytes())
        return Body(path, "application/octet-stream", {"X-Shape": shape, "X-Dtype": "float32"})
    raise ValueError(f"unknown format {fmt!r}")


def post(url: str, body: Body, timeout: float = 60) -> tuple[bytes, dict[str, str]]:
    """POST ``body`` once; returns the answer's bytes and its headers (lower-case names).
    Raises urllib.error.HTTPError for any status but 2xx."""
    request = urllib.request.Request(
        url,
        data=body.path.read_bytes(),
        headers={"Content-Type": body.content_type, **body.headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read(), {k.lower(): v for k, v in response.headers.items()}


def check_body(url: str, body: Body, items: int) -> None:
    """One request by hand before the load: it must answer 200 with ``items`` pooled vectors."""
    answer = orjson.loads(post(url, body)[0])
    got = len(answer["pooled"])
    if got != items:
        raise RuntimeError(f"{body.path.name}: expected {items} pooled vectors, got {got}")


# --- raw ONNX Runtime --------------------------------------------------------------------------


def raw_onnxruntime(
    model_file: Path, x: np.ndarray, seconds: float, repeats: int = 1, instances: int = 1
) -> dict[str, float]:
    """items/s of an in-process session with the service's options (its own ``OnnxBackend``:
    idle threads not spinning, the shared arena) on batch ``x``, back to back; ``repeats``
    timed loops of ``seconds``, the median kept. ``instances``: runs at once, each from a
    thread of its own, with the cores divided among them as the service divides them
    (``threads_per_run``; one instance: all cores). ``cores``: the process's CPU seconds per
    wall second meanwhile, and ``cpu_ms_per_item`` the CPU an item costs."""
    threads = threads_per_run(instances, 0)
    backend = OnnxBackend(model_file, "cpu", threads)
    mask = np.ones(x.shape[:2], dtype=bool)
    for _ in range(3):
        backend.run(x, mask)
    measured = []
    for _ in range(repeats):
        counts = [0] * instances
        started, cpu = time.perf_counter(), time.process_time()
        stop = started + seconds

        def loop(i: int, counts: list[int] = counts, stop: float = stop) -> None:
            while time.perf_counter() < stop:
                backend.run(x, mask)
                counts[i] += 1

        workers = [threading.Thread(target=loop, args=(i,)) for i in range(instances)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - started
        measured.append((elapsed / sum(counts), (time.process_time() - cpu) / elapsed))
    measured.sort()
    seconds_per_run, cores_used = measured[len(measured) // 2]
    return {
        "batch": float(x.shape[0]),
        "instances": float(instances),
        "intra_op_threads": float(threads),
        "ms_per_run": 1000 * seconds_per_run * instances,
        "items_per_second": x.shape[0] / seconds_per_run,
        "cores": cores_used,
        "cpu_ms_per_item": 1000 * seconds_per_run * cores_used / x.shape[0],
    }


# --- the server under load ---------------------------------------------------------------------


STAGES = ("decode", "queue", "inference", "diagnostics", "encode")


def server_stats(url: str, model: str) -> dict[str, float]:
    """Sums and counts of the server's batch-size and stage-duration histograms for ``model``."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    stats: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("adapool_batch_size", "adapool_stage_duration_seconds"):
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model or not sample.name.endswith(("_sum", "_count")):
                continue
            key = sample.labels.get("stage", "batch") + sample.name[sample.name.rindex("_") :]
            stats[key] = sample.value
    return stats


def load(
    url: str,
    model: str,
    body: Body,
    items: int,
    concurrency: int,
    seconds: float,
    warmup: float,
    repeats: int = 1,
    pid: int | None = None,
) -> dict[str, Any]:
    """Warm up, then measure one cell ``repeats`` times and keep the run of median throughput.

    Adds what the server's own metrics say about the kept run: its mean items per model run and
    mean seconds per request in each stage (decode, queue, inference, diagnostics, encode); and,
    given the server's ``pid``, where the cores went meanwhile (``bench.cores``).
    """
    endpoint = f"{url}/models/{model}/pool"
    check_body(endpoint, body, items)
    if warmup > 0:
        hey.run(endpoint, body.path, body.content_type, body.headers, concurrency, warmup)
    runs = []
    for _ in range(repeats):
        before = server_stats(url, model)

        def generate() -> hey.LoadResult:
            return hey.run(
                endpoint, body.path, body.content_type, body.headers, concurrency, seconds
            )

        result, split = cores_split.split(pid, generate) if pid else (generate(), None)
        after = server_stats(url, model)
        runs.append((result, {k: v - before.get(k, 0.0) for k, v in after.items()}, split))
    runs.sort(key=lambda run: run[0].requests_per_second)
    result, delta, split = runs[len(runs) // 2]

    def mean(name: str) -> float:
        count = delta.get(f"{name}_count", 0.0)
        return delta.get(f"{name}_sum", 0.0) / count if count else 0.0

    return {
        "requests": result.requests,
        "statuses": {str(k): v for k, v in result.statuses.items()},
        "wall_seconds": round(result.wall_seconds, 3),
        "requests_per_second": result.requests_per_second,
        "items_per_second": result.requests_per_second * items,
        "p50_ms": 1000 * result.p50_seconds,
        "p99_ms": 1000 * result.p99_seconds,
        "body_bytes": body.path.stat().st_size,
        "mean_batch_items": mean("batch"),
        "stage_ms": {stage: 1000 * mean(stage) for stage in STAGES},
        "repeats_requests_per_second": [round(r.requests_per_second, 1) for r, _, _ in runs],
        "cores": split,
    }


# --- report ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, cwd=ROOT
    ).stdout.decode()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, cwd=ROOT
    ).stdout.strip()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "uvicorn": metadata.version("uvicorn"),
        "hey": hey.version(),
        "commit": commit.strip() + ("+dirty" if dirty else ""),
        "command": "python -m bench.serve " + " ".join(sys.argv[1:]),
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as measured ratios, each with what bounds it in this run."""
    out: list[dict[str, Any]] = []

    def add(target: str, ratio: float, goal: float, context: str) -> None:
        out.append({"target": target, "ratio": ratio, "met": ratio >= goal, "context": context})

    wide = results["serve"].get(WIDE_MODEL, {})
    ceilings = [("raw ONNX Runtime's best", raw_best(results, WIDE_MODEL))]
    if results.get("raw_onnxruntime_instances"):  # and the issue's, one run at a time
        one_at_a_time = raw_best(results, WIDE_MODEL, ("raw_onnxruntime",))
        ceilings.append(("its best one run at a time", one_at_a_time))
    for name, best in ceilings:
        if best is None:
            continue
        ceiling = best["items_per_second"]
        for fmt in ("npy", "raw"):
            if "32" in wide.get(fmt, {}):
                cell = wide[fmt]["32"]
                add(
                    f"{fmt} at c=32 >= 0.8x {name} items/s ({WIDE_MODEL})",
                    cell["items_per_second"] / ceiling,
                    0.8,
                    f"{name}: {ceiling:,.0f} items/s, {raw_label(best)}; the server's runs "
                    f"held {cell['mean_batch_items']:.1f} items",
                )
    for model, cells in results.get("policy", {}).items():
        if "measured" in cells and "off" in cells:
            on, off = cells["measured"], cells["off"]
            add(
                f"batch policy measured vs off, .npy [{ITEMS}] c=32 ({model}): not slower "
                "than 0.95x",
                on["items_per_second"] / off["items_per_second"],
                0.95 if model == DEFAULT_MODEL else 1.0,
                f"{on['items_per_second']:,.0f} vs {off['items_per_second']:,.0f} items/s; runs "
                f"of {on['mean_batch_items']:.1f} vs {off['mean_batch_items']:.1f} items",
            )
    for model, sizes in results.get("pinned", {}).items():
        # the default server's median round beside the pinned ones (the grid's cell otherwise)
        served = results.get("policy", {}).get(model, {}).get("measured")
        served = served or results["serve"].get(model, {}).get("npy", {}).get("32")
        if not served:
            continue
        size, top = max(sizes.items(), key=lambda kv: kv[1]["items_per_second"])
        add(
            f"the measured policy within 5% of the best pinned run size, .npy [{ITEMS}] c=32 "
            f"({model})",
            served["items_per_second"] / top["items_per_second"],
            0.95,
            f"{served['items_per_second']:,.0f} items/s in runs of "
            f"{served['mean_batch_items']:.1f} vs {top['items_per_second']:,.0f} pinned at {size}",
        )
    for model, formats in results["serve"].items():
        cell = formats.get("npy", {}).get("32")
        limit = core_bound(results, model, cell) if cell else None
        if limit is None or model != WIDE_MODEL:
            continue
        best = raw_best(results, model)
        assert best is not None and cell is not None
        add(
            f"npy at c=32 >= 0.8x the bound the cores left ({model}), for the record",
            cell["items_per_second"] / limit,
            0.8,
            f"the event loop, the decoding threads and hey used {cell['cores']['loop']:.2f} + "
            f"{cell['cores'].get('decoders', 0.0):.2f} + "
            f"{cell['cores']['load_generator']:.2f} cores: the bound is "
            f"{limit / best['items_per_second']:.2f}x raw ONNX Runtime's best",
        )
    for c in ("1", "32"):
        if c in wide.get("json", {}) and c in wide.get("npy", {}):
            npy, js = wide["npy"][c], wide["json"][c]
            decode = ""
            if npy.get("stage_ms") and js.get("stage_ms"):
                decode = (
                    f"; server decode stage {js['stage_ms']['decode']:.1f} ms (JSON) vs "
                    f"{npy['stage_ms']['decode']:.2f} ms (npy), inference "
                    f"{npy['stage_ms']['inference']:.1f} ms"
                )
            add(
                f"npy >= 10x JSON lists items/s, [{ITEMS},{TOKENS},384], c={c}",
                npy["items_per_second"] / js["items_per_second"],
                10,
                f"p50 {js['p50_ms']:.1f} ms (JSON) vs {npy['p50_ms']:.1f} ms (npy){decode}",
            )
    for model, cells in results["batching"].items():
        bound = ""
        model_raw = results["raw_onnxruntime"].get(model, {})
        if "1" in model_raw and "64" in model_raw:
            gain = model_raw["64"]["items_per_second"] / model_raw["1"]["items_per_second"]
            bound = f"raw ONNX Runtime itself gains {gain:.2f}x from batch 1 to 64"
        add(
            f"single-item requests, batching >= 3x max_batch_size=1 ({model})",
            cells["batched"]["items_per_second"] / cells["unbatched"]["items_per_second"],
            3,
            bound,
        )
    return out


def median_cell(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median items/s."""
    return sorted(rounds, key=lambda r: r["items_per_second"])[len(rounds) // 2]


def rounds_text(cell: dict[str, Any]) -> str:
    """Every round's items/s of a cell measured in rounds ("" for a single measurement)."""
    return ", ".join(f"{v:,}" for v in cell.get("rounds", []))


RAW_KINDS = ("raw_onnxruntime", "raw_onnxruntime_instances")


def raw_best(
    results: dict[str, Any], model: str, kinds: tuple[str, ...] = RAW_KINDS
) -> dict[str, float] | None:
    """Raw ONNX Runtime's best cell for ``model`` over every batch, one run at a time or
    several at once (a run that did not measure several has only the first)."""
    cells = [c for kind in kinds for c in results.get(kind, {}).get(model, {}).values()]
    return max(cells, key=lambda r: r["items_per_second"]) if cells else None


def raw_label(cell: dict[str, float]) -> str:
    """How a raw cell ran: its batch, and its runs at once when more than one."""
    at_once = int(cell.get("instances", 1))
    runs = f", {at_once} runs at once" if at_once > 1 else ", one run at a time"
    return f"batch {int(cell['batch'])}{runs}"


def core_bound(results: dict[str, Any], model: str, cell: dict[str, Any]) -> float | None:
    """The items/s the model could reach on the cores that the event loop, the decoding threads
    and the load generator left it in ``cell``, at raw ONNX Runtime's CPU per item at its best
    batch."""
    best, split = raw_best(results, model), cell.get("cores")
    if not best or not split or not best.get("cpu_ms_per_item"):
        return None
    taken = split["loop"] + split.get("decoders", 0.0) + split["load_generator"]
    left = float(results["machine"]["cores"]) - taken
    return float(1000 * left / best["cpu_ms_per_item"])


def pinned_table(results: dict[str, Any]) -> list[str]:
    """The wide model's server at each pinned run size."""
    lines: list[str] = []
    for model, sizes in results.get("pinned", {}).items():
        lines += [
            "",
            f"{model}'s server with its run size pinned (`--preferred-batch-tokens "
            f"items x {TOKENS}`), [{ITEMS}, {TOKENS}, D] .npy at concurrency 32, the sizes "
            "in turn, round after round (a fresh server each time):",
            "",
            "| run size | items/s, median | rounds | mean run items | p99 ms |",
            "|---:|---:|---|---:|---:|",
        ]
        for size, kept in sizes.items():
            each = rounds_text(kept)
            lines.append(
                f"| {size} | {kept['items_per_second']:,.0f} | {each} | "
                f"{kept['mean_batch_items']:.1f} | {kept['p99_ms']:.1f} |"
            )
    return lines


def raw_at(results: dict[str, Any], model: str, items: float) -> dict[str, float] | None:
    """Raw ONNX Runtime's cell nearest to runs of ``items`` items, with as many runs at once as
    the service's instances (one run at a time if the run measured no others)."""
    kind = "raw_onnxruntime_instances" if results.get("raw_onnxruntime_instances") else ""
    cells: list[dict[str, float]] = list(
        results.get(kind or "raw_onnxruntime", {}).get(model, {}).values()
    )
    if not cells or items <= 0:
        return None
    return min(cells, key=lambda c: abs(math.log(c["batch"] / items)))


def cores_table(results: dict[str, Any]) -> list[str]:
    """Where the cores went during each model's .npy [8] c=32 cell."""
    rows = []
    for model, formats in results["serve"].items():
        cell = formats.get("npy", {}).get("32")
        best = raw_best(results, model)
        bound = core_bound(results, model, cell) if cell else None
        if not cell or not best or bound is None:
            continue
        split = cell["cores"]
        served_cpu = 1000 * split["model"] / cell["items_per_second"]
        same = raw_at(results, model, cell["mean_batch_items"])
        same_text = f"{same['cpu_ms_per_item']:.2f} ({raw_label(same)})" if same else ""
        rows.append(
            f"| {model} | {cell['items_per_second']:,.0f} | {split['loop']:.2f} | "
            f"{split.get('decoders', 0.0):.2f} | {split['model']:.2f} | "
            f"{split['load_generator']:.2f} | {split['idle']:.2f} | "
            f"{served_cpu:.2f} | {same_text} | {best['cpu_ms_per_item']:.2f} "
            f"({raw_label(best)}) | {bound:,.0f} | {cell['items_per_second'] / bound:.2f}x | "
            f"{bound / best['items_per_second']:.2f}x |"
        )
    if not rows:
        return []
    return [
        "",
        f"Where the {results['machine']['cores']} cores went, [{ITEMS}, {TOKENS}, D] .npy at "
        "concurrency 32 (the default server; cores = CPU seconds per second, from /proc and "
        "hey's rusage; decoding threads: the server's `decode_N` threads, which decode large "
        "bodies). *Bound*: the items/s the model could reach on the cores that the event loop, "
        "the decoding threads and hey left, at raw ONNX Runtime's CPU per item at its best batch:",
        "",
        "| model | items/s | event loop | decoding threads | model threads | hey | idle "
        "| model CPU ms per item | raw at the server's run size: CPU ms per item "
        "| raw at its best: CPU ms per item | bound items/s | served / bound | bound / raw best |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores), commit {m['commit']}, "
        f"onnxruntime {m['onnxruntime']}, hey {m['hey']}, load average before "
        f"{m['load_average_before']}. Command: `{m['command']}`.",
        "",
        "Raw ONNX Runtime, in process, back to back, one run at a time (all cores in the run) "
        "and as many at once as the service's instances (the cores divided among them); the "
        "ceiling is the best of all:",
        "",
        "| model | batch [B, 128, D] | runs at once | threads per run | ms per run | items/s "
        "| cores | CPU ms per item |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in RAW_KINDS:
        for model, runs in results.get(kind, {}).items():
            for r in runs.values():
                threads = int(r.get("intra_op_threads", 0)) or "all"
                lines.append(
                    f"| {model} | {int(r['batch'])} | {int(r.get('instances', 1))} | {threads} "
                    f"| {r['ms_per_run']:.2f} | {r['items_per_second']:,.0f} "
                    f"| {r.get('cores', 0):.2f} | {r.get('cpu_ms_per_item', 0):.2f} |"
                )
    lines += [
        "",
        f"The server, [{ITEMS}, {TOKENS}, D] requests, default settings, hey in a separate process"
        " (JSON responses with head-mean weights and diagnostics):",
        "",
        "| model | format | body | concurrency | requests/s | items/s | p50 ms | p99 ms | "
        "mean run items | non-200 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, formats in results["serve"].items():
        for fmt, cells in formats.items():
            for c, r in cells.items():
                bad = sum(v for k, v in r["statuses"].items() if k != "200")
                lines.append(
                    f"| {model} | {fmt} | {r['body_bytes'] / 1024:,.0f} KiB | {c} | "
                    f"{r['requests_per_second']:,.1f} | {r['items_per_second']:,.0f} | "
                    f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch_items']:.1f} | {bad} |"
                )
    lines += [
        "",
        f"Dynamic batching: single-item [1, {TOKENS}, D] .npy requests at concurrency 32:",
        "",
        "| model | server | requests/s | p50 ms | p99 ms | mean run items |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model, cells in results["batching"].items():
        for name, r in cells.items():
            label = "default batching" if name == "batched" else "--max-batch-size 1"
            lines.append(
                f"| {model} | {label} | {r['requests_per_second']:,.1f} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {r['mean_batch_items']:.1f} |"
            )
    lines += [
        "",
        f"Server settings, [{ITEMS}, {TOKENS}, D] .npy requests, the servers started in turn, "
        "round after round (the median round's figures; every round's items/s, and the median's "
        "ratio to the defaults' in the same rounds):",
        "",
        "| server flags | model, concurrency | requests/s | p50 ms | p99 ms | mean run items "
        "| rounds, items/s | vs defaults |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    defaults = results["settings"].get("", {})
    for flags, cells in results["settings"].items():
        for c, r in cells.items():
            each = rounds_text(r)
            base = defaults.get(c, r)["items_per_second"]
            lines.append(
                f"| {flags or '(defaults)'} | {c} | {r['requests_per_second']:,.1f} | "
                f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch_items']:.1f} | "
                f"{each} | {r['items_per_second'] / base:.2f}x |"
            )
    lines += [
        "",
        f"Where a request's time goes, {WIDE_MODEL}, concurrency 1 (server metrics, mean ms):",
        "",
        "| format | " + " | ".join(STAGES) + " | p50 at the client |",
        "|---|" + "---:|" * (len(STAGES) + 1),
    ]
    for fmt, cells in results["serve"].get(WIDE_MODEL, {}).items():
        if "1" in cells and cells["1"].get("stage_ms"):
            r = cells["1"]
            stages = " | ".join(f"{r['stage_ms'][s]:.2f}" for s in STAGES)
            lines.append(f"| {fmt} | {stages} | {r['p50_ms']:.1f} |")
    if "batch_policies" in results:
        lines += [
            "",
            "The batch policy each model's server chose at start-up (`/info`, `batch_policies`):"
            " items/s by batch size at 128 tokens, measured by the server itself:",
            "",
            "| model | source | preferred items | curve (batch: items/s) |",
            "|---|---|---:|---|",
        ]
        for label, policy in results["batch_policies"].items():
            curve = ", ".join(
                f"{p['batch']}: {p['items_per_second']:,.0f}" for p in policy["curve"]
            )
            preferred = policy["preferred_items"] or "caps"
            lines.append(f"| {label} | {policy['source']} | {preferred} | {curve} |")
    if "policy" in results:
        lines += [
            "",
            f"Batch policy measured (default) against `--batch-policy off`, [{ITEMS}, {TOKENS},"
            " D] .npy at concurrency 32, the servers started in turn, round after round:",
            "",
            "| model | policy | items/s | p50 ms | p99 ms | mean run items | rounds, items/s |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for model, variants in results["policy"].items():
            for name, r in variants.items():
                each = rounds_text(r)
                lines.append(
                    f"| {model} | {name} | {r['items_per_second']:,.0f} | {r['p50_ms']:.1f} | "
                    f"{r['p99_ms']:.1f} | {r['mean_batch_items']:.1f} | {each} |"
                )
    lines += cores_table(results)
    lines += pinned_table(results)
    if "client" in results:
        lines += client_bench.markdown(results["client"])
    lines += ["", "Targets:", "", "| target | measured | met | in this run |", "|---|---:|---|---|"]
    for t in results["targets"]:
        met = "yes" if t["met"] else "no"
        lines.append(f"| {t['target']} | {t['ratio']:.2f}x | {met} | {t.get('context', '')} |")
    return "\n".join(lines) + "\n"


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per cell")
    parser.add_argument(
        "--repeats", type=int, default=1, help="measure each cell N times, keep the median"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument(
        "--quick", action="store_true", help="default model, npy and json only: a smoke run"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of servers started in turn for the side-by-side comparisons (settings, "
        "the batch policy against off, the wide model's pinned run sizes)",
    )
    parser.add_argument(
        "--server-args", default="", help='extra flags for both servers, e.g. "--max-wait-ms 0"'
    )
    args = parser.parse_args(argv)
    if (problem := hey.missing()) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    models = [DEFAULT_MODEL] if args.quick else [DEFAULT_MODEL, WIDE_MODEL]
    formats = ("npy", "json") if args.quick else FORMATS
    concurrencies = (1, 32)
    repository = prepare_repository(args.work)
    results: dict[str, Any] = {"machine": machine(), "raw_onnxruntime": {}, "serve": {}}
    rng = np.random.default_rng(0)
    batches = {m: rng.normal(size=(64, TOKENS, input_dim(repository, m))) for m in models}
    batches = {m: x.astype(np.float32) for m, x in batches.items()}

    # Raw ONNX Runtime one run at a time (all cores in the run), and as many runs at once as
    # the service's instances (the cores divided among them): the ceiling is the best of both.
    raw_kinds = {"raw_onnxruntime": 1, "raw_onnxruntime_instances": INSTANCES}
    for kind, instances in raw_kinds.items():
        results[kind] = {}
        for model in models:
            results[kind][model] = {
                str(b): raw_onnxruntime(
                    repository / model / "1" / "model.onnx",
                    batches[model][:b],
                    args.seconds,
                    args.repeats,
                    instances,
                )
                for b in RAW_BATCHES
            }
            print(f"{kind} {model}: {results[kind][model]}", flush=True)

    flags = ["--models", ",".join(models), "--default-model", DEFAULT_MODEL]
    flags += shlex.split(args.server_args)

    def cells(
        server_flags: list[str], specs: list[tuple[str, str, int, int]]
    ) -> list[dict[str, Any]]:
        """Start a server with ``server_flags`` and measure each (model, format, items, c)."""
        out = []
        with running_server(repository, [*flags, *server_flags]) as (url, process):
            if not server_flags and "batch_policies" not in results:
                # the first default server: the batch policy it chose per model
                with urllib.request.urlopen(f"{url}/info", timeout=10) as response:
                    results["batch_policies"] = orjson.loads(response.read())["batch_policies"]
            for model, fmt, items, c in specs:
                body = write_body(folder, fmt, batches[model][:items])
                out.append(
                    load(
                        url,
                        model,
                        body,
                        items,
                        c,
                        args.seconds,
                        args.warmup,
                        args.repeats,
                        process.pid,
                    )
                )
                print(f"{' '.join(server_flags)} {model} {fmt} [{items}] c={c}: {out[-1]}")
        return out

    def alternate(
        variants: dict[str, list[str]], specs: list[tuple[str, str, int, int]]
    ) -> dict[str, list[dict[str, Any]]]:
        """Servers with each variant's flags, started in turn, round after round (``--rounds``):
        a comparison of servers side by side, which one server each cannot give on a machine
        whose speed drifts by tens of percent between minutes. Per variant, each spec's cell of
        median items/s, with every round's items/s in ``rounds``."""
        runs: dict[str, list[list[dict[str, Any]]]] = {v: [[] for _ in specs] for v in variants}
        for _ in range(args.rounds):
            for name, extra in variants.items():
                for i, cell in enumerate(cells(extra, specs)):
                    runs[name][i].append(cell)
        return {
            name: [
                median_cell(each) | {"rounds": [round(r["items_per_second"]) for r in each]}
                for each in per_spec
            ]
            for name, per_spec in runs.items()
        }

    grid = [(m, f, ITEMS, c) for m in models for f in formats for c in concurrencies]
    single = [(m, "npy", 1, 32) for m in models]
    npy8 = [(m, "npy", ITEMS, c) for m in models for c in concurrencies]
    policy_cells = [(m, "npy", ITEMS, 32) for m in models]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        measured = cells([], grid + single)
        unbatched = cells(["--max-batch-size", "1", "--max-items-per-request", "1"], single)
        settings = alternate(
            {
                "": [],
                "--max-wait-ms 2": ["--max-wait-ms", "2"],
                "--thread-spinning true": ["--thread-spinning", "true"],
                "--model-instances 1": ["--model-instances", "1"],
            },
            npy8,
        )
        policy = alternate({"measured": [], "off": ["--batch-policy", "off"]}, policy_cells)
        # The wide model's server with its run size pinned: the curve the server itself sees,
        # which the start-up probe only estimates.
        pinned: dict[str, dict[str, Any]] = {}
        if WIDE_MODEL in models and args.rounds:
            sizes = {str(b): ["--preferred-batch-tokens", str(b * TOKENS)] for b in PINNED_BATCHES}
            spec = [(WIDE_MODEL, "npy", ITEMS, 32)]
            pinned = {size: cell for size, (cell,) in alternate(sizes, spec).items()}
    with running_server(repository, flags) as (url, _):
        results["client"] = client_bench.measure(
            url, DEFAULT_MODEL, batches[DEFAULT_MODEL], args.seconds, args.warmup, 32, args.repeats
        )
        print(f"client: {results['client']}", flush=True)

    results["serve"] = {m: {f: {} for f in formats} for m in models}
    for (m, f, _, c), r in zip(grid, measured, strict=False):
        results["serve"][m][f][str(c)] = r
    results["batching"] = {
        m: {"batched": b, "unbatched": u}
        for m, b, u in zip(models, measured[len(grid) :], unbatched, strict=True)
    }
    results["settings"] = {
        name: {f"{m} c={c}": r for (m, _, _, c), r in zip(npy8, rs, strict=True)}
        for name, rs in settings.items()
    }
    results["policy"] = {
        m: {name: rs[i] for name, rs in policy.items()} for i, (m, *_) in enumerate(policy_cells)
    }
    if pinned:
        results["pinned"] = {WIDE_MODEL: pinned}
    results["targets"] = targets(results)

    write_results(args.out, "serve-quick" if args.quick else "serve", results, markdown(results))
    return 0


def write_results(out: Path, name: str, results: dict[str, Any], text: str) -> None:
    """Print the tables and write ``out/name.json`` and ``out/name.md``."""
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(text)
    print(f"wrote {out / name}.json and .md")


if __name__ == "__main__":
    sys.exit(main())
