"""CPU time and peak memory of a server's process tree, read from ``/proc`` (Linux only).

A server here may be several processes (LitServe's API server and inference worker, Triton's
``tritonserver`` and its Python backend stub), so every figure is over the tree under the
process the benchmark started: that process and all its live descendants.

- CPU seconds: ``utime + stime`` of each process (fields 14 and 15 of ``/proc/<pid>/stat``,
  all its threads included), in clock ticks. A process's ``cutime``/``cstime`` count only
  children that exited and were waited for, so the live children are read one by one instead.
- Peak RSS: ``VmHWM`` of ``/proc/<pid>/status``, reset per measurement by writing ``5`` to
  ``/proc/<pid>/clear_refs`` (allowed for our own processes and for root). The tree's figure is
  the sum of its processes' peaks: an upper bound of the tree's simultaneous peak.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_stat(text: str) -> tuple[int, float]:
    """``(parent pid, CPU seconds)`` from one ``/proc/<pid>/stat`` line.

    The command name (field 2) sits in parentheses and may hold spaces or parentheses itself,
    so the fields are counted from the last ``)``.
    """
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): field k is rest[k - 3]
    ppid, utime, stime = int(rest[1]), int(rest[11]), int(rest[12])
    return ppid, (utime + stime) / TICKS


def parse_status_kib(text: str, key: str) -> int:
    """The value in KiB of ``key`` (``VmHWM``, ``VmRSS``) in ``/proc/<pid>/status``; 0 if absent."""
    for line in text.splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # the process exited meanwhile
        return None


def tree(root: int) -> list[int]:
    """``root`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        text = _read(entry / "stat")
        if text is None:
            continue
        ppid, _ = parse_stat(text)
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(out)


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        text = _read(PROC / str(pid) / "stat")
        if text is not None:
            out[pid] = parse_stat(text)[1]
    return out


def reset_peaks(pids: list[int]) -> bool:
    """Reset each process's peak RSS to its current RSS; False where the kernel refused."""
    ok = True
    for pid in pids:
        try:
            (PROC / str(pid) / "clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def peak_rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        text = _read(PROC / str(pid) / "status")
        if text is not None:
            total += 1024 * parse_status_kib(text, "VmHWM")
    return total


@dataclass
class TreeUsage:
    """CPU seconds and peak RSS of ``root``'s tree between :meth:`start` and :meth:`stop`."""

    root: int
    cpu_before: dict[int, float] | None = None
    peaks_reset: bool = False

    def start(self) -> None:
        pids = tree(self.root)
        self.peaks_reset = reset_peaks(pids)
        self.cpu_before = cpu_seconds(pids)

    def stop(self) -> dict[str, float | int | bool]:
        """CPU seconds used since :meth:`start` (processes that started meanwhile count whole),
        the tree's peak RSS (since :meth:`start` when the reset worked) and its process count."""
        before = self.cpu_before or {}
        pids = tree(self.root)
        after = cpu_seconds(pids)
        used = sum(max(0.0, seconds - before.get(pid, 0.0)) for pid, seconds in after.items())
        return {
            "cpu_seconds": round(used, 3),
            "peak_rss_bytes": peak_rss_bytes(pids),
            "processes": len(pids),
            "peak_since_start": self.peaks_reset,
        }
