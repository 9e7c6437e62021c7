"""Start ``python -m service`` from any interpreter, folder and address (the deployment tests'
launcher: an installed image environment, replicas on 127.0.0.2 and 127.0.0.3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.process import running_server


@contextmanager
def serving(
    python: str | Path,
    host: str,
    port: int,
    repository: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    ready_timeout: float = 60.0,
) -> Iterator[str]:
    """Yield the base URL once /health/ready answers 200; SIGTERM the server afterwards.

    Settings go through the environment only (``ADAPOOL_*``), as in a container.
    """
    with running_server(
        repository, (), ready_timeout, python=python, host=host, port=port, cwd=cwd, env=env
    ) as (url, _):
        yield url
