"""ONNX Runtime backend: one session per model version, the provider actually in use, IO binding.

``ADAPOOL_DEVICE``: ``auto`` asks for CUDA then CPU; ``cuda`` and ``tensorrt`` are required, and a
session that fell back to CPU (ONNX Runtime does so silently when CUDA libraries are missing)
is reported as a problem that keeps readiness at 503. The truth comes from
``session.get_providers()`` after creation, never from ``get_available_providers()``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
WANTED = {"auto": [CUDA, CPU], "cpu": [CPU], "cuda": [CUDA, CPU], "tensorrt": [TENSORRT, CUDA, CPU]}
REQUIRED = {"cuda": CUDA, "tensorrt": TENSORRT}


@cache
def shared_cpu_arena() -> None:
    """Register the process's one CPU arena, which every session then allocates from (once:
    ONNX Runtime refuses a second registration)."""
    cpu = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    ort.create_and_register_allocator(cpu, ort.OrtArenaCfg({"arena_extend_strategy": 0}))


def choose_providers(device: str, available: list[str]) -> list[str]:
    """The providers to ask for, in order, keeping only those this build of ORT has."""
    wanted = WANTED[device]
    chosen = [p for p in wanted if p in available]
    return chosen or [CPU]


class OnnxBackend:
    """Runs one model.onnx: ``run(embeddings, attention_mask) -> {output name: array}``."""

    def __init__(
        self,
        model_file: Path,
        device: str = "auto",
        intra_op_threads: int = 0,
        spinning: bool = False,
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        if not spinning:
            # Idle ORT threads spin for work by default, burning cores that the event loop and
            # request decoding need (301 vs 280 requests/s at c=32 in the first make bench;
            # within noise in the latest: BENCHMARKS.md).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        # Memory (python -m bench.memory, BENCHMARKS.md): one CPU arena for the whole process
        # instead of one per session, each kept at its own peak, and no memory patterns (with
        # dynamic shapes they made a session's second large run take a new block of its own).
        shared_cpu_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
        options.enable_mem_pattern = False
        requested = choose_providers(device, ort.get_available_providers())
        self.session = ort.InferenceSession(str(model_file), options, providers=requested)
        self.providers: list[str] = self.session.get_providers()
        self.provider = self.providers[0]
        self.device = device
        self.requested = requested
        self.input_dim = int(self.session.get_inputs()[0].shape[2])
        self.outputs: list[str] = [o.name for o in self.session.get_outputs()]
        self._io_binding = self.provider in (CUDA, TENSORRT)

    @property
    def problem(self) -> str | None:
        """Why this backend must not count as ready, or None."""
        required = REQUIRED.get(self.device)
        if required and self.provider != required:
            return (
                f"device={self.device} requires {required}, but the session runs on "
                f"{self.provider} (available: {', '.join(ort.get_available_providers())})"
            )
        return None

    def run(
        self, embeddings: NDArray[np.float32], attention_mask: NDArray[np.bool_]
    ) -> dict[str, NDArray[np.float32]]:
        """embeddings (B, N, D) float32, attention_mask (B, N) bool -> every output by name:
        pooled (B, D_out), weights (B, H, N), and whatever else the graph returns."""
        feeds = {"embeddings": embeddings, "attention_mask": attention_mask}
        if not self._io_binding:
            return dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))
        # On a GPU, bind inputs from host memory and outputs on the device, copying once.
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.outputs:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.outputs, binding.copy_outputs_to_cpu(), strict=True))

    def warm_up(self) -> None:
        """A real forward pass on one token (also what readiness re-runs)."""
        x = np.zeros((1, 1, self.input_dim), dtype=np.float32)
        out = self.run(x, np.ones((1, 1), dtype=bool))
        pooled, weights = out["pooled"], out["weights"]
        if not np.isfinite(pooled).all() or not np.allclose(weights.sum(-1), 1.0, atol=1e-4):
            raise RuntimeError("warm-up produced non-finite pooled vectors or bad weights")
