"""Drive load with hey (Debian package ``hey``) in a separate process and read its per-request CSV.

hey is a Go load generator: one process, ``-c`` concurrent keep-alive connections, each sending
the same body as fast as answers come back. Its CSV has one row per request (times in seconds,
to 0.1 ms): ``response-time, ..., status-code, offset``; we compute the figures from those rows
instead of parsing its summary text.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEY = "hey"


class LoadGeneratorMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadResult:
    """What one hey run measured."""

    requests: int
    statuses: dict[int, int]
    wall_seconds: float
    p50_seconds: float
    p99_seconds: float

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def requests_per_second(self) -> float:
        return self.ok / self.wall_seconds if self.wall_seconds > 0 else 0.0


def parse_csv(text: str) -> LoadResult:
    """Figures from hey's ``-o csv`` output."""
    times: list[float] = []
    ends: list[float] = []
    starts: list[float] = []
    statuses: Counter[int] = Counter()
    for line in text.splitlines():
        fields = line.strip().split(",")
        if len(fields) != 8 or not fields[0][:1].isdigit():
            continue  # the header, blank lines
        response, status, offset = float(fields[0]), int(fields[6]), float(fields[7])
        times.append(response)
        starts.append(offset)
        ends.append(offset + response)
        statuses[status] += 1
    if not times:
        raise ValueError("hey reported no requests")
    latencies = np.array(times)
    return LoadResult(
        requests=len(times),
        statuses=dict(sorted(statuses.items())),
        wall_seconds=max(ends) - min(starts),
        p50_seconds=float(np.percentile(latencies, 50)),
        p99_seconds=float(np.percentile(latencies, 99)),
    )


def version() -> str:
    path = shutil.which(HEY)
    if path is None:
        raise LoadGeneratorMissing(
            "hey not found: install it (Debian/Ubuntu: apt-get install hey; or "
            "go install github.com/rakyll/hey@latest)"
        )
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "hey"], capture_output=True)
        return out.stdout.decode().strip() or path
    except FileNotFoundError:
        return path


def run(
    url: str,
    body: Path,
    content_type: str,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
) -> LoadResult:
    """POST ``body`` to ``url`` from ``concurrency`` connections for ``seconds``."""
    version()
    command = [HEY, "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST"]
    command += ["-T", content_type, "-D", str(body), "-o", "csv", "-disable-compression"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run([*command, url], capture_output=True, check=True, timeout=seconds + 120)
    return parse_csv(done.stdout.decode())
