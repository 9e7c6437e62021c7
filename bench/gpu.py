"""ONNX Runtime on a GPU: the service's CUDA path (IO binding) against CPU and raw CUDA.

    python -m bench.gpu OUT_DIR [--repository runs/bench/model_repository] [--seconds 2]

For a machine with one NVIDIA GPU (an H100 or H200 lent for about 15 minutes, no internet): the
whole script takes about two minutes. For each model (the service's default model from
``model_repository/`` and ``knn-wide384`` from ``--repository``, where ``python -m bench.serve``
exported it; carry that folder to the machine) and each batch [B, 128, D], B in 1, 8, 64 and
256, it times back-to-back runs of:

- ``cpu``: the service's backend on CPUExecutionProvider (``OnnxBackend(device="cpu")``);
- ``service-cuda``: the service's backend on CUDA (``OnnxBackend(device="cuda")``): inputs bound
  from host memory, outputs bound on the device and copied back once (IO binding), as served;
- ``raw-cuda-run``: a plain CUDA session's ``session.run`` on numpy arrays (ONNX Runtime copies
  inputs in and outputs out itself);
- ``raw-cuda-device``: raw CUDA with IO binding and the inputs already on the device, outputs
  left there: the GPU's ceiling, no host copies at all.

Each variant's outputs are checked against the CPU's (within 1e-3). Writes ``gpu.json`` and
``gpu.md`` into OUT_DIR, naming the GPU (``nvidia-smi``) and the providers actually in use
(``session.get_providers()``: onnxruntime-gpu falls back to CPU silently when CUDA libraries are
missing). Where CUDA cannot run (no onnxruntime, a CPU-only build, no GPU, or a silent fallback)
it writes ``gpu.json`` with ``"skipped"`` and the reason and exits 0: a CPU-only machine skips.
``--dry-run-cpu`` runs every variant's code on the CPU instead (figures marked as such, not GPU
figures), so the script is tested here before its one run on a lent machine.

The GPU machines hold PyTorch's CUDA libraries (the ``nvidia-*`` wheels); onnxruntime-gpu loads
them through ``onnxruntime.preload_dlls()`` when it has it. If that machine's onnxruntime is the
CPU build, onnxruntime-gpu must be carried there as a wheel (see the device README; mind the
carry limit).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).parents[1]
DEFAULT_MODEL = "signature-adapool"  # service.settings' default, without importing pydantic
WIDE_MODEL = "knn-wide384"
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
TOKENS = 128


class Skip(Exception):
    """CUDA cannot run here; the message says why."""


def gpu_name() -> str:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return "none (no nvidia-smi)"
    return done.stdout.strip() or done.stderr.strip() or "unknown"


def load_ort(dry_run: bool = False) -> Any:
    """onnxruntime with CUDA available, its CUDA libraries preloaded; else Skip."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise Skip(f"onnxruntime does not import: {exc}") from exc
    if dry_run:
        return ort
    available = ort.get_available_providers()
    if CUDA not in available:
        raise Skip(f"onnxruntime {ort.__version__} has no CUDA provider (has: {available})")
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # recorded; the session below says whether CUDA runs
            print(f"onnxruntime.preload_dlls() failed: {exc}", file=sys.stderr)
    return ort


def time_runs(run: Any, seconds: float, warmup: int = 5, min_runs: int = 10) -> dict[str, float]:
    """Call ``run()`` back to back for ``seconds`` (and ``min_runs`` times at least): per-run
    p50/p99 and the mean."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < min_runs:
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    ms = 1000 * np.array(times)
    return {
        "runs": len(times),
        "ms_mean": float(ms.mean()),
        "ms_p50": float(np.percentile(ms, 50)),
        "ms_p99": float(np.percentile(ms, 99)),
    }


def variants(ort: Any, model_file: Path, dry_run: bool = False) -> dict[str, Any]:
    """The four ways to run the model, as ``name -> (provider, run(x, mask) -> (pooled, weights))``
    (for ``raw-cuda-device``, the session: :func:`device_resident` binds it)."""
    from service.core.backend import OnnxBackend  # numpy + onnxruntime only

    cpu = OnnxBackend(model_file, device="cpu")
    cuda = OnnxBackend(model_file, device="cpu" if dry_run else "cuda")
    if cuda.provider != CUDA and not dry_run:
        raise Skip(f"a CUDA session fell back to {cuda.provider}: {cuda.problem}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = [CPU] if dry_run else [CUDA, CPU]
    raw = ort.InferenceSession(str(model_file), options, providers=providers)

    def raw_run(x: np.ndarray, mask: np.ndarray) -> Any:
        return raw.run(["pooled", "weights"], {"embeddings": x, "attention_mask": mask})

    def pair(backend: OnnxBackend) -> Any:
        """The backend's named outputs as (pooled, weights), like the raw session's."""

        def run(x: np.ndarray, mask: np.ndarray) -> Any:
            out = backend.run(x, mask)
            return out["pooled"], out["weights"]

        return run

    return {
        "cpu": (cpu.provider, pair(cpu)),
        "service-cuda": (cuda.provider, pair(cuda)),
        "raw-cuda-run": (raw.get_providers()[0], raw_run),
        "raw-cuda-device": (raw.get_providers()[0], raw),
    }


def device_resident(
    ort: Any, session: Any, x: np.ndarray, mask: np.ndarray, device: str = "cuda"
) -> tuple[Any, Any]:
    """A run with inputs copied to the GPU once and outputs left there: ``(run, fetch)``."""
    binding = session.io_binding()
    for name, value in (("embeddings", x), ("attention_mask", mask)):
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, device, 0))
    binding.bind_output("pooled", device)
    binding.bind_output("weights", device)

    def run() -> None:
        session.run_with_iobinding(binding)

    def fetch() -> Any:
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    return run, fetch


def cell_input(batch: int, tokens: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A cell's input, the same for every variant and precision: embeddings (B, N, D) float32
    and attention_mask (B, N) bool, its last row half padding (the mask must reach the
    kernels)."""
    rng = np.random.default_rng(batch * 100_003 + tokens)
    x = rng.normal(size=(batch, tokens, dim)).astype(np.float32)
    mask = np.ones((batch, tokens), dtype=bool)
    mask[-1, tokens // 2 :] = False
    return x, mask


def bench_cell(
    ort: Any,
    ways: dict[str, Any],
    batch: int,
    tokens: int,
    seconds: float,
    dry_run: bool = False,
    min_runs: int = 10,
    cpu_tokens_max: int | None = None,
) -> dict[str, Any]:
    """Every variant of ``ways`` (:func:`variants`) on one [batch, tokens, D] input: timings,
    items/s and the largest difference from the reference (the CPU's; ``raw-cuda-run``'s when
    the CPU is left out, which it is above ``cpu_tokens_max`` items x tokens)."""
    dim = int(ways["raw-cuda-device"][1].get_inputs()[0].shape[2])
    x, mask = cell_input(batch, tokens, dim)
    chosen = dict(ways)
    if cpu_tokens_max is not None and batch * tokens > cpu_tokens_max:
        del chosen["cpu"]
    reference_name = "cpu" if "cpu" in chosen else "raw-cuda-run"
    reference = chosen[reference_name][1](x, mask)
    cells: dict[str, Any] = {"reference": reference_name}
    for name, (_, run) in chosen.items():
        if name == "raw-cuda-device":
            step, fetch = device_resident(ort, run, x, mask, "cpu" if dry_run else "cuda")
            got = fetch()
        else:
            step = partial(run, x, mask)
            got = step()
        worst = max(float(np.abs(g - r).max()) for g, r in zip(got, reference, strict=True))
        timing: dict[str, Any] = time_runs(step, seconds, warmup=2, min_runs=min_runs)
        timing["items_per_second"] = batch / (timing["ms_mean"] / 1000)
        timing["max_abs_diff_vs_reference"] = worst
        timing["matches_reference"] = worst <= 1e-3
        cells[name] = timing
    return cells


def bench_model(
    ort: Any,
    model_file: Path,
    batches: list[int],
    seconds: float,
    dry_run: bool = False,
    tokens: int = TOKENS,
) -> dict[str, Any]:
    ways = variants(ort, model_file, dry_run)
    dim = int(ways["raw-cuda-device"][1].get_inputs()[0].shape[2])
    out: dict[str, Any] = {"input_dim": dim, "providers": {k: v[0] for k, v in ways.items()}}
    for b in batches:
        out[str(b)] = cells = bench_cell(ort, ways, b, tokens, seconds, dry_run)
        print(f"{model_file.parent.parent.name} B={b} N={tokens}: {cells}", flush=True)
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        *([f"**{results['dry_run_cpu']}**", ""] if "dry_run_cpu" in results else []),
        f"GPU: {results['gpu']}; onnxruntime {results['onnxruntime']}; {results['date']}. "
        f"Command: `{results['command']}`.",
        "",
        "| model | B | variant | provider | ms/run p50 | p99 | items/s | vs cpu | vs raw-cuda-run "
        "| max abs diff vs cpu |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, m in results["models"].items():
        for b, cells in m.items():
            if not b.isdigit():
                continue
            for name, c in cells.items():
                if name == "reference":
                    continue
                cpu = cells["cpu"]["items_per_second"]
                raw = cells["raw-cuda-run"]["items_per_second"]
                lines.append(
                    f"| {model} | {b} | {name} | {m['providers'][name]} | {c['ms_p50']:.3f} | "
                    f"{c['ms_p99']:.3f} | {c['items_per_second']:,.0f} | "
                    f"{c['items_per_second'] / cpu:.1f}x | {c['items_per_second'] / raw:.2f}x | "
                    f"{c['max_abs_diff_vs_reference']:.1e} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("out", type=Path, help="folder for gpu.json and gpu.md")
    parser.add_argument("--repository", type=Path, default=ROOT / "runs/bench/model_repository")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell")
    parser.add_argument("--batches", default="1,8,64,256")
    parser.add_argument("--tokens", type=int, default=TOKENS, help="tokens per item")
    parser.add_argument(
        "--dry-run-cpu",
        action="store_true",
        help="run every variant on the CPU: a test, not figures",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m bench.gpu " + " ".join(sys.argv[1:] if argv is None else argv),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "models": {},
    }
    if args.dry_run_cpu:
        results["dry_run_cpu"] = "every variant ran on the CPU: these are not GPU figures"
    try:
        ort = load_ort(args.dry_run_cpu)
        results["onnxruntime"] = ort.__version__
        files = {
            DEFAULT_MODEL: ROOT / "model_repository" / DEFAULT_MODEL / "1" / "model.onnx",
            WIDE_MODEL: args.repository / WIDE_MODEL / "1" / "model.onnx",
        }
        batches = [int(b) for b in args.batches.split(",")]
        for name, path in files.items():
            if not path.exists():
                results.setdefault("missing", []).append(str(path))
                continue
            results["models"][name] = bench_model(
                ort, path, batches, args.seconds, args.dry_run_cpu, args.tokens
            )
        if not results["models"]:
            raise Skip(f"no model files: {results.get('missing')}")
    except Skip as exc:
        results["skipped"] = str(exc)
        print(f"skipped: {exc}")
    (args.out / "gpu.json").write_text(json.dumps(results, indent=1) + "\n")
    if "skipped" not in results:
        (args.out / "gpu.md").write_text(markdown(results))
        print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
