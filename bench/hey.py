"""Drive load with hey (Debian package ``hey``) in a separate process and read its per-request CSV.

hey is a Go load generator: one process, ``-c`` concurrent keep-alive connections, each sending
the same body as fast as answers come back. Its CSV has one row per request (times in seconds,
to 0.1 ms): ``response-time, ..., status-code, offset``; we compute the figures from those rows
instead of parsing its summary text.
"""

from __future__ import annotations

import dataclasses
import re
import resource
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
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
    max_seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # transport errors: timeouts, resets
    client_cpu_seconds: float = 0.0  # hey's own CPU time (user + system), where measured

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def failed(self) -> int:
        """Requests that did not answer 200: other statuses and transport errors."""
        return sum(n for s, n in self.statuses.items() if s != 200) + sum(self.errors.values())

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
        max_seconds=float(latencies.max()),
    )


_SUMMARY_SECONDS = re.compile(r"^\s*(Total|Slowest|Average):\s+([0-9.]+) secs", re.MULTILINE)
_PERCENTILE = re.compile(r"^\s*(\d+)% in ([0-9.]+) secs", re.MULTILINE)
_STATUS = re.compile(r"^\s+\[(\d+)\]\s+(\d+) responses")
_ERROR = re.compile(r"^\s+\[(\d+)\]\s+(.*)$")


def parse_summary(text: str) -> LoadResult:
    """Figures from hey's default summary output.

    Unlike ``-o csv``, the summary counts transport errors (timeouts, refused or reset
    connections: its "Error distribution"), which never reach the CSV. Latencies are hey's own
    percentiles of the requests that got an answer, to 0.1 ms; ``requests`` counts answers and
    errors, ``wall_seconds`` is hey's total time, the tail of the last answers included.
    """
    seconds = {name: float(value) for name, value in _SUMMARY_SECONDS.findall(text)}
    if "Total" not in seconds:
        raise ValueError("not a hey summary: no 'Total:' line")
    percentiles = {int(p): float(v) for p, v in _PERCENTILE.findall(text)}
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    section = ""
    for line in text.splitlines():
        if line.strip() and not line[0].isspace():  # a heading: "Status code distribution:"
            section = line.split()[0]
        elif section == "Status" and (match := _STATUS.match(line)):
            statuses[int(match.group(1))] += int(match.group(2))
        elif section == "Error" and (match := _ERROR.match(line)):
            errors[match.group(2).strip()] += int(match.group(1))
    answered = sum(statuses.values())
    if answered + sum(errors.values()) == 0:
        raise ValueError("hey reported no requests")
    nan = float("nan")
    slowest = seconds.get("Slowest", nan) if answered else nan
    return LoadResult(
        requests=answered + sum(errors.values()),
        statuses=dict(sorted(statuses.items())),
        wall_seconds=seconds["Total"],
        # hey prints a percentile p only once it has more than 100 / (100 - p) answers: with a
        # single answer p50 is missing (the average is that answer), under 100 answers p99 is
        # missing (the slowest answer stands for it)
        p50_seconds=percentiles.get(50, seconds.get("Average", nan) if answered else nan),
        p99_seconds=percentiles.get(99, slowest),
        max_seconds=slowest,
        errors=dict(errors),
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


def missing() -> str | None:
    """Why hey cannot run here, or None when it can."""
    try:
        version()
    except LoadGeneratorMissing as exc:
        return str(exc)
    return None


def command(
    url: str,
    body: Path,
    content_type: str,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    *extra: str,
) -> list[str]:
    """hey's command line for a POST load of ``seconds`` at ``concurrency``, plus ``extra``."""
    version()
    line = [HEY, "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", *extra]
    line += ["-T", content_type, "-D", str(body), "-disable-compression"]
    for name, value in headers.items():
        line += ["-H", f"{name}: {value}"]
    return [*line, url]


def run(
    url: str,
    body: Path,
    content_type: str,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
) -> LoadResult:
    """POST ``body`` to ``url`` from ``concurrency`` connections for ``seconds``."""
    line = command(url, body, content_type, headers, concurrency, seconds, "-o", "csv")
    done = subprocess.run(line, capture_output=True, check=True, timeout=seconds + 120)
    return parse_csv(done.stdout.decode())


def run_summary(
    url: str,
    body: Path,
    content_type: str,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    timeout: int = 20,
) -> LoadResult:
    """As :func:`run`, read from hey's summary (which counts transport errors); each request
    gives up after ``timeout`` seconds (hey's ``-t``; an error then)."""
    line = command(url, body, content_type, headers, concurrency, seconds, "-t", str(timeout))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(line, capture_output=True, check=True, timeout=seconds + timeout + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # hey was waited for: it counts now
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return dataclasses.replace(parse_summary(done.stdout.decode()), client_cpu_seconds=used)
