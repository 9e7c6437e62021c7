"""Memory of the real server after the largest requests its defaults accept (issue 15's probe).

One 16 x 2,048-token ``.npy`` request (the default limits: 2,048 tokens per item, 32,768 per
request) to each committed model, twice. With one arena per session and explicit attention
this took the server from about 100 MiB to 6.7 GiB, none of it given back; ``python -m
bench.memory`` measures the figures (BENCHMARKS.md, RELIABILITY.md). The bound here is
generous (memory is steadier than time, but the machine is shared): 1 GiB after both rounds,
and the second round adding at most 32 MiB.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest

from bench import process
from tests.reliability.common import REPOSITORY, manifest, rss_bytes

MiB = 1 << 20
BOUND = 1024 * MiB
SECOND_ROUND = 32 * MiB

pytestmark = pytest.mark.slow


def npy(batch: int, tokens: int, dim: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).standard_normal((batch, tokens, dim), np.float32))
    return buffer.getvalue()


def test_largest_requests_leave_the_server_bounded() -> None:
    models = sorted(p.parent.parent.name for p in REPOSITORY.glob("*/1/model.onnx"))
    assert len(models) == 7  # every committed model
    bodies = {m: npy(16, 2048, manifest(m)["input_dim"]) for m in models}
    with process.running_server(REPOSITORY) as (url, server):
        started = rss_bytes(server.pid)
        after = []
        with httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(2):
                for model in models:
                    response = client.post(
                        f"/models/{model}/pool",
                        content=bodies[model],
                        headers={"Content-Type": "application/x-npy"},
                    )
                    assert response.status_code == 200, response.text[:300]
                    assert len(response.json()["pooled"]) == 16
                after.append(rss_bytes(server.pid))
    print(
        f"server RSS: started {started / MiB:.0f} MiB, after round 1 {after[0] / MiB:.0f} MiB, "
        f"after round 2 {after[1] / MiB:.0f} MiB"
    )
    assert after[1] <= BOUND, f"{after[1] / MiB:.0f} MiB after two rounds"
    assert after[1] - after[0] <= SECOND_ROUND, "the second round raised RSS"
