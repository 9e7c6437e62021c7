"""bench.perf_analyzer: Triton's perf_analyzer (from the tritonclient 2.41.0 wheel) against the
real server over HTTP and gRPC, and the reading of its report."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bench import perf_analyzer, process
from tests.service.server import REPOSITORY

MODEL = "signature-adapool"
CSV = (  # as perf_analyzer 2.41 writes it for a server without the statistics extension
    "Concurrency,Inferences/Second,Client Send,Client Recv,p50 latency,p90 latency,"
    "p95 latency,p99 latency\n1,1064.54,147,1,5916,12147,14180,33122\n"
)


def test_parse_csv_reads_items_per_second_and_latencies_in_ms() -> None:
    got = perf_analyzer.parse_csv(CSV)
    assert got == {"items_per_second": 1064.54, "p50_ms": 5.916, "p99_ms": 33.122}
    with pytest.raises(ValueError, match="no measurement"):
        perf_analyzer.parse_csv(CSV.splitlines()[0])


def test_input_data_is_one_item_in_base64(tmp_path: Path) -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    (entry,) = json.loads(perf_analyzer.write_input_data(tmp_path / "in.json", x).read_text())[
        "data"
    ]
    raw = base64.b64decode(entry["embeddings"]["content"]["b64"])
    assert entry["embeddings"]["shape"] == [3, 2] and "attention_mask" not in entry
    assert np.array_equal(np.frombuffer(raw, "<f4").reshape(3, 2), x)


@pytest.fixture(scope="module")
def binary() -> Path:
    folder = Path(__file__).parents[2] / "runs" / "bench" / "perf-analyzer"
    try:
        return perf_analyzer.install(folder)
    except perf_analyzer.Unavailable as exc:
        if os.environ.get("CI"):  # CI installs libb64-0d: there it must run
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, str]]:
    grpc = process.free_port()
    with process.running_server(REPOSITORY, ["--grpc-port", str(grpc)]) as (url, _):
        yield {"http": url.removeprefix("http://"), "grpc": f"127.0.0.1:{grpc}"}


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_completes_a_run_against_our_server(
    binary: Path, server: dict[str, str], protocol: str, tmp_path: Path
) -> None:
    x = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    data = perf_analyzer.write_input_data(tmp_path / "in.json", x)
    # stability 100: three windows whatever their spread (the test checks it runs, not speed)
    m = perf_analyzer.measure(
        binary, "ours", protocol, server[protocol], MODEL, 4, 2, data, 500, tmp_path, 100
    )
    assert m.items_per_second > 0 and m.requests > 0 and m.errors == 0
    assert m.requests_per_second == pytest.approx(m.items_per_second / 4)
    assert 0 < m.p50_ms <= m.p99_ms and m.avg_ms > 0
