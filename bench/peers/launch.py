"""Start a peer server in a process group of its own, wait until it answers, stop it.

Standard library only. The peer's output goes to a log file (a pipe nobody reads would fill up
and block it); when it exits before it is ready, the error carries the log's last lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from bench.process import ROOT


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def log_tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def running(
    command: Sequence[str],
    ready_urls: Sequence[str],
    log: Path,
    *,
    ready_timeout: float = 120.0,
    stop_signal: int = signal.SIGTERM,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Iterator[subprocess.Popen[bytes]]:
    """Yield the process once every URL in ``ready_urls`` answers 200.

    Stopping sends ``stop_signal`` to the process (PyTriton wants SIGINT), waits 20 s, then
    kills its whole group, so children it left behind (Triton's server, LitServe's workers)
    go too.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + ready_timeout
        pending = list(ready_urls)
        while pending:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{command[2] if len(command) > 2 else command[0]} exited with "
                    f"{process.returncode} before it was ready:\n{log_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready in {ready_timeout} s: {pending[0]}\n{log_tail(log)}")
            if answers(pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.2)
        yield process
    finally:
        stop(process, stop_signal)


def stop(process: subprocess.Popen[bytes], stop_signal: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        with suppress(ProcessLookupError):
            process.send_signal(stop_signal)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # the group: children left behind
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
