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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _ready(url: str, path: str = "/health/ready") -> bool:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def running_server(
    repository: Path,
    flags: Sequence[str] = (),
    ready_timeout: float = 60.0,
    log_level: str = "warning",
    *,
    python: str | Path = sys.executable,
    host: str = "127.0.0.1",
    port: int | None = None,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    wait_for: str = "/health/ready",
    module: str = "service",
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield ``(base_url, process)`` of a server on ``repository``; SIGTERM it afterwards.

    The caller's ``ADAPOOL_*`` variables are not passed on. Host, port, repository and log level
    go to the server as ``ADAPOOL_*`` variables (as in a container), ``env`` adds more, and
    ``flags`` (which win over the environment) add the rest. ``python`` and ``cwd`` choose the
    interpreter and folder (an installed environment, for example). ``wait_for`` is the route
    that must answer 200 first (``/health/live`` for a server that is meant to stay unready);
    ``module`` the one run with ``python -m`` (another server on the same settings).
    Raises RuntimeError (with the server's output) if it exits before that.
    """
    port = port or free_port(host)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ADAPOOL_")}
    settings = {
        "ADAPOOL_HOST": host,
        "ADAPOOL_PORT": str(port),
        "ADAPOOL_MODEL_REPOSITORY": str(repository),
        "ADAPOOL_LOG_LEVEL": log_level,
    }
    process = subprocess.Popen(
        [str(python), "-m", module, *flags],
        cwd=cwd,
        env={**clean, **(env or {}), **settings},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while not _ready(url, wait_for):
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise RuntimeError(f"server exited with {process.returncode}:\n{output}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on {url} did not become ready in {ready_timeout} s")
            time.sleep(0.2)
        yield url, process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM ``process`` and wait ``timeout`` seconds for it to exit, then SIGKILL it."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
