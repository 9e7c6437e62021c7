"""One process's memory and time over a sequence of model runs: the unit of ``bench.memory``.

    python -m bench.memrun '<json spec>'

The spec lists the models to open in this process, ``{"path": "model.onnx", "session":
{...}}`` each, and the steps to run; one JSON object comes back on stdout. A session is
``{"kind": "backend"}``: ``service.core.backend.OnnxBackend`` of whichever checkout is first on
``PYTHONPATH`` (a baseline checkout's options are measured with its own code), or ``{"kind":
"plain", ...}``: ``onnxruntime.InferenceSession`` with the options named there: ``arena``
``session`` (ONNX Runtime's default: one arena per session), ``shared`` (the process's
environment arena, registered once with ``extend`` ``power_of_two`` or ``same_as_requested``)
or ``none``; ``mem_pattern`` (default true); ``shrink`` ``never``, ``always`` or the padded
tokens from which a run shrinks the arena afterwards. Idle threads never spin, as in the
service.

Each step runs its shape [B, N] (random normal, every token real) on its models (``all`` or a
list of indices) ``runs`` times each, round-robin (so models compared in one step share the
machine's moments), and reports the process's peak RSS during the step (``VmHWM`` after a reset
through ``/proc/self/clear_refs``; the step's inputs are allocated before it), its RSS after
the step (inputs freed), and the median milliseconds per run of each model. Linux only.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from bench.procstat import parse_status_kib

Run = Callable[[NDArray[np.float32], NDArray[np.bool_]], object]
EXTEND = {"power_of_two": 0, "same_as_requested": 1}


def rss_mib(key: str = "VmRSS") -> float:
    """This process's ``VmRSS`` (or ``VmHWM``) in MiB."""
    return parse_status_kib(Path("/proc/self/status").read_text(), key) / 1024


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


@cache
def shared_arena(extend: str) -> None:
    """Register the process's environment CPU arena (once: ONNX Runtime refuses a second)."""
    ort.create_and_register_allocator(
        ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        ),
        ort.OrtArenaCfg({"arena_extend_strategy": EXTEND[extend]}),
    )


def open_plain(path: Path, options: dict[str, Any]) -> tuple[Run, int]:
    arena, shrink = options.get("arena", "session"), options.get("shrink", "never")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.enable_mem_pattern = bool(options.get("mem_pattern", True))
    so.enable_cpu_mem_arena = arena != "none"
    if arena == "shared":
        shared_arena(options.get("extend", "power_of_two"))
        so.add_session_config_entry("session.use_env_allocators", "1")
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    shrinking = ort.RunOptions()
    shrinking.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(x: NDArray[np.float32], mask: NDArray[np.bool_]) -> object:
        large = shrink == "always" or (shrink != "never" and x.shape[0] * x.shape[1] >= shrink)
        feeds = {"embeddings": x, "attention_mask": mask}
        return session.run(None, feeds, shrinking if large else None)

    return run, int(session.get_inputs()[0].shape[2])


def open_backend(path: Path) -> tuple[Run, int]:
    try:  # the checkout first on PYTHONPATH (its backend moved into service.core in #14)
        from service.core.backend import OnnxBackend
    except ImportError:
        from service.backend import OnnxBackend  # type: ignore[import-not-found,no-redef]

    backend = OnnxBackend(path, device="cpu")
    return backend.run, backend.input_dim


def open_model(model: dict[str, Any]) -> tuple[Run, int]:
    session = model.get("session", {"kind": "backend"})
    if session["kind"] == "backend":
        return open_backend(Path(model["path"]))
    return open_plain(Path(model["path"]), session)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the spec's steps; every figure of the process it is called in."""
    started = rss_mib()
    models = [open_model(m) for m in spec["models"]]
    out: dict[str, Any] = {"rss_start_mib": started, "rss_loaded_mib": rss_mib(), "steps": []}
    rng = np.random.default_rng(0)
    for step in spec["steps"]:
        batch, tokens = step["shape"]
        chosen = list(range(len(models))) if step.get("models", "all") == "all" else step["models"]
        mask = np.ones((batch, tokens), dtype=bool)
        dims = {models[i][1] for i in chosen}
        inputs = {d: rng.standard_normal((batch, tokens, d), dtype=np.float32) for d in dims}
        times: dict[int, list[float]] = {i: [] for i in chosen}
        reset_peak()
        for _ in range(step.get("runs", 1)):
            for i in chosen:
                run, dim = models[i]
                begun = time.perf_counter()
                run(inputs[dim], mask)
                times[i].append(time.perf_counter() - begun)
        peak = rss_mib("VmHWM")
        del inputs
        out["steps"].append(
            {
                "label": step.get("label", f"{batch}x{tokens}"),
                "shape": [batch, tokens],
                "peak_mib": peak,
                "rss_after_mib": rss_mib(),
                "ms_per_run": [1000 * statistics.median(t) for t in times.values()],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(json.dumps(measure(json.loads(args[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
