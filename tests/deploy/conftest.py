"""One real service for the deployment tests that need a live /metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.service.server import running_server


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    with running_server("--max-wait-ms", "5") as url:
        yield url
