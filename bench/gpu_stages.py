"""The stages of ``python -m bench.gpu_all``: each one a function ``(context, deadline) -> dict``.

A stage raises :class:`bench.gpu.Skip` with the reason when it cannot run here (the driver
records it as skipped) and checks ``deadline`` (``time.monotonic()``) before each cell of its
grid, recording the cells it had no time for instead of overrunning. Nothing here imports
torch, the service's web stack or hey at module level: each stage imports what it needs, so a
missing package skips one stage, not the script.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import gpu
from bench.gpu import CPU, CUDA, DEFAULT_MODEL, ROOT, WIDE_MODEL, Skip

TENSORRT = "TensorrtExecutionProvider"
PREPARED = ROOT / "runs" / "gpu"  # python -m bench.gpu_all prepare writes it; carry it
# What the service imports beyond numpy and onnxruntime: import name -> the wheel that has it.
# With their dependencies not on the lent machine (pydantic-core, typing-inspection,
# annotated-types, python-dotenv, annotated-doc) that is 12 wheels, 3.9 MB at the versions
# constraints.txt pins (pip download for cp312 manylinux, 2026-12-02); hey's .deb is 2.1 MB.
SERVICE_MODULES = {
    "fastapi": "fastapi",
    "starlette": "starlette",
    "pydantic": "pydantic",
    "pydantic_settings": "pydantic-settings",
    "uvicorn": "uvicorn",
    "httptools": "httptools",
    "orjson": "orjson",
    "prometheus_client": "prometheus-client",
}
ITEMS = 8  # items per request under load, as in make bench
LOAD_TOKENS = 128


@dataclass(frozen=True)
class Grid:
    batches: tuple[int, ...]
    tokens: tuple[int, ...]
    min_runs: int  # timed runs per cell at least
    cell_seconds: tuple[float, float]  # a cell's timed seconds: at least, at most


GPU_GRID = Grid((1, 8, 64, 256), (128, 512, 2048), 5, (0.1, 1.0))
DRY_GRID = Grid((1, 4), (16, 32), 3, (0.01, 0.02))


@dataclass(frozen=True)
class Context:
    """What every stage reads. ``work``: scratch (sweep runs, converted models), never $OUT."""

    out: Path
    work: Path
    prepared: Path
    preset: Path
    dry_run: bool

    @property
    def grid(self) -> Grid:
        return DRY_GRID if self.dry_run else GPU_GRID

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"


def left(deadline: float) -> float:
    return deadline - time.monotonic()


def cells(grid: Grid, models: list[str]) -> Iterator[tuple[int, str, int]]:
    """(tokens, model, batch) in the order they are worth running: short sets first, so a cut
    grid still has every model and batch at 128 tokens; the wide model before the default."""
    for tokens in grid.tokens:
        for model in models:
            for batch in grid.batches:
                yield tokens, model, batch


def cell_seconds(grid: Grid, stage_seconds: float, cells_count: int, runs_per_cell: int) -> float:
    """Timed seconds per run of a cell: a third of the stage's share spread over its cells
    (the rest is warm-up, references and session start-up), within the grid's bounds."""
    low, high = grid.cell_seconds
    return min(high, max(low, stage_seconds / 3 / max(1, cells_count * runs_per_cell)))


# --- models -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFiles:
    fp32: Path
    checkpoint: Path
    fp16: Path | None
    fp16_problem: str | None  # why there is no fp16 file


def model_files(context: Context) -> dict[str, ModelFiles]:
    """The wide model (where prepared) and the default model, each fp32, fp16 and its
    checkpoint. fp16: the prepared file, else converted now (needs onnxconverter-common)."""
    repositories = [context.prepared / "model_repository", ROOT / "model_repository"]
    found: dict[str, ModelFiles] = {}
    for name in (WIDE_MODEL, DEFAULT_MODEL):
        version = next((r / name / "1" for r in repositories if (r / name / "1").exists()), None)
        if version is None:
            continue
        prepared = context.prepared / "fp16" / f"{name}.onnx"
        fp16: Path | None = prepared
        problem: str | None = None
        if not prepared.exists():
            fp16, problem = convert_fp16(version / "model.onnx", context.work / "fp16" / name)
        found[name] = ModelFiles(version / "model.onnx", version / "checkpoint", fp16, problem)
    return found


def convert_fp16(fp32: Path, folder: Path) -> tuple[Path | None, str | None]:
    """``fp32`` converted by export.precision into ``folder``, or (None, why not)."""
    if importlib.util.find_spec("onnxconverter_common") is None:
        return None, (
            "onnxconverter-common is not installed (export.precision needs it): run "
            "`python -m bench.gpu_all prepare` before the call and carry runs/gpu"
        )
    from export.precision import convert_file

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.onnx"
    shutil.copyfile(fp32, target)
    convert_file(target)
    return target, None


# --- stage: the machine and the providers really in use ----------------------------------------


def environment(context: Context, deadline: float) -> dict[str, Any]:
    """The GPU, torch, onnxruntime, and per provider what ``session.get_providers()`` says."""
    import torch

    out: dict[str, Any] = {
        "gpu": gpu.gpu_name(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_sees_gpu": torch.cuda.is_available(),
        "torch_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "importable": {
            m: importlib.util.find_spec(m) is not None
            for m in (*SERVICE_MODULES, "onnxconverter_common")
        },
        "hey": shutil.which("hey"),
    }
    try:
        import onnxruntime as ort
    except ImportError as exc:
        out["onnxruntime"] = f"does not import: {exc}"
        return out
    out["onnxruntime"] = ort.__version__
    out["onnxruntime_available"] = ort.get_available_providers()
    if hasattr(ort, "preload_dlls") and CUDA in out["onnxruntime_available"]:
        try:
            ort.preload_dlls()  # the CUDA libraries of PyTorch's nvidia-* wheels
        except Exception as exc:  # recorded: the sessions below say whether CUDA runs anyway
            out["preload_dlls_failed"] = f"{type(exc).__name__}: {exc}"
    model = ROOT / "model_repository" / DEFAULT_MODEL / "1" / "model.onnx"
    sessions: dict[str, Any] = {}
    for provider, asked in ((TENSORRT, [TENSORRT, CUDA, CPU]), (CUDA, [CUDA, CPU]), (CPU, [CPU])):
        if provider not in out["onnxruntime_available"]:
            sessions[provider] = {
                "skipped": f"onnxruntime {ort.__version__} has no {provider} (available: "
                f"{', '.join(out['onnxruntime_available'])})"
            }
            continue
        try:
            session = ort.InferenceSession(str(model), providers=asked)
        except Exception as exc:  # a provider whose libraries do not load: say which, go on
            sessions[provider] = {"skipped": f"session failed: {type(exc).__name__}: {exc}"}
            continue
        used = session.get_providers()
        sessions[provider] = {"asked": asked, "in_use": used, "runs_on": used[0]}
    out["sessions"] = sessions
    return out


# --- stage: ONNX Runtime's CUDA paths (bench.gpu), fp32 and fp16, batch x tokens -------------


def onnxruntime_grid(context: Context, deadline: float) -> dict[str, Any]:
    ort = gpu.load_ort(context.dry_run)  # Skip when this build has no CUDA provider
    files = model_files(context)
    grid = context.grid
    todo = list(cells(grid, list(files)))
    per_run = cell_seconds(grid, left(deadline), 2 * len(todo), 4)
    ways: dict[tuple[str, str], Any] = {}
    out: dict[str, Any] = {"seconds_per_variant": per_run, "cells": [], "not_run": []}
    for name, f in files.items():
        if f.fp16 is None:
            out.setdefault("fp16_skipped", {})[name] = f.fp16_problem
    for tokens, name, batch in todo:
        for precision in ("fp32", "fp16"):
            path = files[name].fp32 if precision == "fp32" else files[name].fp16
            if path is None:
                continue
            key = f"{name} {precision} B={batch} N={tokens}"
            if left(deadline) < 8 * per_run + 1:
                out["not_run"].append(key)
                continue
            if (name, precision) not in ways:
                ways[name, precision] = gpu.variants(ort, path, context.dry_run)
                out.setdefault("providers", {})[f"{name} {precision}"] = {
                    k: v[0] for k, v in ways[name, precision].items()
                }
            row: dict[str, Any] = {"model": name, "precision": precision}
            row |= {"batch": batch, "tokens": tokens}
            row["variants"] = gpu.bench_cell(
                ort,
                ways[name, precision],
                batch,
                tokens,
                per_run,
                context.dry_run,
                grid.min_runs,
                cpu_tokens_max=None if context.dry_run else 8 * 512,
            )
            if precision == "fp16" and (name, "fp32") in ways:
                row["fp16_vs_fp32_max_abs_diff"] = precision_diff(ways, name, batch, tokens)
            out["cells"].append(row)
            print(f"ort {key}: {summary(row['variants'])}", flush=True)
    return out


def precision_diff(ways: dict[tuple[str, str], Any], name: str, batch: int, tokens: int) -> float:
    """The largest |fp16 - fp32| of raw CUDA's outputs (pooled, weights) on the cell's input."""
    dim = int(ways[name, "fp32"]["raw-cuda-device"][1].get_inputs()[0].shape[2])
    x, mask = gpu.cell_input(batch, tokens, dim)
    fp32, fp16 = (ways[name, p]["raw-cuda-run"][1](x, mask) for p in ("fp32", "fp16"))
    return max(float(np.abs(a - b).max()) for a, b in zip(fp32, fp16, strict=True))


def summary(variants: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v['items_per_second']:,.0f}/s" for k, v in variants.items() if isinstance(v, dict)
    )


# --- stage: the PyTorch models on the device, fp32 and fp16 (autocast) -----------------------


def torch_grid(context: Context, deadline: float) -> dict[str, Any]:
    import torch

    from models.checkpoint import load_model

    device = context.device
    if device == "cuda" and not torch.cuda.is_available():
        raise Skip(f"torch {torch.__version__} sees no GPU")
    files = model_files(context)
    grid = context.grid
    todo = list(cells(grid, list(files)))
    per_run = cell_seconds(grid, left(deadline), len(todo), 2)
    loaded = {name: load_model(f.checkpoint)[0].to(device) for name, f in files.items()}
    out: dict[str, Any] = {"device": device, "seconds_per_precision": per_run, "cells": []}
    out["not_run"] = []
    for tokens, name, batch in todo:
        key = f"{name} B={batch} N={tokens}"
        if left(deadline) < 4 * per_run + 1:
            out["not_run"].append(key)
            continue
        model = loaded[name]
        generator = torch.Generator(device).manual_seed(batch * 100_003 + tokens)
        dim = model.config.input_dim
        x = torch.randn(batch, tokens, dim, device=device, generator=generator)
        mask = torch.ones(batch, tokens, dtype=torch.bool, device=device)
        mask[-1, tokens // 2 :] = False
        row: dict[str, Any] = {"model": name, "batch": batch, "tokens": tokens}
        try:
            pooled = {}
            for precision, dtype in (("fp32", None), ("fp16", torch.float16)):
                run, pooled[precision] = torch_runner(model, x, mask, device, dtype)
                timing: dict[str, Any] = gpu.time_runs(run, per_run, 2, grid.min_runs)
                timing["items_per_second"] = batch / (timing["ms_mean"] / 1000)
                row[precision] = timing
            row["fp16_max_abs_diff"] = float((pooled["fp16"] - pooled["fp32"]).abs().max())
        except torch.OutOfMemoryError as exc:
            row["out_of_memory"] = str(exc).splitlines()[0]
            torch.cuda.empty_cache()
        out["cells"].append(row)
        print(f"torch {key}: {row}", flush=True)
    out["peak_memory_bytes"] = torch.cuda.max_memory_allocated() if device == "cuda" else None
    if device == "cuda":  # the sweep's process comes next, on the same GPU
        del loaded
        torch.cuda.empty_cache()
    return out


def torch_runner(
    model: Any, x: Any, mask: Any, device: str, dtype: Any
) -> tuple[Callable[[], None], Any]:
    """A synchronised forward pass (``dtype``: autocast to it, None: float32) and its pooled
    output as float32 (B, D_out)."""
    import torch

    def forward() -> Any:
        with torch.inference_mode(), torch.autocast(device, dtype, enabled=dtype is not None):
            return model(x, mask).pooled.float()

    def run() -> None:
        forward()
        if device == "cuda":
            torch.cuda.synchronize()

    return run, forward()


# --- stage: the service under load ---------------------------------------------------------


def service_load(context: Context, deadline: float) -> dict[str, Any]:
    """``python -m service --device cuda`` on the prepared repository, one checked request per
    model, its providers from ``GET /info``, then hey at concurrency 1 and 32 (skipped, with
    the reason, where hey is missing)."""
    missing = [w for m, w in SERVICE_MODULES.items() if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(
            f"the service's packages are missing here: {', '.join(missing)}; carry their "
            "wheels and their dependencies' (.whl, device README; bench.gpu_stages says which)"
        )
    import onnxruntime as ort

    if not context.dry_run and CUDA not in ort.get_available_providers():
        raise Skip(
            f"onnxruntime {ort.__version__} has no CUDA provider: --device cuda would not start "
            "(the service requires it), and onnxruntime-gpu cannot travel (bench.gpu_all)"
        )
    from bench import hey, serve
    from bench.process import running_server

    repository = context.prepared / "model_repository"
    if not repository.exists():
        repository = ROOT / "model_repository"
    names = [n for n in (WIDE_MODEL, DEFAULT_MODEL) if (repository / n).exists()]
    flags = ["--device", context.device, "--models", ",".join(names)]
    out: dict[str, Any] = {"repository": str(repository), "flags": flags, "models": {}}
    ready = max(10.0, min(120.0, left(deadline) / 2))
    server = running_server(repository, flags, ready_timeout=ready)
    with tempfile.TemporaryDirectory() as folder, server as (url, _):
        with urllib.request.urlopen(f"{url}/info", timeout=10) as response:
            out["providers_in_use"] = json.loads(response.read())["providers_in_use"]
        rng = np.random.default_rng(0)
        bodies = {}
        for name in names:
            x = rng.normal(size=(ITEMS, LOAD_TOKENS, serve.input_dim(repository, name)))
            bodies[name] = serve.write_body(Path(folder), "npy", x.astype(np.float32))
            serve.check_body(f"{url}/models/{name}/pool", bodies[name], ITEMS)
            out["models"][name] = {
                "checked": f"[{ITEMS}, {LOAD_TOKENS}] answered {ITEMS} items",
                "load": {},
            }
        why = hey.missing()
        if why is not None:
            out["load_skipped"] = why
            return out
        loads = [(name, c) for name in names for c in (1, 32)]
        seconds = max(0.5, min(10.0, left(deadline) / len(loads) / 1.5 - 1))
        for name, concurrency in loads:
            if left(deadline) < 1.5 * seconds + 1:
                out.setdefault("not_run", []).append(f"{name} c={concurrency}")
                continue
            cell = serve.load(url, name, bodies[name], ITEMS, concurrency, seconds, seconds / 3)
            out["models"][name]["load"][str(concurrency)] = cell
            print(f"service {name} c={concurrency}: {cell['items_per_second']:,.0f} items/s")
    return out


# --- stage: the sweep, stopped at its deadline ---------------------------------------------


def sweep(context: Context, deadline: float) -> dict[str, Any]:
    """``python -m models.sweep`` (``--stack 8``: models.stacked) until done or ``deadline``,
    then the results folder of every k whose runs all finished, ``sweep.md`` and
    ``sweep.tar.gz`` in ``context.out``."""
    from bench.process import stop
    from models import report
    from models.sweep import expand, load_preset

    preset = load_preset(context.preset)
    name = preset.sweep.name
    if preset.base.train.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise Skip(f"{context.preset.name} trains on cuda: torch sees no GPU")
    runs_root = context.work / f"sweep-{name}"
    results = context.work / f"results-{name}"
    command = [sys.executable, "-m", "models.sweep", "--preset", shown(context.preset)]
    command += ["--runs", shown(runs_root), "--results", shown(results)]
    # models.stacked: each method's 8 ks in one vmapped pass (the stack is meant for the GPU).
    stacked = True
    command += ["--stack", "8"]
    context.work.mkdir(parents=True, exist_ok=True)
    log = context.work / f"sweep-{name}.log"
    started = time.monotonic()
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        while process.poll() is None and left(deadline) > 0:
            time.sleep(0.2)
        stopped = process.poll() is None
        if stopped:  # the runs in flight keep their saved state; a rerun resumes them
            stop(process)
    runs = expand(preset, runs_root)
    done = [r for r in runs if (r.out / "metrics.json").exists()]
    complete_ks = [
        k
        for k in preset.sweep.ks
        if all((r.out / "metrics.json").exists() for r in runs if r.k == k)
    ]
    out: dict[str, Any] = {
        "preset": shown(context.preset),
        "stacked": stacked,
        "stacked_note": None if stacked else "models.sweep ran without --stack: plain sweep",
        "command": " ".join(command),
        "seconds": round(time.monotonic() - started, 1),
        "stopped_at_deadline": stopped,
        "returncode": process.returncode,
        "runs": len(runs),
        "finished": [r.out.name for r in done],
        "complete_ks": complete_ks,
        "log_tail": log.read_text().splitlines()[-15:],
    }
    table = [r for r in done if r.k in complete_ks]
    if table:
        provenance = {"command": out["command"], "preset": out["preset"]}
        provenance["started"] = time.time() - out["seconds"]
        try:
            report.write_results(
                [(r.method, r.k, r.seed, r.out) for r in table], preset.base, results, provenance
            )
        except Exception as exc:  # recorded; sweep.md and the tarball still keep every run
            out["report_failed"] = f"{type(exc).__name__}: {exc}"
    (context.out / "sweep.md").write_text(sweep_markdown(out, results, done, complete_ks))
    with tarfile.open(context.out / "sweep.tar.gz", "w:gz") as tar:
        if results.exists():
            tar.add(results, arcname=f"results-{name}")
        for r in done:
            tar.add(r.out / "metrics.json", arcname=f"runs-{name}/{r.out.name}/metrics.json")
        tar.add(log, arcname=log.name)
    return out


def shown(path: Path) -> str:
    """``path`` relative to the repository where it is inside it (the sweep runs there)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def sweep_markdown(out: dict[str, Any], results: Path, done: list[Any], ks: list[int]) -> str:
    lines = [
        f"Sweep `{out['preset']}`{' (stacked)' if out['stacked'] else ''}: {len(done)} of "
        f"{out['runs']} runs finished in {out['seconds']:.0f} s"
        + (", stopped at the stage's deadline." if out["stopped_at_deadline"] else "."),
        f"Command: `{out['command']}`.",
    ]
    if out["stacked_note"]:
        lines.append(out["stacked_note"] + ".")
    if not ks:
        lines.append("No k has all its runs finished: no signal-loss table.")
    if "report_failed" in out:
        lines.append(f"models.report failed: {out['report_failed']}.")
    lines.append("")
    if (results / "summary.md").exists():
        lines.append(f"Signal-loss table of the ks whose runs all finished ({ks}):")
        lines += ["", (results / "summary.md").read_text()]
    others = [r for r in done if r.k not in ks]
    if others:
        lines += ["Finished runs of unfinished ks:", "", "| run | signal loss |", "|---|---:|"]
        for r in others:
            loss = json.loads((r.out / "metrics.json").read_text())["signal_loss"]
            lines.append(f"| {r.out.name} | {loss:.4g} |")
    return "\n".join(lines) + "\n"
