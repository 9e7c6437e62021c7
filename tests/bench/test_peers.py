"""The peers of python -m bench.compare, started for real: each answers what ONNX Runtime computes
and takes a second of load from hey. LitServe needs the ``bench`` extra and Triton the PyTriton
environment that ``python -m bench.compare`` makes; their tests skip without them, under CI too
(CI installs neither). The GPU script skips on a CPU-only machine and runs here as a dry run."""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import gpu, hey, process
from bench.bodies import BY_NAME, body_for, check
from bench.peers import launch
from bench.process import ROOT, free_port
from bench.procstat import TreeUsage
from service.core.backend import OnnxBackend
from service.settings import Settings
from tests.bench.conftest import needs_hey

MODEL = Settings.model_fields["default_model"].default
MODEL_FILE = ROOT / "model_repository" / MODEL / "1" / "model.onnx"
TRITON_VENV = ROOT / "runs" / "bench" / "pytriton-venv"


Items = tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]


@pytest.fixture(scope="module")
def items() -> Items:
    x = np.random.default_rng(1).normal(size=(8, 128, 16)).astype(np.float32)
    out = OnnxBackend(MODEL_FILE, device="cpu").run(x, np.ones((8, 128), dtype=bool))
    return x, (out["pooled"], out["weights"])


def load(url: str, series: str, tmp_path: Path, x: np.ndarray, pid: int) -> hey.LoadResult:
    """One request checked against ONNX Runtime, then hey for a second at concurrency 4."""
    body = body_for(tmp_path, BY_NAME[series], x)
    usage = TreeUsage(pid)
    usage.start()
    result = hey.run_summary(url, body.path, body.content_type, body.headers, 4, 1.0)
    assert float(usage.stop()["cpu_seconds"]) > 0
    assert result.ok > 0 and result.failed == 0, result
    assert 0 < result.client_cpu_seconds < 60  # hey's own CPU, over a one-second run
    return result


def checked(url: str, series: str, tmp_path: Path, items: Items) -> None:
    x, expected = items
    check(url, BY_NAME[series], body_for(tmp_path, BY_NAME[series], x), expected)


@needs_hey
def test_naive_peer_and_our_server_answer_alike_under_load(tmp_path: Path, items: Items) -> None:
    port = free_port()
    command = [sys.executable, "-m", "bench.peers.naive", "--model", str(MODEL_FILE)]
    ready = [f"http://127.0.0.1:{port}/health"]
    with launch.running([*command, "--port", str(port)], ready, tmp_path / "naive.log") as p:
        url = f"http://127.0.0.1:{port}/pool"
        checked(url, "naive-json", tmp_path, items)
        load(url, "naive-json", tmp_path, items[0], p.pid)
    assert p.poll() is not None  # stopped, its process group too
    with process.running_server(ROOT / "model_repository", ["--models", MODEL]) as (base, ours):
        url = f"{base}/models/{MODEL}/pool"
        for series in ("ours-npy", "ours-npy-nodiag", "ours-npz", "ours-json"):
            checked(url + BY_NAME[series].query, series, tmp_path, items)  # diagnostics as asked
        load(url, "ours-npy", tmp_path, items[0], ours.pid)


@needs_hey
@pytest.mark.skipif(
    importlib.util.find_spec("litserve") is None,
    reason="litserve is not installed (the bench extra; CI does not install it)",
)
def test_litserve_peer_batches_and_answers_alike(tmp_path: Path, items: Items) -> None:
    port = free_port()
    command = [sys.executable, "-m", "bench.peers.litserve_peer", "--model", str(MODEL_FILE)]
    command += ["--port", str(port), "--max-batch-size", "8"]
    ready = [f"http://127.0.0.1:{port}/health"]
    with launch.running(command, ready, tmp_path / "litserve.log") as p:
        url = f"http://127.0.0.1:{port}/predict"
        for series in ("litserve-json", "litserve-b64"):
            checked(url, series, tmp_path, items)
        load(url, "litserve-b64", tmp_path, items[0], p.pid)


@needs_hey
@pytest.mark.skipif(
    not (TRITON_VENV / ".requirements.sha256").exists(),
    reason=f"no PyTriton environment ({TRITON_VENV}: python -m bench.compare makes it)",
)
def test_triton_peer_answers_alike_in_json_and_binary(tmp_path: Path, items: Items) -> None:
    http, grpc, metrics = free_port(), free_port(), free_port()
    command = [str(TRITON_VENV / "bin" / "python"), "-m", "bench.peers.triton_peer"]
    command += [f"--model={MODEL}={MODEL_FILE}", "--http-port", str(http)]
    command += ["--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    base = f"http://127.0.0.1:{http}"
    ready = [f"{base}/v2/health/ready", f"{base}/v2/models/{MODEL}/ready"]
    log = tmp_path / "triton.log"
    with launch.running(command, ready, log, stop_signal=signal.SIGINT, ready_timeout=240) as p:
        url = f"{base}/v2/models/{MODEL}/infer"
        for series in ("triton-json", "triton-binary"):
            checked(url, series, tmp_path, items)
        load(url, "triton-binary", tmp_path, items[0], p.pid)


def test_gpu_script_skips_without_cuda_and_dry_runs_on_cpu(tmp_path: Path) -> None:
    assert gpu.main([str(tmp_path / "real"), "--seconds", "0.05", "--batches", "1"]) == 0
    real = json.loads((tmp_path / "real" / "gpu.json").read_text())
    if "skipped" not in real:
        pytest.skip(f"CUDA ran here ({real['gpu']}): nothing to skip")
    assert "CUDA" in real["skipped"] and not (tmp_path / "real" / "gpu.md").exists()
    args = ["--seconds", "0.05", "--batches", "1,2", "--repository", str(tmp_path), "--dry-run-cpu"]
    assert gpu.main([str(tmp_path / "dry"), *args]) == 0
    dry = json.loads((tmp_path / "dry" / "gpu.json").read_text())
    assert list(dry["models"]) == [MODEL] and dry["missing"]  # no wide model in tmp_path
    cells = dry["models"][MODEL]["2"]
    assert cells.pop("reference") == "cpu"
    assert set(cells) == {"cpu", "service-cuda", "raw-cuda-run", "raw-cuda-device"}
    assert all(c["matches_reference"] and c["runs"] >= 10 for c in cells.values())
    assert "not GPU figures" in (tmp_path / "dry" / "gpu.md").read_text()
