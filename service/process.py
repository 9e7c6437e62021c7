"""Start ``python -m service`` in a child process and wait until it is ready.

Used by the integration tests and by ``make bench``, which both need a real uvicorn server on a
loopback port. Standard library only (no httpx), so it works in the serving environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).parents[1]


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def running_server(
    repository: Path,
    flags: Sequence[str] = (),
    ready_timeout: float = 60.0,
    log_level: str = "warning",
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield ``(base_url, process)`` of a server on ``repository``; SIGTERM it afterwards.

    ``ADAPOOL_*`` variables of the caller are not passed on: only ``flags`` configure the server.
    Raises RuntimeError (with the server's output) if it exits before it is ready.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPOOL_")}
    command = [sys.executable, "-m", "service", "--port", str(port), "--log-level", log_level]
    command += ["--model-repository", str(repository), *flags]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while not _ready(url):
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise RuntimeError(f"server exited with {process.returncode}:\n{output}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not become ready in {ready_timeout} s")
            time.sleep(0.2)
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
