"""Where the machine's cores go during a load: the server's event loop, its other threads (the
model's), the load generator, and what is left idle.

Linux only (``/proc/<pid>/task/*/stat``); elsewhere :func:`threads` returns nothing and the
split is left out. The load generator is a child of this process, so its CPU is read from
``RUSAGE_CHILDREN`` around the call that waited for it. A thread that ends during the load
is not counted (the server's threads, ONNX Runtime's pool and the worker, live on).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def threads(pid: int) -> dict[int, tuple[str, float]]:
    """The name and CPU seconds (user + system) of each live thread of ``pid``, by thread id
    (the server names its decoding threads ``decode_N``: ``service/threads.py``)."""
    out: dict[int, tuple[str, float]] = {}
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return out
    for task in tasks.iterdir():
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def split(pid: int, generate: Callable[[], T]) -> tuple[T, dict[str, float] | None]:
    """Run ``generate`` (which starts a load generator and waits for it) and say how many cores
    each part used meanwhile: ``loop`` (the server's main thread: event loop, HTTP, small
    bodies' decoding), ``decoders`` (its ``decode_N`` threads: large bodies' decoding),
    ``model`` (its other threads: the model's runs and ONNX Runtime's pool), ``load_generator``
    and ``idle`` (what remained of the machine's cores), with ``wall_seconds``."""
    before, children, started = threads(pid), children_seconds(), time.perf_counter()
    result = generate()
    wall = time.perf_counter() - started
    after, children = threads(pid), children_seconds() - children
    if not after:
        return result, None
    used = {tid: (name, s - before.get(tid, ("", 0.0))[1]) for tid, (name, s) in after.items()}
    loop = used.pop(pid, ("", 0.0))[1]
    decoders = sum(s for name, s in used.values() if name.startswith("decode"))
    model = sum(s for name, s in used.values() if not name.startswith("decode"))
    cores = float(os.cpu_count() or 1)
    return result, {
        "wall_seconds": wall,
        "loop": loop / wall,
        "decoders": decoders / wall,
        "model": model / wall,
        "load_generator": children / wall,
        "idle": max(0.0, cores - (loop + decoders + model + children) / wall),
    }
