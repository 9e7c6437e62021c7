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
5. Prints the figures and the issue's target ratios, and writes ``serve.json`` and ``serve.md``.

Every figure comes from this run; nothing is compared across runs. The load generator shares the
machine's cores with the server, as a client on the same host would.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
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

from bench import hey
from service.process import ROOT, running_server

DEFAULT_MODEL = "knn-adapool-ego"
WIDE_MODEL = "knn-wide384"
WIDE_CONFIG = ROOT / "configs" / "bench" / "wide384.toml"
FORMATS = ("json", "base64", "npy", "raw")
TOKENS = 128
ITEMS = 8


# --- the benchmark repository ------------------------------------------------------------------


def prepare_repository(root: Path) -> Path:
    """``root/model_repository`` with the default model and the wide model (exported once)."""
    repository = root / "model_repository"
    repository.mkdir(parents=True, exist_ok=True)
    default_dir = repository / DEFAULT_MODEL
    if default_dir.exists():
        shutil.rmtree(default_dir)
    shutil.copytree(ROOT / "model_repository" / DEFAULT_MODEL, default_dir)
    if not (repository / WIDE_MODEL / "1" / "manifest.json").exists():
        export_wide_model(root / "runs" / WIDE_MODEL, repository)
    return repository


def export_wide_model(run_dir: Path, repository: Path) -> None:
    """Write the wide model's run (its seeded initialisation) and export it as version 1."""
    import torch  # training extra: only needed the first time

    from export.cli import export_run
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


def check_body(url: str, body: Body, items: int) -> None:
    """One request by hand before the load: it must answer 200 with ``items`` pooled vectors."""
    request = urllib.request.Request(
        url,
        data=body.path.read_bytes(),
        headers={"Content-Type": body.content_type, **body.headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = orjson.loads(response.read())
    got = len(answer["pooled"])
    if got != items:
        raise RuntimeError(f"{body.path.name}: expected {items} pooled vectors, got {got}")


# --- raw ONNX Runtime --------------------------------------------------------------------------


def raw_onnxruntime(model_file: Path, x: np.ndarray, seconds: float) -> dict[str, float]:
    """items/s of an in-process session (the service's options) on batch ``x``, back to back."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    feeds = {"embeddings": x, "attention_mask": np.ones(x.shape[:2], dtype=bool)}
    for _ in range(3):
        session.run(None, feeds)
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        session.run(None, feeds)
        runs += 1
    return {
        "batch": float(x.shape[0]),
        "runs": float(runs),
        "ms_per_run": 1000 * elapsed / runs,
        "items_per_second": runs * x.shape[0] / elapsed,
    }


# --- the server under load ---------------------------------------------------------------------


def batch_stats(url: str, model: str) -> tuple[float, float]:
    """(sum, count) of the server's adapool_batch_size histogram for ``model``."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "adapool_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return total, count


def load(
    url: str, model: str, body: Body, items: int, concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """Warm up, then measure one cell; adds the server's mean batch size over the cell."""
    endpoint = f"{url}/models/{model}/pool"
    check_body(endpoint, body, items)
    if warmup > 0:
        hey.run(endpoint, body.path, body.content_type, body.headers, concurrency, warmup)
    before = batch_stats(url, model)
    result = hey.run(endpoint, body.path, body.content_type, body.headers, concurrency, seconds)
    after = batch_stats(url, model)
    runs = after[1] - before[1]
    return {
        "requests": result.requests,
        "statuses": {str(k): v for k, v in result.statuses.items()},
        "wall_seconds": round(result.wall_seconds, 3),
        "requests_per_second": result.requests_per_second,
        "items_per_second": result.requests_per_second * items,
        "p50_ms": 1000 * result.p50_seconds,
        "p99_ms": 1000 * result.p99_seconds,
        "body_bytes": body.path.stat().st_size,
        "mean_batch_items": (after[0] - before[0]) / runs if runs else 0.0,
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
    """The issue's targets as measured ratios."""
    out: list[dict[str, Any]] = []
    wide = results["serve"].get(WIDE_MODEL, {})
    raw = results["raw_onnxruntime"].get(WIDE_MODEL, {})
    if "npy" in wide and "32" in wide["npy"] and raw:
        ceiling = raw[f"{ITEMS}"]["items_per_second"]
        for fmt in ("npy", "raw"):
            if fmt in wide and "32" in wide[fmt]:
                ratio = wide[fmt]["32"]["items_per_second"] / ceiling
                out.append(
                    {
                        "target": f"{fmt} at c=32 >= 0.6x raw ONNX Runtime items/s ({WIDE_MODEL})",
                        "ratio": ratio,
                        "met": ratio >= 0.6,
                    }
                )
    if "json" in wide and "npy" in wide:
        for c in ("1", "32"):
            if c in wide["json"] and c in wide["npy"]:
                ratio = wide["npy"][c]["items_per_second"] / wide["json"][c]["items_per_second"]
                out.append(
                    {
                        "target": f"npy >= 10x JSON lists items/s, [8,128,384], c={c}",
                        "ratio": ratio,
                        "met": ratio >= 10,
                    }
                )
    for model, cells in results["batching"].items():
        if "batched" in cells and "unbatched" in cells:
            ratio = cells["batched"]["items_per_second"] / cells["unbatched"]["items_per_second"]
            out.append(
                {
                    "target": f"single-item requests, batching >= 3x max_batch_size=1 ({model})",
                    "ratio": ratio,
                    "met": ratio >= 3,
                }
            )
    return out


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores), commit {m['commit']}, "
        f"onnxruntime {m['onnxruntime']}, hey {m['hey']}, load average before "
        f"{m['load_average_before']}. Command: `{m['command']}`.",
        "",
        "Raw ONNX Runtime, in process, back to back (the ceiling):",
        "",
        "| model | batch [B, 128, D] | ms per run | items/s |",
        "|---|---:|---:|---:|",
    ]
    for model, runs in results["raw_onnxruntime"].items():
        for r in runs.values():
            lines.append(
                f"| {model} | {int(r['batch'])} | {r['ms_per_run']:.2f} | "
                f"{r['items_per_second']:,.0f} |"
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
        f"Server settings, {DEFAULT_MODEL}, [{ITEMS}, {TOKENS}, 16] .npy requests, each server "
        "started in turn:",
        "",
        "| server flags | concurrency | requests/s | p50 ms | p99 ms | mean run items |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for flags, cells in results["settings"].items():
        for c, r in cells.items():
            lines.append(
                f"| {flags or '(defaults)'} | {c} | {r['requests_per_second']:,.1f} | "
                f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch_items']:.1f} |"
            )
    lines += ["", "Targets:", "", "| target | measured | met |", "|---|---:|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['ratio']:.2f}x | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per cell")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument(
        "--quick", action="store_true", help="default model, npy and json only: a smoke run"
    )
    parser.add_argument(
        "--server-args", default="", help='extra flags for both servers, e.g. "--max-wait-ms 0"'
    )
    args = parser.parse_args(argv)
    try:
        hey.version()
    except hey.LoadGeneratorMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    models = [DEFAULT_MODEL] if args.quick else [DEFAULT_MODEL, WIDE_MODEL]
    formats = ("npy", "json") if args.quick else FORMATS
    concurrencies = (1, 32)
    repository = prepare_repository(args.work)
    results: dict[str, Any] = {"machine": machine(), "raw_onnxruntime": {}, "serve": {}}
    rng = np.random.default_rng(0)
    batches = {m: rng.normal(size=(64, TOKENS, input_dim(repository, m))) for m in models}
    batches = {m: x.astype(np.float32) for m, x in batches.items()}

    for model in models:
        results["raw_onnxruntime"][model] = {
            str(b): raw_onnxruntime(
                repository / model / "1" / "model.onnx", batches[model][:b], args.seconds
            )
            for b in (1, ITEMS, 64)
        }
        print(f"raw onnxruntime {model}: {results['raw_onnxruntime'][model]}", flush=True)

    flags = ["--models", ",".join(models), "--default-model", DEFAULT_MODEL]
    flags += shlex.split(args.server_args)

    def cells(
        server_flags: list[str], specs: list[tuple[str, str, int, int]]
    ) -> list[dict[str, Any]]:
        """Start a server with ``server_flags`` and measure each (model, format, items, c)."""
        out = []
        with running_server(repository, [*flags, *server_flags]) as (url, _):
            for model, fmt, items, c in specs:
                body = write_body(folder, fmt, batches[model][:items])
                out.append(load(url, model, body, items, c, args.seconds, args.warmup))
                print(f"{' '.join(server_flags)} {model} {fmt} [{items}] c={c}: {out[-1]}")
        return out

    grid = [(m, f, ITEMS, c) for m in models for f in formats for c in concurrencies]
    single = [(m, "npy", 1, 32) for m in models]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        measured = cells([], grid + single)
        unbatched = cells(["--max-batch-size", "1", "--max-items-per-request", "1"], single)
        variants = {
            "--max-wait-ms 2": ["--max-wait-ms", "2"],
            "--thread-spinning true": ["--thread-spinning", "true"],
        }
        npy8 = [(DEFAULT_MODEL, "npy", ITEMS, c) for c in concurrencies]
        settings = {name: cells(extra, npy8) for name, extra in variants.items()}

    results["serve"] = {m: {f: {} for f in formats} for m in models}
    for (m, f, _, c), r in zip(grid, measured, strict=False):
        results["serve"][m][f][str(c)] = r
    results["batching"] = {
        m: {"batched": b, "unbatched": u}
        for m, b, u in zip(models, measured[len(grid) :], unbatched, strict=True)
    }
    results["settings"] = {
        "": {str(c): results["serve"][DEFAULT_MODEL]["npy"][str(c)] for c in concurrencies}
    }
    results["settings"] |= {
        name: {str(c): r for c, r in zip(concurrencies, rs, strict=True)}
        for name, rs in settings.items()
    }
    results["targets"] = targets(results)

    text = markdown(results)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "serve-quick" if args.quick else "serve"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(text)
    print(f"wrote {args.out / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
