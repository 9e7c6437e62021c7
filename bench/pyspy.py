"""Profile a running server with py-spy and say where its samples go, by stage and by function.

py-spy samples the Python stacks of every thread of a process (here 100 times a second) without
changing it; ``--format raw`` writes one line per distinct stack, ``frame;frame;...;leaf COUNT``,
each frame ``function (file:line)``. :func:`stages` gives each sample to the first frame, from
the leaf up, that a rule in :data:`RULES` claims: so numpy called by the diagnostics counts as
diagnostics, and the ONNX Runtime call as inference wherever it was made from. py-spy leaves
idle threads out, except threads blocked on a thread pool's work queue (the ONNX Runtime worker
of the batcher, and asyncio's ``to_thread`` workers that decode large bodies), which it counts
as busy: :data:`IDLE` names those samples so that the shares can leave them out. The event
loop's own C code (uvloop: socket I/O, callbacks, and waiting in epoll) shows as its Python
caller, ``asyncio.Runner.run``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# (stage, module path part): the first that matches a frame's file claims it. Keyed to modules
# only, so a renamed function cannot move samples to another stage.
RULES: tuple[tuple[str, str], ...] = (
    ("inference (ONNX Runtime)", "onnxruntime/"),
    ("metrics (prometheus_client)", "prometheus_client/"),
    ("request context + metrics middleware", "service/api/context.py"),
    ("diagnostics", "service/core/diagnostics.py"),
    ("encode (response)", "service/api/answers.py"),
    ("encode (response)", "service/codecs/answers.py"),
    ("decode (body -> arrays)", "service/api/bodies.py"),
    ("decode (body -> arrays)", "service/codecs/"),
    ("batching (queue, merge, split)", "service/core/batching.py"),
    ("core (runtime: admission, checks)", "service/core/"),
    ("handler (service/api, the rest)", "service/"),
    ("HTTP (uvicorn, starlette, FastAPI)", "uvicorn/"),
    ("HTTP (uvicorn, starlette, FastAPI)", "httptools"),
    ("HTTP (uvicorn, starlette, FastAPI)", "h11/"),
    ("HTTP (uvicorn, starlette, FastAPI)", "starlette/"),
    ("HTTP (uvicorn, starlette, FastAPI)", "fastapi/"),
    ("HTTP (uvicorn, starlette, FastAPI)", "anyio/"),
    ("event loop (asyncio)", "asyncio/"),
    ("thread pool (hand-off to worker threads)", "concurrent/futures/"),
    ("thread pool (hand-off to worker threads)", "threading.py"),
)
OTHER = "other"
IDLE = "idle: thread-pool workers waiting for work"


def executable() -> str:
    """py-spy from PATH or beside this interpreter (the venv's bin)."""
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise FileNotFoundError("py-spy not found: pip install -c constraints.txt -e '.[bench]'")
    return found


def record(pid: int, seconds: float, out: Path, fmt: str = "raw", rate: int = 100) -> str:
    """Sample ``pid`` for ``seconds`` into ``out`` (``raw`` stacks or a ``flamegraph`` SVG);
    returns py-spy's own report line."""
    command = [executable(), "record", "-p", str(pid), "-d", str(max(1, round(seconds)))]
    command += ["-r", str(rate), "-f", fmt, "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "Samples:" in line]
    return lines[-1].removeprefix("py-spy> ").strip() if lines else ""


def parse_raw(text: str) -> list[tuple[list[str], int]]:
    """``(frames root..leaf, samples)`` per line of py-spy's raw output."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def split_frame(frame: str) -> tuple[str, str]:
    """``"serve (service/api/pool.py:95)"`` -> ``("serve", "service/api/pool.py")``."""
    function, _, where = frame.rpartition(" (")
    return function, where.rstrip(")").rsplit(":", 1)[0]


def stage_of(frames: list[str]) -> str:
    function, path = split_frame(frames[-1])
    if function == "_worker" and path.endswith("concurrent/futures/thread.py"):
        return IDLE  # a thread-pool worker blocked on its work queue: py-spy counts it busy
    for frame in reversed(frames):
        _, path = split_frame(frame)
        for stage, part in RULES:
            if part in path:
                return stage
    return OTHER


def stages(stacks: list[tuple[list[str], int]]) -> dict[str, int]:
    """Samples per stage, largest first."""
    counts: Counter[str] = Counter()
    for frames, n in stacks:
        counts[stage_of(frames)] += n
    return dict(counts.most_common())


def leaf_functions(stacks: list[tuple[list[str], int]], top: int = 15) -> list[tuple[str, int]]:
    """The functions the samples were in (self time), largest first."""
    counts: Counter[str] = Counter()
    for frames, n in stacks:
        function, path = split_frame(frames[-1])
        counts[f"{function} ({path})"] += n
    return counts.most_common(top)


def service_functions(stacks: list[tuple[list[str], int]], top: int = 15) -> list[tuple[str, int]]:
    """Functions of ``service/`` by inclusive samples (each counted once per stack)."""
    counts: Counter[str] = Counter()
    for frames, n in stacks:
        seen = set()
        for frame in frames:
            function, path = split_frame(frame)
            if path.startswith("service/") and path != "service/__main__.py":
                key = f"{function} ({path})"
                if key in seen:
                    continue
                seen.add(key)
                counts[key] += n
    return counts.most_common(top)


def summarise(text: str) -> dict[str, object]:
    """Samples, stages and the top functions of py-spy's raw output."""
    stacks = parse_raw(text)
    return {
        "samples": sum(n for _, n in stacks),
        "stages": stages(stacks),
        "leaf_functions": leaf_functions(stacks),
        "service_functions": service_functions(stacks),
    }
