"""Start the real service (python -m service, uvicorn) on a loopback port for integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from bench import process

ROOT = process.ROOT
REPOSITORY = ROOT / "model_repository"
free_port = process.free_port


@contextmanager
def running_server(*flags: str, ready_timeout: float = 60.0) -> Iterator[str]:
    """Yield the base URL of a server on the committed repository, started with ``flags``."""
    with process.running_server(REPOSITORY, flags, ready_timeout=ready_timeout) as (url, _):
        yield url


# asgi-lifespan gives an app 5 s to start by default; loading the committed models and timing
# each for its batch policy takes longer than that on a loaded machine.
STARTUP_SECONDS = 120.0
