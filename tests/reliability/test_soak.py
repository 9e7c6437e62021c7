"""Soak in CI: ADAPOOL_SOAK_REQUESTS mixed requests (default 2,000) at concurrency 64 against one
server, after a warm-up of the same mix; every answer checked against ONNX Runtime directly.
The full run (20,000) is ``python -m tests.reliability.soak --requests 20000`` (RELIABILITY.md).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from bench import process
from tests.reliability.common import MODELS, REPOSITORY
from tests.reliability.soak import FORMATS, MiB, soak

REQUESTS = int(os.environ.get("ADAPOOL_SOAK_REQUESTS", "2000"))
WARMUP = max(500, REQUESTS // 10)
# Growth of the server's resident memory from after the warm-up to after the soak.
RSS_BOUND = 64 * MiB

pytestmark = pytest.mark.slow


def test_soak_answers_every_request_exactly_and_memory_stays_flat() -> None:
    with process.running_server(REPOSITORY) as (url, server):
        result = soak(url, server.pid, REQUESTS, WARMUP, concurrency=64)
    print(f"\nsoak: {result.summary()}")
    assert not result.problems, result.problems[:20]
    assert result.statuses == Counter({200: REQUESTS})
    assert set(result.formats) == set(FORMATS) and set(result.models) == set(MODELS)
    assert result.max_abs_diff <= 1e-5
    assert result.rss_after - result.rss_warm <= RSS_BOUND, result.summary()
