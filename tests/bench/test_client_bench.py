"""make bench's client rows (bench/client.py): the client and hey on the same requests."""

from __future__ import annotations

import numpy as np

from bench import client as client_bench
from tests.bench.conftest import needs_hey
from tests.service.server import running_server


@needs_hey
def test_the_client_and_hey_send_the_same_requests_and_the_rows_say_so() -> None:
    x = np.random.default_rng(0).normal(size=(16, 128, 16)).astype(np.float32)
    with running_server() as url:
        result = client_bench.measure(url, "signature-adapool", x, seconds=0.4, warmup=0, high=4)
    rows = {(r["runner"], r["concurrency"]): r for r in result["rows"]}
    assert set(rows) == {
        ("hey", 1),
        ("httpx.Client.post loop", 1),
        ("Client.pool loop", 1),
        ("Client.pool_many", 1),
        ("AsyncClient.pool_many", 1),
        ("hey", 4),
        ("Client.pool_many", 4),
        ("AsyncClient.pool_many", 4),
    }
    for row in rows.values():
        assert row["requests"] > 0 and row["sender_cpu_ms_per_request"] > 0
        hey_row = rows[("hey", row["concurrency"])]
        assert row["vs_hey_requests_per_second"] == (
            row["requests_per_second"] / hey_row["requests_per_second"]
        )
    assert rows[("hey", 1)]["vs_hey_requests_per_second"] == 1.0
    assert result["request"]["body_bytes"] == 128 + 8 * 128 * 16 * 4  # .npy of [8, 128, 16]
    assert result["request"]["headers"]["Accept"] == "application/x-npz"
    assert result["in_process"]["encode_us"] > 0 and result["in_process"]["decode_us"] > 0
    text = "\n".join(client_bench.markdown(result))
    assert "| hey | 1 |" in text and "| AsyncClient.pool_many | 4 |" in text
