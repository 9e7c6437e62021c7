"""One real service for the deployment tests that need a live /metrics, and the CPU image for
the ones that run it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.deploy import container
from tests.service.server import running_server


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    with running_server("--max-wait-ms", "5") as url:
        yield url


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[container.Built]:
    """The CPU image, built once per test run by ``make image`` from the committed tree; its
    tag is removed afterwards (the engine keeps the layers as its build cache)."""
    built = container.build(container.engine(), tmp_path_factory.mktemp("image-context"))
    yield built
    container.remove_image(built)
